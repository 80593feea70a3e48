"""Object-discovery and reconstruction metrics, plus the colour k-means baseline they are compared to.

Masks are integer id maps ``[H, W]`` or batches ``[B, H, W]`` (numpy, torch or ``"L"``/``"I"`` PIL
images). Images follow each library's own layout: numpy arrays are channel-last (``HxW``, ``HxWxC``,
``BxHxWxC``), torch tensors channel-first (``HxW``, ``CxHxW``, ``BxCxHxW``); floats are expected in
``[0, data_range]``, ``uint8`` arrays/tensors and PIL images are divided by 255. An unbatched input gives
a Python float, a batched one a numpy array with one value per image.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy.optimize import linear_sum_assignment
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from sklearn.metrics.cluster import contingency_matrix

from ..utils.validation import check_float, check_int, describe

__all__ = [
    "adjusted_rand_index",
    "color_kmeans_segmentation",
    "distinct_ids_per_image",
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
    array, channels_first = _to_numpy(name, value), isinstance(value, torch.Tensor)
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
    # scikit-learn scores an empty labelling as a perfect match; here it means "no pixels to judge"
    return float(adjusted_rand_score(true, pred)) if true.size else float("nan")


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
    return _output([_ari(t[t != background_id], p[t != background_id]) for t, p in zip(true, pred)], batched)


def mean_iou_matched(true_mask: Any, pred_mask: Any, *, background_id: int = 0) -> float | np.ndarray:
    """Mean IoU of the true objects with the predicted segments matched to them one-to-one.

    Predicted segments (every predicted id, including 0) are assigned to true objects (every true id but
    ``background_id``) by the Hungarian algorithm maximising the summed IoU; an object left without a
    segment scores 0. NaN for an image without objects.
    """
    background_id = check_int("background_id", background_id)
    true, pred, batched = _paired_labels(true_mask, pred_mask)
    values = []
    for t, p in zip(true, pred):
        object_ids = np.unique(t[t != background_id])
        if object_ids.size == 0:
            values.append(float("nan"))
            continue
        contingency = contingency_matrix(t.ravel(), p.ravel())  # [true ids, predicted ids], both sorted
        union = contingency.sum(1)[:, None] + contingency.sum(0)[None] - contingency
        iou = (contingency / union)[np.unique(t) != background_id]
        rows, cols = linear_sum_assignment(iou, maximize=True)
        values.append(float(iou[rows, cols].sum() / object_ids.size))
    return _output(values, batched)


def color_kmeans_segmentation(
    image: Any, num_segments: int, *, num_iters: int = 30, seed: int = 0
) -> np.ndarray:
    """Segment one image by k-means on pixel colours (scikit-learn, k-means++ initialisation): the baseline a
    tokenizer's object grouping has to beat. Returns an ``int64`` id map ``[H, W]`` in ``[0, num_segments)``."""
    pixels, batched = _image_batch("image", image)
    if batched:
        raise ValueError(f"`image` must be a single image, got a batch {describe(image)}.")
    num_segments = check_int("num_segments", num_segments, minimum=1)
    num_iters = check_int("num_iters", num_iters, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    height, width = pixels.shape[1:3]
    kmeans = KMeans(num_segments, init="k-means++", n_init=1, max_iter=num_iters, random_state=seed)
    with warnings.catch_warnings():  # fewer distinct colours than segments is a valid (if dull) request
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = kmeans.fit_predict(pixels.reshape(height * width, -1))
    return labels.astype(np.int64).reshape(height, width)


# --------------------------------------------------------------------------------------------------
# Reconstruction
# --------------------------------------------------------------------------------------------------


def distinct_ids_per_image(ids: Any, attention_mask: Any = None) -> np.ndarray:
    """How many different codes each image uses among its kept tokens: ``[B]``.

    A tokenizer whose tokens all repeat one or two codes carries a handful of codes' worth of bits, however many
    tokens it emits; this exposes that collapse next to ``bits_per_image`` (which counts every token)."""
    ids = _to_numpy("ids", ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"`ids` must be an integer array [batch, tokens], got {ids.dtype} of shape {ids.shape}.")
    keep = np.ones(ids.shape, dtype=bool) if attention_mask is None else _to_numpy("attention_mask", attention_mask).astype(bool)
    if keep.shape != ids.shape:
        raise ValueError(f"`attention_mask` must have the shape of `ids` {ids.shape}, got {keep.shape}.")
    return np.array([np.unique(row[mask]).size for row, mask in zip(ids, keep)], dtype=np.int64)


def psnr(a: Any, b: Any, *, data_range: float = 1.0) -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB, per image (scikit-image). Identical images give ``inf``."""
    data_range = check_float("data_range", data_range, minimum=0.0, strict_minimum=True)
    first, second, batched = _paired_images(a, b)
    with np.errstate(divide="ignore"):
        return _output([peak_signal_noise_ratio(x, y, data_range=data_range) for x, y in zip(first, second)], batched)


def ssim(
    a: Any, b: Any, *, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5
) -> float | np.ndarray:
    """Structural similarity (Wang et al. 2004), per image, averaged over channels: scikit-image's
    ``structural_similarity`` with Gaussian weights of ``sigma`` (support 3.5 sigma: 11 taps for the default
    1.5), the paper's constants and population covariances, averaged over the positions at least
    ``window_size // 2`` pixels from the border. Identical images give 1.
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
    options = {"data_range": data_range, "win_size": window_size, "sigma": sigma, "channel_axis": -1,
               "gaussian_weights": True, "use_sample_covariance": False}
    return _output([structural_similarity(x, y, **options) for x, y in zip(first, second)], batched)
