"""References for SeTok (tests and ``benchmarks/``): the density-peak clustering one image and one cluster at a time,
for checking the batched :func:`hf_vtok.models.setok.clustering_setok.density_peak_clustering`; this project's
re-implementation of the released code's per-image clustering (``released_dpc_knn``, not the released code itself);
the cluster merger one image and one cluster at a time."""

from __future__ import annotations

import math

import torch

from hf_vtok.models.setok.clustering_setok import (
    _NEG_LARGE,
    SeTokClusteringOutput,
    _distances_from_gram,
    _draw_density_noise,
    _finish,
    _released_distances,
    _released_scores,
    _scores,
    _squared_norms,
    _validate_clustering_arguments,
)


def _reference_density_peak_clustering(features: torch.Tensor, **kwargs) -> SeTokClusteringOutput:
    """Per-image, per-cluster implementation of :func:`density_peak_clustering` (slow; for checking it).

    Distances use a plain ``x @ x.T`` and the same elementwise formula, density and delta helpers, so the
    batched path must reproduce these masks exactly.
    """
    options = {
        "knn_size": 64, "kernel_scale": 1.0, "max_clusters": 64, "min_clusters": 1, "score_threshold": None, "scope_threshold": 0.01,
        "hard_assignment": True, "center_rule": "paper", "released_fallback_clusters": 64, "distance_scale": "none",
        "density": "paper", "delta_distance": "squared", "densest_delta": "global", "density_noise": 0.0,
        "generator": None,
    }
    options.update({key: value for key, value in kwargs.items() if key != "chunk_size"})
    features = _validate_clustering_arguments(features, options).float()
    noise = _draw_density_noise(features, options["density_noise"], options["generator"])
    slots = options["max_clusters"] + (1 if options["center_rule"] == "paper" else 0)
    all_masks, all_seeds, all_counts, all_scores = [], [], [], []
    for index, image in enumerate(features):
        squared_norms = _squared_norms(image[None])[0]
        score_options = {"knn_size": options["knn_size"], "density": options["density"],
                         "delta_distance": options["delta_distance"], "densest_delta": options["densest_delta"],
                         "noise": None if noise is None else noise[index : index + 1]}
        if options["center_rule"] == "released":
            distances = _released_distances(image[None], options["distance_scale"])
            log_scores, scores = _released_scores(distances, **score_options)
        else:
            distances = _distances_from_gram((image @ image.T)[None], squared_norms[None])
            if options["distance_scale"] == "sqrt_dim":
                distances = distances.div_(image.shape[-1])
            log_scores = _scores(distances, **score_options)
        log_scores = log_scores[0]
        distances = distances[0]
        masks = torch.zeros(slots, image.shape[0])
        seeds = torch.full((slots,), -1, dtype=torch.long)
        if options["center_rule"] == "released":
            count = _reference_released_rule_single(distances, scores[0], masks, seeds, options)
        else:
            count = _reference_paper_rule_single(distances, log_scores, masks, seeds, options)
        all_masks.append(masks)
        all_seeds.append(seeds)
        all_counts.append(count)
        all_scores.append(log_scores)
    return _finish(
        torch.stack(all_masks), torch.stack(all_seeds), torch.tensor(all_counts), torch.stack(all_scores)
    )


def _reference_released_rule_single(distances, scores, masks, seeds, options) -> int:
    """Released centre rule for one image with a Python loop over the centres (same tie rules as the batched one)."""
    threshold = 0.5 if options["score_threshold"] is None else options["score_threshold"]
    centres = (scores > threshold).nonzero(as_tuple=True)[0].tolist()
    if not centres:  # no score passes: the top-k scores (torch.topk's choice on exact ties, as released)
        centres = torch.topk(scores, min(options["released_fallback_clusters"], scores.shape[0])).indices.tolist()
    centres = sorted(centres, key=lambda patch: (-float(scores[patch]), patch))[: options["max_clusters"]]
    best = torch.full((distances.shape[0],), math.inf)
    labels = torch.zeros(distances.shape[0], dtype=torch.long)
    for slot, centre in sorted(enumerate(centres), key=lambda item: item[1]):  # patch-index order
        closer = distances[centre] < best
        best = torch.where(closer, distances[centre], best)
        labels[closer] = slot
    for slot, centre in enumerate(centres):
        labels[centre] = slot
        seeds[slot] = centre
    masks[: len(centres)] = torch.nn.functional.one_hot(labels, masks.shape[0]).T[: len(centres)].float()
    return len(centres)


def _reference_paper_rule_single(distances, log_scores, masks, seeds, options) -> int:
    key = log_scores.clamp_min(_NEG_LARGE)
    hard = options["hard_assignment"]
    threshold = options["score_threshold"]
    unassigned = torch.ones(distances.shape[0], dtype=torch.bool)
    scope = torch.ones(distances.shape[0])
    count = 0
    while count < options["max_clusters"]:
        selection = key.masked_fill(~unassigned, -math.inf) if hard else key + scope.log()
        seed = int(selection.argmax())
        if threshold is not None and selection[seed] < math.log(threshold) and count >= options["min_clusters"]:
            break
        if hard:
            new = unassigned & (distances[seed] * options["kernel_scale"] <= 1.0)
            unassigned &= ~new
            masks[count] = new
        else:
            alpha = torch.exp2(-distances[seed] * options["kernel_scale"])
            masks[count] = scope * alpha
            scope = scope * (1.0 - alpha)
        seeds[count] = seed
        count += 1
        if hard and not bool(unassigned.any()):
            break
        if not hard and not bool((scope > options["scope_threshold"]).any()):
            break
    remainder = unassigned.float() if hard else scope
    if bool((remainder > 0).any()):
        masks[count] = remainder
        count += 1
    return count


def released_dpc_knn(x: torch.Tensor, k: int, threshold: float, fallback: int, noise: torch.Tensor | None):
    """The released clustering of one image ``x`` ``[N, C]``: (centre indices in index order, label per patch)."""
    channels = x.shape[1]
    dist = torch.cdist(x, x) / channels**0.5
    nearest = torch.topk(dist, k=k, dim=-1, largest=False).values
    density = (-(nearest**2).mean(dim=-1)).exp()
    if noise is not None:
        density = density + noise
    mask = (density[None, :] > density[:, None]).to(x.dtype)
    dist_max = dist.flatten(1).max(dim=-1)[0][None, None]  # [1, 1, N]: broadcast over the last axis
    delta = (dist * mask + dist_max * (1 - mask)).min(dim=-1)[0]  # [1, N]
    score = delta * density
    centres = torch.nonzero(score.reshape(-1) > threshold).reshape(-1)
    if centres.numel() == 0:
        centres = torch.sort(torch.topk(score, k=fallback, dim=-1)[1]).values.reshape(-1)
    labels = dist[centres, :].argmin(dim=0)
    labels[centres] = torch.arange(centres.numel())
    return centres, labels, score.reshape(-1)


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two label vectors describe the same partition (up to the names of the clusters)."""
    pairs = torch.stack([a, b], dim=1).unique(dim=0)
    return pairs.shape[0] == a.unique().numel() == b.unique().numel()


def reference_cluster_merger(
    merger,
    features: torch.Tensor,
    masks: torch.Tensor,
    attention_mask: torch.Tensor,
    grid_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The merger one image and one cluster at a time (the released code's loop), for tests and benchmarks."""
    grid_size = merger.grid_size if grid_size is None else grid_size
    position = merger.position_embeddings(grid_size, features.device, features.dtype)
    out = features.new_zeros(masks.shape[0], masks.shape[1], merger.output_projection.out_features
                             if merger.output_projection is not None else merger.dim)
    for image in range(features.shape[0]):
        count = int(attention_mask[image].sum())
        tokens = []
        for cluster in range(count):
            weights = masks[image, cluster].to(features.dtype)
            members = (weights > 0).nonzero(as_tuple=True)[0]  # raster-scan order
            sequence = ((features[image, members] + position[members]) * weights[members, None])[None]
            for layer in merger.layers:
                sequence = layer(sequence)
            tokens.append((weights[members, None] * sequence[0]).sum(0) / weights[members].sum())
        tokens = torch.stack(tokens)[None]
        for layer in merger.inter_cluster_layers:
            tokens = layer(tokens)
        if merger.output_projection is not None:
            tokens = merger.output_projection(tokens)
        out[image, :count] = tokens[0]
    return out
