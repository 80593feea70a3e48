"""Image processors of the Slot Q-Former: shortest-edge resize and centre crop to 448 px, ImageNet
(DINOv2) normalisation. ``SlotQFormerImageProcessor.from_tokenizer_config(config)`` takes the size and the
normalisation from a :class:`SlotQFormerConfig` (64 px for the ``tiny`` preset)."""

from __future__ import annotations

from ...utils.image_processing_utils import VTokImageProcessorPil, VTokTorchBackend
from .configuration_slot_qformer import IMAGENET_MEAN, IMAGENET_STD


class SlotQFormerImageProcessorPil(VTokImageProcessorPil):
    """PIL backend of the Slot Q-Former image processor."""

    image_mean = IMAGENET_MEAN
    image_std = IMAGENET_STD
    size = {"shortest_edge": 448}  # noqa: RUF012 (transformers reads these class attributes)
    crop_size = {"height": 448, "width": 448}  # noqa: RUF012


class SlotQFormerImageProcessor(VTokTorchBackend, SlotQFormerImageProcessorPil):
    """Pure-torch backend of the Slot Q-Former image processor (no torchvision)."""


__all__ = ["SlotQFormerImageProcessor", "SlotQFormerImageProcessorPil"]
