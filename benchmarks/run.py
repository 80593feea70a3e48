"""hf_vtok speed and memory benchmarks in one run (not part of the test suite's pass/fail).

Sections (each comparison is a ratio of two measurements taken in the same run):

1. encode — images/s and peak memory of ``XModel.encode`` for each tokenizer at the tiny preset (batch 8) and at
   paper scale (random weights, batch 1-2; ``--skip-paper`` leaves it out). Inputs are the natural photos bundled
   with scikit-image, processed by the family's image processor, so SeTok's cluster counts are realistic.
2. decode — seconds per image of the family's decoder pipeline at ``--steps`` steps, tiny preset (the paper-size
   decoders — an 870 M-parameter unCLIP UNet, an 860 M SD UNet, a 2 B MMDiT — need minutes per image on a CPU and
   are not run).
3. MLLM image generation — visual tokens/s with the visual-rows-only head vs the full LM head
   (``benchmarks/bench_mllm_generation.py``; Slot-MLLM and DDT-LLaMA vocabulary layouts, random 2-layer LM body).
4. SeTok clustering — batched density-peak clustering vs one image / one cluster at a time
   (``benchmarks/bench_setok_clustering.py``), identical assignments checked.
5. quantizers — hf_vtok vs vector-quantize-pytorch at the papers' sizes (``benchmarks/bench_quantizers.py``);
   skipped when vector-quantize-pytorch is not installed.

Peak memory: on CPU each encode/decode runs in a fresh subprocess with ``MALLOC_MMAP_THRESHOLD_=65536`` (glibc
then maps every large tensor separately and unmaps it on free, so the resident set follows live tensors); the
kernel's peak (VmHWM) is reset through ``/proc/self/clear_refs`` after a warm-up call and the "extra" peak is
VmHWM minus the resident size just before the measured call. On CUDA: ``torch.cuda.max_memory_allocated`` above
the memory allocated before the call. Times are wall-clock (and process CPU time on CPU, which other jobs on a
shared machine inflate less).

    python benchmarks/run.py [--quick] [--skip-paper] [--threads 1] [--device cuda] [--steps 25] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
FAMILIES = ("slot_qformer", "setok", "ddt")


# ---------------------------------------------------------------------------------------------------- machine
def machine_info(threads: int, device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = f"{names[0]} ({len(names)} logical CPUs)" if names else cpu
    except OSError:
        pass
    info = {"cpu": cpu, "threads": threads, "torch": torch.__version__, "python": platform.python_version(), "device": device}
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as handle:
            info["memory_gib"] = round(int(handle.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ---------------------------------------------------------------------------------------------------- workers
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _measure(run, device: str, repeats: int) -> dict:
    """Peak extra memory of one call (after a warm-up), then the best wall / CPU time of ``repeats`` calls."""
    run()  # warm-up: lazy buffers, kernels, thread pools
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        extra_mib, peak_mib = (torch.cuda.max_memory_allocated() - before) / 2**20, torch.cuda.max_memory_allocated() / 2**20
    else:
        reset = _reset_peak()
        before = _status_kib("VmRSS")
        run()
        peak = _status_kib("VmHWM") if reset else None
        extra_mib = None if peak is None else (peak - before) / 1024
        peak_mib = None if peak is None else peak / 1024
    walls, cpus = [], []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"wall_s": min(walls), "cpu_s": min(cpus), "extra_mib": extra_mib, "peak_mib": peak_mib}


def _photos(count: int):
    from hf_vtok.evaluation.analysis import natural_photos

    photos = list(natural_photos(include_sklearn=False).values())
    return [photos[i % len(photos)] for i in range(count)]


def worker(args) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    from transformers.utils import logging

    logging.set_verbosity_error()
    from transformers import CONFIG_MAPPING, AutoModel, AutoModelForPreTraining

    from hf_vtok.mllm.processing_mllm import image_processor_for
    from hf_vtok.trainer.arguments import FAMILY_MODEL_TYPES

    config_class = CONFIG_MAPPING[FAMILY_MODEL_TYPES[args.family]]
    config = config_class.tiny() if args.scale == "tiny" else config_class()
    torch.manual_seed(0)
    started = time.perf_counter()
    if args.stage == "encode":
        model = AutoModel.from_config(config).eval().to(args.device)
    else:
        model = AutoModelForPreTraining.from_config(config).eval().to(args.device)
    build_s = time.perf_counter() - started
    processor = image_processor_for(config)
    images = _photos(args.batch)
    result = {"family": args.family, "scale": args.scale, "batch": args.batch, "build_s": round(build_s, 2),
              "parameters": sum(p.numel() for p in model.parameters())}
    with torch.no_grad():
        if args.stage == "encode":
            pixel_values = processor(images, return_tensors="pt").pixel_values.to(args.device)
            tokens = {}

            def run():
                tokens["out"] = model.encode(pixel_values)

            stats = _measure(run, args.device, args.repeats)
            result["tokens_per_image"] = round(float(tokens["out"].attention_mask.sum(-1).float().mean()), 1)
            result["image_size"] = config.image_size
        else:
            pipe = model.get_decoder_pipeline()
            pipe.set_progress_bar_config(disable=True)

            def run():
                pipe(images=images, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0), output_type="np")

            stats = _measure(run, args.device, args.repeats)
            result["steps"] = args.steps
            result["decoder_size"] = int(pipe(images=images[:1], num_inference_steps=1, output_type="np").images.shape[1])
    result.update({key: (round(value, 4) if isinstance(value, float) else value) for key, value in stats.items()})
    result["images_per_s"] = round(args.batch / stats["wall_s"], 3)
    result["images_per_cpu_s"] = round(args.batch / stats["cpu_s"], 3) if stats["cpu_s"] > 0 else None
    return result


def spawn(stage: str, family: str, scale: str, batch: int, repeats: int, args) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--stage", stage, "--family", family,
               "--scale", scale, "--batch", str(batch), "--repeats", str(repeats), "--threads", str(args.threads),
               "--device", args.device, "--steps", str(args.steps)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if completed.returncode != 0:
        return {"family": family, "scale": scale, "error": completed.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------- sections
def _fmt(value, pattern="{:.2f}"):
    return "-" if value is None else pattern.format(value)


def section_encode(args) -> list[dict]:
    rows = []
    scales = ["tiny"] + ([] if args.quick or args.skip_paper else ["paper"])
    for scale in scales:
        for family in FAMILIES:
            batch = 8 if scale == "tiny" else (2 if family == "ddt" else 1)
            repeats = 5 if scale == "tiny" else 2
            row = spawn("encode", family, scale, batch, repeats, args)
            rows.append(row)
            if "error" in row:
                print(f"  encode {family:<13}{scale:<6} FAILED: {row['error']}", flush=True)
                continue
            print(f"  encode {family:<13}{scale:<6} {row['parameters'] / 1e6:8.1f} M params  {row['image_size']:4d} px  "
                  f"batch {batch}  {row['images_per_s']:8.2f} img/s ({_fmt(row['images_per_cpu_s'])} per CPU-s)  "
                  f"peak +{_fmt(row['extra_mib'], '{:.0f}')} MiB (RSS {_fmt(row['peak_mib'], '{:.0f}')} MiB)  "
                  f"{row['tokens_per_image']} tokens/img  build {row['build_s']} s", flush=True)
    return rows


def section_decode(args) -> list[dict]:
    rows = []
    for family in FAMILIES:
        row = spawn("decode", family, "tiny", 4, 2 if not args.quick else 1, args)
        rows.append(row)
        if "error" in row:
            print(f"  decode {family:<13} FAILED: {row['error']}", flush=True)
            continue
        print(f"  decode {family:<13}tiny  {row['parameters'] / 1e6:6.2f} M params (tokenizer + decoder)  "
              f"{row['steps']} steps  {row['wall_s'] / row['batch']:.3f} s/image ({row['cpu_s'] / row['batch']:.3f} CPU-s)  "
              f"output {row['decoder_size']} px  peak +{_fmt(row['extra_mib'], '{:.0f}')} MiB", flush=True)
    print("  paper-size decoders (870 M unCLIP UNet, 860 M SD UNet, 2 B MMDiT) are not run: minutes per image on a CPU", flush=True)
    return rows


def section_mllm(args) -> dict:
    sys.path.insert(0, str(HERE))
    import bench_mllm_generation as bench

    cases = ["slot_mllm"] if args.quick else list(bench.CASES)
    hidden, layers, batch = (256, 2, 2) if args.quick else (512, 2, 2)
    if args.device != "cpu":  # the bench builds its prompts on the CPU: move them to the model's device
        original = bench.prompts
        bench.prompts = lambda model_, batch_, length=16, seed=0: {
            key: value.to(args.device) for key, value in original(model_, batch_, length, seed).items()
        }
    results = {}
    for name in cases:
        model = bench.build(bench.CASES[name], hidden, layers).to(args.device)
        timings, ids = {}, {}
        for fast in (True, False):
            ids[fast], timings[fast] = bench.run(model, batch, fast, 8.0)
        tokens = batch * bench.CASES[name]["num_visual_tokens"]
        results[name] = {"vocab": model.config.text_config.vocab_size, "codes": bench.CASES[name]["codebook_size"],
                         "tokens_per_image": bench.CASES[name]["num_visual_tokens"],
                         "full_head_tokens_per_s": round(tokens / timings[False], 1),
                         "visual_rows_tokens_per_s": round(tokens / timings[True], 1),
                         "speed_up": round(timings[False] / timings[True], 2),
                         "same_ids": bool(torch.equal(ids[True].cpu(), ids[False].cpu())),
                         "hidden": hidden, "layers": layers, "batch": batch, "guidance_scale": 8.0}
        r = results[name]
        print(f"  mllm {name:<10} vocab {r['vocab']:>7,}  {r['tokens_per_image']} tokens/img  full head "
              f"{r['full_head_tokens_per_s']:7.1f} tok/s  visual rows {r['visual_rows_tokens_per_s']:7.1f} tok/s  "
              f"x{r['speed_up']:.2f}  same ids: {r['same_ids']}", flush=True)
        del model
        gc.collect()
    return results


def section_setok_clustering(args) -> dict:
    sys.path.insert(0, str(HERE))
    import bench_setok_clustering as bench

    settings = argparse.Namespace(batch=4 if args.quick else 8, grid=16 if args.quick else 24, dim=256 if args.quick else 1152,
                                  features="structured", cluster_repeats=2, repeats=1)
    with tempfile.TemporaryDirectory() as folder:
        batched = bench._spawn("clustering", "batched", settings, os.path.join(folder, "b.pt"))
        reference = bench._spawn("clustering", "reference", settings, os.path.join(folder, "r.pt"))
        a, b = torch.load(os.path.join(folder, "b.pt")), torch.load(os.path.join(folder, "r.pt"))
    identical = torch.equal(a["masks"], b["masks"]) and torch.equal(a["num_tokens"], b["num_tokens"])
    result = {"batch": settings.batch, "grid": settings.grid, "dim": settings.dim,
              "mean_tokens": round(float(a["num_tokens"].float().mean()), 1),
              "batched_images_per_cpu_s": round(batched["images_per_second"], 2),
              "reference_images_per_cpu_s": round(reference["images_per_second"], 2),
              "speed_up": round(batched["images_per_second"] / reference["images_per_second"], 2),
              "batched_extra_mib": batched["extra_mb"], "reference_extra_mib": reference["extra_mb"],
              "identical": bool(identical)}
    print(f"  setok clustering batch {settings.batch}, {settings.grid}x{settings.grid} x {settings.dim} "
          f"({result['mean_tokens']} tokens/img): batched {result['batched_images_per_cpu_s']} img/CPU-s, per image/cluster "
          f"{result['reference_images_per_cpu_s']} img/CPU-s, x{result['speed_up']}, identical: {identical}", flush=True)
    return result


def section_quantizers(args) -> dict:
    try:
        import vector_quantize_pytorch  # noqa: F401
    except ImportError:
        print("  quantizers: vector-quantize-pytorch is not installed (pip install -e '.[bench]'): skipped", flush=True)
        return {"skipped": "vector-quantize-pytorch not installed"}
    sys.path.insert(0, str(HERE))
    import bench_quantizers as bench

    results = {}
    cases = ["slot_mllm_rvq"] if args.quick else list(bench.CASES)
    for name in cases:
        reference, ours, x = bench.build(bench.CASES[name])
        reference, ours, x = reference.to(args.device), ours.to(args.device), x.to(args.device)
        with torch.no_grad():
            same = (bench.encode_reference(reference, x) == bench.encode_ours(ours, x)).float().mean().item()
        t_ref = bench.time_encode(bench.encode_reference, reference, x, 3)
        t_ours = bench.time_encode(bench.encode_ours, ours, x, 3)
        if args.device == "cpu":
            m_ref = bench.measure_memory_in_subprocess(name, "reference", args.threads)
            m_ours = bench.measure_memory_in_subprocess(name, "ours", args.threads)
        else:
            m_ref = m_ours = None
        results[name] = {"vqtorch_ms": round(1e3 * t_ref, 1), "hf_vtok_ms": round(1e3 * t_ours, 1), "speed_up": round(t_ref / t_ours, 2),
                         "vqtorch_extra_mib": None if m_ref is None else round(m_ref, 1),
                         "hf_vtok_extra_mib": None if m_ours is None else round(m_ours, 1),
                         "memory_ratio": None if m_ref is None else round(m_ours / max(m_ref, 1e-9), 3), "same_ids": round(same, 4)}
        r = results[name]
        print(f"  quantizer {name:<14} vqtorch {r['vqtorch_ms']:8.1f} ms  hf_vtok {r['hf_vtok_ms']:8.1f} ms  x{r['speed_up']:.2f}  "
              f"memory +{_fmt(r['vqtorch_extra_mib'], '{:.0f}')} vs +{_fmt(r['hf_vtok_extra_mib'], '{:.0f}')} MiB  "
              f"same ids {r['same_ids']}", flush=True)
        del reference, ours, x
        gc.collect()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and small cases only (a check that everything runs)")
    parser.add_argument("--skip-paper", action="store_true", help="leave out the paper-scale encoders")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="decoder steps (default 25; 5 with --quick)")
    parser.add_argument("--sections", nargs="*", default=["encode", "decode", "mllm", "setok", "quantizers"],
                        choices=["encode", "decode", "mllm", "setok", "quantizers"])
    parser.add_argument("--json", default=None, help="also write every number to this JSON file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--family", help=argparse.SUPPRESS)
    parser.add_argument("--scale", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 5 if args.quick else 25
    if args.threads < 1 or args.steps < 1:
        parser.error("--threads and --steps must be positive")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.worker:
        print(json.dumps(worker(args)))
        return
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    info = machine_info(args.threads, args.device)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    results = {"machine": info, "quick": args.quick, "steps": args.steps}
    sections = {"encode": section_encode, "decode": section_decode, "mllm": section_mllm,
                "setok": section_setok_clustering, "quantizers": section_quantizers}
    for name in args.sections:
        print(f"[{name}]", flush=True)
        section_started = time.perf_counter()
        try:
            results[name] = sections[name](args)
        except Exception as error:  # noqa: BLE001  (one broken section must not hide the others)
            results[name] = {"error": f"{type(error).__name__}: {error}"}
            print(f"  {name} FAILED: {type(error).__name__}: {error}", flush=True)
        print(f"  ({time.perf_counter() - section_started:.0f} s)", flush=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"done in {results['seconds']} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
