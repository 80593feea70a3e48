"""The baselines every ``hf-vtok eval`` figure is printed beside, computed on the same scenes in the same run.

* reconstruction floors and ceiling: the mean-colour image, area-downsampled thumbnails (a fixed 16×16 one and one
  carrying the same number of bits as a tokenizer's ids, see :func:`thumbnail_for_bits`), and the TAEF2 round trip
  (the ceiling of any decoder that renders in its latent space);
* object colour fidelity (:func:`colour_matches`): is the mean colour inside each true object mask nearest to the
  same named palette colour as the reference's?
* object discovery: colour k-means (:func:`~hf_vtok.evaluation.metrics.color_kmeans_segmentation`), a fixed grid
  (:func:`grid_partition`), and the ceiling of any map on a tokenizer's patch grid (:func:`patch_oracle_labels`);
* token counts: chance and majority for "tokens = objects + 1 ± 1" (:func:`token_count_agreement`).

Images are numpy batches ``[B, H, W, 3]`` of floats in ``[0, 1]``, masks ``[B, H, W]`` integer object ids (0 is the
background), as in the rest of :mod:`hf_vtok.evaluation`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from ..data.shapes import COLORS
from ..utils.validation import check_int, describe

__all__ = [
    "PALETTE_NAMES",
    "colour_matches",
    "grid_partition",
    "mean_colour_images",
    "nearest_colour_names",
    "patch_oracle_labels",
    "taef2_round_trip",
    "thumbnail_for_bits",
    "thumbnail_images",
    "token_count_agreement",
]

PALETTE_NAMES: tuple[str, ...] = tuple(COLORS)
_PALETTE = np.asarray(list(COLORS.values()), dtype=np.float64) / 255.0


def _check_images(images) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"`images` must be a float batch [B, H, W, 3] in [0, 1], got {describe(images)}.")
    return array


def mean_colour_images(images) -> np.ndarray:
    """Every image replaced by its mean colour: the floor a reconstruction has to clear."""
    images = _check_images(images)
    return np.broadcast_to(images.mean(axis=(1, 2), keepdims=True), images.shape).copy()


def thumbnail_images(images, side: int, bits: int = 8) -> np.ndarray:
    """Area-downsample to ``side × side``, quantise each channel to ``bits`` bits (``2**bits`` evenly spaced levels
    in [0, 1]) and upsample back bicubically: what ``side² · 3 · bits`` bits per image can carry without a model."""
    images = _check_images(images)
    side = check_int("side", side, minimum=1, maximum=min(images.shape[1:3]))
    bits = check_int("bits", bits, minimum=1, maximum=8)
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    levels = 2**bits - 1
    small = torch.round(torch.nn.functional.interpolate(tensor, size=(side, side), mode="area").clamp(0, 1) * levels) / levels
    large = torch.nn.functional.interpolate(small, size=tuple(images.shape[1:3]), mode="bicubic", align_corners=False)
    return large.clamp(0, 1).permute(0, 2, 3, 1).numpy().astype(images.dtype)


def thumbnail_for_bits(budget_bits: float, *, max_side: int) -> tuple[int, int]:
    """``(side, bits_per_channel)`` of the thumbnail carrying the most bits ``side² · 3 · bits`` without exceeding
    ``budget_bits``, with ``side <= max_side`` and ``1 <= bits <= 8``; among equal totals the one with more bits per
    channel (fewer, more precise colours). A DDT with 16 ids of a 512-code book (144 bits) gets 4×4 at 3 bits."""
    max_side = check_int("max_side", max_side, minimum=1)
    if isinstance(budget_bits, bool) or not isinstance(budget_bits, (int, float)) or not budget_bits >= 3:
        raise ValueError(f"`budget_bits` must be a number >= 3 (one 1-bit RGB pixel), got {describe(budget_bits)}.")
    candidates = []
    for bits in range(1, 9):
        side = min(max_side, math.isqrt(int(budget_bits // (3 * bits))))
        if side >= 1:
            candidates.append((side * side * 3 * bits, bits, side))
    _, bits, side = max(candidates)
    return side, bits


def nearest_colour_names(colours) -> np.ndarray:
    """Index into :data:`PALETTE_NAMES` of the palette colour nearest (Euclidean distance in RGB) to each colour
    ``[..., 3]`` in [0, 1]. RGB rather than Lab because the palette itself is defined in RGB and spaced for it."""
    colours = np.asarray(colours, dtype=np.float64)
    if colours.shape[-1:] != (3,):
        raise ValueError(f"`colours` must end with an RGB axis of 3, got {describe(colours)}.")
    return np.linalg.norm(colours[..., None, :] - _PALETTE, axis=-1).argmin(-1)


def _object_colour_indices(image: np.ndarray, mask: np.ndarray, object_ids: np.ndarray) -> np.ndarray:
    means = np.stack([ndimage.mean(image[..., c], labels=mask, index=object_ids) for c in range(3)], axis=-1)
    return nearest_colour_names(means)


def colour_matches(images, masks, reference) -> np.ndarray:
    """For every object (non-zero id of ``masks``) of every image: is the named colour nearest to the mean of
    ``images`` inside its mask the same as the reference's? Returns one bool per object, images in order.

    ``reference`` is either a batch of images like ``images`` (the originals: does a reconstruction keep each
    object's colour?) or one list of colour names per image, the name of object id ``i`` at position ``i - 1`` (the
    scenes' ``objects`` attributes: how well does the mean colour name an object at all?)."""
    images = _check_images(images)
    masks = np.asarray(masks)
    if masks.shape != images.shape[:3] or not np.issubdtype(masks.dtype, np.integer):
        raise ValueError(f"`masks` must be integer id maps {images.shape[:3]} matching `images`, got {describe(masks)}.")
    if len(reference) != len(images):
        raise ValueError(f"`reference` must hold one entry per image ({len(images)}), got {len(reference)}.")
    matches = []
    for image, mask, expected in zip(images, masks, reference):
        object_ids = np.unique(mask[mask != 0])
        if object_ids.size == 0:
            continue
        found = _object_colour_indices(image, mask, object_ids)
        if isinstance(expected, np.ndarray) and expected.shape == image.shape:
            wanted = _object_colour_indices(expected, mask, object_ids)
        else:
            try:
                wanted = np.asarray([PALETTE_NAMES.index(expected[i - 1]) for i in object_ids])
            except (ValueError, IndexError, TypeError):
                raise ValueError(
                    f"`reference` entries must be images like `images` or lists of colour names from {list(PALETTE_NAMES)} "
                    f"covering object ids {object_ids.tolist()}, got {describe(expected)}."
                ) from None
        matches.append(found == wanted)
    return np.concatenate(matches) if matches else np.zeros(0, dtype=bool)


def grid_partition(size: int, side: int) -> np.ndarray:
    """A ``size × size`` id map cut into ``side × side`` equal cells: the object-discovery answer of a tokenizer that
    groups patches by position only."""
    size = check_int("size", size, minimum=1)
    side = check_int("side", side, minimum=1, maximum=size)
    cells = np.arange(size) * side // size
    return (cells[:, None] * side + cells[None, :]).astype(np.int64)


def patch_oracle_labels(masks: np.ndarray, side: int) -> np.ndarray:
    """The best object-discovery answer a map on a ``side × side`` patch grid can give: every cell takes the object
    (non-zero id) that covers most of it, the background (0) only where no object does, upsampled back to the masks'
    size. FG-ARI scores object pixels only, so a small object that loses its cells to the background by plain
    majority would be counted split; this map is the ceiling of slot-attention or cluster maps on that grid.

    ``masks``: ``[B, S, S]`` integer ids (0 the background), as every scene here; the cells are
    :func:`grid_partition`'s, ``S`` divisible by ``side`` or not. Returns ``[B, S, S]`` int64 ids.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2] or not np.issubdtype(masks.dtype, np.integer) or masks.min(initial=0) < 0:
        raise ValueError(f"`masks` must be [B, S, S] non-negative integer ids, got {describe(masks)}.")
    batch = masks.shape[0]
    cell = grid_partition(masks.shape[1], side)  # checks side
    num_ids = int(masks.max(initial=0)) + 1
    # pixel counts per (image, cell, id) in one bincount
    flat = (np.arange(batch)[:, None, None] * side * side + cell[None]) * num_ids + masks
    counts = np.bincount(flat.ravel(), minlength=batch * side * side * num_ids).reshape(batch, side * side, num_ids)
    objects = counts[..., 1:]
    labels = np.where(objects.max(-1, initial=0) > 0, objects.argmax(-1) + 1 if num_ids > 1 else 0, 0)
    return labels[:, cell].astype(np.int64)  # each pixel takes its cell's label


def token_count_agreement(num_tokens: Sequence[int], num_objects: Sequence[int], *, tolerance: int = 1) -> dict:
    """Share of images whose token count is ``objects + 1`` (one token per object plus the background) within
    ``tolerance``, beside two baselines that ignore the image:

    * ``chance``: the tokenizer's own counts paired with every scene (the expected share if its counts were shuffled
      across images);
    * ``majority``: the best constant count (the most common ``objects + 1`` band), with ``majority_count``.
    """
    tokens = np.asarray(list(num_tokens), dtype=np.int64)
    objects = np.asarray(list(num_objects), dtype=np.int64)
    if tokens.ndim != 1 or tokens.shape != objects.shape or tokens.size == 0:
        raise ValueError(f"`num_tokens` and `num_objects` must be equally long non-empty lists, got {tokens.size} and {objects.size}.")
    tolerance = check_int("tolerance", tolerance, minimum=0)
    target = objects + 1
    pairs = np.abs(tokens[:, None] - target[None, :]) <= tolerance
    constants = np.arange(target.min() - tolerance, target.max() + tolerance + 1)
    by_constant = (np.abs(constants[:, None] - target[None, :]) <= tolerance).mean(1)
    return {"share": float(np.diagonal(pairs).mean()), "chance": float(pairs.mean()),
            "majority": float(by_constant.max()), "majority_count": int(constants[by_constant.argmax()])}


@torch.no_grad()
def taef2_round_trip(images, autoencoder=None, *, batch_size: int = 32) -> np.ndarray:
    """Encode and decode through TAEF2 (default: the shipped weights, :func:`~hf_vtok.utils.autoencoder_taef2.load_taef2`),
    images mapped to [-1, 1] as diffusers pipelines do: the best any decoder in that latent space can do."""
    from ..utils.autoencoder_taef2 import load_taef2

    images = _check_images(images)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    autoencoder = load_taef2() if autoencoder is None else autoencoder
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)).permute(0, 3, 1, 2)
        decoded = autoencoder.decode(autoencoder.encode(x * 2 - 1).latents).sample
        out.append(((decoded.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out).astype(images.dtype)
