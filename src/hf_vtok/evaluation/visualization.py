"""Picture helpers for demos and evaluation: image grids with captions, mask overlays, PNG saving.

Every function takes images as any of:

* ``PIL.Image.Image`` (any mode; converted to RGB),
* numpy arrays ``HxWx3`` (or ``HxW``) of ``uint8``, or of floats in ``[0, 1]``,
* torch tensors ``CxHxW`` (or ``HxW``) of ``uint8``, or of floats in ``[0, 1]`` or ``[-1, 1]``: a float
  tensor with any negative value is read as ``[-1, 1]`` (the diffusers convention for model outputs),
  otherwise as ``[0, 1]``. Values slightly outside the range (decoder overshoot) are clipped.

Masks are integer arrays ``HxW`` (numpy or torch) or ``"L"``/``"I"``/``"P"`` PIL images of ids.
"""

from __future__ import annotations

import colorsys
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from skimage.segmentation import find_boundaries

from ..utils.validation import check_float, check_int, describe, load_image

__all__ = ["make_grid", "mask_to_color", "overlay_masks", "save_png", "to_pil_image"]

# Float tensors further outside their range than this are not images but a bug upstream.
_RANGE_TOLERANCE = 0.1


def to_pil_image(image: Any, *, name: str = "image") -> Image.Image:
    """Convert a PIL image, numpy array or torch tensor (see the module docstring) to an RGB PIL image."""
    if isinstance(image, torch.Tensor):
        return _tensor_to_image(image, name)
    if isinstance(image, (Image.Image, np.ndarray)):
        return load_image(image, name=name)
    raise TypeError(f"`{name}` must be a PIL.Image, numpy array or torch.Tensor, got {describe(image)}.")


def _tensor_to_image(tensor: torch.Tensor, name: str) -> Image.Image:
    tensor = tensor.detach().cpu()
    if tensor.ndim == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if not (tensor.ndim == 2 or (tensor.ndim == 3 and tensor.shape[0] == 3)):
        raise ValueError(f"`{name}` tensor must be CxHxW with C=3, or HxW, got shape {tuple(tensor.shape)}.")
    if tensor.numel() == 0:
        raise ValueError(f"`{name}` tensor must not be empty, got shape {tuple(tensor.shape)}.")
    if tensor.is_floating_point():
        tensor = tensor.float()
        if not torch.isfinite(tensor).all():
            raise ValueError(f"`{name}` tensor contains NaN or Inf values.")
        low, high = float(tensor.min()), float(tensor.max())
        if low < -1 - _RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
            raise ValueError(f"`{name}` float tensor must hold values in [0, 1] or [-1, 1], got [{low:.3g}, {high:.3g}].")
        tensor = ((tensor + 1) / 2 if low < 0 else tensor).clamp(0, 1)
    elif tensor.dtype != torch.uint8:
        raise TypeError(f"`{name}` tensor must be uint8 or floating point, got dtype {tensor.dtype}.")
    array = tensor.numpy()
    return load_image(np.ascontiguousarray(np.moveaxis(array, 0, -1) if array.ndim == 3 else array), name=name)


def _mask_array(mask: Any, name: str = "mask") -> np.ndarray:
    """An ``HxW`` array of non-negative integer ids from numpy, torch or PIL."""
    if isinstance(mask, Image.Image):
        if mask.mode not in ("L", "I", "I;16", "P", "1"):
            raise ValueError(
                f"`{name}` image must be of mode L, I, I;16, P or 1 (one id per pixel), got {mask.mode}."
            )
        array = np.asarray(mask).astype(np.int64)
    elif isinstance(mask, torch.Tensor):
        array = mask.detach().cpu().numpy()
    elif isinstance(mask, np.ndarray):
        array = mask
    else:
        raise TypeError(f"`{name}` must be a numpy array, torch.Tensor or PIL image, got {describe(mask)}.")
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"`{name}` must be a non-empty HxW array of ids, got shape {array.shape}.")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise TypeError(f"`{name}` must hold integer ids, got dtype {array.dtype}.")
    array = array.astype(np.int64)
    if array.min() < 0:
        raise ValueError(f"`{name}` ids must be >= 0, got minimum {array.min()}.")
    return array


def _id_colors(array: np.ndarray) -> np.ndarray:
    """An RGB ``uint8`` picture of an id map: every id its own saturated colour, hues spread by the
    golden ratio so that neighbouring ids (often neighbouring slots or clusters) never look alike."""
    ids, inverse = np.unique(array, return_inverse=True)
    colors = [colorsys.hsv_to_rgb((int(i) * 0.618033988749895) % 1.0, 0.75, 0.95) for i in ids]
    palette = np.round(np.array(colors).reshape(-1, 3) * 255).astype(np.uint8)
    return palette[inverse.reshape(array.shape)]


def mask_to_color(mask: Any, *, background_id: int | None = 0) -> Image.Image:
    """Colour an id mask: every id its own colour, ``background_id`` black (``None``: colour every id)."""
    array = _mask_array(mask)
    colored = _id_colors(array)
    if background_id is not None:
        background_id = check_int("background_id", background_id, minimum=0)
        colored[array == background_id] = 0
    return Image.fromarray(colored)


def overlay_masks(
    image: Any,
    mask: Any,
    alpha: float = 0.5,
    *,
    background_id: int | None = 0,
    draw_boundaries: bool = True,
) -> Image.Image:
    """Blend an id mask over an image, each id in its own colour, with white boundaries between ids.

    A mask smaller than the image (e.g. a slot-attention or cluster map over patches) is upscaled with
    nearest-neighbour sampling. Pixels of ``background_id`` keep the image (``None``: colour every id).
    """
    picture = to_pil_image(image)
    alpha = check_float("alpha", alpha, minimum=0.0, maximum=1.0)
    array = _mask_array(mask)
    if array.shape != (picture.height, picture.width):
        array = np.asarray(Image.fromarray(array.astype(np.int32)).resize(picture.size, Image.Resampling.NEAREST)).astype(np.int64)
    pixels = np.asarray(picture, dtype=np.float32)
    blended = (1 - alpha) * pixels + alpha * _id_colors(array).astype(np.float32)
    if background_id is not None:
        background_id = check_int("background_id", background_id, minimum=0)
        keep = array == background_id
        blended[keep] = pixels[keep]
    if draw_boundaries:
        blended[find_boundaries(array, mode="inner")] = 255.0
    return Image.fromarray(np.round(blended).astype(np.uint8))


def caption_font() -> ImageFont.ImageFont:
    """DejaVu Sans at 11 px (the font matplotlib ships) for captions: its spaces stay wider than the gaps between
    letters at that size, where PIL's default 10 px font draws a 2 px space and captions read "Asmall red circle".
    PIL's default font where FreeType is missing."""
    import matplotlib

    try:
        return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), 11)
    except (OSError, ImportError):
        return ImageFont.load_default()


def make_grid(
    images: Sequence[Any] | torch.Tensor | np.ndarray,
    ncols: int | None = None,
    captions: Sequence[str] | None = None,
    pad: int = 2,
    *,
    tile_size: int | None = None,
) -> Image.Image:
    """Tile images into one picture, row by row, with optional wrapped captions under each tile.

    Args:
        images: a list of images (see the module docstring), a ``[B, C, H, W]`` tensor or a
            ``[B, H, W, 3]`` array.
        ncols: tiles per row (default: a near-square grid).
        captions: one text per image, drawn under its tile (:func:`caption_font`).
        pad: white space between and around tiles, in pixels.
        tile_size: width every tile is resized to (aspect kept). By default tiles keep their size and
            the grid cell fits the largest; small images are worth enlarging so captions fit.
    """
    if isinstance(images, (torch.Tensor, np.ndarray)):
        if images.ndim != 4:
            raise ValueError(
                f"`images` as one array must be a batch [B, C, H, W] or [B, H, W, C], got {describe(images)}."
            )
        images = list(images)
    if isinstance(images, (str, Image.Image)) or not isinstance(images, Sequence):
        raise TypeError(f"`images` must be a list of images or a batched tensor, got {describe(images)}.")
    if len(images) == 0:
        raise ValueError("`images` must hold at least one image, got an empty list.")
    tiles = [to_pil_image(image, name=f"images[{i}]") for i, image in enumerate(images)]
    ncols = int(np.ceil(np.sqrt(len(tiles)))) if ncols is None else check_int("ncols", ncols, minimum=1)
    ncols = min(ncols, len(tiles))
    pad = check_int("pad", pad, minimum=0)
    if captions is not None:
        if isinstance(captions, str) or not isinstance(captions, Sequence):
            raise TypeError(f"`captions` must be a list of strings, got {describe(captions)}.")
        if len(captions) != len(tiles):
            raise ValueError(f"`captions` must hold one text per image ({len(tiles)}), got {len(captions)}.")
    if tile_size is not None:
        tile_size = check_int("tile_size", tile_size, minimum=1)
        # Nearest keeps pixels crisp when enlarging, box averages when shrinking.
        tiles = [
            tile.resize(
                (tile_size, max(1, round(tile.height * tile_size / tile.width))),
                Image.Resampling.NEAREST if tile_size >= tile.width else Image.Resampling.BOX,
            )
            for tile in tiles
        ]

    cell_width = max(tile.width for tile in tiles)
    cell_height = max(tile.height for tile in tiles)
    font = caption_font()
    line_height = font.getbbox("Hg")[3] + 2
    characters_per_line = max(1, int(cell_width // font.getlength("n")))
    wrapped = [textwrap.wrap(str(caption), characters_per_line) or [""] for caption in captions] if captions else None
    caption_height = max(len(lines) for lines in wrapped) * line_height + pad if wrapped else 0

    nrows = -(-len(tiles) // ncols)
    grid = Image.new(
        "RGB",
        (ncols * (cell_width + pad) + pad, nrows * (cell_height + caption_height + pad) + pad),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(grid)
    for index, tile in enumerate(tiles):
        row, col = divmod(index, ncols)
        left = pad + col * (cell_width + pad)
        top = pad + row * (cell_height + caption_height + pad)
        grid.paste(tile, (left + (cell_width - tile.width) // 2, top + (cell_height - tile.height) // 2))
        if wrapped:
            for line_index, line in enumerate(wrapped[index]):
                draw.text(
                    (left, top + cell_height + pad + line_index * line_height),
                    line,
                    fill=(0, 0, 0),
                    font=font,
                )
    return grid


def reconstruction_grid(
    originals, reconstructions, psnr_values, group_maps, captions: Sequence[str], tile_size: int, extra_rows: Sequence = ()
):
    """Inputs (captioned with ``captions``), reconstructions (with their PSNR), each ``(name, images, psnr_values)``
    of ``extra_rows`` (e.g. the autoencoder's round trip, random tokens) and, when the tokens group patches, the
    group maps over the inputs: one column per image."""
    count = len(originals)
    tiles = list(originals) + list(reconstructions)
    labels = list(captions[:count]) + [f"{v:.1f} dB" for v in psnr_values[:count]]
    for name, images, values in extra_rows:
        tiles += list(images[:count])
        labels += [f"{name} {v:.1f}dB" for v in values[:count]]
    if group_maps:
        tiles += [overlay_masks(image, groups, background_id=None) for image, groups in zip(originals, group_maps)]
        labels += [f"{len(np.unique(groups))} groups" for groups in group_maps]
    return make_grid(tiles, ncols=count, captions=labels, tile_size=tile_size)


def save_png(image: Any, path: str | os.PathLike) -> Path:
    """Save an image as PNG, creating parent folders. PIL images keep their mode (e.g. an ``"L"`` mask);
    arrays and tensors are converted as described in the module docstring. Returns the path."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a file path, got {describe(path)}.")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"`path` must end in .png, got {str(path)!r}.")
    picture = image if isinstance(image, Image.Image) else to_pil_image(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, format="PNG")
    return path
