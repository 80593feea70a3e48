"""Argument checks shared by every public entry point.

Each helper raises a ``TypeError`` (wrong kind of object) or a ``ValueError`` (right kind, wrong
value) whose message names the argument, what was expected and what was received, so that a user
can fix the call without reading the source.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

# Larger images are refused before decoding: a 16k x 16k RGB image is already 768 MB of pixels.
MAX_IMAGE_PIXELS = 16384 * 16384


def describe(value: Any) -> str:
    """Short description of a value for error messages (type plus a repr capped in length)."""
    if isinstance(value, torch.Tensor):
        return f"Tensor(shape={tuple(value.shape)}, dtype={value.dtype})"
    if isinstance(value, np.ndarray):
        return f"ndarray(shape={value.shape}, dtype={value.dtype})"
    if isinstance(value, Image.Image):
        return f"PIL.Image(mode={value.mode}, size={value.size})"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (bool refused) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {describe(value)}.")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be <= {maximum}, got {value}.")
    return value


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
) -> float:
    """A finite real number within bounds (``strict_minimum`` makes the lower bound exclusive)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{name}` must be a number, got {describe(value)}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value}.")
    if minimum is not None:
        if strict_minimum and value <= minimum:
            raise ValueError(f"`{name}` must be > {minimum}, got {value}.")
        if not strict_minimum and value < minimum:
            raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be <= {maximum}, got {value}.")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """One of a fixed set of options."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")
    return value


def check_tensor(
    name: str,
    value: Any,
    *,
    ndim: int | Sequence[int] | None = None,
    floating: bool | None = None,
    integer: bool | None = None,
    finite: bool = False,
    non_empty: bool = True,
) -> torch.Tensor:
    """A ``torch.Tensor`` of the given rank and dtype family, optionally free of NaN/Inf."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {describe(value)}.")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.ndim not in allowed:
            raise ValueError(
                f"`{name}` must have {' or '.join(map(str, allowed))} dimensions, got shape {tuple(value.shape)}."
            )
    if non_empty and value.numel() == 0:
        raise ValueError(f"`{name}` must not be empty, got shape {tuple(value.shape)}.")
    if floating and not value.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {value.dtype}.")
    if integer and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise TypeError(f"`{name}` must be an integer tensor, got dtype {value.dtype}.")
    if finite and value.is_floating_point() and value.device.type != "meta" and not torch.isfinite(value).all():
        raise ValueError(f"`{name}` contains NaN or Inf values.")
    return value


# Pixel values this many times beyond the image processor's output range were never normalised (0-255 values).
PIXEL_RANGE_TOLERANCE = 10.0


def check_pixel_values(
    pixel_values: Any,
    *,
    num_channels: int,
    image_size: int | tuple[int, int] | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    name: str = "pixel_values",
) -> torch.Tensor:
    """A finite float batch ``[B, C, H, W]`` with the configured channel count (and size, when given).

    With ``image_mean``/``image_std``, values far outside what the image processor produces (pixels in [0, 1]
    normalised: ``|x| <= PIXEL_RANGE_TOLERANCE x max|(v - mean) / std|`` over v in {0, 1}) are refused: they are
    raw 0-255 or otherwise unnormalised pixels, which would give meaningless tokens without any error.
    """
    pixel_values = check_tensor(name, pixel_values, ndim=4, floating=True, finite=True)
    if pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"`{name}` must have {num_channels} channels in dimension 1 ([B, C, H, W]), "
            f"got shape {tuple(pixel_values.shape)}."
        )
    if image_size is not None:
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        if tuple(pixel_values.shape[2:]) != (height, width):
            raise ValueError(
                f"`{name}` must be {height}x{width} pixels (use the model's image processor), "
                f"got shape {tuple(pixel_values.shape)}."
            )
    if image_mean is not None and image_std is not None and pixel_values.device.type != "meta":
        bound = max(max(abs(m), abs(1 - m)) / s for m, s in zip(image_mean, image_std, strict=False))
        largest = float(pixel_values.detach().abs().max())
        if largest > PIXEL_RANGE_TOLERANCE * bound:
            raise ValueError(
                f"`{name}` holds values up to {largest:.4g} in magnitude, but the image processor produces values "
                f"within ±{bound:.3g} (pixels in [0, 1] normalised with image_mean={list(image_mean)}, "
                f"image_std={list(image_std)}): these look like unnormalised (e.g. 0-255) pixels; prepare images with "
                "the model's image processor (`AutoImageProcessor.from_pretrained(...)(images, return_tensors='pt')`)."
            )
    return pixel_values


def check_derived_fields(config: Any, kwargs: dict) -> None:
    """Keys of ``kwargs`` (a config's extra keys, e.g. from config.json) that name a read-only property of the config,
    a value derived from its fields (SlotQFormer's ``token_embedding_dim`` is ``hidden_size``): dropped when they
    agree, a ``ValueError`` naming the key when they do not (transformers raises an ``AttributeError`` about a
    property setter)."""
    for key in [key for key in kwargs if isinstance(getattr(type(config), key, None), property)]:
        if getattr(type(config), key).fset is not None:
            continue
        value, derived = kwargs.pop(key), getattr(config, key)
        if value != derived:
            raise ValueError(
                f"`{key}` of {type(config).__name__} is derived from its other fields ({derived} here) and cannot be "
                f"set, got {value!r}; change the field it comes from, or restore config.json if it was edited (its "
                "`model_type` may name another model than the one saved there)."
            )


def check_token_ids(
    ids: Any,
    *,
    codebook_size: int,
    num_tokens: int | None = None,
    name: str = "ids",
) -> torch.Tensor:
    """A ``[B, N]`` integer tensor of codebook indices in ``[0, codebook_size)``."""
    ids = check_tensor(name, ids, ndim=2, integer=True)
    if num_tokens is not None and ids.shape[1] != num_tokens:
        raise ValueError(f"`{name}` must hold {num_tokens} ids per image, got shape {tuple(ids.shape)}.")
    if ids.device.type != "meta":
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= codebook_size:
            raise ValueError(
                f"`{name}` must be codebook indices in [0, {codebook_size}), got values in [{low}, {high}]."
            )
    return ids.long()


def load_image(image: Any, *, name: str = "image") -> Image.Image:
    """Open a path, bytes, numpy array or PIL image as an RGB ``PIL.Image``.

    Every PIL mode is converted to RGB (alpha composited on white, 16-bit and float modes rescaled
    to 8 bits); anything that is not a decodable, non-empty image raises a ``ValueError``.
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise ValueError(f"`{name}` must be an existing image file, got path {path!r}.")
        with open(path, "rb") as handle:
            image = handle.read()
    if isinstance(image, (bytes, bytearray)):
        image = _decode_image_bytes(bytes(image), name)
    elif isinstance(image, np.ndarray):
        image = _array_to_image(image, name)
    elif not isinstance(image, Image.Image):
        raise TypeError(f"`{name}` must be a PIL.Image, numpy array, bytes or file path, got {describe(image)}.")
    _check_image_size(image, name)
    return to_rgb(image, name=name)


def _check_image_size(image: Image.Image, name: str) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise ValueError(f"`{name}` must have a positive size, got {width}x{height}.")
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"`{name}` is {width}x{height} pixels, above the {MAX_IMAGE_PIXELS}-pixel limit that guards "
            "against decompression bombs."
        )


def _decode_image_bytes(data: bytes, name: str) -> Image.Image:
    if len(data) == 0:
        raise ValueError(f"`{name}` is empty (0 bytes), expected an encoded image.")
    previous_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        try:
            image = Image.open(io.BytesIO(data))  # reads the header only
        except Image.DecompressionBombError as error:
            raise ValueError(f"`{name}` is too large to decode safely: {error}") from error
        except Exception as error:  # PIL raises many types for corrupt input (OSError, SyntaxError, ...)
            raise ValueError(f"`{name}` could not be decoded as an image ({type(error).__name__}: {error}).") from error
        # Refuse oversized images BEFORE decoding the pixels: PIL itself only refuses above twice its limit
        # and merely warns in between.
        _check_image_size(image, name)
        try:
            image.load()
        except Exception as error:  # truncated or corrupt pixel data
            raise ValueError(f"`{name}` could not be decoded as an image ({type(error).__name__}: {error}).") from error
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit
    return image


def _array_to_image(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first to channels-last
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"`{name}` array must be HxW, HxWx3 or HxWx4, got shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"`{name}` array must not be empty, got shape {array.shape}.")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"`{name}` array contains NaN or Inf values.")
        if array.min() < 0.0 or array.max() > 1.0:
            raise ValueError(
                f"`{name}` float array must hold values in [0, 1], got [{array.min():.3g}, {array.max():.3g}]."
            )
        array = np.round(array * 255.0).astype(np.uint8)
    elif array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        raise TypeError(f"`{name}` array must be uint8, uint16, bool or float in [0, 1], got dtype {array.dtype}.")
    return Image.fromarray(array)


def to_rgb(image: Image.Image, *, name: str = "image") -> Image.Image:
    """Convert any PIL mode to RGB: alpha is composited on white, 16/32-bit modes are rescaled."""
    try:
        image.load()  # a lazily opened file (``Image.open``) is decoded here, so a truncated one fails here
        return image if image.mode == "RGB" else _to_rgb(image)
    except (ValueError, OSError, SyntaxError) as error:  # a mode PIL cannot convert, or undecodable pixels
        raise ValueError(f"`{name}` (PIL mode {image.mode!r}) could not be converted to RGB: {error}") from error


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("La", "RGBa"):  # premultiplied alpha: PIL converts these only to their plain-alpha mode
        image = image.convert("LA" if image.mode == "La" else "RGBA")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if not np.isfinite(array).all():
            raise ValueError("the image contains NaN or Inf values")
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        array = ((array - low) * scale).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def check_generator(generator: Any, *, batch_size: int | None = None, name: str = "generator"):
    """``None``, a ``torch.Generator``, or a non-empty list of them (one per image when ``batch_size`` is given)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (list, tuple)) and generator and all(isinstance(g, torch.Generator) for g in generator):
        if batch_size is not None and len(generator) != batch_size:
            raise ValueError(f"`{name}` must be one generator or a list of {batch_size} (one per image), got {len(generator)}.")
        return list(generator)
    raise TypeError(f"`{name}` must be a torch.Generator or a list of them (one per image), got {describe(generator)}.")


def check_safetensors_file(path: str | os.PathLike, *, name: str = "path") -> None:
    """Raise a ``ValueError`` naming the file when ``path`` is not a readable safetensors file (truncated,
    empty or garbage: the header must parse and cover the whole file). Reads only the header."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt"):
            pass
    except Exception as error:  # noqa: BLE001  (safetensors raises its own SafetensorError, and OSError for I/O)
        raise ValueError(
            f"`{name}`: {os.fspath(path)!r} is not a readable safetensors file ({type(error).__name__}: {error}); "
            "it is truncated or corrupt, save or download it again."
        ) from None
