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

Older names still load (:data:`LEGACY_NAMES`, the ``attribute_map`` of :class:`VTokConfig`), so config.json
files written before the renames keep working; saving writes the new names.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar

from transformers import PreTrainedConfig

from .validation import check_choice, check_derived_fields, check_float, check_int, describe

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


# Frozen autoencoders shipped with the package that a decoder config may name instead of building its own VAE
# (``decoder_config.vae = "taef2"``): latent channels and spatial compression (utils/autoencoder_taef2.py).
SHIPPED_AUTOENCODERS: dict[str, dict[str, int]] = {"taef2": {"latent_channels": 32, "spatial_compression_ratio": 8}}


def check_decoder_vae(vae: Any) -> None:
    """``decoder_config.vae``: AutoencoderKL kwargs (the decoder's own VAE), a shipped autoencoder's name, or None."""
    if vae is not None and not isinstance(vae, dict) and vae not in SHIPPED_AUTOENCODERS:
        raise TypeError(f"`decoder_config['vae']` must be a dict of AutoencoderKL kwargs, one of "
                        f"{sorted(SHIPPED_AUTOENCODERS)} (a shipped frozen autoencoder) or None, got {describe(vae)}.")  # fmt: skip


def shipped_latent_shape(vae: Any, image_size: int) -> tuple[int, int, int] | None:
    """``(channels, height, width)`` of a shipped autoencoder's latents of ``image_size`` images; None for ``vae``
    kwargs (the decoder's own VAE) or None (pixel space)."""
    if not isinstance(vae, str):
        return None
    shipped = SHIPPED_AUTOENCODERS[vae]
    side = image_size // shipped["spatial_compression_ratio"]
    return (shipped["latent_channels"], side, side)


def check_unet_channels(unet: dict, vae: dict | str | None, num_channels: int, extra_in_channels: int = 0) -> None:
    """A UNet denoises VAE latents (``vae["latent_channels"]`` or a shipped autoencoder's) or, without a VAE, the
    pixels themselves; ``extra_in_channels`` are a spatial condition concatenated to its input."""
    check_decoder_vae(vae)
    if isinstance(vae, str):
        expected = SHIPPED_AUTOENCODERS[vae]["latent_channels"]
    else:
        expected = vae.get("latent_channels", 4) if vae else num_channels
    what = "VAE latent channels" if vae else "pixel channels, no VAE"
    for key, channels in (("in_channels", expected + extra_in_channels), ("out_channels", expected)):
        if unet.get(key, 4) != channels:
            because = f"{what}{f' + {extra_in_channels} condition channels' if key == 'in_channels' and extra_in_channels else ''}"
            raise ValueError(f"`decoder_config['unet'][{key!r}]` must be {channels} ({because}), got {unet.get(key, 4)!r}.")


# Names used before the shared vocabulary -> the field that replaced them.
LEGACY_NAMES: dict[str, str] = {
    # Slot Q-Former loss weights
    "loss_weight_contrastive": "contrastive_loss_weight",
    "loss_weight_text_generation": "text_generation_loss_weight",
    "loss_weight_diffusion": "diffusion_loss_weight",
    "loss_weight_global_mse": "global_mse_loss_weight",
    "loss_weight_reconstruction": "reconstruction_loss_weight",
    "loss_weight_commitment": "commitment_loss_weight",
    "loss_weight_diffusion_stage2": "stage2_diffusion_loss_weight",
    "loss_weight_global_mse_stage2": "stage2_global_mse_loss_weight",
    # SeTok mask-loss weights
    "mask_bce_weight": "mask_bce_loss_weight",
    "mask_dice_weight": "mask_dice_loss_weight",
    "mask_kl_weight": "mask_kl_loss_weight",
    # DDT codebook and stage
    "code_dim": "codebook_dim",
    "ema_decay": "codebook_ema_decay",
    "kmeans_init": "codebook_kmeans_init",
    "kmeans_iters": "codebook_kmeans_iters",
    "dead_code_threshold": "codebook_dead_code_threshold",
    "dead_code_threshold_relative": "codebook_dead_code_threshold_relative",
    "training_stage": "stage",
}


class VTokConfig(PreTrainedConfig):
    r"""The fields and checks every tokenizer family's config shares (the vocabulary above).

    Args:
        vision_config: the vision encoder, any transformers vision model returning patch features.
        freeze_vision_encoder: keep it frozen (all three papers do).
        image_mean / image_std: pixel normalisation of the tokenizer's input, one value per channel.
        decoder_config: the family's typed decoder config.
        diffusion_loss_weight: weight of the decoder's diffusion loss in the total.
        stage: training stage, 1 or 2.
        layer_norm_eps / initializer_range: as in transformers.

    Checked here for every family: the fields above, every ``*_loss_weight`` (a number >= 0), every field
    whose default is a bool (a bool), and, for the discrete families (``codebook_size`` set), the codebook:
    ``codebook_size`` >= 2, ``codebook_dim`` >= 1, ``codebook_ema_decay`` in [0, 1],
    ``codebook_dead_code_threshold`` >= 0 and ``commitment_weight`` >= 0.
    """

    attribute_map: ClassVar[dict[str, str]] = LEGACY_NAMES
    # Fields only training reads (the stage, codebook updates, initialisation; every field named *loss_weight* too):
    # they do not change the ids or features an image gets, so a tokenizer's fingerprint leaves them out and a
    # decoder-only stage keeps the tokenizer an MLLM was trained with. A family adds its own.
    training_only_fields: ClassVar[tuple[str, ...]] = (
        "stage", "freeze_vision_encoder", "initializer_range", "commitment_weight", "codebook_ema_decay",
        "codebook_dead_code_threshold", "codebook_dead_code_threshold_relative", "codebook_kmeans_init",
        "codebook_kmeans_iters",
    )  # fmt: skip

    vision_config: dict | PreTrainedConfig | None = None
    freeze_vision_encoder: bool = True
    image_mean: list[float] | tuple[float, ...] | None = None
    image_std: list[float] | tuple[float, ...] | None = None
    decoder_config: dict | PreTrainedConfig | None = None
    diffusion_loss_weight: float = 1.0
    stage: int = 1
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        check_derived_fields(self, kwargs)  # e.g. token_embedding_dim in an edited config.json
        super().__post_init__(**kwargs)
        self.validate()

    @property
    def decoder_latent_shape(self) -> tuple[int, int, int] | None:
        """``(channels, height, width)`` of the latents the decoder denoises when they come from a frozen autoencoder
        outside the model (shipped with the package, e.g. TAEF2): the tokenizer trainer encodes the training images
        with it ONCE and passes the cached ``latents`` to ``forward``. None when the decoder denoises pixels or the
        latents of a VAE it owns. Every family answers."""
        raise NotImplementedError(f"{type(self).__name__} must define `decoder_latent_shape`.")

    @property
    def untrained_token_parts(self) -> str | None:
        """The parts of the image → ids → image path that the training stages this config has reached leave untrained
        (None: none). An evaluation of ids through such parts measures random weights; SlotQFormer's stage 1 is one."""
        return None

    def validate(self) -> None:
        """transformers' checks (also run by ``save_pretrained``), then the shared fields; a family's override
        checks its own fields after calling this. Raises ``ValueError``/``TypeError`` naming the field."""
        super().validate()
        inherited = {f.name for f in dataclasses.fields(PreTrainedConfig)}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.name in inherited:
                continue
            if spec.name.endswith("_loss_weight"):
                check_float(spec.name, value, minimum=0.0)
            elif isinstance(spec.default, bool) and not isinstance(value, bool):
                raise TypeError(f"`{spec.name}` must be a bool, got {describe(value)}.")
        for name in ("image_mean", "image_std"):
            check_normalization(name, getattr(self, name), self.num_channels)
        check_choice("stage", self.stage, (1, 2))
        check_float("layer_norm_eps", self.layer_norm_eps, minimum=0.0, strict_minimum=True)
        check_float("initializer_range", self.initializer_range, minimum=0.0, strict_minimum=True)
        if self.codebook_size is not None:
            check_int("codebook_size", self.codebook_size, minimum=2)
            check_int("codebook_dim", self.codebook_dim, minimum=1)
            check_float("codebook_ema_decay", self.codebook_ema_decay, minimum=0.0, maximum=1.0)
            check_float("codebook_dead_code_threshold", self.codebook_dead_code_threshold, minimum=0.0)
            check_float("commitment_weight", self.commitment_weight, minimum=0.0)


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
        own = set(self.field_names())
        for spec in dataclasses.fields(self):  # a flag must be a flag (a "yes" from a hand-edited config.json is not)
            value = getattr(self, spec.name)
            if spec.name in own and isinstance(spec.default, bool) and not isinstance(value, bool):
                raise TypeError(f'`{self.config_key}["{spec.name}"]` must be a bool, got {describe(value)}.')

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


class VTokDecoderConfig(VTokSubConfig):
    """Base of the families' decoder configs: the classifier-free-guidance condition dropout they all train with.

    Args:
        condition_dropout_prob: probability of replacing the condition by the null condition during training,
            so that the pipeline can use classifier-free guidance (not in the papers; the usual 10%).
    """

    config_key = "decoder_config"

    condition_dropout_prob: float = 0.1

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_float(
            "decoder_config['condition_dropout_prob']", self.condition_dropout_prob, minimum=0.0, maximum=1.0
        )


__all__ = [
    "LEGACY_NAMES",
    "VTokConfig",
    "VTokDecoderConfig",
    "SHIPPED_AUTOENCODERS",
    "VTokSubConfig",
    "check_decoder_vae",
    "check_normalization",
    "check_unet_channels",
    "deep_merge",
    "shipped_latent_shape",
]
