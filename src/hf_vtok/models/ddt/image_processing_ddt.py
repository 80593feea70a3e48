"""Image processors of the DDT tokenizer: ImageNet-style centre crops (256 px in the paper), pixels mapped
to [-1, 1] (mean = std = 0.5), the data space of the rectified-flow decoder.

Build one matching a config (e.g. the 64 px tiny preset) with ``DDTImageProcessor.from_tokenizer_config(config)``.
"""

from __future__ import annotations

from ...utils.image_processing_utils import VTokImageProcessorPil, VTokTorchBackend


class DDTImageProcessorPil(VTokImageProcessorPil):
    """PIL backend of the DDT image processor (what ``AutoImageProcessor`` picks without torchvision)."""

    image_mean = [0.5, 0.5, 0.5]  # noqa: RUF012 (transformers reads these class attributes)
    image_std = [0.5, 0.5, 0.5]  # noqa: RUF012
    size = {"shortest_edge": 256}  # noqa: RUF012
    crop_size = {"height": 256, "width": 256}  # noqa: RUF012


class DDTImageProcessor(VTokTorchBackend, DDTImageProcessorPil):
    """Pure-torch backend of the DDT image processor."""


__all__ = ["DDTImageProcessor", "DDTImageProcessorPil"]
