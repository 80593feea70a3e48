"""SeTok clustering and cluster-merger speed: batched path vs one image / one cluster at a time.

The released SeTok code clusters one image at a time and runs the merger cluster by cluster in a Python loop.
This benchmark runs, on the same features (batch 32, 24 x 24 patches of width 1152 by default, one CPU thread):

* clustering: ``density_peak_clustering`` (all images of a chunk at once, loop over iterations only) vs
  ``_reference_density_peak_clustering`` (Algorithm 1 one image and one cluster at a time, already using this
  library's squared distances by one matrix product); the masks must be identical. A third path,
  ``released-style``, is the same per-image loop with the distances computed the way the released code computes
  them (``torch.cdist``: N x N square roots, squared again for the kernel): it is the speed the issue quotes
  for the released code, and may differ from the others only where a float tie flips (reported);
* merger: ``SeTokClusterMerger`` (all clusters of a chunk of images in one pass, same-cluster attention) vs
  ``reference_cluster_merger`` (one cluster at a time); the tokens must agree to float tolerance.

Each measurement runs in its own subprocess, so that peak memory (VmHWM, reset after the inputs are built) is
not polluted by the other path; "extra" is the peak minus the resident size just before the timed call.

Features: ``structured`` (default) are synthetic scenes, 12-40 Voronoi regions per image, each region a random
prototype plus noise, clustered with ``distance_scale="sqrt_dim"`` so that a region is one cluster (about 25
clusters per image, the paper's average on real images, Table 5); ``random`` are i.i.d. Gaussian features (every
patch far from every other: the iteration cap is reached). Usage::

    python benchmarks/bench_setok_clustering.py [--batch 32] [--grid 24] [--dim 1152] [--features structured]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch

# The one-image-at-a-time reference clustering lives with the tests that check the batched one against it.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def make_features(kind: str, batch: int, grid: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Deterministic features, built image by image in place (no large temporaries)."""
    features = torch.empty(batch, grid * grid, dim)
    rows = torch.arange(grid).repeat_interleave(grid).float()
    cols = torch.arange(grid).repeat(grid).float()
    for image in range(batch):
        generator = torch.Generator().manual_seed(seed * 100003 + image)
        if kind == "random":
            features[image] = torch.randn(grid * grid, dim, generator=generator)
            continue
        regions = int(torch.randint(12, 41, (1,), generator=generator))
        centres = torch.rand(regions, 2, generator=generator) * grid
        distance = (rows[:, None] - centres[None, :, 0]) ** 2 + (cols[:, None] - centres[None, :, 1]) ** 2
        labels = distance.argmin(dim=1)
        prototypes = torch.randn(regions, dim, generator=generator)
        features[image] = prototypes[labels] + 0.35 * torch.randn(grid * grid, dim, generator=generator)
    return features


CLUSTER_KWARGS = {"knn_size": 64, "kernel_scale": 1.0, "max_clusters": 64, "distance_scale": "sqrt_dim"}


def _merger(dim: int, grid: int):
    from hf_vtok.models.setok import SeTokConfig
    from hf_vtok.models.setok.modeling_setok import SeTokClusterMerger

    config = SeTokConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": dim, "num_attention_heads": 16,
                       "patch_size": 14, "image_size": 14 * grid, "num_hidden_layers": 1,
                       "intermediate_size": 4 * dim},
        **{key: value for key, value in CLUSTER_KWARGS.items()},
    )
    torch.manual_seed(0)
    return SeTokClusterMerger(config).eval()


def released_style_clustering(features: torch.Tensor, **kwargs):
    """Per-image Algorithm 1 with ``torch.cdist`` distances, as the released code builds them."""
    from setok_clustering_reference import _reference_paper_rule_single

    from hf_vtok.models.setok import clustering_setok as C

    options = {"min_clusters": 1, "score_threshold": None, "scope_threshold": 0.01, "hard_assignment": True,
               "density": "paper", "delta_distance": "squared", "densest_delta": "global", **kwargs}
    scale = features.shape[-1] ** 0.5 if options.get("distance_scale") == "sqrt_dim" else 1.0
    slots = options["max_clusters"] + 1
    all_masks, all_seeds, all_counts, all_scores = [], [], [], []
    for image in features:
        distances = (torch.cdist(image, image) / scale).pow(2)
        distances.fill_diagonal_(0.0)
        log_scores = C._log_scores(distances[None], knn_size=options["knn_size"], density=options["density"],
                                   delta_distance=options["delta_distance"],
                                   densest_delta=options["densest_delta"])[0]
        masks = torch.zeros(slots, image.shape[0])
        seeds = torch.full((slots,), -1, dtype=torch.long)
        count = _reference_paper_rule_single(distances, log_scores, masks, seeds, options)
        all_masks.append(masks)
        all_seeds.append(seeds)
        all_counts.append(count)
        all_scores.append(log_scores)
    return C._finish(torch.stack(all_masks), torch.stack(all_seeds), torch.tensor(all_counts), torch.stack(all_scores))


def worker(args) -> dict:
    torch.set_num_threads(1)
    from setok_clustering_reference import _reference_density_peak_clustering, reference_cluster_merger

    from hf_vtok.models.setok.clustering_setok import density_peak_clustering

    features = make_features(args.features, args.batch, args.grid, args.dim)
    if args.stage == "clustering":
        function = {"batched": density_peak_clustering, "reference": _reference_density_peak_clustering,
                    "released": released_style_clustering}[args.path]
        function(torch.randn(2, 16, 8), **CLUSTER_KWARGS)  # warm-up on a tiny input (loads the kernels)

        def run():
            return function(features, **CLUSTER_KWARGS)
    else:
        clusters = torch.load(args.clusters)
        merger = _merger(args.dim, args.grid)
        masks, attention_mask = clusters["masks"], clusters["attention_mask"]
        with torch.no_grad():
            merger(torch.randn(1, args.grid * args.grid, args.dim), masks[:1], attention_mask[:1])  # warm-up

        def run():
            with torch.no_grad():
                if args.path == "batched":
                    return merger(features, masks, attention_mask)
                return reference_cluster_merger(merger, features, masks, attention_mask)

    before = _status_kb("VmRSS")
    reset = _reset_peak()
    start, start_cpu = time.perf_counter(), time.process_time()
    result = run()
    elapsed, elapsed_cpu = [time.perf_counter() - start], [time.process_time() - start_cpu]
    peak = _status_kb("VmHWM") if reset else None
    for _ in range(args.repeats - 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        elapsed.append(time.perf_counter() - start)
        elapsed_cpu.append(time.process_time() - start_cpu)
    if args.stage == "clustering":
        torch.save({"masks": result.masks, "attention_mask": result.attention_mask,
                    "num_tokens": result.num_tokens}, args.output)
    else:
        torch.save({"tokens": result}, args.output)
    # CPU time of the (single-threaded) worker: unlike wall time it is not inflated when other processes share
    # the cores; both are reported.
    return {
        "seconds": min(elapsed_cpu),
        "wall_seconds": min(elapsed),
        "images_per_second": args.batch / min(elapsed_cpu),
        "rss_before_mb": before / 1024,
        "peak_mb": None if peak is None else peak / 1024,
        "extra_mb": None if peak is None else (peak - before) / 1024,
    }


def _spawn(stage, path, args, output, clusters=None) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--stage", stage, "--path", path,
               "--batch", str(args.batch), "--grid", str(args.grid), "--dim", str(args.dim),
               "--features", args.features, "--output", output,
               "--repeats", str(args.cluster_repeats if stage == "clustering" else args.repeats)]
    if clusters:
        command += ["--clusters", clusters]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _line(name, stats):
    memory = "n/a" if stats["peak_mb"] is None else f"peak {stats['peak_mb']:7.1f} MB (+{stats['extra_mb']:6.1f} MB)"
    return (f"  {name:<28} {stats['images_per_second']:8.1f} images/s  {stats['seconds']:7.2f} s CPU "
            f"({stats['wall_seconds']:6.2f} s wall)   {memory}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--grid", type=int, default=24)
    parser.add_argument("--dim", type=int, default=1152)
    parser.add_argument("--features", choices=("structured", "random"), default="structured")
    parser.add_argument("--repeats", type=int, default=2, help="timed merger runs per path (the fastest is reported)")
    parser.add_argument("--cluster-repeats", type=int, default=5, help="timed clustering runs per path")
    parser.add_argument("--skip-merger", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--clusters", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    print(f"SeTok clustering benchmark: batch {args.batch}, {args.grid}x{args.grid} patches of width {args.dim}, "
          f"{args.features} features, 1 thread, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as folder:
        paths = {name: os.path.join(folder, name + ".pt") for name in ("cb", "cr", "cs", "mb", "mr")}
        batched = _spawn("clustering", "batched", args, paths["cb"])
        reference = _spawn("clustering", "reference", args, paths["cr"])
        released = _spawn("clustering", "released", args, paths["cs"])
        a, b, c = torch.load(paths["cb"]), torch.load(paths["cr"]), torch.load(paths["cs"])
        identical = torch.equal(a["masks"], b["masks"]) and torch.equal(a["num_tokens"], b["num_tokens"])
        same_count = (a["num_tokens"] == c["num_tokens"]).float().mean().item()
        width = min(a["masks"].shape[1], c["masks"].shape[1])
        same_patch = (a["masks"][:, :width].argmax(1) == c["masks"][:, :width].argmax(1)).float().mean().item()
        tokens = a["num_tokens"].float()
        print(f"clustering ({tokens.mean():.1f} tokens/image, min {int(tokens.min())}, max {int(tokens.max())})")
        print(_line("batched", batched))
        print(_line("per image / per cluster", reference))
        print(f"  speed-up {batched['images_per_second'] / reference['images_per_second']:.2f}x, "
              f"identical assignments: {identical}")
        print(_line("released-style (cdist)", released))
        print(f"  speed-up {batched['images_per_second'] / released['images_per_second']:.2f}x; same token count "
              f"on {same_count:.1%} of images, same cluster for {same_patch:.2%} of patches")
        if batched["peak_mb"] is not None:
            print(f"  peak memory ratio {batched['peak_mb'] / reference['peak_mb']:.2f}x "
                  f"(extra over inputs: {batched['extra_mb']:.1f} vs {reference['extra_mb']:.1f} MB)")
        if args.skip_merger:
            return
        merged_batched = _spawn("merger", "batched", args, paths["mb"], clusters=paths["cb"])
        merged_reference = _spawn("merger", "reference", args, paths["mr"], clusters=paths["cb"])
        difference = (torch.load(paths["mb"])["tokens"] - torch.load(paths["mr"])["tokens"]).abs().max().item()
        print("cluster merger (2 post-norm blocks, 2 heads, FFN 4x)")
        print(_line("batched (packed by cluster)", merged_batched))
        print(_line("cluster by cluster", merged_reference))
        print(f"  speed-up {merged_batched['images_per_second'] / merged_reference['images_per_second']:.2f}x, "
              f"max |token difference| {difference:.2e}")
        if merged_batched["peak_mb"] is not None:
            print(f"  peak memory ratio {merged_batched['peak_mb'] / merged_reference['peak_mb']:.2f}x "
                  f"(extra over inputs: {merged_batched['extra_mb']:.1f} vs {merged_reference['extra_mb']:.1f} MB)")


if __name__ == "__main__":
    main()
