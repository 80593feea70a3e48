"""Object-discovery and reconstruction metrics, plus the colour k-means baseline they are compared to.

Masks are integer id maps ``[H, W]`` or batches ``[B, H, W]`` (numpy, torch or ``"L"``/``"I"`` PIL
images). Images follow each library's own layout: numpy arrays are channel-last (``HxW``, ``HxWxC``,
``BxHxWxC``), torch tensors channel-first (``HxW``, ``CxHxW``, ``BxCxHxW``); floats are expected in
``[0, data_range]``, ``uint8`` arrays/tensors and PIL images are divided by 255. An unbatched input gives
a Python float, a batched one a numpy array with one value per image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from hf_vtok.utils.validation import check_float, check_int, describe

__all__ = [
    "adjusted_rand_index",
    "color_kmeans_segmentation",
    "foreground_ari",
    "mean_iou_matched",
    "psnr",
    "ssim",
]


# --------------------------------------------------------------------------------------------------
# Input conversion
# --------------------------------------------------------------------------------------------------


def _to_numpy(name: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, Image.Image):
        return np.asarray(value)
    if isinstance(value, np.ndarray):
        return value
    raise TypeError(f"`{name}` must be a numpy array, torch.Tensor or PIL image, got {describe(value)}.")


def _label_batch(name: str, value: Any) -> tuple[np.ndarray, bool]:
    """Integer id maps as ``[B, H, W]`` int64, and whether the input was batched."""
    array = _to_numpy(name, value)
    if array.ndim not in (2, 3) or array.size == 0:
        raise ValueError(
            f"`{name}` must be a non-empty id map [H, W] or batch [B, H, W], got shape {array.shape}."
        )
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise TypeError(f"`{name}` must hold integer ids, got dtype {array.dtype}.")
    batched = array.ndim == 3
    return array.astype(np.int64).reshape((-1,) + array.shape[-2:]), batched


def _paired_labels(true_mask: Any, pred_mask: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    true, batched = _label_batch("true_mask", true_mask)
    pred, pred_batched = _label_batch("pred_mask", pred_mask)
    if true.shape != pred.shape or batched != pred_batched:
        raise ValueError(
            f"`true_mask` and `pred_mask` must have the same shape, got {describe(true_mask)} and {describe(pred_mask)}."
        )
    return true, pred, batched


def _image_batch(name: str, value: Any) -> tuple[np.ndarray, bool]:
    """Images as float64 ``[B, H, W, C]``, and whether the input was batched (layouts: module docstring)."""
    if isinstance(value, Image.Image):
        array, channels_first = np.asarray(value), False
    elif isinstance(value, torch.Tensor):
        array, channels_first = value.detach().cpu().numpy(), True
    elif isinstance(value, np.ndarray):
        array, channels_first = value, False
    else:
        raise TypeError(f"`{name}` must be a numpy array, torch.Tensor or PIL image, got {describe(value)}.")
    if array.ndim not in (2, 3, 4) or array.size == 0:
        raise ValueError(f"`{name}` must be a non-empty image or batch of images, got shape {array.shape}.")
    batched = array.ndim == 4
    if array.ndim == 2:
        array = array[None, :, :, None] if not channels_first else array[None, None]
    elif array.ndim == 3:
        array = array[None]
    if channels_first:
        array = np.moveaxis(array, 1, -1)
    if array.dtype == np.uint8:
        array = array / 255.0
    elif not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"`{name}` must be uint8 or floating point, got dtype {array.dtype}.")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` contains NaN or Inf values.")
    return array, batched


def _paired_images(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    first, batched = _image_batch("a", a)
    second, second_batched = _image_batch("b", b)
    if first.shape != second.shape or batched != second_batched:
        raise ValueError(
            f"`a` and `b` must be images of the same shape, got {describe(a)} and {describe(b)}."
        )
    return first, second, batched


def _output(values: list[float], batched: bool) -> float | np.ndarray:
    return np.asarray(values, dtype=np.float64) if batched else float(values[0])


# --------------------------------------------------------------------------------------------------
# Object discovery
# --------------------------------------------------------------------------------------------------


def _ari(true: np.ndarray, pred: np.ndarray) -> float:
    """Adjusted Rand index of two flat labelings (Hubert & Arabie), with sklearn's conventions."""
    n = true.size
    if n == 0:
        return float("nan")
    _, true = np.unique(true, return_inverse=True)
    _, pred = np.unique(pred, return_inverse=True)
    num_true, num_pred = int(true.max()) + 1, int(pred.max()) + 1
    # Both labelings put everything in one cluster, or everything in its own: identical partitions.
    if num_true == num_pred and num_true in (1, n):
        return 1.0
    contingency = np.bincount(true * num_pred + pred, minlength=num_true * num_pred).astype(np.float64)

    def pairs(counts: np.ndarray) -> float:
        return float((counts * (counts - 1) / 2).sum())

    index = pairs(contingency)
    true_pairs = pairs(contingency.reshape(num_true, num_pred).sum(1))
    pred_pairs = pairs(contingency.reshape(num_true, num_pred).sum(0))
    expected = true_pairs * pred_pairs / (n * (n - 1) / 2)
    maximum = (true_pairs + pred_pairs) / 2
    return (index - expected) / (maximum - expected)


def adjusted_rand_index(true_mask: Any, pred_mask: Any) -> float | np.ndarray:
    """Adjusted Rand index over all pixels (background included); 1 for identical partitions whatever
    the label values, about 0 for random ones."""
    true, pred, batched = _paired_labels(true_mask, pred_mask)
    return _output([_ari(t.ravel(), p.ravel()) for t, p in zip(true, pred)], batched)


def foreground_ari(true_mask: Any, pred_mask: Any, *, background_id: int = 0) -> float | np.ndarray:
    """FG-ARI: the adjusted Rand index over the pixels whose true id is not ``background_id``.

    The standard object-discovery score (Greff et al. 2019; slot attention): it asks whether pixels of
    the same object are grouped together and pixels of different objects apart, whatever the predicted
    labels and however the background is split. NaN for an image without foreground.
    """
    background_id = check_int("background_id", background_id)
    true, pred, batched = _paired_labels(true_mask, pred_mask)
    values = []
    for t, p in zip(true, pred):
        foreground = t != background_id
        values.append(_ari(t[foreground], p[foreground]))
    return _output(values, batched)


def mean_iou_matched(true_mask: Any, pred_mask: Any, *, background_id: int = 0) -> float | np.ndarray:
    """Mean IoU of the true objects with the predicted segments matched to them one-to-one.

    Predicted segments (every predicted id, including 0) are assigned to true objects (every true id but
    ``background_id``) by the Hungarian algorithm maximising the summed IoU; an object left without a
    segment scores 0. NaN for an image without objects.
    """
    from scipy.optimize import linear_sum_assignment

    background_id = check_int("background_id", background_id)
    true, pred, batched = _paired_labels(true_mask, pred_mask)
    values = []
    for t, p in zip(true, pred):
        object_ids = np.unique(t[t != background_id])
        if object_ids.size == 0:
            values.append(float("nan"))
            continue
        _, segments = np.unique(p, return_inverse=True)
        segments = segments.reshape(p.shape)
        true_masks = t[None] == object_ids[:, None, None]
        pred_masks = segments[None] == np.arange(int(segments.max()) + 1)[:, None, None]
        intersection = np.einsum("ohw,shw->os", true_masks.astype(np.float64), pred_masks.astype(np.float64))
        union = true_masks.sum((1, 2))[:, None] + pred_masks.sum((1, 2))[None] - intersection
        iou = intersection / union
        rows, cols = linear_sum_assignment(iou, maximize=True)
        values.append(float(iou[rows, cols].sum() / object_ids.size))
    return _output(values, batched)


def color_kmeans_segmentation(
    image: Any, num_segments: int, *, num_iters: int = 30, seed: int = 0
) -> np.ndarray:
    """Segment one image by k-means on pixel colours (k-means++ initialisation): the baseline a
    tokenizer's object grouping has to beat. Returns an ``int64`` id map ``[H, W]`` in ``[0, num_segments)``."""
    pixels, batched = _image_batch("image", image)
    if batched:
        raise ValueError(f"`image` must be a single image, got a batch {describe(image)}.")
    num_segments = check_int("num_segments", num_segments, minimum=1)
    num_iters = check_int("num_iters", num_iters, minimum=1)
    rng = np.random.default_rng(check_int("seed", seed, minimum=0))
    height, width = pixels.shape[1:3]
    points = pixels.reshape(height * width, -1)

    centers = [points[rng.integers(len(points))]]
    for _ in range(1, num_segments):
        distances = np.min([((points - center) ** 2).sum(1) for center in centers], axis=0)
        if distances.sum() == 0:  # fewer distinct colours than segments
            centers.append(centers[-1])
            continue
        centers.append(points[rng.choice(len(points), p=distances / distances.sum())])
    centers = np.array(centers)

    for _ in range(num_iters):
        labels = ((points[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
        updated = centers.copy()
        for k in range(num_segments):
            members = points[labels == k]
            if len(members):  # an emptied cluster keeps its centre
                updated[k] = members.mean(0)
        if np.allclose(updated, centers):
            break
        centers = updated
    return labels.reshape(height, width)


# --------------------------------------------------------------------------------------------------
# Reconstruction
# --------------------------------------------------------------------------------------------------


def psnr(a: Any, b: Any, *, data_range: float = 1.0) -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB, per image. Identical images give ``inf``."""
    data_range = check_float("data_range", data_range, minimum=0.0, strict_minimum=True)
    first, second, batched = _paired_images(a, b)
    mse = ((first - second) ** 2).reshape(len(first), -1).mean(1)
    with np.errstate(divide="ignore"):
        values = 10.0 * np.log10(data_range**2 / mse)
    return _output(list(values), batched)


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    offsets = np.arange(size) - (size - 1) / 2
    window = np.exp(-(offsets**2) / (2 * sigma**2))
    return window / window.sum()


def _filter_valid(images: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of ``[B, H, W, C]`` over H and W."""
    size = len(window)
    rows = np.lib.stride_tricks.sliding_window_view(images, size, axis=1) @ window
    return np.lib.stride_tricks.sliding_window_view(rows, size, axis=2) @ window


def ssim(
    a: Any, b: Any, *, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5
) -> float | np.ndarray:
    """Structural similarity (Wang et al. 2004) with a Gaussian window, per image, averaged over channels.

    Uses the paper's constants (K1 = 0.01, K2 = 0.03) and only windows fully inside the image; it equals
    ``skimage.metrics.structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)``.
    Identical images give 1.
    """
    data_range = check_float("data_range", data_range, minimum=0.0, strict_minimum=True)
    window_size = check_int("window_size", window_size, minimum=1)
    if window_size % 2 == 0:
        raise ValueError(f"`window_size` must be odd, got {window_size}.")
    sigma = check_float("sigma", sigma, minimum=0.0, strict_minimum=True)
    first, second, batched = _paired_images(a, b)
    if min(first.shape[1:3]) < window_size:
        raise ValueError(
            f"`a` and `b` must be at least {window_size}x{window_size} pixels for `window_size`={window_size}, "
            f"got {first.shape[1]}x{first.shape[2]}."
        )
    window = _gaussian_window(window_size, sigma)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mean_a, mean_b = _filter_valid(first, window), _filter_valid(second, window)
    var_a = _filter_valid(first * first, window) - mean_a**2
    var_b = _filter_valid(second * second, window) - mean_b**2
    covariance = _filter_valid(first * second, window) - mean_a * mean_b
    ssim_map = ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)) / (
        (mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)
    )
    return _output(list(ssim_map.reshape(len(first), -1).mean(1)), batched)
