"""The DDT tokenizer (section 3 and appendix A.1 of the paper) and its end-to-end training wrapper.

Encoder: patchified image tokens (2D sinusoidal positions) and ``T`` learnable queries (1D sinusoidal
positions) run through two transformers with separate weights whose sequences are joined for every
attention (MMDiT style, without timestep conditioning); only the query outputs are kept.
Quantizer: linear projection to ``codebook_dim`` = 16 dimensions, L2 normalisation, nearest code by cosine similarity in a
65536-entry EMA codebook, commitment loss, dead codes reset to batch vectors at every step.
Training (:class:`DDTTokenizerForPreTraining`): rectified flow ``x_t = t·ε + (1-t)·x_0``; the MMDiT decoder
predicts the velocity ``ε - x_0`` from ``x_t``, ``t`` and the first ``k(t)`` tokens only, everything
trained end to end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Unpack

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel  # noqa: F401 - diffusers' loader looks it up here
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import can_return_tuple

from ...utils import modeling_utils as vtok
from ...utils.modeling_utils import sinusoidal_embedding_1d, sinusoidal_embedding_2d
from ...utils.quantizers import Codebook, VectorQuantizer, _usage_statistics
from ...utils.validation import check_tensor, describe
from .configuration_ddt import DDTTokenizerConfig
from .modeling_ddt_decoder import (
    MLP,
    DDTDecoderTransformer,
    DDTTokenConditioner,
    coarse_to_fine_order,
    init_ddt_module,
    joint_attention,
    token_anchor_distances,
)


class DDTPreTrainedModel(vtok.VTokPreTrainedModel):
    config_class = DDTTokenizerConfig
    config: DDTTokenizerConfig
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["DDTEncoderLayer", "DDTJointTransformerBlock"]
    # nearest-code search must not depend on the model dtype
    _keep_in_fp32_modules_strict: ClassVar[list[str]] = ["codebook"]

    def _init_weights(self, module):
        if isinstance(module, Codebook):
            module.reset_parameters()
        init_ddt_module(module, self.config.initializer_range)


def query_anchor_patches(num_patches: int, num_queries: int, device=None) -> torch.LongTensor:
    """Each query's anchor patch: query ``i`` sits at the ``i mod num_patches``-th patch of
    :func:`coarse_to_fine_order` (the anchors the decoder's ``token_locality_prior`` uses too), ``[num_queries]``."""
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"Query anchors need a square patch grid, got {num_patches} patches.")
    return coarse_to_fine_order(side).to(device)[torch.arange(num_queries, device=device) % num_patches]


def query_anchor_distances(num_patches: int, num_queries: int, device=None) -> torch.Tensor:
    """Squared distance (in patches) from each query's anchor patch to every patch: ``[num_queries, num_patches]``
    (anchors as in :func:`query_anchor_patches`)."""
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"`query_locality_prior` needs a square patch grid, got {num_patches} patches.")
    return token_anchor_distances(num_queries, side, side, side, device).T


class DDTEncoderLayer(GradientCheckpointingLayer):
    """One layer of the two-stream encoder: image and query streams with separate norms, QKV, output
    projections and MLPs, one joint attention.

    ``image_pre_only`` (last layer): the image stream only provides keys/values, since only the query
    outputs are kept. ``query_adaptive_norm`` (successor code): the query norms are modulated by a
    projection of the query's position embedding (zero-initialised, so the layer starts plain).
    """

    def __init__(self, config: DDTTokenizerConfig, image_pre_only: bool = False):
        super().__init__()
        dim, eps = config.hidden_size, config.layer_norm_eps
        hidden = int(dim * config.mlp_ratio)
        self.num_heads = config.num_attention_heads
        self.image_pre_only = image_pre_only
        self.adaptive = config.query_adaptive_norm
        self.image_norm1 = nn.LayerNorm(dim, eps=eps)
        self.image_qkv = nn.Linear(dim, 3 * dim)
        if not image_pre_only:
            self.image_out = nn.Linear(dim, dim)
            self.image_norm2 = nn.LayerNorm(dim, eps=eps)
            self.image_mlp = MLP(dim, hidden)
        self.query_norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=not self.adaptive)
        self.query_qkv = nn.Linear(dim, 3 * dim)
        self.query_out = nn.Linear(dim, dim)
        self.query_norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=not self.adaptive)
        self.query_mlp = MLP(dim, hidden)
        if self.adaptive:
            self.query_modulation = nn.Linear(dim, 6 * dim)
            self.query_modulation._zero_init = True

    def forward(self, image_states, query_states, query_positions, attention_mask=None):
        if self.adaptive:
            mods = self.query_modulation(F.silu(query_positions)).unsqueeze(0).chunk(6, dim=-1)
        else:
            mods = (0.0,) * 6
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        image_in = self.image_norm1(image_states)
        query_in = self.query_norm1(query_states) * (1 + scale1) + shift1
        image_attn, query_attn = joint_attention(
            [self.image_qkv(image_in).chunk(3, dim=-1), self.query_qkv(query_in).chunk(3, dim=-1)],
            self.num_heads,
            attention_mask,
        )
        query_states = query_states + (1 + gate1) * self.query_out(query_attn)
        query_states = query_states + (1 + gate2) * self.query_mlp(
            self.query_norm2(query_states) * (1 + scale2) + shift2
        )
        if self.image_pre_only:
            return image_states, query_states
        image_states = image_states + self.image_out(image_attn)
        image_states = image_states + self.image_mlp(self.image_norm2(image_states))
        return image_states, query_states


class DDTTokenizerModel(DDTPreTrainedModel, vtok.VisualTokenizerMixin):
    """Image → ``T`` recursive discrete tokens.

    ``encode(pixel_values)`` returns :class:`VisualTokens` with ``ids`` `[B, T]` (token ``i`` is the paper's
    ``V_{i+1}``: visible to the decoder once ``t >= (i+1)/T`` with the uniform schedule), ``embeddings``
    `[B, T, codebook_dim]` = ``embed_ids(ids)`` (the unit-norm codes the decoder consumes, one per id), an all-ones
    ``attention_mask`` and no ``assignments``. ``pixel_values`` are `[B, 3, image_size, image_size]`
    normalised to [-1, 1] by :class:`DDTImageProcessor`.
    """

    # loading the tokenizer alone from a DDTTokenizerForPreTraining checkpoint skips the decoder weights
    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [r"^transformer\.", r"^conditioner\."]

    def __init__(self, config: DDTTokenizerConfig):
        super().__init__(config)
        dim = config.hidden_size
        self.vision_model = None
        if config.vision_config is not None:
            self.vision_model = AutoModel.from_config(config.vision_config)
            vision_patch = getattr(config.vision_config, "patch_size", None)
            if isinstance(vision_patch, int) and config.image_size % vision_patch:
                raise ValueError(
                    f"`image_size` ({config.image_size}) must be divisible by the vision encoder's patch_size "
                    f"({vision_patch})."
                )
            self.vision_grid = config.image_size // vision_patch if isinstance(vision_patch, int) else None
            self.patch_embed = nn.Linear(config.vision_config.hidden_size, dim)
            if config.freeze_vision_encoder:
                self.vision_model.requires_grad_(False)
        else:
            self.vision_grid = config.image_size // config.patch_size
            self.patch_embed = nn.Conv2d(config.num_channels, dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.queries = nn.Parameter(torch.zeros(config.num_visual_tokens, dim))
        self._normal_init_parameters = ("queries",)
        self.layers = nn.ModuleList(
            DDTEncoderLayer(config, image_pre_only=i == config.num_hidden_layers - 1)
            for i in range(config.num_hidden_layers)
        )
        self.norm_out = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        # the paper's linear projection from the n-d encoder output to the m = 16-d code space
        self.quant_proj = nn.Linear(dim, config.codebook_dim)
        self.quantizer = VectorQuantizer(
            config.codebook_dim,
            config.codebook_size,
            code_dim=config.codebook_dim,
            distance="cosine",
            commitment_weight=config.commitment_weight,
            use_ema=True,
            ema_decay=config.codebook_ema_decay,
            kmeans_init=config.codebook_kmeans_init,
            kmeans_iters=config.codebook_kmeans_iters,
            dead_code_threshold=config.codebook_dead_code_threshold,
        )
        self.post_init()

    # ------------------------------------------------------------------ encoder
    def get_image_features(self, pixel_values: torch.Tensor) -> BaseModelOutput:
        """The image stream's input: embedded patches (of the pixels, or of the optional vision encoder's patch
        features) plus 2D sinusoidal positions, ``last_hidden_state`` `[B, num_patches, hidden_size]`."""
        if self.vision_model is None:
            tokens = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)
            grid = self.vision_grid
        else:
            cfg = self.config
            vmean = torch.tensor(cfg.vision_image_mean, device=pixel_values.device)[:, None, None]
            vstd = torch.tensor(cfg.vision_image_std, device=pixel_values.device)[:, None, None]
            vision_pixels = (vtok.unnormalize(pixel_values.float(), cfg.image_mean, cfg.image_std) - vmean) / vstd
            vision_dtype = next(self.vision_model.parameters()).dtype
            with torch.set_grad_enabled(torch.is_grad_enabled() and not cfg.freeze_vision_encoder):
                features = self.vision_model(pixel_values=vision_pixels.to(vision_dtype)).last_hidden_state
            grid = self.vision_grid or round(features.shape[1] ** 0.5)
            # drop CLS / register tokens: they precede the patch tokens (Dinov2, ViT, SigLIP has none)
            features = features[:, features.shape[1] - grid * grid :]
            tokens = self.patch_embed(features.to(self.patch_embed.weight.dtype))
        positions = sinusoidal_embedding_2d(grid, grid, self.config.hidden_size, device=tokens.device)
        return BaseModelOutput(last_hidden_state=tokens + positions.to(tokens.dtype))

    def _encoder_attention_mask(self, num_image: int, device, dtype) -> torch.Tensor | None:
        """None (full joint attention), or an additive ``[L, L]`` bias over the image + query streams."""
        config = self.config
        priors = config.query_locality_prior or config.query_query_locality_prior
        if config.image_attends_to_queries and not priors:
            return None
        total = num_image + config.num_visual_tokens
        bias = torch.zeros(total, total, dtype=dtype, device=device)
        if not config.image_attends_to_queries:
            bias[:num_image, num_image:] = float("-inf")  # successor code: image tokens do not see the queries
        if priors:
            distances = query_anchor_distances(num_image, config.num_visual_tokens, device).to(dtype)  # [T, P]
            bias[num_image:, :num_image] = -config.query_locality_prior * distances
            if config.query_query_locality_prior:  # query i -> query j: from i's anchor to j's anchor patch
                anchors = query_anchor_patches(num_image, config.num_visual_tokens, device)
                bias[num_image:, num_image:] = -config.query_query_locality_prior * distances[:, anchors]
        return bias

    def get_input_embeddings(self) -> nn.Module:
        """The patch embedding whose output the first encoder layer reads (what `enable_input_require_grads` hooks)."""
        return self.patch_embed

    def encode_features(self, pixel_values: torch.Tensor, output_hidden_states: bool = False):
        """Continuous encoder outputs ``(V̂_1..V̂_T)`` projected to the code space: `[B, T, codebook_dim]`
        (before L2 normalisation and quantization); with ``output_hidden_states`` also the query stream's hidden
        states (entering each layer, and leaving the last)."""
        pixel_values = self._check_pixel_values(pixel_values)
        image = self.get_image_features(pixel_values).last_hidden_state
        positions = sinusoidal_embedding_1d(
            torch.arange(self.config.num_visual_tokens, device=image.device), self.config.hidden_size
        ).to(image.dtype)
        queries = (self.queries.to(image.dtype) + positions).unsqueeze(0).expand(image.shape[0], -1, -1)
        if self.config.query_anchor_init:
            queries = queries + image[:, query_anchor_patches(image.shape[1], queries.shape[1], image.device)]
        mask = self._encoder_attention_mask(image.shape[1], image.device, image.dtype)
        hidden_states = [queries]
        for layer in self.layers:
            image, queries = layer(image, queries, positions, mask)
            hidden_states.append(queries)
        z = self.quant_proj(self.norm_out(queries))
        return (z, tuple(hidden_states)) if output_hidden_states else z

    # ------------------------------------------------------------------ quantizer
    def _relative_dead_code_threshold(self, num_vectors: int) -> None:
        """Express ``codebook_dead_code_threshold`` as a fraction of a code's expected usage per step."""
        if not self.config.codebook_dead_code_threshold_relative:
            return
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        expected = num_vectors * world / self.config.codebook_size
        codebook = self.quantizer.codebook
        codebook.dead_code_threshold = self.config.codebook_dead_code_threshold * expected
        if bool(codebook.initialized) and bool((codebook.cluster_size == 1.0).all()):
            # A fresh codebook counts one use per code; start its EMA usage at the expected rate instead, so
            # a code that is never picked falls under the threshold after ~log(1/threshold)/(1-decay) steps
            # rather than waiting for an arbitrary initial count to decay (the rich-get-richer collapse of EMA
            # codebooks happens within tens of steps).
            codebook.cluster_size.fill_(expected)
            codebook.embed_sum.copy_(codebook.weight.detach() * expected)

    def quantize(self, pixel_values: torch.Tensor):
        """Training-time quantization: ``(codes [B, T, codebook_dim] with straight-through gradients,
        QuantizerOutput)``. In training mode the EMA codebook is updated and dead codes are revived."""
        z = self.encode_features(pixel_values)
        if self.training:
            self._relative_dead_code_threshold(z.shape[0] * z.shape[1])
        output = self.quantizer(z)
        return output.quantized, output, z

    def dead_code_count(self) -> torch.LongTensor:
        """Codes at or below the dead-code threshold (those just revived included)."""
        codebook = self.quantizer.codebook
        return (codebook.cluster_size <= codebook.dead_code_threshold * (1 + 1e-6)).sum()

    def entropy_loss(self, z: torch.Tensor) -> torch.Tensor:
        """Successor code's codebook-entropy term: mean per-token entropy minus the entropy of the batch's
        mean soft assignment (cosine similarities / ``entropy_temperature``). Costs tokens x codebook_size."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = F.normalize(z.float().reshape(-1, z.shape[-1]), dim=-1)
            logits = z @ self.quantizer.codebook.codes.float().t() / self.config.entropy_temperature
            log_probs = logits.log_softmax(dim=-1)
            probs = log_probs.exp()
            per_token = -(probs * log_probs).sum(-1).mean()
            mean_probs = probs.mean(0)
            batch_entropy = -(mean_probs * mean_probs.clamp(min=1e-12).log()).sum()
        return per_token - batch_entropy

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> vtok.VisualTokens:
        """``pixel_values`` `[B, 3, H, W]` → :class:`VisualTokens` (ids `[B, T]` in recursive order)."""
        return self(pixel_values, return_dict=True)

    def embed_ids(self, ids: torch.LongTensor) -> torch.FloatTensor:
        """Codebook ids `[B, T]` → unit-norm codes `[B, T, codebook_dim]` (float32, the decoder's input)."""
        ids = self._check_ids(ids, name="ids")
        return self.quantizer.decode(ids.to(self.quantizer.codebook.weight.device))

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> vtok.VisualTokens:
        """Same as :meth:`encode` (no codebook update); also reports the commitment loss and, when asked, the
        encoder's query-stream ``hidden_states`` (``num_hidden_layers + 1`` tensors `[B, T, hidden_size]`)."""
        z, hidden_states = self.encode_features(pixel_values, output_hidden_states=True)
        ids = self.quantizer.encode(z)
        out = self._discrete_tokens(
            ids, torch.arange(ids.shape[1])[None], hidden_states=hidden_states if output_hidden_states else None
        )  # one code per id
        commitment = F.mse_loss(F.normalize(z.float(), dim=-1), out.embeddings.detach().float())
        out.quantization_loss = self.config.commitment_weight * commitment
        return out


@dataclass
class DDTTokenizerForPreTrainingOutput(vtok.VTokPreTrainingOutput):
    """Output of :class:`DDTTokenizerForPreTraining`.

    Args:
        loss: ``diffusion_loss_weight · diffusion_loss + commitment_weight · commitment_loss
            + entropy_loss_weight · entropy_loss + pixel_loss_weight · pixel_loss``.
        diffusion_loss: rectified-flow MSE (velocity or x0 space, ``config.loss_target``).
        pixel_loss: MSE in [-1, 1] pixels between the VAE-decoded ``x̂_0`` and the image, on the first
            ``pixel_loss_max_images`` images (0 when ``pixel_loss_weight`` is 0).
        commitment_loss: ``||ẑ - sg(e)||²`` (unweighted, mean over tokens and code dimensions).
        entropy_loss: the optional codebook-entropy term (0 when its weight is 0).
        perplexity: ``exp(entropy)`` of this batch's code histogram.
        codebook_usage: fraction of the codebook used by this batch.
        dead_codes: codes at or below the dead-code threshold after this step (just revived included).
        num_visible_tokens: ``k(t)`` of each sample (0 for condition-dropped samples).
        timesteps: the noise levels ``t`` in [0, 1] of each sample.
        ids: the token ids of each image.
    """

    diffusion_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    entropy_loss: torch.FloatTensor | None = None
    pixel_loss: torch.FloatTensor | None = None
    perplexity: torch.FloatTensor | None = None
    codebook_usage: torch.FloatTensor | None = None
    dead_codes: torch.LongTensor | None = None
    num_visible_tokens: torch.LongTensor | None = None
    timesteps: torch.FloatTensor | None = None
    ids: torch.LongTensor | None = None


class DDTTokenizerForPreTraining(DDTPreTrainedModel):
    """Tokenizer + MMDiT decoder trained end to end with the prefix-masked rectified-flow loss.

    Batch keys (what a collator must produce): ``pixel_values`` `[B, 3, image_size, image_size]` in
    [-1, 1] (:class:`DDTImageProcessor`). With a latent-space decoder (``decoder_config["vae_scale_factor"]
    > 1``, the paper setting) also ``latents`` `[B, in_channels, sample_size, sample_size]` (VAE latents,
    already shifted/scaled), unless a VAE was given with :meth:`attach_vae`. Optional for tests/analysis:
    ``timesteps`` `[B]` in [0, 1] and ``noise`` shaped like the decoder input.

    Submodules: ``tokenizer`` (:class:`DDTTokenizerModel`), ``conditioner`` (:class:`DDTTokenConditioner`),
    ``transformer`` (:class:`DDTDecoderTransformer`). ``get_decoder_pipeline()`` wraps the same objects in a
    :class:`DDTDecoderPipeline`; ``model.tokenizer.save_pretrained(dir)`` exports the tokenizer alone.

    Stages (``config.stage`` / :meth:`set_stage`): 1 = everything trains (the paper); 2 = the
    tokenizer is frozen (no gradient, no codebook update) and only the decoder trains.
    """

    def __init__(self, config: DDTTokenizerConfig):
        super().__init__(config)
        self.tokenizer = DDTTokenizerModel(config)
        self.conditioner = DDTTokenConditioner(**config.conditioner_kwargs())
        self.transformer = DDTDecoderTransformer(**config.transformer_kwargs())
        self._vae = None
        self.post_init()
        self.set_stage(config.stage)

    # ------------------------------------------------------------------ stages and helpers
    def set_stage(self, stage: int) -> DDTTokenizerForPreTraining:
        """1: train tokenizer and decoder end to end; 2: freeze the tokenizer, train the decoder."""
        if stage not in (1, 2):
            raise ValueError(f"`stage` must be 1 (end to end) or 2 (decoder only), got {describe(stage)}.")
        self.config.stage = stage
        self.conditioner.requires_grad_(True)
        self.transformer.requires_grad_(True)
        self.tokenizer.requires_grad_(stage == 1)
        # the EMA codebook never takes gradients; an optional vision encoder stays frozen if configured so
        self.tokenizer.quantizer.codebook.weight.requires_grad_(False)
        if self.tokenizer.vision_model is not None and self.config.freeze_vision_encoder:
            self.tokenizer.vision_model.requires_grad_(False)
        return self

    def attach_vae(self, vae) -> None:
        """Use a (frozen) diffusers ``AutoencoderKL`` to encode ``pixel_values`` to decoder latents when the
        batch has no ``latents``. The VAE is not a submodule: it is neither trained nor saved here."""
        if vae is not None and not hasattr(vae, "encode"):
            raise TypeError(f"`vae` must be a diffusers AutoencoderKL (or None), got {describe(vae)}.")
        if vae is not None:
            vae.requires_grad_(False)
        self.__dict__["_vae"] = vae  # plain attribute: `self._vae = vae` would register it as a submodule (saved, moved)

    def get_decoder_pipeline(self, *, scheduler=None, vae=None):
        """A :class:`DDTDecoderPipeline` sharing this model's tokenizer, conditioner and transformer; ``scheduler``
        defaults to flow-matching Euler with the configured shift, ``vae`` to the one given to :meth:`attach_vae`."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        from .pipeline_ddt import DDTDecoderPipeline

        if scheduler is None:
            scheduler = FlowMatchEulerDiscreteScheduler(**self.config.scheduler_kwargs())
        vae = vae if vae is not None else self._vae
        return DDTDecoderPipeline(
            tokenizer=self.tokenizer, conditioner=self.conditioner, transformer=self.transformer, scheduler=scheduler, vae=vae
        )

    def _sample_timesteps(self, batch: int, device) -> torch.Tensor:
        cfg = self.config
        if cfg.timestep_sampling == "logit_normal":
            t = torch.sigmoid(torch.randn(batch, device=device) * cfg.logit_std + cfg.logit_mean)
        else:
            t = torch.rand(batch, device=device)
        shift = cfg.timestep_shift
        if shift != 1.0:
            t = shift * t / (1 + (shift - 1) * t)
        return t

    def _decoder_target(self, pixel_values: torch.Tensor, latents: torch.Tensor | None) -> torch.Tensor:
        d = self.config.decoder_config
        expected = (d.in_channels, d.sample_size, d.sample_size)
        if latents is not None:
            check_tensor("latents", latents, ndim=4, floating=True, finite=True)
            if tuple(latents.shape[1:]) != expected or latents.shape[0] != pixel_values.shape[0]:
                raise ValueError(
                    f"`latents` must have shape [{pixel_values.shape[0]}, {', '.join(map(str, expected))}], "
                    f"got {tuple(latents.shape)}."
                )
            return latents
        if self.config.decoder_in_pixel_space:
            return pixel_values
        if self._vae is None:
            raise ValueError(
                "`latents` is required: the decoder works on VAE latents "
                f'(decoder_config["vae_scale_factor"] = {d.vae_scale_factor}); pass `latents` in the batch or '
                "call `attach_vae(vae)`."
            )
        return vtok.encode_latents(self._vae, pixel_values)

    def _pixel_loss(self, x0_prediction: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixel MSE of the VAE-decoded ``x̂_0`` against the image (``config.pixel_loss_weight``)."""
        if self._vae is None:
            raise ValueError(
                f"`pixel_loss_weight` is {self.config.pixel_loss_weight}, but no VAE decodes the predicted latents: "
                "call `attach_vae(vae)` with the frozen autoencoder of the decoder's latent space."
            )
        return vtok.decoded_pixel_loss(self._vae, x0_prediction, pixel_values, self.config.image_mean, self.config.image_std)

    # ------------------------------------------------------------------ training step
    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        latents: torch.Tensor | None = None,
        return_loss: bool = True,  # tells transformers.Trainer that the loss needs no labels
        **kwargs: Unpack[vtok.PreTrainingKwargs],
    ) -> DDTTokenizerForPreTrainingOutput:
        """One rectified-flow step: ``loss`` and its components (see the class docstring for the keys)."""
        noise, timesteps = self._pretraining_draws(kwargs)
        pixel_values = self.tokenizer._check_pixel_values(pixel_values)
        cfg = self.config
        batch = pixel_values.shape[0]
        if cfg.stage == 1:
            codes, quantized, z = self.tokenizer.quantize(pixel_values)
            commitment = quantized.commitment_loss
            quantization_loss = quantized.loss
            ids, perplexity, usage = quantized.ids, quantized.perplexity, quantized.usage
        else:
            with torch.no_grad():
                tokens = self.tokenizer.encode(pixel_values)
            codes, ids, z = tokens.embeddings, tokens.ids, None
            commitment = quantization_loss = codes.new_zeros(())
            perplexity, usage = _usage_statistics(ids, cfg.codebook_size)  # what the quantizer reports in stage 1

        x0 = self._decoder_target(pixel_values, latents)
        vtok.check_diffusion_draws(noise, timesteps, x0, num_train_timesteps=None)  # rectified flow: t in [0, 1]
        if timesteps is None:
            timesteps = self._sample_timesteps(batch, x0.device)
        timesteps = timesteps.to(device=x0.device, dtype=torch.float32)
        if noise is None:
            noise = torch.randn_like(x0)
        t = timesteps.view(-1, 1, 1, 1).to(x0.dtype)
        x_t = t * noise + (1 - t) * x0

        num_visible = self.conditioner.num_visible_tokens(timesteps)
        dropout = cfg.decoder_config.condition_dropout_prob
        if self.training and dropout > 0:
            dropped = torch.rand(batch, device=num_visible.device) < dropout
            num_visible = num_visible.masked_fill(dropped, 0)
        context, context_mask = self.conditioner(codes, num_visible)
        prediction = self.transformer(
            x_t,
            timestep=timesteps * cfg.decoder_config.num_train_timesteps,
            encoder_hidden_states=context,
            encoder_attention_mask=context_mask,
        ).sample

        x0_prediction = x_t - t * prediction  # x̂_0 = x_t - t·v̂
        if cfg.loss_target == "velocity":
            diffusion_loss = F.mse_loss(prediction.float(), (noise - x0).float())
        else:  # the paper's Eq. (1): || x̂_0 - x_0 ||²
            diffusion_loss = F.mse_loss(x0_prediction.float(), x0.float())
        entropy = codes.new_zeros(()).float()
        if cfg.entropy_loss_weight > 0 and z is not None:
            entropy = self.tokenizer.entropy_loss(z)
        pixel_loss = codes.new_zeros(()).float()
        if cfg.pixel_loss_weight > 0:
            pixel_loss = self._pixel_loss(x0_prediction[: cfg.pixel_loss_max_images], pixel_values[: cfg.pixel_loss_max_images])
        loss = (cfg.diffusion_loss_weight * diffusion_loss + quantization_loss + cfg.entropy_loss_weight * entropy
                + cfg.pixel_loss_weight * pixel_loss)  # fmt: skip

        return DDTTokenizerForPreTrainingOutput(
            loss=loss,
            diffusion_loss=diffusion_loss.detach(),
            commitment_loss=commitment.detach(),
            entropy_loss=entropy.detach(),
            pixel_loss=pixel_loss.detach(),
            perplexity=perplexity.detach(),
            codebook_usage=usage.detach(),
            dead_codes=self.tokenizer.dead_code_count(),
            num_visible_tokens=num_visible,
            timesteps=timesteps,
            ids=ids,
        )


__all__ = [
    "DDTPreTrainedModel",
    "DDTTokenizerForPreTraining",
    "DDTTokenizerForPreTrainingOutput",
    "DDTTokenizerModel",
]
