"""Configuration of the Discrete Diffusion Timestep (DDT) tokenizer (Pan et al., "Generative Multimodal
Pretraining with Discrete Diffusion Timestep Tokens", section 3 and appendix A.1).

Every default is the paper's value. Where the authors' public successor code does something else, the
difference is a flag documented next to the field (``token_schedule="staged"``, ``kmeans_init``,
``entropy_loss_weight``, ``image_attends_to_queries``, ``query_adaptive_norm``, ...).

Token order ("recursive"): token ``i`` (0-based) is the token the paper calls ``V_{i+1}``. At noise
level ``t`` (``x_t = t·ε + (1-t)·x_0``, ``t = 1`` is pure noise) the decoder sees the first ``k(t)``
tokens, ``k`` growing with ``t``: the first tokens compensate the attributes lost at small ``t`` (fine
detail), the last ones what is lost near pure noise (layout, colour). Feed ``ids.flip(-1)`` to a
language model if you want coarse-first sequences (what the successor code does for autoregression).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ...utils.configuration_utils import VTokConfig, VTokDecoderConfig, check_normalization
from ...utils.validation import check_choice, check_float, check_int, describe

TOKEN_SCHEDULES = ("uniform", "staged")
HIDDEN_TOKEN_MODES = ("mask", "zero")
LOSS_TARGETS = ("velocity", "x0")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")

# The successor code's stages for 512 tokens: tokens visible from t = 0 up to each boundary
# (192 tokens for t <= 0.2, 184 more up to 0.4, ...). Scaled to other token counts when
# ``staged_counts`` is not given.
RELEASED_STAGE_BOUNDARIES = (0.2, 0.4, 0.6, 0.8, 1.0)
RELEASED_STAGE_COUNTS = (192, 184, 72, 48, 16)

def scale_stage_counts(num_tokens: int, reference=RELEASED_STAGE_COUNTS) -> list[int]:
    """Scale stage sizes to ``num_tokens`` (largest-remainder rounding, at least one token per stage)."""
    num_stages = len(reference)
    if num_tokens < num_stages:
        raise ValueError(
            f"`num_visual_tokens` ({num_tokens}) is smaller than the number of stages ({num_stages}); "
            "pass `staged_counts` explicitly (one positive count per stage, summing to num_visual_tokens)."
        )
    total = sum(reference)
    exact = [num_tokens * count / total for count in reference]
    counts = [max(1, math.floor(value)) for value in exact]
    order = sorted(range(num_stages), key=lambda i: exact[i] - math.floor(exact[i]), reverse=True)
    index = 0
    while sum(counts) < num_tokens:
        counts[order[index % num_stages]] += 1
        index += 1
    index = 0
    while sum(counts) > num_tokens:  # only when the minimum of one token per stage overshot
        stage = sorted(range(num_stages), key=lambda i: counts[i], reverse=True)[index % num_stages]
        if counts[stage] > 1:
            counts[stage] -= 1
        index += 1
    return counts


class DDTDecoderConfig(VTokDecoderConfig):
    r"""The MMDiT decoder of [`DDTTokenizerForPreTraining`]: SD3's MMDiT at paper size (appendix A.1).

    Args:
        sample_size / patch_size / in_channels: the decoder input (latents, or pixels with ``vae_scale_factor=1``).
        num_layers / num_attention_heads / attention_head_dim / mlp_ratio / qk_norm: the joint blocks.
        token_position_embedding: 1D sinusoidal positions on the token stream (our choice: the codes alone do not
            say which timestep they belong to).
        hidden_token_mode: ``"mask"``: tokens past ``k(t)`` are removed from the attention keys; ``"zero"``:
            replaced by zero vectors that stay in the sequence, a literal reading of "masked as 0".
        vae_scale_factor: pixels per latent (1 = pixel space).
        num_train_timesteps: the timestep scale the transformer's embedding sees.
        condition_dropout_prob: probability of training a sample with no visible token (the null condition of
            classifier-free guidance; not in the paper, the usual 10%).
        token_locality_prior: departure from the paper (0 = off): each image patch's attention logits to the tokens
            are lowered by this value x the squared distance (in decoder patches) to the token's anchor, the patch
            that the encoder's ``query_locality_prior`` ties the token to; the decoder's half of breaking the
            symmetry in which every position reads all tokens alike (docs/ddt.md).
        token_anchor_injection: departure from the paper (off): each image patch also adds a linear projection of the
            visible tokens anchored in its cell to its input, so where a token is read is fixed by construction (the
            decoder's counterpart of the encoder's ``query_anchor_init``).
    """

    model_type = "ddt_decoder"

    sample_size: int = 32  # 256 px through an 8x VAE
    patch_size: int = 2
    in_channels: int = 16  # SD3's VAE latents
    num_layers: int = 24
    num_attention_heads: int = 24  # width 1536 = 24 heads x 64
    attention_head_dim: int = 64
    mlp_ratio: float = 4.0
    qk_norm: bool = False
    token_position_embedding: bool = True
    hidden_token_mode: str = "mask"
    vae_scale_factor: int = 8
    num_train_timesteps: int = 1000
    token_locality_prior: float = 0.0  # paper: 0 (every image patch attends to all tokens without a spatial prior)
    token_anchor_injection: bool = False  # paper: False (the tokens reach the image only through attention)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for key in ("sample_size", "patch_size", "in_channels", "num_layers", "num_attention_heads",
                    "attention_head_dim", "vae_scale_factor", "num_train_timesteps"):
            check_int(f'decoder_config["{key}"]', getattr(self, key), minimum=1)
        check_float('decoder_config["mlp_ratio"]', self.mlp_ratio, minimum=0.0, strict_minimum=True)
        check_float('decoder_config["token_locality_prior"]', self.token_locality_prior, minimum=0.0)
        check_choice('decoder_config["hidden_token_mode"]', self.hidden_token_mode, HIDDEN_TOKEN_MODES)
        if self.sample_size % self.patch_size:
            raise ValueError(
                f'`decoder_config["sample_size"]` ({self.sample_size}) must be divisible by '
                f'`decoder_config["patch_size"]` ({self.patch_size}).'
            )
        if self.hidden_size % 4:
            raise ValueError(
                'The decoder width (`decoder_config["num_attention_heads"]` x `decoder_config["attention_head_dim"]`) '
                f"must be divisible by 4 (2D sinusoidal positions), got {self.hidden_size}."
            )

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


class DDTTokenizerConfig(VTokConfig):
    r"""Configuration of [`DDTTokenizerModel`] and [`DDTTokenizerForPreTraining`].

    Encoder (appendix A.1):
        image_size (`int`, defaults to 256) / num_channels (`int`, defaults to 3): the input.
        patch_size (`int`, defaults to 8): ViT-style patches.
        num_visual_tokens (`int`, defaults to 480): T, the number of learnable queries = output tokens.
        hidden_size (`int`, defaults to 256): width of both encoder streams.
        num_hidden_layers (`int`, defaults to 20): layers of each of the two streams.
        num_attention_heads (`int`, defaults to 4): heads of the joint attention (not given in the paper;
            64-wide heads).
        mlp_ratio (`float`, defaults to 4.0).
        layer_norm_eps (`float`, defaults to 1e-6).
        image_attends_to_queries (`bool`, defaults to `True`): paper/SD3 joint attention in both
            directions. ``False`` reproduces the successor code, where image tokens do not attend to the
            queries.
        query_adaptive_norm (`bool`, defaults to `False`): successor code: each query stream norm is
            modulated (shift, scale, gate; zero-initialised) by a projection of the query's position.
        query_locality_prior (`float`, defaults to 0.0): departure from the paper (0 = off). Each query gets an
            anchor patch and, in every encoder layer, its attention logits to the image patches are lowered by
            ``query_locality_prior`` x the squared distance (in patches) to that anchor, so the queries start as
            different local summaries instead of the same average of the image (at 128 px with 192 tokens the
            paper's encoder gave an image 7 distinct codes among its tokens, docs/ddt.md). Anchors follow a
            coarse-to-fine order of the patch grid (bit-reversed Morton order), so every prefix of the recursive
            tokens covers the whole image; the content logits can still move a query anywhere.
        query_query_locality_prior (`float`, defaults to 0.0): departure from the paper (0 = off). The same prior on
            the queries' attention to each other (the squared distance between their anchors). With the query→image
            prior alone a query still spends most of its first-layer attention on the other queries, which all start
            alike (≈ 97 % with 192 queries and 64 patches, docs/ddt.md).
        query_anchor_init (`bool`, defaults to `False`): departure from the paper. Each query starts as its learned
            embedding plus the embedded patch at its anchor (3 queries per patch with 192 tokens on an 8 x 8 grid), so
            where a token's content comes from is fixed by construction, as in a convolutional tokenizer, instead of
            having to be found through soft attention (docs/ddt.md, "The token path, part by part").
        vision_config (`dict` or `PreTrainedConfig`, *optional*): the paper patchifies raw pixels (default
            ``None``). Set a transformers vision config (e.g. Dinov2) to feed that model's patch features to
            the image stream instead; CLS/register tokens are dropped.
        freeze_vision_encoder (`bool`, defaults to `True`): keep the optional vision encoder frozen.
        vision_image_mean / vision_image_std: the normalisation the optional vision encoder expects; the
            DDT pixels (normalised with ``image_mean``/``image_std``) are converted to it.
        image_mean / image_std (defaults to 0.5): pixels in [-1, 1], the diffusion decoder's data space.

    Quantizer (section 3, appendix A.1):
        codebook_size (`int`, defaults to 65536), codebook_dim (`int`, defaults to 16; the paper's m):
            cosine-similarity lookup of L2-normalised 16-d codes after a linear projection
            ``hidden_size -> codebook_dim``.
        codebook_ema_decay (`float`, defaults to 0.99): EMA codebook updates (decay not given in the paper;
            the successor code's value).
        codebook_dead_code_threshold (`float`, defaults to 0.1): codes whose EMA usage falls below this are
            reset to random encoder outputs of the batch at every step. With
            ``codebook_dead_code_threshold_relative`` it is a fraction of the expected usage of a code per step
            (tokens per step / codebook_size), otherwise an absolute EMA count.
        codebook_dead_code_threshold_relative (`bool`, defaults to `True`).
        codebook_kmeans_init (`bool`, defaults to `False`): successor code: initialise the codebook by
            k-means on the first batch (the paper does not).
        codebook_kmeans_iters (`int`, defaults to 10).
        commitment_weight (`float`, defaults to 0.25): weight of the commitment loss (mean over tokens and
            code dimensions; the paper does not give the weight).
        entropy_loss_weight (`float`, defaults to 0.0): successor code: weight of a codebook-entropy term
            (per-token entropy minus batch entropy of the soft assignments). Off in the paper. Its cost is
            ``tokens x codebook_size`` memory.
        entropy_temperature (`float`, defaults to 0.01): temperature of those soft assignments.

    Timestep tokens and the decoder (section 3):
        token_schedule (`str`, defaults to `"uniform"`): ``k(t)``, the number of visible tokens at noise
            level ``t``. ``"uniform"``: token ``i`` belongs to timestep ``i`` (the paper's ``(V_1..V_t)``):
            ``k(t) = clamp(ceil(t · T), 1, T)``. ``"staged"``: the successor code's piecewise-linear
            stages, see ``staged_boundaries``/``staged_counts``.
        staged_boundaries (`list[float]`, defaults to `(0.2, 0.4, 0.6, 0.8, 1.0)`): right ends of the
            stages, increasing, the last one 1.
        staged_counts (`list[int]`, *optional*): tokens added in each stage (sum = T). Defaults to the
            successor's 192/184/72/48/16 of 512 scaled to ``num_visual_tokens``.
        loss_target (`str`, defaults to `"velocity"`): the decoder predicts the rectified-flow velocity
            ``ε - x_0``; ``"velocity"`` regresses it directly, ``"x0"`` regresses the implied
            ``x̂_0 = x_t - t·v̂`` onto ``x_0`` as written in the paper's Eq. (1) (a ``t²``-weighted velocity
            loss).
        diffusion_loss_weight (`float`, defaults to 1.0).
        pixel_loss_weight (`float`, defaults to 0.0): departure from the paper (issue #16's lever for textures).
            With a latent-space decoder, also decode the implied ``x̂_0`` through the frozen VAE (given with
            ``attach_vae``) and add this weight times the pixel MSE to the image in [-1, 1]: the latent MSE alone
            pulls textures toward their mean. Off in the paper.
        pixel_loss_max_images (`int`, defaults to 4): at most this many images of each batch go through the VAE
            decoder for the pixel loss (its forward and backward cost about 0.13 s per 128 px image on one CPU
            thread, a whole batch of 16 more than doubles a step).
        timestep_sampling (`str`, defaults to `"uniform"`): ``t ~ U(0, 1)`` (rectified flow);
            ``"logit_normal"`` is SD3's choice.
        logit_mean / logit_std (`float`, 0.0 / 1.0): parameters of the logit-normal sampling.
        timestep_shift (`float`, defaults to 1.0): SD3 shift ``s·t / (1 + (s-1)·t)`` (1.0 at 256 px).
        decoder_config ([`DDTDecoderConfig`] or `dict`, *optional*): the MMDiT decoder and its
            ``condition_dropout_prob``; missing keys take the paper values.
        stage (`int`, defaults to 1): 1 = end-to-end (the paper); 2 = tokenizer frozen, decoder only (to
            fine-tune or swap a decoder on fixed tokens).

    API attributes: ``num_visual_tokens``, ``codebook_size``, ``token_order="recursive"``,
    ``token_embedding_dim`` (= ``codebook_dim``: ``VisualTokens.embeddings`` are the unit-norm 16-d codes the
    decoder consumes), ``num_channels``, ``image_size``.
    """

    model_type = "ddt_tokenizer"
    training_only_fields: ClassVar[tuple[str, ...]] = (
        *VTokConfig.training_only_fields, "entropy_temperature", "timestep_sampling", "logit_mean", "logit_std",
        "pixel_loss_max_images",
    )  # fmt: skip
    sub_configs_defaults: ClassVar[dict] = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="dinov2", optional=True),
        "decoder_config": SubConfigSpec(config_class=DDTDecoderConfig),
    }

    # encoder
    image_size: int = 256  # ImageNet 256 x 256 centre crops
    num_channels: int = 3
    patch_size: int = 8  # 32 x 32 = 1024 image tokens, the paper's R^{1024 x 256}
    num_visual_tokens: int = 480  # T
    hidden_size: int = 256
    num_hidden_layers: int = 20
    num_attention_heads: int = 4
    mlp_ratio: float = 4.0
    image_attends_to_queries: bool = True
    query_adaptive_norm: bool = False
    query_locality_prior: float = 0.0  # paper: 0 (queries attend to the image without a spatial prior)
    query_query_locality_prior: float = 0.0  # paper: 0 (queries attend to each other without a spatial prior)
    query_anchor_init: bool = False  # paper: False (the queries are learned embeddings only)
    vision_image_mean: list[float] | tuple[float, ...] = (0.485, 0.456, 0.406)
    vision_image_std: list[float] | tuple[float, ...] = (0.229, 0.224, 0.225)
    image_mean: list[float] | tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: list[float] | tuple[float, ...] = (0.5, 0.5, 0.5)
    # quantizer
    codebook_size: int = 65536
    codebook_dim: int = 16
    codebook_ema_decay: float = 0.99
    codebook_dead_code_threshold: float = 0.1
    codebook_dead_code_threshold_relative: bool = True
    codebook_kmeans_init: bool = False
    codebook_kmeans_iters: int = 10
    commitment_weight: float = 0.25
    entropy_loss_weight: float = 0.0
    entropy_temperature: float = 0.01
    # timestep tokens and decoder training
    token_schedule: str = "uniform"
    staged_boundaries: list[float] | tuple[float, ...] = RELEASED_STAGE_BOUNDARIES
    staged_counts: list[int] | tuple[int, ...] | None = None
    loss_target: str = "velocity"
    timestep_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    timestep_shift: float = 1.0
    pixel_loss_weight: float = 0.0  # paper: no pixel loss (the decoder is trained in latent space only)
    pixel_loss_max_images: int = 4
    token_order: str = "recursive"

    def __post_init__(self, **kwargs):
        # config.json files written before the shared vocabulary keep condition dropout at the top level
        if "condition_dropout_prob" in kwargs:
            if isinstance(self.decoder_config, PreTrainedConfig):
                self.decoder_config.condition_dropout_prob = kwargs.pop("condition_dropout_prob")
            else:
                self.decoder_config = {**(self.decoder_config or {}), "condition_dropout_prob": kwargs.pop("condition_dropout_prob")}
        super().__post_init__(**kwargs)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        super().validate()
        for name in ("image_size", "num_channels", "patch_size", "num_visual_tokens", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "codebook_kmeans_iters", "pixel_loss_max_images"):
            check_int(name, getattr(self, name), minimum=1)
        if self.image_size % self.patch_size:
            raise ValueError(f"`image_size` ({self.image_size}) must be divisible by `patch_size` ({self.patch_size}).")
        if self.hidden_size % 4:
            raise ValueError(f"`hidden_size` must be divisible by 4 (2D sinusoidal positions), got {self.hidden_size}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` ({self.num_attention_heads})."
            )
        for name in ("mlp_ratio", "entropy_temperature", "logit_std", "timestep_shift"):
            check_float(name, getattr(self, name), minimum=0.0, strict_minimum=True)
        check_float("query_locality_prior", self.query_locality_prior, minimum=0.0)
        check_float("query_query_locality_prior", self.query_query_locality_prior, minimum=0.0)
        check_float("pixel_loss_weight", self.pixel_loss_weight, minimum=0.0)
        for name in ("vision_image_mean", "vision_image_std"):
            check_normalization(name, getattr(self, name), self.num_channels)
        check_choice("token_schedule", self.token_schedule, TOKEN_SCHEDULES)
        self._validate_stages()
        check_choice("loss_target", self.loss_target, LOSS_TARGETS)
        check_choice("timestep_sampling", self.timestep_sampling, TIMESTEP_SAMPLINGS)
        check_float("logit_mean", self.logit_mean)
        check_choice("token_order", self.token_order, ("recursive",))
        self._validate_decoder()
        if self.pixel_loss_weight > 0 and self.decoder_latent_shape is None:
            raise ValueError(
                f"`pixel_loss_weight` ({self.pixel_loss_weight}) needs a latent-space decoder "
                '(decoder_config["vae_scale_factor"] > 1): a pixel-space decoder already trains on pixels.'
            )

    def _validate_stages(self) -> None:
        boundaries = self.staged_boundaries
        if not isinstance(boundaries, (list, tuple)) or len(boundaries) == 0:
            raise ValueError(f"`staged_boundaries` must be a non-empty list of floats, got {describe(boundaries)}.")
        boundaries = [check_float("staged_boundaries", b, minimum=0.0, maximum=1.0) for b in boundaries]
        if any(b <= a for a, b in zip([0.0] + boundaries[:-1], boundaries)) or boundaries[-1] != 1.0:
            raise ValueError(
                f"`staged_boundaries` must increase strictly within (0, 1] and end at 1.0, got {boundaries}."
            )
        self.staged_boundaries = boundaries
        if self.staged_counts is None:
            if len(boundaries) != len(RELEASED_STAGE_COUNTS):
                if self.token_schedule == "staged":
                    raise ValueError(
                        f"`staged_counts` is required when `staged_boundaries` has {len(boundaries)} stages "
                        f"(the released counts have {len(RELEASED_STAGE_COUNTS)})."
                    )
                return
            if self.token_schedule != "staged" and self.num_visual_tokens < len(boundaries):
                return
            self.staged_counts = scale_stage_counts(self.num_visual_tokens)
            return
        counts = self.staged_counts
        if not isinstance(counts, (list, tuple)) or len(counts) != len(boundaries):
            raise ValueError(
                f"`staged_counts` must be a list of {len(boundaries)} ints (one per stage of `staged_boundaries`), "
                f"got {describe(counts)}."
            )
        counts = [check_int("staged_counts", c, minimum=1) for c in counts]
        if sum(counts) != self.num_visual_tokens:
            raise ValueError(
                f"`staged_counts` must sum to `num_visual_tokens` ({self.num_visual_tokens}), got {counts} "
                f"(sum {sum(counts)})."
            )
        self.staged_counts = counts

    def _validate_decoder(self) -> None:
        d = self.decoder_config
        if d.sample_size * d.vae_scale_factor != self.image_size:
            raise ValueError(
                f'`decoder_config["sample_size"]` x `decoder_config["vae_scale_factor"]` '
                f"({d.sample_size} x {d.vae_scale_factor}) must equal `image_size` ({self.image_size})."
            )
        if d.vae_scale_factor == 1 and d.in_channels != self.num_channels:
            raise ValueError(
                f'A pixel-space decoder (`decoder_config["vae_scale_factor"]` = 1) needs `decoder_config["in_channels"]`'
                f" = `num_channels` ({self.num_channels}), got {d.in_channels}."
            )

    # ------------------------------------------------------------------ API attributes
    @property
    def token_embedding_dim(self) -> int:
        """Width of ``VisualTokens.embeddings``: the L2-normalised ``codebook_dim``-d codes."""
        return self.codebook_dim

    @property
    def num_image_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def decoder_hidden_size(self) -> int:
        return self.decoder_config.hidden_size

    @property
    def decoder_in_pixel_space(self) -> bool:
        return self.decoder_config.vae_scale_factor == 1

    @property
    def decoder_latent_shape(self) -> tuple[int, int, int] | None:
        """The MMDiT's input ``(in_channels, sample_size, sample_size)`` when it works in a VAE's latent space."""
        decoder = self.decoder_config
        return None if self.decoder_in_pixel_space else (decoder.in_channels, decoder.sample_size, decoder.sample_size)

    # ------------------------------------------------------------------ decoder component kwargs
    def conditioner_kwargs(self) -> dict[str, Any]:
        return {
            "num_tokens": self.num_visual_tokens,
            "token_dim": self.codebook_dim,
            "hidden_size": self.decoder_hidden_size,
            "token_schedule": self.token_schedule,
            "staged_boundaries": list(self.staged_boundaries),
            "staged_counts": None if self.staged_counts is None else list(self.staged_counts),
            "token_position_embedding": self.decoder_config.token_position_embedding,
            "hidden_token_mode": self.decoder_config.hidden_token_mode,
        }

    def transformer_kwargs(self) -> dict[str, Any]:
        names = ("sample_size", "patch_size", "in_channels", "num_layers", "num_attention_heads", "attention_head_dim",
                 "mlp_ratio", "qk_norm")
        kwargs = {name: getattr(self.decoder_config, name) for name in names}
        if self.decoder_config.token_locality_prior:
            kwargs["token_locality_prior"] = self.decoder_config.token_locality_prior
        if self.decoder_config.token_locality_prior or self.decoder_config.token_anchor_injection:
            kwargs["token_anchor_grid"] = self.image_size // self.patch_size  # the encoder's patch grid
        if self.decoder_config.token_anchor_injection:
            kwargs["token_anchor_injection"] = True
            kwargs["num_anchor_tokens"] = self.num_visual_tokens
        return kwargs

    def scheduler_kwargs(self) -> dict[str, Any]:
        return {"num_train_timesteps": self.decoder_config.num_train_timesteps, "shift": self.timestep_shift}

    # ------------------------------------------------------------------ presets
    @classmethod
    def tiny(cls, **overrides) -> DDTTokenizerConfig:
        """CPU-sized preset for tests and demos: 64 px, pixel-space decoder, 16 tokens, width 64.

        ``decoder_config`` overrides are merged into the tiny decoder (not the paper one).
        """
        decoder = {
            "patch_size": 8,
            "in_channels": 3,
            "num_layers": 2,
            "num_attention_heads": 2,
            "attention_head_dim": 32,
            "mlp_ratio": 4.0,
            "vae_scale_factor": 1,
        }
        decoder.update(overrides.pop("decoder_config", None) or {})
        values = {
            "image_size": 64,
            "patch_size": 8,
            "num_visual_tokens": 16,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "codebook_size": 512,
            "codebook_dim": 16,
        }
        values.update(overrides)
        if isinstance(values["image_size"], int) and isinstance(decoder["vae_scale_factor"], int):
            decoder.setdefault("sample_size", values["image_size"] // max(1, decoder["vae_scale_factor"]))
        values["decoder_config"] = decoder
        return cls(**values)


__all__ = ["DDTDecoderConfig", "DDTTokenizerConfig", "scale_stage_counts"]
