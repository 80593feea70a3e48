"""Density-peak clustering of patch features: SeTok Sec. 2.1 and Appendix C (Algorithm 1), batched.

For a feature map X (N patches of width C) the paper computes

* the local density from the K nearest neighbours, rho_i = exp(-1/K * sum_{j in kNN(i)} ||x_j - x_i||^2)  (eq. 1),
* the distance to the nearest denser feature, delta_i = min_{j: rho_j > rho_i} ||x_j - x_i||^2, or the largest
  distance for the densest feature (eq. 2),
* the seed score s_i = rho_i * delta_i,

and then (Algorithm 1) repeatedly takes the unassigned patch with the highest score as a seed, builds the alpha
mask alpha_j = exp(-||x_seed - x_j||^2 * k * ln 2), appends ``scope * alpha`` as a cluster mask and updates
``scope *= 1 - alpha``, until a stop condition holds; the remaining scope is appended as a final mask. With hard
assignment (the paper's preferred variant) alpha is thresholded at 1/2, i.e. a patch joins the seed's cluster
when its squared distance is at most 1/k, so every mask is one-hot over patches and the masks partition them.

Implementation notes (what makes this fast and exact):

* All images of a chunk run together. Squared distances come from one Gram matrix per image
  (||x||^2 + ||y||^2 - 2 x.y, no N x N square roots: min/max commute with the square root, so the Euclidean
  variant only takes roots of N values). The Gram matrix is symmetric, so only its upper block triangle is
  multiplied (about 60% of the FLOPs).
* Scores live in log space, log rho + log delta, so that eq. 1 cannot underflow for large feature distances;
  the ordering is the same as rho * delta.
* Algorithm 1 loops over iterations only; every iteration updates all images of the chunk at once, and images
  that have stopped are masked out. Ties are broken by the lower patch index (``max``/``argmax`` return the first
  maximum), so the result is deterministic and does not depend on the batch composition: the batched path and
  :func:`_reference_density_peak_clustering` (one image, one cluster at a time) return identical masks.
* Images go through in chunks whose N x N working set stays cache-sized.

Edge cases: K is clamped to the number of other patches (a single patch has density exp(0) = 1); identical
features form one cluster; a feature map with NaN/Inf raises a ``ValueError``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from transformers.utils import ModelOutput

from hf_vtok.utils.validation import check_choice, check_float, check_int, check_tensor, describe

_NEG_LARGE = -1.0e30  # finite stand-in for log(0) so that ties among zero scores still break by index
_DELTA_ROW_BLOCK = 128  # rows of the N x N matrix handled at once when searching the nearest denser patch
_CHUNK_BYTES = 4 << 20  # N x N float32 distance matrices per chunk (cache-sized; 3 images of 24 x 24 patches)


@dataclass
class SeTokClusteringOutput(ModelOutput):
    """Result of :func:`density_peak_clustering`.

    Args:
        masks (`torch.FloatTensor` of shape `(batch_size, num_tokens, num_patches)`):
            Cluster masks in token order (seed order, then the remainder mask); rows past an image's
            ``num_tokens`` are zero. Every patch sums to 1 over the masks (one-hot with hard assignment).
        attention_mask (`torch.LongTensor` of shape `(batch_size, num_tokens)`):
            1 for real clusters.
        num_tokens (`torch.LongTensor` of shape `(batch_size,)`):
            Number of masks of each image.
        seed_indices (`torch.LongTensor` of shape `(batch_size, num_tokens)`):
            Patch index of each cluster's seed (centre); -1 for the remainder mask and padding.
        log_scores (`torch.FloatTensor` of shape `(batch_size, num_patches)`):
            log(rho * delta) of every patch (-inf where delta is 0).
    """

    masks: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None
    num_tokens: torch.LongTensor | None = None
    seed_indices: torch.LongTensor | None = None
    log_scores: torch.FloatTensor | None = None


# --------------------------------------------------------------------------------------------------------
# Distances, density, distance to the nearest denser patch (shared by the batched and the reference paths)


def _gram(features: torch.Tensor) -> torch.Tensor:
    """Batched Gram matrix X X^T, multiplying only the strips right of the diagonal (symmetric result)."""
    batch, num, _ = features.shape
    if num < 192 or (features.requires_grad and torch.is_grad_enabled()):
        return torch.bmm(features, features.transpose(1, 2))
    parts = min(8, num // 128)  # strips of ~128-190 rows: about 60% of the FLOPs of the full product
    bounds = [round(i * num / parts) for i in range(parts + 1)]
    gram = features.new_empty(batch, num, num)
    for start, stop in itertools.pairwise(bounds):
        strip = torch.bmm(features[:, start:stop], features[:, start:].transpose(1, 2))  # rows start:stop, cols start:
        gram[:, start:stop, start:] = strip
        gram[:, stop:, start:stop] = strip[:, :, stop - start :].transpose(1, 2)
    return gram


def _distances_from_gram(gram: torch.Tensor, squared_norms: torch.Tensor) -> torch.Tensor:
    """||x_i||^2 + ||x_j||^2 - 2 x_i.x_j, clamped at 0 with an exact zero diagonal (in place on ``gram``)."""
    if not (gram.requires_grad and torch.is_grad_enabled()):
        distances = gram.mul_(-2.0).add_(squared_norms[:, :, None]).add_(squared_norms[:, None, :]).clamp_min_(0.0)
        distances.diagonal(dim1=1, dim2=2).zero_()
        return distances
    distances = (gram * -2.0 + squared_norms[:, :, None] + squared_norms[:, None, :]).clamp_min(0.0)
    eye = torch.eye(gram.shape[-1], dtype=torch.bool, device=gram.device)
    return distances.masked_fill(eye, 0.0)


def _squared_norms(features: torch.Tensor) -> torch.Tensor:
    """Row norms ``[B, N]``; also the NaN/Inf check of ``features`` (a non-finite value makes its norm non-finite,
    which is much cheaper to test than every feature). ``x * x`` is ``x.pow(2)`` bit for bit (as ``torch.cdist``
    computes its norms), only faster."""
    squared_norms = (features * features).sum(-1)
    if squared_norms.device.type != "meta" and not bool(torch.isfinite(squared_norms).all()):
        if not bool(torch.isfinite(features).all()):
            raise ValueError("`features` contains NaN or Inf values.")
        raise ValueError("`features` has values too large for float32 squared distances; rescale the features.")
    return squared_norms


def pairwise_squared_distances(features: torch.Tensor, distance_scale: str = "none") -> torch.Tensor:
    """Squared Euclidean distances ``[B, N, N]`` between the rows of ``features`` ``[B, N, C]`` (float32).

    With ``distance_scale="sqrt_dim"`` (released code) the distances are divided by sqrt(C), i.e. the squared
    distances by C.
    """
    features = features.float()
    squared_norms = _squared_norms(features)
    distances = _distances_from_gram(_gram(features), squared_norms)
    if distance_scale == "sqrt_dim":  # released code: Euclidean distance / sqrt(C)
        distances = distances / features.shape[-1] if distances.requires_grad else distances.div_(features.shape[-1])
    return distances


def _smallest_sum(distances: torch.Tensor, count: int) -> torch.Tensor:
    """Sum of the ``count`` smallest values of every row of ``distances`` ``[B, N, N]``.

    On the CPU this is ``numpy.partition`` (an introselect with SIMD kernels, about 5x faster than ``torch.topk``
    for 64 of 576 values, which has to carry indices); elsewhere ``torch.topk``. Both select the same multiset of
    values; only the order of the summation differs (float rounding).
    """
    if distances.device.type == "cpu" and distances.dtype == torch.float32 and not distances.requires_grad:
        smallest = np.partition(distances.numpy(), count - 1, axis=-1)[..., :count]
        return torch.from_numpy(smallest).sum(-1)
    return torch.topk(distances, count, dim=-1, largest=False, sorted=False).values.sum(-1)


def _log_density(distances: torch.Tensor, knn_size: int, density: str) -> torch.Tensor:
    """log rho (eq. 1): minus the mean squared distance to the K nearest neighbours."""
    num = distances.shape[-1]
    if density == "paper":  # the K nearest *other* patches
        k = min(knn_size, num - 1)
        if k == 0:
            return distances.new_zeros(distances.shape[:-1])
        # The point itself is at distance exactly 0, the smallest value of its row: the k+1 smallest values are
        # 0 plus the k smallest distances to other patches (as a multiset, whatever duplicates exist).
        return -_smallest_sum(distances, k + 1) / k
    k = min(knn_size, num)  # released: the kNN include the point itself
    return -_smallest_sum(distances, k) / k


def _nearest_denser(distances: torch.Tensor, density_key: torch.Tensor, densest_delta: str) -> torch.Tensor:
    """delta (eq. 2) on the squared distances: distance to the nearest strictly denser patch.

    ``densest_delta`` says what a patch with no denser patch gets: ``"global"`` the largest distance of the image,
    ``"row"`` the largest distance from that patch. ``"released"`` reproduces the released code's
    ``(dist * mask + dist_max * (1 - mask)).min(-1)`` with ``dist_max = dist.flatten(1).max(-1)`` broadcast over the
    *last* axis: every patch j that is not denser than i contributes j's own row maximum, so delta_i is
    ``min(nearest denser distance, smallest row maximum among the patches not denser than i, i included)``; for the
    densest patch that is the smallest of all row maxima.

    No boolean N x N mask (elementwise selects on those are several times slower than float arithmetic on the
    CPU): with density ranks r (equal densities share one), ``distances + lift * max(r_i - r_j + 1, 0)`` keeps
    the distances to denser patches exactly and lifts every other entry to at least ``lift`` (the largest
    distance), so its row minimum is the nearest denser distance wherever a denser patch exists. The released
    variant's second term depends on the density order only: a running minimum of the row maxima over the
    patches sorted by density.
    """
    batch, num, _ = distances.shape
    row_max = distances.amax(dim=-1)
    sorted_key, order = density_key.sort(dim=-1)
    rank = torch.searchsorted(sorted_key, density_key).to(distances.dtype)  # number of strictly less dense patches
    lift = min(float(row_max.max()), torch.finfo(distances.dtype).max)
    nearest = distances.new_empty(batch, num)
    for start in range(0, num, _DELTA_ROW_BLOCK):
        rows = slice(start, start + _DELTA_ROW_BLOCK)
        steps = (rank[:, rows, None] + 1 - rank[:, None, :]).clamp_min_(0)  # 0 exactly where rho_j > rho_i
        nearest[:, rows] = torch.add(distances[:, rows], steps, alpha=lift, out=steps).amin(-1)
    if densest_delta == "released":
        not_denser = torch.searchsorted(sorted_key, density_key, right=True) - 1  # last sorted patch with rho_j <= rho_i
        smallest_row_max = row_max.gather(1, order).cummin(dim=-1).values.gather(1, not_denser)
        return torch.minimum(nearest, smallest_row_max)
    fallback = row_max.amax(-1, keepdim=True).expand(batch, num) if densest_delta == "global" else row_max
    return torch.where(density_key < density_key.amax(-1, keepdim=True), nearest, fallback)


def _scores(distances, *, knn_size, density, delta_distance, densest_delta, noise=None):
    """log(rho * delta) of every patch from squared ``distances``, in log space (no underflow for large feature
    distances). ``noise`` ``[B, N]`` is added to rho itself (as the released code's ``rand * 1e-6``).
    """
    log_rho = _log_density(distances, knn_size, density)
    density_key = log_rho
    if noise is not None:
        log_rho = (log_rho.exp() + noise).log()
        density_key = log_rho
    log_delta = _nearest_denser(distances, density_key, densest_delta).log()
    return log_rho + (0.5 * log_delta if delta_distance == "euclidean" else log_delta)


_RELEASED_DISTANCE_PATH: dict = {}  # (shape, device type) -> "gram" or "exact", decided on the first chunk


def _released_distances(features: torch.Tensor, distance_scale: str) -> torch.Tensor:
    """Euclidean distances ``[B, N, N]`` bit for bit as ``torch.cdist(x, x)`` (then ``/ sqrt(C)``) computes them.

    ``cdist`` takes its matrix-product path (more than 25 rows): ``[-2x, |x|^2, 1] @ [x, 1, |x|^2]^T``, clamped
    at 0, square root ("exact" below: the same operations on the same shapes give the same bits). The released
    centre rule uses these, so that its comparisons (density order, threshold, nearest centre) see exactly the
    released code's numbers.

    The faster "gram" path computes ``-2 (x x^T) + (|x_i|^2 + |x_j|^2)`` with the symmetric half Gram matrix: when
    the BLAS accumulates the two extra columns of the augmented product as a separate block (it does for wide
    features, e.g. C = 1152 with MKL), this equals the exact product bit for bit. Which one holds depends on the
    shapes and the BLAS, not on the values, so the first chunk of each shape computes both and keeps the gram
    path only if they agree exactly; otherwise the exact path is used from then on.
    """
    features = features.float()
    norms = _squared_norms(features)[..., None]  # also the NaN/Inf check
    key = (tuple(features.shape), features.device.type)
    path = _RELEASED_DISTANCE_PATH.get(key)
    if path != "gram":
        pad = torch.ones_like(norms, memory_format=torch.contiguous_format)
        left = torch.cat([features.mul(-2), norms, pad], -1)
        right = torch.cat([features, pad, norms], -1)
        distances = left.matmul(right.mT)
    if path != "exact":
        gram = _gram(features).mul_(-2.0).add_(norms + norms.mT)
        if path is None:
            path = "gram" if torch.equal(gram, distances) else "exact"
            _RELEASED_DISTANCE_PATH[key] = path
        distances = gram if path == "gram" else distances
    distances = distances.clamp_min_(0).sqrt_()
    if distance_scale == "sqrt_dim":
        distances = distances.div_(features.shape[-1] ** 0.5)
    return distances


def _sorted_smallest(distances: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` smallest values of every row, ascending (what ``torch.topk(largest=False)`` returns)."""
    if distances.device.type == "cpu" and distances.dtype == torch.float32:
        smallest = np.partition(distances.numpy(), count - 1, axis=-1)[..., :count]
        return torch.from_numpy(np.sort(smallest, axis=-1))
    return torch.topk(distances, count, dim=-1, largest=False).values


def _released_scores(distances, *, knn_size, density, delta_distance, densest_delta, noise=None):
    """Scores of the released centre rule from Euclidean ``distances`` (:func:`_released_distances`), with the
    released code's operations in its order: rho = exp(-mean(kNN distance ** 2)) (+ noise), delta per
    ``densest_delta`` on the Euclidean distances, score = delta * rho (linear, float32).

    Returns ``(log(score), score)``.
    """
    num = distances.shape[-1]
    if density == "released":  # the K nearest include the point itself
        nearest = _sorted_smallest(distances, min(knn_size, num))
    else:  # the K nearest other patches: drop the smallest (the point itself)
        k = min(knn_size, num - 1)
        nearest = _sorted_smallest(distances, k + 1)[..., 1:] if k else distances.new_zeros(*distances.shape[:-1], 1)
    rho = (-(nearest**2).mean(dim=-1)).exp()
    if noise is not None:
        rho = rho + noise
    delta = _nearest_denser(distances, rho, densest_delta)
    if delta_distance == "squared":
        delta = delta**2
    score = delta * rho
    return score.log(), score


def _log_scores(distances, *, knn_size, density, delta_distance, densest_delta) -> torch.Tensor:
    return _scores(distances, knn_size=knn_size, density=density, delta_distance=delta_distance,
                   densest_delta=densest_delta)


# --------------------------------------------------------------------------------------------------------
# Batched Algorithm 1 and the released centre rule


def _paper_rule(distances, log_scores, *, kernel_scale, max_clusters, min_clusters, score_threshold,
                scope_threshold, hard_assignment):
    """Algorithm 1 for a chunk of images at once; the Python loop runs over iterations only."""
    batch, num, _ = distances.shape
    device = distances.device
    rows = torch.arange(batch, device=device)
    masks = distances.new_zeros(batch, max_clusters + 1, num)
    seeds = torch.full((batch, max_clusters + 1), -1, dtype=torch.long, device=device)
    count = torch.zeros(batch, dtype=torch.long, device=device)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    key = log_scores.clamp_min(_NEG_LARGE)
    log_threshold = math.log(score_threshold) if score_threshold is not None else None
    if hard_assignment:
        unassigned = torch.ones(batch, num, dtype=torch.bool, device=device)
    else:
        scope = distances.new_ones(batch, num)
    for step in range(max_clusters):
        # (i, j) = argmax(scores * scope): the best-scored patch not yet explained.
        selection = key.masked_fill(~unassigned, -math.inf) if hard_assignment else key + scope.log()
        best, seed = selection.max(dim=-1)
        if log_threshold is not None:
            active &= ~((best < log_threshold) & (count >= min_clusters))
        if not bool(active.any()):
            break
        seed_distances = distances[rows, seed]
        if hard_assignment:
            # alpha >= 1/2  <=>  d^2 * k <= 1; the seed itself (d = 0) always joins.
            new = unassigned & (seed_distances * kernel_scale <= 1.0) & active[:, None]
            unassigned &= ~new
            masks[:, step] = new
            remaining = unassigned.any(dim=-1)
        else:
            alpha = torch.exp2(-seed_distances * kernel_scale) * active[:, None]
            masks[:, step] = scope * alpha
            scope = scope * (1.0 - alpha)
            remaining = (scope > scope_threshold).any(dim=-1)
        seeds[:, step] = torch.where(active, seed, -1)
        count += active.long()
        active &= remaining
    remainder = unassigned.to(masks.dtype) if hard_assignment else scope
    has_remainder = (remainder > 0).any(dim=-1)
    masks[rows[has_remainder], count[has_remainder]] = remainder[has_remainder]
    return masks, seeds, count + has_remainder.long()


def _released_rule(distances, scores, *, max_clusters, score_threshold, released_fallback_clusters):
    """Released centre rule: every patch with score > threshold (else the top-k) is a centre; nearest centre.

    ``scores`` are the linear scores rho * delta. Centres come in descending score order (lower index on ties);
    a patch equally near to two centres joins the one with the lower patch index, as ``argmin`` over the released
    code's index-sorted centres does. The cost follows the number of centres actually selected in this chunk, not
    ``max_clusters``: only those rows of the distance matrix are gathered.
    """
    batch, num, _ = distances.shape
    device = distances.device
    threshold = 0.5 if score_threshold is None else score_threshold
    passing = scores > threshold
    num_passing = passing.sum(dim=-1)
    fallback = num_passing == 0
    num_centres = torch.where(fallback, torch.full_like(num_passing, min(released_fallback_clusters, num)), num_passing)
    num_centres = num_centres.clamp(max=max_clusters)
    width = max(int(num_centres.max()), 1)
    # Fallback centres: the top-k scores chosen by torch.topk itself, as the released code does (on exactly equal
    # scores its choice is the one that counts).
    top = torch.topk(scores, min(released_fallback_clusters, num), dim=-1).indices
    in_top = torch.zeros_like(passing).scatter_(1, top, True)
    candidates = torch.where(fallback[:, None], in_top, passing)
    rank_key = scores.nan_to_num(nan=-math.inf).masked_fill(~candidates, -math.inf)
    centres = torch.sort(rank_key, dim=-1, descending=True, stable=True).indices[:, :width]  # ties: lower index
    slots = torch.arange(width, device=device)
    valid = slots[None, :] < num_centres[:, None]
    # Nearest centre over the centres in patch-index order (the released tie rule), mapped back to score order.
    by_index, slot_of = torch.sort(torch.where(valid, centres, num), dim=-1)
    centre_distances = torch.gather(distances, 1, by_index.clamp(max=num - 1)[:, :, None].expand(batch, width, num))
    centre_distances = centre_distances.masked_fill((by_index >= num)[:, :, None], math.inf)
    labels = torch.gather(slot_of, 1, centre_distances.argmin(dim=1))
    own = torch.where(valid, slots[None, :].expand(batch, width), torch.gather(labels, 1, centres))
    labels = labels.scatter(1, centres, own)  # a centre belongs to its own cluster
    masks = torch.nn.functional.one_hot(labels, width).transpose(1, 2).to(distances.dtype)
    seeds = torch.where(valid, centres, -1)
    return masks, seeds, num_centres


def _soft_surrogate(distances, seeds, num_tokens, kernel_scale, center_rule, num_slots):
    """Differentiable masks with the same seeds, used as the straight-through gradient of hard masks."""
    batch, num, _ = distances.shape
    rows = torch.arange(batch, device=distances.device)
    if center_rule == "released":
        valid = seeds >= 0
        centre_distances = distances[rows[:, None], seeds.clamp_min(0)]  # [B, T, N]
        logits = (-centre_distances * (kernel_scale * math.log(2.0))).masked_fill(~valid[:, :, None], -math.inf)
        return torch.softmax(logits, dim=1)
    scope = distances.new_ones(batch, num)
    masks = []
    num_seeded = int((seeds >= 0).sum(dim=-1).max())
    for step in range(num_seeded):
        seed = seeds[:, step]
        alpha = torch.exp2(-distances[rows, seed.clamp_min(0)] * kernel_scale) * (seed >= 0)[:, None]
        masks.append(scope * alpha)
        scope = scope * (1.0 - alpha)
    masks = torch.stack(masks, dim=1) if masks else distances.new_zeros(batch, 0, num)
    slots = torch.arange(num_slots, device=distances.device)
    num_seeded_per_image = (seeds >= 0).sum(dim=-1)
    remainder_slot = (slots[None, :] == num_seeded_per_image[:, None]) & (num_seeded_per_image < num_tokens)[:, None]
    padded = torch.cat([masks, masks.new_zeros(batch, num_slots - masks.shape[1], num)], dim=1)
    return padded + remainder_slot[:, :, None] * scope[:, None, :]


def _cluster_chunk(features, *, knn_size, kernel_scale, max_clusters, min_clusters, score_threshold,
                   scope_threshold, hard_assignment, center_rule, released_fallback_clusters, distance_scale,
                   density, delta_distance, densest_delta, density_noise=None):
    need_grad = torch.is_grad_enabled() and features.requires_grad
    score_options = {"knn_size": knn_size, "density": density, "delta_distance": delta_distance,
                     "densest_delta": densest_delta, "noise": density_noise}
    if center_rule == "released":
        # The released code's own distance numbers (Euclidean, as torch.cdist); the squared distances with a
        # gradient are only needed for the straight-through surrogate.
        with torch.no_grad():
            detached = _released_distances(features.detach(), distance_scale)
            log_scores, scores = _released_scores(detached, **score_options)
        distances = pairwise_squared_distances(features, distance_scale) if need_grad else None
    else:
        with torch.set_grad_enabled(need_grad):
            distances = pairwise_squared_distances(features, distance_scale)
        detached = distances.detach()
        with torch.no_grad():
            log_scores = _scores(detached, **score_options)
    with torch.no_grad():
        if center_rule == "paper":
            masks, seeds, num_tokens = _paper_rule(
                detached, log_scores, kernel_scale=kernel_scale, max_clusters=max_clusters,
                min_clusters=min_clusters, score_threshold=score_threshold, scope_threshold=scope_threshold,
                hard_assignment=hard_assignment,
            )
        else:
            masks, seeds, num_tokens = _released_rule(
                detached, scores, max_clusters=max_clusters, score_threshold=score_threshold,
                released_fallback_clusters=released_fallback_clusters,
            )
    if need_grad:
        soft = _soft_surrogate(distances, seeds, num_tokens, kernel_scale, center_rule, masks.shape[1])
        # Hard values forward, gradient of the soft masks with the same seeds backward (straight-through);
        # soft assignment is its own surrogate.
        masks = masks + (soft - soft.detach()) if hard_assignment else soft
    return masks, seeds, num_tokens, log_scores


def _validate_clustering_arguments(features, kwargs) -> torch.Tensor:
    features = check_tensor("features", features, ndim=3, floating=True)  # NaN/Inf: see _squared_norms
    check_int("knn_size", kwargs["knn_size"], minimum=1)
    check_float("kernel_scale", kwargs["kernel_scale"], minimum=0.0, strict_minimum=True)
    check_int("max_clusters", kwargs["max_clusters"], minimum=1)
    check_int("min_clusters", kwargs["min_clusters"], minimum=1, maximum=kwargs["max_clusters"])
    if kwargs["score_threshold"] is not None:
        check_float("score_threshold", kwargs["score_threshold"], minimum=0.0, strict_minimum=True)
    check_float("scope_threshold", kwargs["scope_threshold"], minimum=0.0, maximum=1.0)
    if not isinstance(kwargs["hard_assignment"], bool):
        raise TypeError(f"`hard_assignment` must be a bool, got {describe(kwargs['hard_assignment'])}.")
    check_choice("center_rule", kwargs["center_rule"], ("paper", "released"))
    if kwargs["center_rule"] == "released" and not kwargs["hard_assignment"]:
        raise ValueError("`hard_assignment=False` is only defined for `center_rule='paper'`.")
    check_int("released_fallback_clusters", kwargs["released_fallback_clusters"], minimum=1)
    check_choice("distance_scale", kwargs["distance_scale"], ("none", "sqrt_dim"))
    check_choice("density", kwargs["density"], ("paper", "released"))
    check_choice("delta_distance", kwargs["delta_distance"], ("squared", "euclidean"))
    check_choice("densest_delta", kwargs["densest_delta"], ("global", "row", "released"))
    check_float("density_noise", kwargs["density_noise"], minimum=0.0)
    generator = kwargs["generator"]
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or None, got {describe(generator)}.")
    return features


def _draw_density_noise(features, density_noise, generator):
    """``density_noise * U[0, 1)`` of shape ``[B, N]`` (the released code's ``rand * 1e-6``), or None.

    One draw for the whole batch: with a CPU generator seeded like the released code's global RNG, image b gets
    the same numbers as the released loop's b-th ``torch.rand(N)``.
    """
    if not density_noise:
        return None
    batch, num, _ = features.shape
    device = generator.device if generator is not None else features.device
    noise = torch.rand(batch, num, generator=generator, device=device) * density_noise
    return noise.to(features.device)


def _pad_slots(tensor: torch.Tensor, width: int, value) -> torch.Tensor:
    """Pad dimension 1 (token slots) to ``width``."""
    if tensor.shape[1] == width:
        return tensor
    shape = (tensor.shape[0], width - tensor.shape[1], *tensor.shape[2:])
    return torch.cat([tensor, tensor.new_full(shape, value)], dim=1)


def _auto_chunk_size(num_patches: int) -> int:
    return max(1, min(256, _CHUNK_BYTES // (4 * num_patches * num_patches)))


def _finish(masks, seeds, num_tokens, log_scores) -> SeTokClusteringOutput:
    width = max(int(num_tokens.max()), 1)  # trim to the longest image of the batch
    slots = torch.arange(width, device=num_tokens.device)
    return SeTokClusteringOutput(
        masks=masks[:, :width],
        attention_mask=(slots[None, :] < num_tokens[:, None]).long(),
        num_tokens=num_tokens,
        seed_indices=seeds[:, :width],
        log_scores=log_scores,
    )


def density_peak_clustering(
    features: torch.Tensor,
    *,
    knn_size: int = 64,
    kernel_scale: float = 1.0,
    max_clusters: int = 64,
    min_clusters: int = 1,
    score_threshold: float | None = None,
    scope_threshold: float = 0.01,
    hard_assignment: bool = True,
    center_rule: str = "paper",
    released_fallback_clusters: int = 64,
    distance_scale: str = "none",
    density: str = "paper",
    delta_distance: str = "squared",
    densest_delta: str = "global",
    density_noise: float = 0.0,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> SeTokClusteringOutput:
    """Cluster a batch of patch-feature maps ``[B, N, C]`` into a variable number of masks per image.

    The arguments mirror the clustering fields of :class:`SeTokConfig` (``config.clustering_kwargs()``); see
    the module docstring for the algorithm. Gradients flow to ``features`` (when they require grad) through a
    straight-through estimator: hard masks forward, the soft masks of the same seeds backward.

    ``density_noise`` (released code: 1e-6) adds ``density_noise * U[0, 1)`` to every density rho, drawn from
    ``generator`` (the global RNG when `None`); 0 (default) adds none and ties break by the lower patch index.
    With ``center_rule="released"`` the masks have as many slots as the image with the most centres, whatever
    ``max_clusters`` is (pass the number of patches for the released code's "no cap").
    """
    kwargs = {
        "knn_size": knn_size, "kernel_scale": kernel_scale, "max_clusters": max_clusters, "min_clusters": min_clusters,
        "score_threshold": score_threshold, "scope_threshold": scope_threshold, "hard_assignment": hard_assignment,
        "center_rule": center_rule, "released_fallback_clusters": released_fallback_clusters,
        "distance_scale": distance_scale, "density": density, "delta_distance": delta_distance, "densest_delta": densest_delta,
    }
    features = _validate_clustering_arguments(
        features, {**kwargs, "density_noise": density_noise, "generator": generator}
    )
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, minimum=1)
    noise = _draw_density_noise(features, density_noise, generator)
    chunk = chunk_size or _auto_chunk_size(features.shape[1])
    parts = [
        _cluster_chunk(features[start : start + chunk], density_noise=None if noise is None else noise[start : start + chunk],
                       **kwargs)
        for start in range(0, features.shape[0], chunk)
    ]
    width = max(part[0].shape[1] for part in parts)
    masks = torch.cat([_pad_slots(part[0], width, 0.0) for part in parts], dim=0)
    seeds = torch.cat([_pad_slots(part[1], width, -1) for part in parts], dim=0)
    num_tokens, log_scores = (torch.cat([part[index] for part in parts], dim=0) for index in (2, 3))
    return _finish(masks, seeds, num_tokens, log_scores)


__all__ = ["SeTokClusteringOutput", "density_peak_clustering", "pairwise_squared_distances"]
