"""Configuration pieces shared by the tokenizer families.

One vocabulary of config names across the families (each family's docstring gives the paper's symbol):

=====================================  =================================================================
concept                                name
=====================================  =================================================================
width of the codebook vectors          ``codebook_dim``
EMA decay of the codebook              ``codebook_ema_decay``
k-means initialisation / iterations    ``codebook_kmeans_init`` / ``codebook_kmeans_iters``
dead-code revival threshold            ``codebook_dead_code_threshold``
β of the commitment term               ``commitment_weight`` (inside the quantizer's loss)
weight of loss term X in the total     ``X_loss_weight`` (``diffusion_loss_weight``, ``mask_bce_loss_weight``)
training stage                         ``stage`` (``set_stage(stage)`` returns the model)
classifier-free-guidance dropout       ``decoder_config.condition_dropout_prob``
decoder parts trained in stage 1       ``decoder_config.unet_trainable``
=====================================  =================================================================

Older names still load (``attribute_map`` on each config), so config.json files written before the renames
keep working; saving writes the new names.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar

from transformers import PreTrainedConfig

from .validation import check_float, describe

# Keys a nested config carries in config.json besides its own fields.
_SERIALISATION_KEYS = {"model_type", "transformers_version", "_name_or_path", "name_or_path", "output_attentions",
                       "attn_implementation", "experts_implementation", "torch_dtype"}


def deep_merge(defaults: dict, overrides: dict) -> dict:
    """``defaults`` updated by ``overrides`` at every depth (``{"unet": {"sample_size": 32}}`` keeps the rest)."""
    merged = copy.deepcopy(defaults)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def check_normalization(name: str, values: Any, num_channels: int) -> list[float]:
    """``image_mean``-like lists: one finite number per channel (positive for a ``*_std``)."""
    if not isinstance(values, (list, tuple)) or len(values) != num_channels:
        raise ValueError(f"`{name}` must be a list of {num_channels} numbers, got {describe(values)}.")
    values = [check_float(f"{name}[i]", value) for value in values]
    if name.endswith("std") and min(values) <= 0:
        raise ValueError(f"`{name}` must be positive, got {values}.")
    return values


class VTokSubConfig(PreTrainedConfig):
    """A typed part of a tokenizer config (its decoder, its mask decoder), nested under ``config_key``.

    Unknown keys raise a ``ValueError`` naming ``config_key`` (a typo must not be dropped silently). The part
    also reads like the plain dict it replaces (``decoder_config["unet"]``, ``.get("vae")``), for code written
    before the parts were typed.
    """

    config_key: ClassVar[str] = "sub_config"

    def __post_init__(self, **kwargs):
        if kwargs.get("model_type", self.model_type) != self.model_type:  # another family's config.json
            raise ValueError(
                f"`{self.config_key}` holds a {kwargs['model_type']!r} config, not a {self.model_type!r} one: the "
                "top-level `model_type` of config.json does not match the model saved there (was it edited?); restore it."
            )
        unknown = sorted(set(kwargs) - _SERIALISATION_KEYS - set(self.attribute_map))
        if unknown:
            raise ValueError(
                f"`{self.config_key}` has unknown keys {unknown}; expected keys among {sorted(self.field_names())}."
            )
        super().__post_init__(**kwargs)

    @classmethod
    def field_names(cls) -> list[str]:
        inherited = {f.name for f in dataclasses.fields(PreTrainedConfig)}
        return [f.name for f in dataclasses.fields(cls) if f.name not in inherited]

    def __getitem__(self, key: str):
        if key not in self.field_names() and key not in self.attribute_map:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key) -> bool:
        return key in self.field_names() or key in self.attribute_map


__all__ = ["VTokSubConfig", "check_normalization", "deep_merge"]
