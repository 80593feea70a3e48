"""Image processors shared by the tokenizer families: a PIL backend and a pure-torch backend.

transformers' default ``TorchvisionBackend`` needs torchvision, which many CPU installs (and this
project) cannot use, so the torch backend here resizes with ``torch.nn.functional.interpolate``.
Both backends do the same steps: convert to RGB, resize the shortest edge to ``size``, centre-crop to
``crop_size``, rescale to [0, 1], normalise with ``image_mean``/``image_std``.

A family sets its defaults (size, mean, std) as class attributes of ``XImageProcessorPil(VTokImageProcessorPil)``,
adds ``XImageProcessor(VTokTorchBackend, XImageProcessorPil)`` and registers both with ``AutoImageProcessor``
(in ``hf_vtok/__init__.py``), which falls back to the PIL one when torchvision is missing. Inputs are checked first: every PIL mode is converted (alpha on white, 16-bit
rescaled), and empty, corrupt, non-finite or oversized images raise a ``ValueError`` naming ``images``.

There is one way to build the processor of a tokenizer: from its folder (``AutoImageProcessor.from_pretrained``) or
from its config (``XImageProcessorPil.from_tokenizer_config(config)``; on the shared base class it picks the class
registered for the config), which honours the config's ``image_size``, ``image_mean`` and ``image_std``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from .validation import check_int, describe, load_image


def images_to_list(images: Any, name: str = "images", convert_rgb: bool = True) -> list:
    """Normalise the accepted inputs to a non-empty list of RGB ``PIL.Image``.

    Accepts one image or a sequence or iterable of images (list, tuple, generator, a ``datasets`` column), each a
    PIL image, a file path, encoded bytes, a numpy array (HxW, HxWxC or CxHxW; uint8, uint16, bool, or float in [0, 1]) or a torch tensor
    (CxHxW or HxWxC, or a batch of them; uint8 or float in [0, 1]). Without ``convert_rgb`` (the processor's
    ``do_convert_rgb=False``) an image that is not already 3-channel raises instead of being converted.
    """
    given = type(images).__name__
    batch = isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4
    one_image = (str, bytes, np.ndarray, torch.Tensor, Image.Image, os.PathLike, Mapping)
    if batch or (isinstance(images, Iterable) and not isinstance(images, one_image)):
        images = list(images)  # a batch tensor, a tuple, a generator, a `datasets` Column: whatever yields images
    else:
        images = [images]
    if len(images) == 0:
        raise ValueError(f"`{name}` must contain at least one image, got an empty {given}.")
    converted = []
    for index, image in enumerate(images):
        item_name = f"{name}[{index}]"
        if isinstance(image, torch.Tensor):
            image = _tensor_to_array(image, item_name)
        if not convert_rgb:
            _check_rgb_channels(image, item_name)
        converted.append(load_image(image, name=item_name))
    return converted


def _check_rgb_channels(image: Any, name: str) -> None:
    """With ``do_convert_rgb=False`` nothing converts the image, so it must already have the 3 channels of RGB."""
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        try:
            image = Image.open(io.BytesIO(image) if isinstance(image, bytes) else image)
        except Exception:  # noqa: BLE001 - load_image raises the clear error for undecodable input
            return
    if isinstance(image, Image.Image):
        channels, found = len(image.getbands()), f"PIL mode {image.mode!r}"
    elif isinstance(image, np.ndarray):
        channels_first = image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4)
        channels = 1 if image.ndim == 2 else image.shape[0] if channels_first else image.shape[-1]
        found = f"shape {image.shape}"
    else:
        return
    if channels != 3:
        raise ValueError(
            f"`{name}` has {channels} channel(s) ({found}), but with `do_convert_rgb=False` images are not converted "
            "and the model takes 3 (RGB); pass `do_convert_rgb=True` (the default) to convert it."
        )


def _tensor_to_array(image: torch.Tensor, name: str) -> np.ndarray:
    """A CxHxW or HxWxC tensor (channels first when both read, as transformers' ``infer_channel_dimension_format``)
    → an HxWxC array."""
    channels_first = image.ndim == 3 and image.shape[0] in (1, 3, 4)
    if image.ndim != 3 or not (channels_first or image.shape[-1] in (1, 3, 4)):
        raise ValueError(f"`{name}` tensor must be CxHxW or HxWxC with 1, 3 or 4 channels, got {describe(image)}.")
    if image.numel() == 0:
        raise ValueError(f"`{name}` tensor must not be empty, got {describe(image)}.")
    array = image.detach().cpu()
    if array.is_floating_point():
        array = array.float()
    return np.moveaxis(array.numpy(), 0, -1) if channels_first else array.numpy()


class VTokImageProcessorPil(PilBackend):
    """PIL/NumPy backend: shortest-edge resize, centre crop, rescale, normalise."""

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 224}
    crop_size = {"height": 224, "width": 224}
    default_to_square = False
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    @classmethod
    def from_tokenizer_config(cls, config, **kwargs):
        """The processor of a tokenizer config: resize and crop to ``config.image_size``, normalise with its
        ``image_mean``/``image_std``; ``kwargs`` override any of it. Called on this shared base class, it builds the
        (PIL) class registered with ``AutoImageProcessor`` for ``type(config)``."""
        if cls is VTokImageProcessorPil:
            from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

            classes = IMAGE_PROCESSOR_MAPPING.get(type(config), None)
            if not isinstance(classes, dict) or not issubclass(classes.get("pil") or object, VTokImageProcessorPil):
                raise TypeError(
                    f"`config` must be the config of a registered tokenizer family (import hf_vtok), got {describe(config)}."
                )
            return classes["pil"].from_tokenizer_config(config, **kwargs)
        size = getattr(config, "image_size", None)
        if not isinstance(size, int) or not isinstance(getattr(config, "image_mean", None), (list, tuple)):
            raise TypeError(
                f"`config` must be a tokenizer config with an int `image_size` and `image_mean`/`image_std`, got "
                f"{describe(config)}."
            )
        check_int("config.image_size", size, minimum=1)
        values = {
            "size": {"shortest_edge": size},
            "crop_size": {"height": size, "width": size},
            "image_mean": list(config.image_mean),
            "image_std": list(config.image_std),
        }
        return cls(**{**values, **kwargs})

    # Former spellings, kept until every caller uses `from_tokenizer_config`.
    from_config = from_model_config = from_tokenizer_config

    def preprocess(self, images, *args, **kwargs) -> BatchFeature:
        convert_rgb = kwargs.get("do_convert_rgb")
        convert_rgb = self.do_convert_rgb if convert_rgb is None else convert_rgb
        return super().preprocess(images_to_list(images, convert_rgb=convert_rgb), *args, **kwargs)

    def postprocess_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation: model-space pixels → floats in [0, 1] (for viewing and metrics)."""
        mean = torch.tensor(self.image_mean, dtype=pixel_values.dtype, device=pixel_values.device)[:, None, None]
        std = torch.tensor(self.image_std, dtype=pixel_values.dtype, device=pixel_values.device)[:, None, None]
        return (pixel_values * std + mean).clamp(0.0, 1.0)


class VTokTorchBackend:
    """Pure-torch backend (no torchvision), mixed in before a PIL processor: the same steps on tensors,
    antialiased bicubic resize."""

    @property
    def backend(self) -> str:
        return "torch"

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size,
        resample,
        do_center_crop: bool,
        crop_size,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        processed = []
        for image in images:
            tensor = torch.from_numpy(np.ascontiguousarray(image)).float()[None]  # 1xCxHxW in [0, 255]
            if do_resize:
                height, width = tensor.shape[-2:]
                if size.shortest_edge:
                    # as transformers' get_resize_output_image_size (the PIL backend): the long edge is truncated
                    short, long = sorted((height, width))
                    new_short, new_long = size.shortest_edge, int(size.shortest_edge * long / short)
                    new_size = (new_short, new_long) if height <= width else (new_long, new_short)
                else:
                    new_size = (size.height, size.width)
                if new_size != (height, width):
                    tensor = F.interpolate(tensor, size=new_size, mode="bicubic", antialias=True, align_corners=False)
                    tensor = tensor.clamp(0.0, 255.0)
            if do_center_crop:
                height, width = tensor.shape[-2:]
                top = max(0, (height - crop_size.height) // 2)
                left = max(0, (width - crop_size.width) // 2)
                tensor = tensor[..., top : top + crop_size.height, left : left + crop_size.width]
            if do_rescale:
                tensor = tensor * rescale_factor
            if do_normalize:
                mean = torch.tensor(image_mean, dtype=tensor.dtype)[:, None, None]
                std = torch.tensor(image_std, dtype=tensor.dtype)[:, None, None]
                tensor = (tensor - mean) / std
            processed.append(tensor[0])
        pixel_values = torch.stack(processed) if return_tensors == "pt" else [t.numpy() for t in processed]
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=None if return_tensors == "pt" else return_tensors)


class VTokImageProcessorTorch(VTokTorchBackend, VTokImageProcessorPil):
    """The shared processor with the pure-torch backend."""
