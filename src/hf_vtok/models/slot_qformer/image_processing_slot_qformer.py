"""Image processors of the Slot Q-Former: shortest-edge resize and centre crop to 448 px, ImageNet
(DINOv2) normalisation. ``SlotQFormerImageProcessor.from_config(config)`` takes the size and the
normalisation from a :class:`SlotQFormerConfig` (64 px for the ``tiny`` preset)."""

from __future__ import annotations

from typing import ClassVar

from transformers.image_utils import PILImageResampling

from ...utils.image_processing_utils import VTokImageProcessorPil, VTokImageProcessorTorch
from ...utils.validation import check_int, describe
from .configuration_slot_qformer import IMAGENET_MEAN, IMAGENET_STD, SlotQFormerConfig


class _SlotQFormerImageProcessorDefaults:
    resample = PILImageResampling.BICUBIC
    image_mean: ClassVar[list[float]] = list(IMAGENET_MEAN)
    image_std: ClassVar[list[float]] = list(IMAGENET_STD)
    size: ClassVar[dict] = {"shortest_edge": 448}
    crop_size: ClassVar[dict] = {"height": 448, "width": 448}

    @classmethod
    def from_config(cls, config: SlotQFormerConfig, **kwargs):
        """An image processor matching ``config.image_size`` / ``image_mean`` / ``image_std``."""
        if not isinstance(config, SlotQFormerConfig):
            raise TypeError(f"`config` must be a SlotQFormerConfig, got {describe(config)}.")
        size = check_int("config.image_size", config.image_size, minimum=1)
        values = {
            "size": {"shortest_edge": size},
            "crop_size": {"height": size, "width": size},
            "image_mean": list(config.image_mean),
            "image_std": list(config.image_std),
        }
        values.update(kwargs)
        return cls(**values)


class SlotQFormerImageProcessorPil(_SlotQFormerImageProcessorDefaults, VTokImageProcessorPil):
    """PIL backend of the Slot Q-Former image processor."""


class SlotQFormerImageProcessor(_SlotQFormerImageProcessorDefaults, VTokImageProcessorTorch):
    """Pure-torch backend of the Slot Q-Former image processor (no torchvision)."""


__all__ = ["SlotQFormerImageProcessor", "SlotQFormerImageProcessorPil"]
