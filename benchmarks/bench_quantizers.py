"""hf_vtok quantizers vs vector-quantize-pytorch (the library the papers' released code uses).

Two paper-size cases, each measured in one run with the same weights and inputs:

* Slot-MLLM: 32 images x 32 slots x 768, residual VQ with 4 depths and ONE shared 8192 x 32 codebook.
* DDT: 8 images x 480 tokens x 256, cosine VQ with a 65536 x 16 codebook.

For each: encode time (eval mode, no grad, median of repeats), extra peak memory of one encode
(resident-set high-water mark above the set-up, measured in a fresh subprocess after one warm-up
encode and a reset of the kernel's peak counter), and whether the codes are identical. Targets: >= 3.5x speed, <= 1/5 memory.

    pip install -e ".[bench]"; python benchmarks/bench_quantizers.py [--threads N] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

CASES = {
    "slot_mllm_rvq": dict(batch=32, tokens=32, dim=768, codebook_size=8192, code_dim=32, depths=4, cosine=False),
    "ddt_cosine_vq": dict(batch=8, tokens=480, dim=256, codebook_size=65536, code_dim=16, depths=1, cosine=True),
}


def build(case: dict, seed: int = 0):
    """Both quantizers with the same projections and codebook, plus one input batch."""
    from vector_quantize_pytorch import ResidualVQ, VectorQuantize

    from hf_vtok.utils.quantizers import ResidualVectorQuantizer, VectorQuantizer

    torch.manual_seed(seed)
    if case["depths"] > 1:
        reference = ResidualVQ(
            dim=case["dim"],
            num_quantizers=case["depths"],
            codebook_size=case["codebook_size"],
            codebook_dim=case["code_dim"],
            shared_codebook=True,
            decay=0.8,
        )
        ours = ResidualVectorQuantizer(
            case["dim"], case["codebook_size"], case["depths"], code_dim=case["code_dim"], shared_codebook=True
        )
        codebook = reference.layers[0]._codebook.embed[0]
        ours.codebooks[0].weight.data.copy_(codebook)
    else:
        reference = VectorQuantize(
            dim=case["dim"],
            codebook_size=case["codebook_size"],
            codebook_dim=case["code_dim"],
            use_cosine_sim=case["cosine"],
        )
        ours = VectorQuantizer(
            case["dim"], case["codebook_size"], code_dim=case["code_dim"], distance="cosine" if case["cosine"] else "euclidean"
        )
        ours.codebook.weight.data.copy_(reference._codebook.embed[0])
    for name in ("project_in", "project_out"):
        getattr(ours, name).load_state_dict(getattr(reference, name).state_dict())
    x = torch.randn(case["batch"], case["tokens"], case["dim"])
    return reference.eval(), ours.eval(), x


def encode_reference(reference, x):
    return reference(x)[1]


def encode_ours(ours, x):
    return ours.encode(x)


@torch.no_grad()
def max_tie_gap(ours, x, ref_ids, our_ids) -> float:
    """Where the two disagree at the first depth, how far apart (in float64) the two chosen codes are
    from the vector, relative to its distance: ~1e-7 means a float tie, not a different answer."""
    from hf_vtok.utils.quantizers import ResidualVectorQuantizer

    if isinstance(ours, ResidualVectorQuantizer):
        z, codes, ref_ids, our_ids = ours.project_in(x), ours.codebooks[0].codes, ref_ids[..., 0], our_ids[..., 0]
    else:
        z, codes = ours._to_code_space(x), ours.codebook.codes
    z, codes = z.reshape(-1, z.shape[-1]).double(), codes.double()
    ref_ids, our_ids = ref_ids.reshape(-1), our_ids.reshape(-1)
    differ = ref_ids != our_ids
    if not differ.any():
        return 0.0
    if ours.__class__.__name__ == "VectorQuantizer" and ours.codebook.distance == "cosine":
        z = torch.nn.functional.normalize(z, dim=-1)
    d_ref = (z[differ] - codes[ref_ids[differ]]).norm(dim=-1)
    d_ours = (z[differ] - codes[our_ids[differ]]).norm(dim=-1)
    return ((d_ref - d_ours).abs() / d_ours).max().item()


def time_encode(fn, module, x, repeats: int) -> float:
    with torch.no_grad():
        fn(module, x)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(module, x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_rss_kib() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM"):
                return int(line.split()[1])
    return 0


def _current_rss_kib() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return 0


def measure_memory_in_subprocess(case_name: str, which: str, threads: int) -> float:
    """Extra peak resident memory (MiB) of one encode, in a fresh process."""
    code = (
        "import json,torch,sys; sys.path.insert(0,'benchmarks');"
        f"torch.set_num_threads({threads});"
        "import bench_quantizers as b;"
        f"ref,ours,x=b.build(b.CASES['{case_name}']);"
        f"m={'ref' if which == 'reference' else 'ours'}; fn=b.encode_{which};"
        "torch.no_grad().__enter__(); fn(m,x); import gc; gc.collect();"  # warm-up: lazy buffers, thread pools
        "open('/proc/self/clear_refs','w').write('5');"
        "base=b._current_rss_kib();"
        "fn(m,x);"
        "print(json.dumps((b._peak_rss_kib()-base)/1024))"
    )
    # A fixed mmap threshold makes glibc map every large tensor on its own and unmap it on free, so the
    # resident-set peak follows the live tensors instead of the allocator's cached arenas.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}, device {args.device}")
    rows = []
    for name, case in CASES.items():
        reference, ours, x = build(case)
        reference, ours, x = reference.to(args.device), ours.to(args.device), x.to(args.device)
        with torch.no_grad():
            ref_ids, our_ids = encode_reference(reference, x), encode_ours(ours, x)
        same = (ref_ids == our_ids).float().mean().item()
        tie_gap = max_tie_gap(ours, x, ref_ids, our_ids)
        t_ref = time_encode(encode_reference, reference, x, args.repeats)
        t_ours = time_encode(encode_ours, ours, x, args.repeats)
        if args.device == "cpu":
            m_ref = measure_memory_in_subprocess(name, "reference", args.threads)
            m_ours = measure_memory_in_subprocess(name, "ours", args.threads)
        else:
            m_ref = m_ours = float("nan")
        rows.append(dict(case=name, ref_ms=1e3 * t_ref, ours_ms=1e3 * t_ours, speedup=t_ref / t_ours,
                         ref_mib=m_ref, ours_mib=m_ours, memory_ratio=m_ours / max(m_ref, 1e-9), identical=same, tie_gap=tie_gap))
    header = f"{'case':<16}{'vqtorch ms':>12}{'hf_vtok ms':>12}{'speed-up':>10}{'vqtorch MiB':>13}{'hf_vtok MiB':>13}{'mem ratio':>11}{'same ids':>10}{'tie gap':>10}"
    print(header)
    for r in rows:
        print(f"{r['case']:<16}{r['ref_ms']:>12.1f}{r['ours_ms']:>12.1f}{r['speedup']:>9.2f}x{r['ref_mib']:>13.1f}"
              f"{r['ours_mib']:>13.1f}{r['memory_ratio']:>11.3f}{r['identical']:>10.4f}{r['tie_gap']:>10.1e}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
