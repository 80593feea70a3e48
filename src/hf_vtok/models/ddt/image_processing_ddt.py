"""Image processors of the DDT tokenizer: ImageNet-style centre crops (256 px in the paper), pixels mapped
to [-1, 1] (mean = std = 0.5), the data space of the rectified-flow decoder.

Build one matching a config (e.g. the 64 px tiny preset) with ``DDTImageProcessor.from_model_config(config)``
or pass ``size``/``crop_size`` yourself.
"""

from __future__ import annotations

from typing import ClassVar

from ...utils.image_processing_utils import VTokImageProcessorPil, VTokImageProcessorTorch
from ...utils.validation import describe

DDT_IMAGE_MEAN = [0.5, 0.5, 0.5]
DDT_IMAGE_STD = [0.5, 0.5, 0.5]


class _DDTDefaults:
    image_mean: ClassVar[list[float]] = DDT_IMAGE_MEAN
    image_std: ClassVar[list[float]] = DDT_IMAGE_STD
    size: ClassVar[dict] = {"shortest_edge": 256}
    crop_size: ClassVar[dict] = {"height": 256, "width": 256}

    @classmethod
    def from_model_config(cls, config, **kwargs):
        """Processor for a :class:`DDTTokenizerConfig`: resize/crop to ``config.image_size``, its mean/std."""
        image_size = getattr(config, "image_size", None)
        if not isinstance(image_size, int) or image_size < 1:
            raise TypeError(f"`config` must be a DDTTokenizerConfig with an int `image_size`, got {describe(config)}.")
        values = {
            "size": {"shortest_edge": image_size},
            "crop_size": {"height": image_size, "width": image_size},
            "image_mean": list(config.image_mean),
            "image_std": list(config.image_std),
        }
        values.update(kwargs)
        return cls(**values)


class DDTImageProcessorPil(_DDTDefaults, VTokImageProcessorPil):
    """PIL backend of the DDT image processor (what ``AutoImageProcessor`` picks without torchvision)."""


class DDTImageProcessor(_DDTDefaults, VTokImageProcessorTorch):
    """Pure-torch backend of the DDT image processor."""


__all__ = ["DDTImageProcessor", "DDTImageProcessorPil"]
