"""SeTok's density-peak clustering one image at a time and one cluster at a time, for checking the batched
:func:`hf_vtok.models.setok.clustering_setok.density_peak_clustering` (tests and ``benchmarks/``)."""

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
