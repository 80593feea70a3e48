"""Encode a dataset's images into autoencoder latents once; later calls reuse the ``datasets`` cache.

Latent-diffusion decoders train on the latents of their training images. Encoding them on every step
(or every epoch) wastes most of the step; :func:`cache_latents` runs the autoencoder over the dataset
once with ``Dataset.map(batched=True)`` and stores the result in an Arrow cache file named by a
fingerprint of everything that determines the latents: the dataset's own fingerprint, the
autoencoder's class, configuration and weights, the image size, the image column, the stored dtype
and whether the latents are scaled. The same call again (same data, same autoencoder) loads that file
and never runs the encoder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .validation import describe

__all__ = ["cache_latents", "latents_fingerprint"]

_CACHE_VERSION = "hf_vtok.latent_cache.v1"  # bump when the encoding recipe below changes
_DTYPES = {"float16": np.float16, "float32": np.float32}


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    elif isinstance(dtype, str):
        name = dtype
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = None
    if name not in _DTYPES:
        raise ValueError(
            f"`dtype` must be 'float16' or 'float32' (or the torch/numpy dtype), got {describe(dtype)}."
        )
    return name


def _weights_digest(module: torch.nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes): any change to the weights changes it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def latents_fingerprint(
    dataset, autoencoder, *, image_size: int, image_column: str, latents_column: str, dtype: str, scaled: bool
) -> str:
    """The ``datasets`` fingerprint of the mapped dataset (16 hex characters).

    Batch size and device are left out: they do not change which latents are computed (up to float
    rounding), so changing them does not re-encode the dataset.
    """
    config = dict(getattr(autoencoder, "config", {}) or {})
    payload = json.dumps(
        {
            "version": _CACHE_VERSION,
            "dataset": dataset._fingerprint,
            "autoencoder": f"{type(autoencoder).__module__}.{type(autoencoder).__qualname__}",
            "config": {k: v for k, v in config.items() if not k.startswith("_")},
            "weights": _weights_digest(autoencoder),
            "image_size": image_size,
            "image_column": image_column,
            "latents_column": latents_column,
            "dtype": dtype,
            "scaled": scaled,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cache_latents(
    dataset,
    autoencoder,
    *,
    image_size: int,
    image_column: str = "image",
    latents_column: str = "latents",
    batch_size: int = 16,
    dtype: str | torch.dtype = "float32",
    scaled: bool = True,
    cache_dir: str | os.PathLike | None = None,
    load_from_cache_file: bool = True,
    desc: str = "Encoding latents",
):
    """Add a ``latents_column`` of autoencoder latents to ``dataset``, computed once and cached.

    Each image is converted to RGB, resized to ``image_size × image_size`` with PIL bicubic (no crop:
    non-square images are stretched), mapped to ``[-1, 1]`` and encoded in batches under
    ``torch.inference_mode()`` on the autoencoder's device and dtype. With ``scaled`` (the default)
    the stored latents are ``autoencoder.scale_latents(z)``, the roughly unit-variance space a
    diffusion model trains on; otherwise the raw latents.

    Args:
        dataset: a ``datasets.Dataset`` whose ``image_column`` holds images (``datasets.Image``, decoded
            to PIL). Other columns are kept and not decoded.
        autoencoder: a model with ``encode(x).latents``, ``scale_latents``, ``config.latent_channels`` and
            ``spatial_compression_ratio`` (e.g. :class:`~hf_vtok.utils.autoencoder_taef2.AutoencoderTAEF2`).
        image_size: side of the square images fed to the encoder (a multiple of the compression ratio).
        dtype: ``"float32"`` or ``"float16"`` for the stored arrays (float16 halves the cache; the scaled
            latents are O(1), so its 1e-3 relative rounding is harmless for training). The numpy/torch
            formats of ``datasets`` hand float16 columns back as float32.
        cache_dir: folder for the cache file. Default: next to the dataset's own cache files when it
            has some, else ``<HF_DATASETS_CACHE>/hf_vtok_latents`` (in-memory datasets have no folder).
        load_from_cache_file: ``False`` recomputes even when the cache file exists.

    Returns:
        The dataset with a ``latents_column`` of ``Array3D((C, image_size / r, image_size / r), dtype)``.
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"`dataset` must be a datasets.Dataset, got {describe(dataset)}.")
    for name in ("encode", "scale_latents", "config", "spatial_compression_ratio"):
        if not hasattr(autoencoder, name):
            raise TypeError(
                f"`autoencoder` must have `{name}` (like AutoencoderTAEF2), got {describe(autoencoder)}."
            )
    if not isinstance(autoencoder, torch.nn.Module):
        raise TypeError(f"`autoencoder` must be a torch.nn.Module, got {describe(autoencoder)}.")
    for name, value in (("image_column", image_column), ("latents_column", latents_column)):
        if not isinstance(value, str):
            raise TypeError(f"`{name}` must be a str, got {describe(value)}.")
    if image_column not in dataset.column_names:
        raise ValueError(
            f"`image_column` {image_column!r} is not a column of `dataset` {dataset.column_names}."
        )
    if latents_column in dataset.column_names:
        raise ValueError(
            f"`latents_column` {latents_column!r} is already a column of `dataset`; remove it or pick another name."
        )
    ratio = int(autoencoder.spatial_compression_ratio)
    for name, value in (("image_size", image_size), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {describe(value)}.")
    if image_size % ratio:
        raise ValueError(
            f"`image_size` must be a multiple of {ratio} (the autoencoder's downsampling), got {image_size}."
        )
    dtype = _dtype_name(dtype)
    if not isinstance(scaled, bool):
        raise TypeError(f"`scaled` must be a bool, got {describe(scaled)}.")

    fingerprint = latents_fingerprint(
        dataset,
        autoencoder,
        image_size=image_size,
        image_column=image_column,
        latents_column=latents_column,
        dtype=dtype,
        scaled=scaled,
    )
    cache_file_name = None  # datasets then names it after the fingerprint, next to the dataset's files
    if cache_dir is not None or not dataset.cache_files:
        folder = (
            Path(cache_dir)
            if cache_dir is not None
            else Path(datasets.config.HF_DATASETS_CACHE) / "hf_vtok_latents"
        )
        folder.mkdir(parents=True, exist_ok=True)
        cache_file_name = str(folder / f"latents-{fingerprint}.arrow")

    features = dataset.features.copy()
    side = image_size // ratio
    features[latents_column] = datasets.Array3D(
        shape=(autoencoder.config.latent_channels, side, side), dtype=dtype
    )
    param = next(autoencoder.parameters())
    np_dtype = _DTYPES[dtype]

    def encode_batch(images: list) -> dict[str, np.ndarray]:
        pixels = []
        for image in images:
            if not isinstance(image, Image.Image):
                raise TypeError(f"`{image_column}` must hold PIL images, got {describe(image)}.")
            image = image.convert("RGB")
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.BICUBIC)
            pixels.append(np.asarray(image))
        x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
        x = x.to(device=param.device, dtype=param.dtype) / 127.5 - 1  # uint8 → [-1, 1]
        with torch.inference_mode():
            latents = autoencoder.encode(x).latents
            if scaled:
                latents = autoencoder.scale_latents(latents)
        return {latents_column: latents.float().cpu().numpy().astype(np_dtype)}

    return dataset.map(
        encode_batch,
        batched=True,
        batch_size=batch_size,
        input_columns=[image_column],
        features=features,
        new_fingerprint=fingerprint,
        cache_file_name=cache_file_name,
        load_from_cache_file=load_from_cache_file,
        desc=desc,
    )
