"""SeTok image processors: CLIP normalisation, shortest-edge resize and centre crop to the encoder's size.

The defaults are the paper's encoder (336 px, EVA-CLIP/OpenAI-CLIP mean and std). For another config (e.g. the
64 px ``SeTokConfig.tiny()``) build the processor with ``SeTokImageProcessor.from_tokenizer_config(config)``.

``preprocess_instance_masks`` applies the same geometry (nearest resampling) to instance-id maps so that the
``instance_mask`` batch key of :class:`SeTokForPreTraining` lines up with ``pixel_values``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...utils.image_processing_utils import VTokImageProcessorPil, VTokTorchBackend
from ...utils.validation import describe
from .configuration_setok import CLIP_MEAN, CLIP_STD


class SeTokImageProcessorPil(VTokImageProcessorPil):
    """SeTok image processor, PIL backend."""

    image_mean = CLIP_MEAN
    image_std = CLIP_STD
    size = {"shortest_edge": 336}  # noqa: RUF012 (transformers reads these class attributes)
    crop_size = {"height": 336, "width": 336}  # noqa: RUF012

    def preprocess_instance_masks(self, masks) -> torch.LongTensor:
        """Instance-id maps (0 = background) → ``LongTensor [B, crop_h, crop_w]`` with the images' geometry.

        Accepts one map or a list of maps, each a 2D numpy array, torch tensor or PIL image (mode L/I), or a
        ``[B, H, W]`` tensor/array.
        """
        if isinstance(masks, (torch.Tensor, np.ndarray)) and masks.ndim == 3:
            masks = list(masks)
        if not isinstance(masks, (list, tuple)):
            masks = [masks]
        if len(masks) == 0:
            raise ValueError("`masks` must contain at least one instance map, got an empty list.")
        size = self.size
        crop = self.crop_size
        shortest = size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "shortest_edge", None)
        crop_h = crop["height"] if isinstance(crop, dict) else crop.height
        crop_w = crop["width"] if isinstance(crop, dict) else crop.width
        out = []
        for index, mask in enumerate(masks):
            name = f"masks[{index}]"
            if isinstance(mask, Image.Image):
                mask = np.asarray(mask)
            if isinstance(mask, np.ndarray):
                if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
                    raise TypeError(f"`{name}` must hold integer instance ids, got dtype {mask.dtype}.")
                mask = torch.from_numpy(mask.astype(np.int64))
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"`{name}` must be a numpy array, torch tensor or PIL image, got {describe(mask)}.")
            if mask.ndim != 2 or mask.numel() == 0:
                raise ValueError(f"`{name}` must be a non-empty HxW instance map, got shape {tuple(mask.shape)}.")
            if mask.is_floating_point():
                raise TypeError(f"`{name}` must hold integer instance ids, got dtype {mask.dtype}.")
            tensor = mask.long()[None, None].float()
            height, width = tensor.shape[-2:]
            if self.do_resize:
                if shortest:
                    scale = shortest / min(height, width)
                    new = (max(1, round(height * scale)), max(1, round(width * scale)))
                else:
                    new = (size["height"], size["width"]) if isinstance(size, dict) else (size.height, size.width)
                if new != (height, width):
                    tensor = F.interpolate(tensor, size=new, mode="nearest")
            if self.do_center_crop:
                height, width = tensor.shape[-2:]
                top, left = max(0, (height - crop_h) // 2), max(0, (width - crop_w) // 2)
                tensor = tensor[..., top : top + crop_h, left : left + crop_w]
            out.append(tensor[0, 0].long())
        shapes = {tuple(item.shape) for item in out}
        if len(shapes) != 1:
            raise ValueError(f"`masks` produced maps of different sizes {sorted(shapes)}; disable cropping or resize.")
        return torch.stack(out)


class SeTokImageProcessor(VTokTorchBackend, SeTokImageProcessorPil):
    """SeTok image processor, pure-torch backend (no torchvision)."""


__all__ = ["SeTokImageProcessor", "SeTokImageProcessorPil"]
