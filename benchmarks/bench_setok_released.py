"""SeTok clustering and cluster merger against a re-implementation of the released SeTok code's operations.

What "released" means here: ``released_dpc_knn`` and ``released_group_encoding`` below are this project's own
re-implementation, written from the released code's operations, *not* the released code itself. Per image they do
what it does: ``torch.cdist(x, x) / sqrt(C)``, density = exp(-mean of the squared K smallest distances, the point
itself included) + ``rand * 1e-6``, delta from ``(dist * mask + dist.flatten(1).max(-1) * (1 - mask)).min(-1)``
(the row-maximum quirk), score = delta * density, centres = score > threshold else the top-k scores (sorted by
index), every patch to its nearest centre; the merger runs one cluster at a time through the released block
(attention layers sharing one pre-LayerNorm, manual softmax attention, then one FFN) and mean-pools.

hf_vtok runs ``density_peak_clustering`` with the matching flags (``center_rule="released"``,
``densest_delta="released"``, ``density_noise=1e-6`` drawn from a generator seeded like the released loop's global
RNG) and **no cap** (``max_clusters`` = number of patches, as the released code), and ``SeTokClusterMerger``
(packed: attention once per distinct cluster size; a pre-norm last block, as the released layout's, applies its FFN
output projection to the cluster means) in both block layouts.

Sections (one process, one thread, CPU time of this process, best of ``--repeats``; every ratio compares two
numbers of the same run):

* ``clustering``: batch 32 of 24 x 24 patches of width 1152, K = 64, threshold 0.55, fallback 64, for Gaussian
  features (no score passes: the 64-centre fallback) and the structured features of
  ``bench_setok_clustering.make_features`` (about 10 centres);
* ``agreement``: the partition of every image, hf_vtok vs the re-implementation, over ``--images`` images of each
  kind (same noise);
* ``merger``: batch 32, Voronoi partitions with ``--clusters`` clusters (ragged sizes; default 5 and 64), width
  1152, 2 heads, FFN 4608: packed vs the same layers cluster by cluster (``reference_cluster_merger``; equal FLOPs
  for the paper layout, whose post-norm last block leaves nothing to move past the mean; the released layout's
  packed path does a quarter fewer multiply-adds), for the paper and the released layout, and the released
  re-implementation's loop.

Usage::

    python benchmarks/bench_setok_released.py [--sections clustering agreement merger] [--images 512]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from bench_setok_clustering import make_features
from setok_clustering_reference import reference_cluster_merger, released_dpc_knn, same_partition

from hf_vtok.models.setok import SeTokConfig, density_peak_clustering
from hf_vtok.models.setok.modeling_setok import SeTokClusterMerger

K, THRESHOLD, FALLBACK, NOISE = 64, 0.55, 64, 1e-6


# ---------------------------------------------------------------------------------------------------------
# Re-implementation of the released code's operations (benchmark reference; not the released code itself)


def released_clustering(features: torch.Tensor, seed: int):
    torch.manual_seed(seed)  # the released code draws its density noise from the global RNG, image by image
    return [released_dpc_knn(image, K, THRESHOLD, FALLBACK, torch.rand(image.shape[0]) * NOISE)[:2] for image in features]


def released_block(block, x: torch.Tensor) -> torch.Tensor:
    """The released merger block on one sequence ``[1, L, C]`` (weights of a ``SeTokReleasedMergerBlock``)."""
    for attention in block.layers:
        h = F.layer_norm(x, x.shape[-1:], block.norm1.weight, block.norm1.bias, block.norm1.eps)
        batch, length, dim = h.shape
        heads = attention.num_heads
        qkv = F.linear(h, attention.qkv.weight, attention.qkv.bias)
        qkv = qkv.reshape(batch, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        scores = (qkv[0] @ qkv[1].transpose(-2, -1)) * (dim // heads) ** -0.5
        out = (scores.softmax(dim=-1) @ qkv[2]).transpose(1, 2).reshape(batch, length, dim)
        x = x + F.linear(out, attention.proj.weight, attention.proj.bias)
    h = F.layer_norm(x, x.shape[-1:], block.norm2.weight, block.norm2.bias, block.norm2.eps)
    return x + F.linear(F.gelu(F.linear(h, block.mlp.fc1.weight, block.mlp.fc1.bias)), block.mlp.fc2.weight,
                        block.mlp.fc2.bias)


def released_group_encoding(block, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One image: every cluster (``labels.unique()`` order) through the block on its own, then the mean."""
    return torch.stack([released_block(block, x[labels == label][None])[0].mean(0) for label in labels.unique()])


# ---------------------------------------------------------------------------------------------------------
# helpers


def timed(function, repeats: int):
    function_result = None
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        function_result = function()
        best = min(best, time.process_time() - start)
    return best, function_result


def hf_kwargs(num_patches: int, max_clusters: int | None = None) -> dict:
    return {
        "knn_size": K, "score_threshold": THRESHOLD, "released_fallback_clusters": FALLBACK,
        "max_clusters": max_clusters or num_patches, "center_rule": "released", "distance_scale": "sqrt_dim",
        "density": "released", "delta_distance": "euclidean", "densest_delta": "released", "density_noise": NOISE,
    }


def features_of(kind: str, batch: int, grid: int, dim: int, seed: int) -> torch.Tensor:
    if kind == "gaussian":
        return torch.randn(batch, grid * grid, dim, generator=torch.Generator().manual_seed(10_000 + seed))
    return make_features("structured", batch, grid, dim, seed=seed)


def hf_clustering(features, seed, **kwargs):
    return density_peak_clustering(features, generator=torch.Generator().manual_seed(seed), **kwargs)


# ---------------------------------------------------------------------------------------------------------
# sections


def section_clustering(args):
    print(f"\n## clustering: batch {args.batch}, {args.grid}x{args.grid} x {args.dim}, K {K}, threshold {THRESHOLD}, "
          f"fallback {FALLBACK}, noise {NOISE}; images per CPU-second, best of {args.repeats}")
    print("| features | clusters/image | released re-impl. | hf_vtok, no cap | speed-up | hf_vtok, cap 64 | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    num = args.grid * args.grid
    for kind in ("gaussian", "structured"):
        features = features_of(kind, args.batch, args.grid, args.dim, seed=0)
        released_clustering(features[:2], 0)  # warm-up
        hf_clustering(features[:2], 0, **hf_kwargs(num))
        t_released, reference = timed(lambda features=features: released_clustering(features, 0), args.repeats)
        t_free, free = timed(lambda features=features: hf_clustering(features, 0, **hf_kwargs(num)), args.repeats)
        t_cap, _ = timed(lambda features=features: hf_clustering(features, 0, **hf_kwargs(num, 64)), args.repeats)
        clusters = sum(centres.numel() for centres, _ in reference) / len(reference)
        agree = sum(same_partition(free.masks[i].argmax(0), reference[i][1]) for i in range(len(reference)))
        rate = args.batch / t_released
        print(f"| {kind} | {clusters:.1f} | {rate:.1f} | {args.batch / t_free:.1f} | {t_released / t_free:.2f}x | "
              f"{args.batch / t_cap:.1f} | {t_released / t_cap:.2f}x |   (same partition {agree}/{len(reference)})")


def section_agreement(args):
    print(f"\n## agreement: hf_vtok (center_rule='released', no cap, seeded noise) vs the released re-implementation,"
          f" {args.images} images per kind, batches of {args.batch}")
    print("| features | same partition | same cluster count | clusters/image (min-max) |")
    print("| --- | ---: | ---: | --- |")
    num = args.grid * args.grid
    for kind in ("gaussian", "structured"):
        same = same_count = 0
        counts = []
        for batch_index in range(args.images // args.batch):
            seed = 1000 + batch_index
            features = features_of(kind, args.batch, args.grid, args.dim, seed=seed)
            reference = released_clustering(features, seed)
            ours = hf_clustering(features, seed, **hf_kwargs(num))
            labels = ours.masks.argmax(1)
            for image, (centres, ref_labels) in enumerate(reference):
                same += same_partition(labels[image], ref_labels)
                same_count += int(ours.num_tokens[image]) == centres.numel()
                counts.append(centres.numel())
        total = len(counts)
        print(f"| {kind} | {same}/{total} | {same_count}/{total} | {sum(counts) / total:.1f} ({min(counts)}-{max(counts)}) |")


def voronoi_masks(batch: int, grid: int, clusters: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(grid).repeat_interleave(grid).float()
    cols = torch.arange(grid).repeat(grid).float()
    masks = torch.zeros(batch, clusters, grid * grid)
    for image in range(batch):
        while True:
            centres = torch.rand(clusters, 2, generator=generator) * grid
            labels = ((rows[:, None] - centres[None, :, 0]) ** 2 + (cols[:, None] - centres[None, :, 1]) ** 2).argmin(1)
            if labels.unique().numel() == clusters:
                break
        masks[image, labels, torch.arange(grid * grid)] = 1.0
    return masks


def merger_of(layout: str, dim: int, grid: int) -> SeTokClusterMerger:
    config = SeTokConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": dim, "num_attention_heads": 16,
                       "patch_size": 14, "image_size": 14 * grid, "num_hidden_layers": 1, "intermediate_size": 4 * dim},
        merger_block_layout=layout, layer_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    return SeTokClusterMerger(config).eval()


def section_merger(args):
    print(f"\n## merger: batch {args.batch}, {args.grid}x{args.grid} x {args.dim}, 2 heads, FFN {4 * args.dim}; "
          f"images per CPU-second, best of {args.merger_repeats}")
    print("| clusters | layout | packed (hf_vtok) | same layers cluster by cluster | speed-up | max abs diff |"
          " released re-impl. loop | speed-up | max abs diff |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    features = torch.randn(args.batch, args.grid * args.grid, args.dim, generator=torch.Generator().manual_seed(0))
    for clusters in args.clusters:
        masks = voronoi_masks(args.batch, args.grid, clusters, seed=clusters)
        attention_mask = torch.ones(args.batch, clusters, dtype=torch.long)
        for layout in ("paper", "released"):
            merger = merger_of(layout, args.dim, args.grid)
            with torch.no_grad():
                merger(features[:2], masks[:2], attention_mask[:2])  # warm-up
                def run_packed(merger=merger, masks=masks, attention_mask=attention_mask):
                    return merger(features, masks, attention_mask)

                def run_loop(merger=merger, masks=masks, attention_mask=attention_mask):
                    return reference_cluster_merger(merger, features, masks, attention_mask)

                t_packed, packed = timed(run_packed, args.merger_repeats)
                t_loop, loop = timed(run_loop, args.merger_repeats)
                line = (f"| {clusters} | {layout} | {args.batch / t_packed:.2f} | {args.batch / t_loop:.2f} | "
                        f"{t_loop / t_packed:.2f}x | {(packed - loop).abs().max():.1e} |")
                if layout == "released":
                    position = merger.position_embeddings((args.grid, args.grid), features.device, features.dtype)
                    block = merger.layers[0]

                    def run_released(block=block, position=position, masks=masks):
                        return torch.stack([released_group_encoding(block, features[i] + position, masks[i].argmax(0))
                                            for i in range(args.batch)])

                    t_released, released = timed(run_released, args.merger_repeats)
                    line += (f" {args.batch / t_released:.2f} | {t_released / t_packed:.2f}x | "
                             f"{(packed - released).abs().max():.1e} |")
                else:
                    line += " | | |"
            print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=["clustering", "agreement", "merger"],
                        choices=["clustering", "agreement", "merger"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--grid", type=int, default=24)
    parser.add_argument("--dim", type=int, default=1152)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--merger-repeats", type=int, default=1)
    parser.add_argument("--clusters", type=int, nargs="+", default=[5, 64])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"SeTok vs a re-implementation of the released code's operations; torch {torch.__version__}, 1 thread")
    for name in args.sections:
        {"clustering": section_clustering, "agreement": section_agreement, "merger": section_merger}[name](args)


if __name__ == "__main__":
    main()
