"""Pieces shared by the three tokenizer families: the common output, the common API and positions.

Every tokenizer model (``SlotQFormerModel``, ``SeTokModel``, ``DDTTokenizerModel``) inherits
:class:`VisualTokenizerMixin` next to its ``PreTrainedModel`` base and returns :class:`VisualTokens`
from ``encode``, so that the MLLM, the pipelines, the CLI, the benchmarks and the evaluation code
never branch on the family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypedDict

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput, logging

from .external_weights import (
    VISION_PREFIX,
    check_external_vision_weights,
    external_vision_state,
    vision_weights_fingerprint,
)
from .validation import check_pixel_values, check_safetensors_file, check_tensor, check_token_ids, describe

logger = logging.get_logger(__name__)

TOKEN_ORDERS = ("slot_major", "depth_major", "recursive", "cluster_scan")


@dataclass
class VisualTokens(ModelOutput):
    """What ``encode`` returns for any tokenizer family.

    The ``num_tokens`` tokens of an image are what a language model sees: its ids (discrete families) or its
    embeddings (SeTok). ``embeddings`` is the continuous view, exactly ``embed_ids(ids)`` for discrete families;
    one embedding can stand for several ids (SlotQFormer: the ``rvq_depths`` residual codes of one slot make one
    slot embedding), and ``token_groups`` says which.

    Args:
        ids (`torch.LongTensor` of shape `(batch_size, num_tokens)`, *optional*):
            Codebook indices flattened in the order named by ``config.token_order``. ``None`` for
            continuous tokenizers (SeTok).
        embeddings (`torch.FloatTensor` of shape `(batch_size, num_embeddings, hidden_size)`):
            The continuous view of the tokens (what ``embed_ids(ids)`` returns for discrete families; the only
            view for SeTok, where ``num_embeddings == num_tokens``).
        attention_mask (`torch.LongTensor` of shape `(batch_size, num_tokens)`):
            1 for real tokens, 0 for padding. All ones except for SeTok's variable token counts.
        token_groups (`torch.LongTensor` of shape `(batch_size, num_tokens)`, *optional*):
            For each token, the row of ``embeddings`` it belongs to (``arange(num_tokens)`` when every token has
            its own embedding, as for DDT). ``None`` for continuous tokenizers.
        assignments (`torch.FloatTensor` of shape `(batch_size, num_groups, num_patches)`, *optional*):
            Per-patch maps for visualisation: slot-attention weights (SlotQFormer) or cluster masks
            (SeTok). ``None`` where the family has none (DDT).
        quantization_loss (`torch.FloatTensor`, *optional*):
            Commitment (and codebook) loss of the quantizer, for training wrappers.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, with ``output_hidden_states=True``):
            The hidden states of the family's encoder: its input and the output of each layer.
    """

    ids: torch.LongTensor | None = None
    embeddings: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None
    assignments: torch.FloatTensor | None = None
    quantization_loss: torch.FloatTensor | None = None
    token_groups: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None

    @property
    def num_tokens(self) -> torch.LongTensor:
        """Number of real tokens per image, shape `(batch_size,)`."""
        return self.attention_mask.sum(dim=-1)


class PreTrainingKwargs(TypedDict, total=False):
    """The keyword arguments every ``XForPreTraining.forward`` takes besides its batch keys."""

    noise: torch.Tensor  # the decoder loss's noise, shaped like the decoder's input (pixels or VAE latents)
    timesteps: torch.Tensor  # [B]: integer steps of the noise schedule, or noise levels in [0, 1] (rectified flow)
    num_items_in_batch: int  # passed by transformers.Trainer; the losses are means, so it is not used


@dataclass
class VTokPreTrainingOutput(ModelOutput):
    """Base of the families' ``XForPreTrainingOutput``: ``loss``, the weighted sum the Trainer optimises, comes first;
    each family adds its unweighted components and diagnostics."""

    loss: torch.FloatTensor | None = None


class VisualTokenizerMixin:
    """The API every tokenizer model implements (mixed into its ``PreTrainedModel``).

    Subclasses set ``config.num_visual_tokens``, ``config.codebook_size`` (``None`` when
    continuous), ``config.token_order`` and ``config.num_channels``/``config.image_size``, and
    implement :meth:`encode` and, for discrete families, :meth:`embed_ids`.
    """

    @property
    def num_visual_tokens(self) -> int:
        """Tokens per image (the maximum for variable-length families)."""
        return self.config.num_visual_tokens

    @property
    def codebook_size(self) -> int | None:
        """Number of distinct ids, or ``None`` for continuous tokens."""
        return getattr(self.config, "codebook_size", None)

    @property
    def token_order(self) -> str:
        """How ids are flattened: see ``TOKEN_ORDERS`` and the family's documentation."""
        return self.config.token_order

    @property
    def is_discrete(self) -> bool:
        return self.codebook_size is not None

    # True where the number of tokens depends on the image (SeTok); ``attention_mask`` then marks the real ones.
    has_variable_token_count: bool = False

    @property
    def visual_token_dim(self) -> int:
        """Width of ``VisualTokens.embeddings``."""
        return self.config.token_embedding_dim

    def encode(self, pixel_values: torch.Tensor) -> VisualTokens:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement `encode`.")

    def get_image_features(self, pixel_values: torch.Tensor) -> BaseModelOutput:  # pragma: no cover - abstract
        """Patch features of the tokenizer's image encoder, ``last_hidden_state`` `[B, num_patches, width]`."""
        raise NotImplementedError(f"{type(self).__name__} must implement `get_image_features`.")

    def _discrete_tokens(self, ids: torch.LongTensor, token_groups: torch.LongTensor, **fields) -> VisualTokens:
        """``VisualTokens`` of a discrete family: ``embeddings = embed_ids(ids)``, every token real."""
        return VisualTokens(
            ids=ids,
            embeddings=self.embed_ids(ids),
            attention_mask=torch.ones_like(ids),
            token_groups=token_groups.to(ids.device).expand_as(ids),
            **fields,
        )

    def embed_ids(self, ids: torch.LongTensor) -> torch.FloatTensor:
        raise TypeError(
            f"{type(self).__name__} produces continuous tokens and has no codebook: `embed_ids` is only "
            "defined for discrete tokenizers (SlotQFormer, DDTTokenizer)."
        )

    # Validation shared by the families' entry points.
    def _check_pixel_values(self, pixel_values) -> torch.Tensor:
        return check_pixel_values(
            pixel_values,
            num_channels=self.config.num_channels,
            image_size=self.config.image_size,
            image_mean=self.config.image_mean,
            image_std=self.config.image_std,
        )

    def _check_ids(self, ids, name: str = "ids") -> torch.LongTensor:
        if not self.is_discrete:
            raise TypeError(f"{type(self).__name__} produces continuous tokens: `{name}` (codebook ids) are not accepted.")
        return check_token_ids(ids, codebook_size=self.codebook_size, num_tokens=self.num_visual_tokens, name=name)


def sinusoidal_embedding_1d(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sine/cosine embedding of (possibly fractional) positions: `(...,)` → `(..., dim)`."""
    if dim % 2:
        raise ValueError(f"`dim` must be even for a sinusoidal embedding, got {dim}.")
    half = dim // 2
    frequencies = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=positions.device) / half
    )
    angles = positions.float()[..., None] * frequencies
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def sinusoidal_embedding_2d(height: int, width: int, dim: int, device=None) -> torch.Tensor:
    """2D sine/cosine position embedding of a ``height x width`` grid, row-major: `(height*width, dim)`.

    Half of the channels encode the row, half the column (as in MAE / DiT).
    """
    if dim % 4:
        raise ValueError(f"`dim` must be divisible by 4 for a 2D sinusoidal embedding, got {dim}.")
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    return torch.cat([sinusoidal_embedding_1d(rows, dim // 2), sinusoidal_embedding_1d(cols, dim // 2)], dim=-1)


def grid_position_features(height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """`(height*width, 4)`, row-major: each cell's centre as (y, x, 1 - y, 1 - x) in [0, 1], the four-sided grid that
    Slot Attention's soft position embedding projects (Locatello et al., 2020)."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([y, x, 1.0 - y, 1.0 - x], dim=-1).reshape(height * width, 4)
    return grid if dtype is None else grid.to(dtype)


# --------------------------------------------------------------------------------------------------
# Decoder training steps shared by the families' ``XForPreTraining`` (diffusers UNets and VAEs).
# --------------------------------------------------------------------------------------------------


def unnormalize(pixel_values: torch.Tensor, mean, std) -> torch.Tensor:
    """Undo the image processor's normalisation: pixels in [0, 1]."""
    mean = torch.tensor(mean, device=pixel_values.device, dtype=pixel_values.dtype)[:, None, None]
    std = torch.tensor(std, device=pixel_values.device, dtype=pixel_values.dtype)[:, None, None]
    return (pixel_values * std + mean).clamp(0.0, 1.0)


def decoder_images(pixel_values: torch.Tensor, mean, std, size: int) -> torch.Tensor:
    """The tokenizer's normalised input as the decoder's target: pixels in [-1, 1] at ``size`` x ``size``."""
    images = unnormalize(pixel_values.float(), mean, std)
    if tuple(images.shape[-2:]) != (size, size):
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    return images * 2.0 - 1.0


@torch.no_grad()
def autoencoder_compression(vae) -> int:
    """How many pixels one latent covers along a side: a shipped autoencoder's ``spatial_compression_ratio``, else a
    diffusers ``AutoencoderKL``'s 2^(levels - 1)."""
    return int(getattr(vae, "spatial_compression_ratio", None) or 2 ** (len(vae.config.block_out_channels) - 1))


def encode_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] → scaled (and shifted, for VAEs that have a shift) latents of a frozen diffusers VAE."""
    encoded = vae.encode(images.to(next(vae.parameters()).dtype))
    # a KL autoencoder returns a distribution (sampled, as in training); a tiny deterministic one (TAEF2) its latents
    latents = encoded.latent_dist.sample() if hasattr(encoded, "latent_dist") else encoded.latents
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents (what :func:`encode_latents` returns) → images in [-1, 1] through a frozen diffusers VAE; the
    graph is kept, so a loss on the images trains whatever produced ``latents``."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    dtype = next(vae.parameters()).dtype
    return vae.decode(latents.to(dtype) / vae.config.scaling_factor + shift).sample.float()


def patch_colors(pixel_values: torch.Tensor, mean, std, patch_size: int) -> torch.Tensor:
    """Each patch's mean RGB in [0, 1], ``[B, N, 3]`` in row-major patch order, of normalised ``pixel_values``."""
    colors = torch.nn.functional.avg_pool2d(unnormalize(pixel_values.float(), mean, std), patch_size)
    return colors.flatten(2).transpose(1, 2)


def with_patch_colors(features: torch.Tensor, pixel_values: torch.Tensor, mean, std, patch_size: int, weight: float):
    """Patch features ``[B, N, C]`` L2-normalised, with each patch's mean RGB in [0, 1] times ``weight`` concatenated
    (``[B, N, C + 3]``; the grouping docs/dinov2.md measured); ``features`` unchanged when ``weight`` is 0."""
    if not weight:
        return features
    colors = patch_colors(pixel_values, mean, std, patch_size).to(features.dtype)
    if colors.shape[:2] != features.shape[:2]:
        raise ValueError(f"`pixel_values` make {colors.shape[1]} patches of {patch_size} px, but `features` has "
                         f"{features.shape[1]}.")  # fmt: skip
    return torch.cat([torch.nn.functional.normalize(features, dim=-1), weight * colors], dim=-1)


class ShippedAutoencoderMixin:
    """For a training model whose decoder may denoise the latents of a frozen autoencoder shipped with the package
    (``config.decoder_config.vae = "taef2"``) instead of those of a VAE it owns (``self.vae``) or pixels.

    The shipped autoencoder is loaded on first use and kept out of the module tree: it is never trained and never
    saved with the model (the package ships it; the exported decoder pipeline carries it as ``vae``).
    """

    def decoder_autoencoder(self):
        """The frozen autoencoder the decoder works with: the model's own VAE, the shipped one, or None (pixels)."""
        if self.vae is not None:
            return self.vae
        name = self.config.decoder_config.vae
        if not isinstance(name, str):
            return None
        if "_shipped_autoencoder" not in self.__dict__:
            from .autoencoder_taef2 import load_taef2

            self.__dict__["_shipped_autoencoder"] = load_taef2().requires_grad_(False)  # not a submodule
        return self.__dict__["_shipped_autoencoder"]

    def attach_vae(self, vae) -> None:
        """Use ``vae`` (frozen, not a submodule) as the decoder's autoencoder instead of loading the shipped one
        named by ``config.decoder_config.vae``: the trainer hands over the autoencoder it cached the latents with,
        so that the pixel loss decodes in the same latent space. A model that owns its VAE keeps it."""
        if self.vae is not None:
            raise ValueError("`attach_vae`: this model owns its VAE (decoder_config.vae is AutoencoderKL kwargs); "
                             "its latents come from that one.")  # fmt: skip
        self.__dict__["_shipped_autoencoder"] = vae.requires_grad_(False)

    def decoder_samples(self, images, latents: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """What the decoder denoises: the batch's cached ``latents`` (shaped ``config.decoder_latent_shape``), else
        ``images()`` (in [-1, 1] at the decoder's resolution) encoded by :meth:`decoder_autoencoder`, or the images
        themselves in pixel space."""
        shape = self.config.decoder_latent_shape
        if latents is not None:
            if shape is None:
                raise ValueError("`latents` were given, but this decoder does not work in a shipped autoencoder's latent "
                                 "space (decoder_config.vae is AutoencoderKL kwargs or None): leave them out.")
            check_tensor("latents", latents, ndim=4, floating=True, finite=True)
            if tuple(latents.shape) != (batch_size, *shape):
                raise ValueError(f"`latents` must have shape {[batch_size, *shape]}, got {list(latents.shape)}.")
            return latents
        images = images()
        vae = self.decoder_autoencoder()
        return images if vae is None else encode_latents(vae.to(images.device), images)


def check_diffusion_draws(noise, timesteps, sample: torch.Tensor, num_train_timesteps: int | None) -> None:
    """Check the fixed random draws given to a pre-training step: ``noise`` shaped like the decoder's input ``sample``,
    and one timestep per sample: an integer step in ``[0, num_train_timesteps)`` of a diffusers noise schedule, or a
    noise level in [0, 1] (rectified flow: ``num_train_timesteps=None``)."""
    if noise is not None and (not isinstance(noise, torch.Tensor) or noise.shape != sample.shape):
        raise ValueError(f"`noise` must be a tensor of shape {tuple(sample.shape)}, got {describe(noise)}.")
    if timesteps is None:
        return
    batch = sample.shape[0]
    if num_train_timesteps is None:
        check_tensor("timesteps", timesteps, ndim=1, floating=True, finite=True)
        expected, low, high = f"{batch} noise levels in [0, 1]", 0.0, 1.0
    else:
        check_tensor("timesteps", timesteps, ndim=1, integer=True)
        expected, low, high = f"{batch} integer timesteps in [0, {num_train_timesteps})", 0, num_train_timesteps - 1
    if timesteps.shape[0] != batch or timesteps.min() < low or timesteps.max() > high:
        raise ValueError(f"`timesteps` must be {expected}, got {describe(timesteps)}.")


def denoising_loss(
    unet, scheduler, clean, noise=None, timesteps=None, sample_condition=None, return_clean_prediction=False,
    **unet_kwargs,
):
    """MSE of ``unet`` on ``clean`` samples noised by a diffusers ``scheduler`` at random (or given) timesteps;
    the target is the noise, the velocity or the clean sample, as ``scheduler.config.prediction_type`` says.
    ``sample_condition`` ``[B, C, h, w]`` (optional) is concatenated to the noisy sample's channels. With
    ``return_clean_prediction``: ``(loss, x̂_0, ᾱ_t)``, the clean sample the prediction implies (its graph kept) and
    each sample's signal fraction (see :func:`predicted_clean_sample`)."""
    noise = torch.randn_like(clean) if noise is None else noise
    if timesteps is None:
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (clean.shape[0],), device=clean.device)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(clean, noise, timesteps)
    else:
        target = clean
    unet_input = noisy if sample_condition is None else torch.cat([noisy, sample_condition.to(noisy.dtype)], dim=1)
    prediction = unet(unet_input, timesteps, **unet_kwargs).sample
    loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
    if not return_clean_prediction:
        return loss
    return (loss, *predicted_clean_sample(scheduler, noisy, prediction, timesteps))


def predicted_clean_sample(scheduler, noisy: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor):
    """``(x̂_0, ᾱ_t)``: the clean sample implied by a DDPM-family ``prediction`` (noise, velocity or sample, as
    ``scheduler.config.prediction_type`` says) of ``noisy`` at ``timesteps``, and the cumulative signal fraction
    ``ᾱ_t`` of each sample (``[B]``; 1 = no noise)."""
    alphas = scheduler.alphas_cumprod.to(device=noisy.device, dtype=torch.float32)[timesteps.long()]
    signal, noise_scale = alphas.sqrt().view(-1, 1, 1, 1), (1.0 - alphas).sqrt().view(-1, 1, 1, 1)
    noisy, prediction = noisy.float(), prediction.float()
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        clean = (noisy - noise_scale * prediction) / signal
    elif prediction_type == "v_prediction":
        clean = signal * noisy - noise_scale * prediction
    else:
        clean = prediction
    return clean, alphas


def decoded_pixel_loss(vae, predicted_latents, pixel_values, mean, std, weights=None) -> torch.Tensor:
    """The pixel MSE (in [-1, 1]) between ``predicted_latents`` decoded by the frozen ``vae`` and the tokenizer's
    input images (``pixel_values`` normalised by ``mean``/``std``, resized to the decoded size); with ``weights``
    ``[B]``, the mean of each image's MSE times its weight. The graph reaches whatever predicted the latents; the VAE
    is not trained. Latent MSE alone pulls textures toward their mean (issue #16): this is the loss that does not."""
    if next(vae.parameters()).device != predicted_latents.device:  # not a submodule: Trainer does not move it
        vae.to(predicted_latents.device)
    decoded = decode_latents(vae, predicted_latents)
    target = decoder_images(pixel_values, mean, std, decoded.shape[-1])
    per_image = (decoded - target).square().flatten(1).mean(1)
    return per_image.mean() if weights is None else (per_image * weights.to(per_image.dtype)).mean()


class Attention(torch.nn.Module):
    """Multi-head attention over ``scaled_dot_product_attention`` (self- or cross-attention).

    ``attention_mask`` is boolean ``[B, Lk]`` (True = attend) or ``[B, Lq, Lk]`` / ``[B, 1, Lq, Lk]``,
    or an additive float mask broadcastable to ``[B, heads, Lq, Lk]``.
    """

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None, bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"`dim` ({dim}) must be divisible by `num_heads` ({num_heads}).")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        context_dim = dim if context_dim is None else context_dim
        self.to_q = torch.nn.Linear(dim, dim, bias=bias)
        self.to_k = torch.nn.Linear(context_dim, dim, bias=bias)
        self.to_v = torch.nn.Linear(context_dim, dim, bias=bias)
        self.to_out = torch.nn.Linear(dim, dim, bias=bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, hidden_states, context=None, attention_mask=None, is_causal: bool = False):
        context = hidden_states if context is None else context
        query, key, value = self._heads(self.to_q(hidden_states)), self._heads(self.to_k(context)), self._heads(self.to_v(context))
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            if attention_mask.ndim == 2:
                attention_mask = attention_mask[:, None, None, :]
            elif attention_mask.ndim == 3:
                attention_mask = attention_mask[:, None]
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, is_causal=is_causal and attention_mask is None
        )
        return self.to_out(out.transpose(1, 2).flatten(2))


class FeedForward(torch.nn.Sequential):
    """Two-layer GELU MLP."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None):
        super().__init__(
            torch.nn.Linear(dim, hidden_dim), torch.nn.GELU(), torch.nn.Linear(hidden_dim, out_dim or dim)
        )


class TransformerBlock(torch.nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        context_dim: int | None = None,
        cross_attention: bool = False,
    ):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.cross_attn = Attention(dim, num_heads, context_dim) if cross_attention else None
        self.norm_cross = torch.nn.LayerNorm(dim) if cross_attention else None
        self.norm2 = torch.nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio))

    def forward(self, hidden_states, attention_mask=None, context=None, context_mask=None, is_causal=False):
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states), attention_mask=attention_mask, is_causal=is_causal)
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("`context` is required by a TransformerBlock built with cross_attention=True.")
            hidden_states = hidden_states + self.cross_attn(
                self.norm_cross(hidden_states), context=context, attention_mask=context_mask
            )
        return hidden_states + self.mlp(self.norm2(hidden_states))


# --------------------------------------------------------------------------------------------------
# Loading checks (issue 8: bad inputs). transformers' own errors for a folder that cannot be this model
# are unclear (an AttributeError for a config of another model type, a SafetensorError that does not name
# the file, a RuntimeError pointing at a log report), and `ignore_mismatched_sizes=True` would silently
# re-initialise a codebook whose size disagrees with config.json. Each family's `XPreTrainedModel` inherits
# `CheckedLoadingMixin` through `VTokPreTrainedModel`.
# --------------------------------------------------------------------------------------------------


class CheckpointMismatchError(ValueError, RuntimeError):
    """A saved folder does not fit the class or config loading it (also a ``RuntimeError``, the type
    transformers raises for a size mismatch, so existing handlers keep working)."""


def _local_folder(path, subfolder: str | None) -> str | None:
    import os

    if not isinstance(path, (str, os.PathLike)):
        return None
    folder = os.path.join(os.fspath(path), subfolder or "")
    return folder if os.path.isdir(folder) else None


def check_pretrained_folder(path, model_class, *, subfolder: str | None = None, check_model_type: bool = True) -> None:
    """Raise a clear error before ``from_pretrained`` reads a local folder that cannot hold ``model_class``.

    Checks ``config.json`` (valid JSON, ``model_type`` equal to the class's) and every ``model*.safetensors``
    file (a readable header covering the whole file: truncated or garbage files fail here). Hub ids and
    missing folders are left to transformers.
    """
    import glob
    import json
    import os

    folder = _local_folder(path, subfolder)
    if folder is None:
        return
    config_file = os.path.join(folder, "config.json")
    if check_model_type and os.path.isfile(config_file):
        try:
            with open(config_file, encoding="utf-8") as handle:
                saved = json.load(handle)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointMismatchError(
                f"`pretrained_model_name_or_path`: {config_file!r} is not a valid JSON config ({error})."
            ) from None
        expected = getattr(getattr(model_class, "config_class", None), "model_type", None)
        found = saved.get("model_type") if isinstance(saved, dict) else None
        if expected and found != expected:
            raise CheckpointMismatchError(
                f"`pretrained_model_name_or_path` {os.fspath(path)!r} holds a {found!r} checkpoint (model_type in "
                f"config.json), but {model_class.__name__} loads {expected!r} checkpoints; load it with "
                "`AutoModel.from_pretrained` or the class of that model type."
            )
    for weights in sorted(glob.glob(os.path.join(folder, "model*.safetensors"))):
        try:
            check_safetensors_file(weights, name="pretrained_model_name_or_path")
        except ValueError as error:
            raise CheckpointMismatchError(str(error)) from None


class CheckedLoadingMixin:
    """``from_pretrained`` with the checks of :func:`check_pretrained_folder`, and strict codebooks.

    A weight whose saved shape differs from the one the config builds raises a
    :class:`CheckpointMismatchError` naming the tensor and both shapes; for codebooks (any tensor under a
    module named ``codebook``/``codebooks``) it raises even with ``ignore_mismatched_sizes=True``, since a
    re-initialised codebook gives every id a random meaning. A tokenizer weight the checkpoint lacks raises too
    (a config.json field such as ``token_embedding_dim`` edited to build a layer the saved model never had);
    only the training wrapper's own parts (decoder, teacher) may be missing, e.g. when it starts from an
    exported tokenizer. A model lists in ``_config_fields_in_shapes`` the weights whose shape records a config field
    (``{"quantizer.codebook_usage": ("rvq_depths", 0)}``: dimension 0 is ``rvq_depths``); a mismatch there names it.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        # an explicit `config=` means the caller chose the model type (the Auto classes pass one)
        check_pretrained_folder(
            pretrained_model_name_or_path, cls, subfolder=kwargs.get("subfolder"), check_model_type="config" not in kwargs
        )
        # Load with mismatches allowed and inspect them here, so that the error names every tensor and codebooks
        # stay strict whatever the caller asked for.
        ignore_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(
            pretrained_model_name_or_path, *args, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs
        )
        external = external_vision_state(model.config)
        if external is not None:  # a folder without its frozen vision encoder (post_init hid those keys): rebuild it
            model._tokenizer_part().vision_model.load_state_dict(external)
        records = getattr(cls, "_config_fields_in_shapes", {})

        def recorded_field(key: str) -> tuple[str, int] | None:  # the config field a weight's shape records, if any
            return next((record for suffix, record in records.items() if key == suffix or key.endswith(f".{suffix}")), None)

        mismatched = sorted(loading_info.get("mismatched_keys") or (), key=lambda item: item[0])
        for key, saved, built in mismatched:  # a weight whose shape records a config field: name the field
            name, dim = recorded_field(key) or (None, 0)
            if name is not None and saved[dim] != built[dim]:
                raise CheckpointMismatchError(
                    f"{cls.__name__}.from_pretrained({str(pretrained_model_name_or_path)!r}): `{name}` in config.json "
                    f"must be {saved[dim]}, the value the checkpoint was saved with (`{key}` has shape {tuple(saved)}), "
                    f"got {built[dim]}; restore it."
                )
        tokenizer_prefix = "" if isinstance(model, VisualTokenizerMixin) else f"{model.base_model_prefix}."
        missing = sorted(key for key in loading_info.get("missing_keys") or () if key.startswith(tokenizer_prefix))
        older = [key for key in missing if recorded_field(key)]
        if older:  # saved before these records existed: load (they start at zero) but say what cannot be checked
            logger.warning(
                "%s.from_pretrained(%r): the checkpoint predates %s, so %s in config.json cannot be checked against the "
                "saved weights; re-save it with save_pretrained to record it.",
                cls.__name__, str(pretrained_model_name_or_path), ", ".join(f"`{k}`" for k in older),
                ", ".join(sorted({f"`{recorded_field(k)[0]}`" for k in older})),
            )  # fmt: skip
            missing = [key for key in missing if key not in older]
        if missing:
            shown = ", ".join(f"`{key}`" for key in missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
            raise CheckpointMismatchError(
                f"{cls.__name__}.from_pretrained({str(pretrained_model_name_or_path)!r}): the checkpoint has no {shown}, "
                "which config.json builds: a shape-defining field of config.json (e.g. `token_embedding_dim`, "
                "`rvq_depths` with per-depth codebooks) differs from the saved model's; restore it."
            )
        strict = [item for item in mismatched if "codebook" in item[0]]
        if mismatched and (strict or not ignore_mismatched_sizes):
            shown = strict or mismatched
            details = "; ".join(
                f"`{key}` is {tuple(saved)} in the checkpoint but {tuple(built)} in the model" for key, saved, built in shown[:5]
            )
            more = f" (and {len(shown) - 5} more)" if len(shown) > 5 else ""
            hint = (
                " A codebook is never re-initialised, even with `ignore_mismatched_sizes=True`: every id would lose its "
                "meaning; make `codebook_size`/`codebook_dim` in config.json match the saved weights."
                if strict
                else " config.json does not describe these weights; fix it (or pass `ignore_mismatched_sizes=True` to "
                "re-initialise those tensors on purpose)."
            )
            raise CheckpointMismatchError(
                f"{cls.__name__}.from_pretrained({str(pretrained_model_name_or_path)!r}): {details}{more}.{hint}"
            )
        return (model, loading_info) if output_loading_info else model

    def _tokenizer_part(self):
        """The tokenizer itself, or the one a training wrapper holds under ``base_model_prefix``."""
        return self if isinstance(self, VisualTokenizerMixin) else getattr(self, self.base_model_prefix)

    def post_init(self):
        super().post_init()
        if getattr(self.config, "external_vision_weights", None):  # left out on purpose, rebuilt by from_pretrained
            self._keys_to_ignore_on_load_missing.add(r"(^|\.)vision_model\.")

    def save_pretrained(self, save_directory, *args, **kwargs):
        # a config that names an external source for the frozen vision encoder: its weights stay out of the folder
        external = check_external_vision_weights(getattr(self.config, "external_vision_weights", None))
        if external is not None and kwargs.get("state_dict") is None:
            tokenizer = self._tokenizer_part()
            if vision_weights_fingerprint(tokenizer.vision_model.state_dict()) != external["sha256"]:
                raise ValueError(
                    f"The vision encoder's weights changed since `external_vision_weights` ({external['source']}) was "
                    "recorded (was it unfrozen?): they would be lost. Set `config.external_vision_weights = None` to "
                    "save them in the folder."
                )
            prefix = f"{'' if tokenizer is self else self.base_model_prefix + '.'}{VISION_PREFIX}"
            kwargs["state_dict"] = {k: v for k, v in self.state_dict().items() if not k.startswith(prefix)}
        return super().save_pretrained(save_directory, *args, **kwargs)


class VTokPreTrainedModel(CheckedLoadingMixin, PreTrainedModel):  # clear loading errors (issue 8)
    """Base of each family's ``XPreTrainedModel``: images in, the tokenizer under ``tokenizer`` in training wrappers."""

    base_model_prefix = "tokenizer"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def _pretraining_draws(self, kwargs: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``noise`` and ``timesteps`` from the ``**kwargs`` of a pre-training ``forward``; any other key raises.
        Given both, an eval-mode step is deterministic. Checked against the decoder input by
        :func:`check_diffusion_draws`."""
        unexpected = sorted(set(kwargs) - set(PreTrainingKwargs.__annotations__))
        if unexpected:
            import inspect

            expected = [name for name in inspect.signature(self.forward).parameters if name != "kwargs"]
            raise TypeError(
                f"{type(self).__name__}.forward got unexpected batch keys {unexpected}; expected "
                f"{', '.join(expected + ['noise', 'timesteps'])}."
            )
        return kwargs.get("noise"), kwargs.get("timesteps")
