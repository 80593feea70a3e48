"""Slot Q-Former (Slot-MLLM, §2.1): object-centric discrete visual tokens for multimodal LLMs.

    pixels ─frozen vision encoder→ patch features ─LayerNorm+MLP→ keys/values of slot attention
    learned queries (μ + σ·ε) ─Q-Former layers→ slot embeddings [B, 32, 768]
        each layer: causal self-attention among the queries (post-LN, BERT/BLIP-2 style)
                    → slot attention in the layers that had cross-attention (0, 2, …, 10):
                      softmax over SLOTS, weighted mean over patches, GRU update, residual MLP
                    → feed-forward
    slot embeddings ─RVQ (4 depths, one shared 8192 × 32 codebook)→ ids [B, 32, 4] → 128 ids
    ids ─RVQ decode→ quantized slots ─transformer "rebuild" block→ slot embeddings again

``SlotQFormerModel`` is the tokenizer (``encode`` / ``embed_ids``); ``SlotQFormerForPreTraining``
adds the text branch (shares the Q-Former's self-attention and feed-forward weights), the frozen
teacher for the global-embedding MSE, the decoder (conditioner + UNet + noise scheduler, optional VAE)
and the losses of both training stages.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass
from typing import ClassVar, Unpack

import torch
import torch.distributed as dist
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput, can_return_tuple

from ...utils import modeling_utils as vtok
from ...utils.quantizers import Codebook, QuantizerOutput, ResidualVectorQuantizer
from ...utils.validation import check_choice, check_tensor, describe
from .configuration_slot_qformer import SlotQFormerConfig
from .modeling_slot_qformer_decoder import SlotQFormerDecoderConditioner


# ---------------------------------------------------------------------------------------------- layers
class SlotAttention(nn.Module):
    """Iterative slot attention (Locatello et al., 2020) taking the place of a Q-Former cross-attention.

    Slots are queries, patch features keys and values. The softmax runs over the SLOT axis (slots
    compete for each patch); the weighted mean over patches uses the attention plus ``epsilon``,
    renormalised over patches; a GRU cell updates each slot, followed by a residual MLP. Everything is
    batched over images, heads and slots.
    """

    def __init__(
        self,
        dim: int,
        input_dim: int,
        num_heads: int,
        iterations: int,
        mlp_size: int,
        num_slots: int,
        epsilon: float = 1e-8,
        key_scale: str = "head_dim",
        softmax: str = "slots",
        layer_norm_eps: float = 1e-12,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.iterations = iterations
        self.epsilon = epsilon
        self.softmax = softmax
        # paper: 1/sqrt(head width); released code: 1/sqrt(number of slots)
        self.scale = (self.head_dim if key_scale == "head_dim" else num_slots) ** -0.5
        self.norm_inputs = nn.LayerNorm(input_dim, eps=layer_norm_eps)
        self.norm_slots = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(input_dim, dim)
        self.to_v = nn.Linear(input_dim, dim)
        self.gru = nn.GRUCell(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.mlp = vtok.FeedForward(dim, mlp_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # [B, H, L, hd]

    def attention(self, slots: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Attention of the slots over the patches, normalised over slots: `[B, H, S, N]`."""
        queries = self._heads(self.to_q(self.norm_slots(slots)))
        logits = (queries @ keys.transpose(-1, -2)).float() * self.scale
        if self.softmax == "slots":
            return logits.softmax(dim=2)
        # released code: one softmax over heads x slots for each patch
        return logits.flatten(1, 2).softmax(dim=1).view_as(logits)

    def forward(self, slots: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Refine ``slots`` `[B, S, D]` against ``inputs`` `[B, N, input_dim]`.

        Returns the new slots and the last iteration's attention, summed over heads to a per-patch
        distribution over slots: `[B, S, N]` whose sum over the slot axis is 1.
        """
        batch, num_slots, dim = slots.shape
        inputs = self.norm_inputs(inputs)
        keys, values = self._heads(self.to_k(inputs)), self._heads(self.to_v(inputs))
        attention = None
        for _ in range(self.iterations):
            previous = slots
            attention = self.attention(slots, keys)
            weights = attention + self.epsilon
            weights = weights / weights.sum(dim=-1, keepdim=True)  # weighted mean over patches
            updates = (weights.to(values.dtype) @ values).transpose(1, 2).reshape(batch, num_slots, dim)
            # The GRU runs in float32 even under mixed precision (as in the released code).
            gru_dtype = self.gru.weight_ih.dtype
            with torch.autocast(device_type=slots.device.type, enabled=False):
                slots = self.gru(
                    updates.reshape(-1, dim).to(gru_dtype), previous.reshape(-1, dim).to(gru_dtype)
                ).reshape(batch, num_slots, dim)
            slots = slots.to(previous.dtype)
            slots = slots + self.mlp(self.norm_mlp(slots))
        if self.softmax == "slots":
            assignments = attention.mean(dim=1)
        else:
            assignments = attention.sum(dim=1)
        return slots, assignments


class SlotQFormerLayer(nn.Module):
    """One post-LN Q-Former layer: self-attention, slot attention (queries only, some layers), FFN.

    Queries use causal self-attention among themselves. Text tokens go through the same
    self-attention (and, with ``share_query_text_ffn``, the same FFN); for image-grounded text
    generation they also attend to the queries' hidden states entering this layer.
    """

    def __init__(self, config: SlotQFormerConfig, input_dim: int, has_slot_attention: bool):
        super().__init__()
        dim, eps = config.hidden_size, config.layer_norm_eps
        self.self_attention = vtok.Attention(dim, config.num_attention_heads)
        self.self_attention_norm = nn.LayerNorm(dim, eps=eps)
        self.slot_attention = (
            SlotAttention(
                dim,
                input_dim,
                num_heads=config.slot_attention_heads,
                iterations=config.slot_iterations,
                mlp_size=config.slot_mlp_size,
                num_slots=config.num_slots,
                epsilon=config.slot_attention_epsilon,
                key_scale=config.slot_attention_key_scale,
                softmax=config.slot_softmax,
                layer_norm_eps=eps,
            )
            if has_slot_attention
            else None
        )
        self.ffn = vtok.FeedForward(dim, config.intermediate_size)
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)
        if config.share_query_text_ffn:
            self.text_ffn, self.text_ffn_norm = None, None
        else:
            self.text_ffn = vtok.FeedForward(dim, config.intermediate_size)
            self.text_ffn_norm = nn.LayerNorm(dim, eps=eps)

    def self_attend(self, hidden_states, context=None, attention_mask=None, is_causal: bool = False):
        """Post-LN self-attention sub-layer (queries: ``is_causal=True``)."""
        attended = self.self_attention(hidden_states, context=context, attention_mask=attention_mask, is_causal=is_causal)
        return self.self_attention_norm(hidden_states + attended)

    def forward_queries(self, queries: torch.Tensor, image_features: torch.Tensor):
        hidden = self.self_attend(queries, is_causal=True)
        assignments = None
        if self.slot_attention is not None:
            hidden, assignments = self.slot_attention(hidden, image_features)
        hidden = self.ffn_norm(hidden + self.ffn(hidden))
        return hidden, assignments

    def forward_text(self, text: torch.Tensor, attention_mask: torch.Tensor, query_context: torch.Tensor | None = None):
        """Text sub-pass; ``attention_mask`` is boolean `[B, T, (S +) T]` (True = attend)."""
        context = text if query_context is None else torch.cat([query_context, text], dim=1)
        hidden = self.self_attend(text, context=context, attention_mask=attention_mask)
        ffn, norm = (self.ffn, self.ffn_norm) if self.text_ffn is None else (self.text_ffn, self.text_ffn_norm)
        return norm(hidden + ffn(hidden))


@dataclass
class SlotQFormerEncoderOutput(ModelOutput):
    """Continuous output of the Slot Q-Former.

    Args:
        slot_embeddings: `[B, num_slots, hidden_size]`.
        assignments: attention of the last slot-attention layer's last iteration, `[B, num_slots,
            num_patches]`, a distribution over slots for every patch.
        image_features: the (projected) patch features slot attention attended to, `[B, N, width]`.
        hidden_states: the query hidden states entering each layer and leaving the last one
            (``num_hidden_layers + 1`` tensors; all but the last are the keys/values of image-grounded text
            generation), only when requested.
    """

    slot_embeddings: torch.FloatTensor | None = None
    assignments: torch.FloatTensor | None = None
    image_features: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None

    @property
    def layer_inputs(self) -> tuple[torch.FloatTensor, ...] | None:
        return None if self.hidden_states is None else self.hidden_states[:-1]


class SlotQFormerEncoder(nn.Module):
    """Learned slot queries and the Q-Former layers (shared by queries and text)."""

    def __init__(self, config: SlotQFormerConfig, input_dim: int):
        super().__init__()
        self.config = config
        self.query_tokens = nn.Parameter(torch.zeros(config.num_slots, config.hidden_size))
        # paper: slots start as mu + sigma * noise (Locatello et al.); released code: the queries alone
        self.query_log_sigma = (
            nn.Parameter(torch.zeros(config.hidden_size)) if config.slot_init == "gaussian" else None
        )
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        slot_layers = set(config.slot_attention_layers)
        self.layers = nn.ModuleList(
            SlotQFormerLayer(config, input_dim, has_slot_attention=i in slot_layers)
            for i in range(config.num_hidden_layers)
        )

    def initial_slots(self, batch_size: int, sample: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        queries = self.query_tokens[None].expand(batch_size, -1, -1)
        if self.query_log_sigma is None or not sample:
            return queries
        noise = torch.randn(queries.shape, generator=generator, device=queries.device, dtype=queries.dtype)
        return queries + self.query_log_sigma.exp() * noise

    def forward(
        self,
        image_features: torch.Tensor,
        sample_slots: bool | None = None,
        generator: torch.Generator | None = None,
        output_hidden_states: bool = False,
    ) -> SlotQFormerEncoderOutput:
        sample = self.training if sample_slots is None else sample_slots
        hidden = self.input_layernorm(self.initial_slots(image_features.shape[0], sample, generator))
        hidden = hidden.to(image_features.dtype)
        hidden_states, assignments = [hidden], None
        for layer in self.layers:
            hidden, layer_assignments = layer.forward_queries(hidden, image_features)
            hidden_states.append(hidden)
            if layer_assignments is not None:
                assignments = layer_assignments
        return SlotQFormerEncoderOutput(
            slot_embeddings=hidden,
            assignments=assignments,
            image_features=image_features,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
        )

    def encode_text(
        self,
        text_embeddings: torch.Tensor,
        attention_mask: torch.Tensor,
        query_layer_inputs: tuple[torch.Tensor, ...] | None = None,
    ) -> torch.Tensor:
        """Run text through the shared layers, causal among text tokens.

        Without ``query_layer_inputs`` the pass is unimodal (contrastive loss); with them every text
        token also attends to all slot queries of its image (image-grounded text generation).
        """
        batch, length = attention_mask.shape
        device = text_embeddings.device
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        mask = causal[None] & attention_mask.bool()[:, None, :]
        mask = mask | torch.eye(length, dtype=torch.bool, device=device)[None]  # never an empty row
        hidden = self.input_layernorm(text_embeddings)
        for index, layer in enumerate(self.layers):
            if query_layer_inputs is None:
                hidden = layer.forward_text(hidden, mask)
            else:
                queries = query_layer_inputs[index]
                full_mask = torch.cat(
                    [torch.ones(batch, length, queries.shape[1], dtype=torch.bool, device=device), mask], dim=-1
                )
                hidden = layer.forward_text(hidden, full_mask, query_context=queries)
        return hidden


class SlotRebuilder(nn.Module):
    """Transformer block(s) that rebuild continuous slot embeddings from RVQ-quantized ones."""

    def __init__(self, dim: int, num_layers: int, num_heads: int):
        super().__init__()
        self.blocks = nn.ModuleList(vtok.TransformerBlock(dim, num_heads) for _ in range(num_layers))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            hidden = block(hidden)
        return hidden


# ---------------------------------------------------------------------------------------------- models
class SlotQFormerPreTrainedModel(vtok.VTokPreTrainedModel):
    config: SlotQFormerConfig
    config_class = SlotQFormerConfig
    # nearest-code search must not change with the model dtype
    _keep_in_fp32_modules_strict: ClassVar[list[str]] = ["codebooks"]
    _no_split_modules: ClassVar[list[str]] = ["SlotQFormerLayer", "TransformerBlock"]
    # a shared codebook has no per-depth weight: only the usage counts' rows record `rvq_depths` in a checkpoint
    _config_fields_in_shapes: ClassVar[dict[str, tuple[str, int]]] = {"quantizer.codebook_usage": ("rvq_depths", 0)}

    @torch.no_grad()
    def _init_weights(self, module):
        if getattr(module, "_slot_attention_default_init", False):
            # Slot Attention's soft position embedding is a dense layer with its framework's default initialisation:
            # the 0.02-std normal of the other linears would hide the position under the features at the start
            module.reset_parameters()
            return
        if getattr(module, "_slot_qformer_diffusers_part", False):
            # diffusers modules (conditioner, UNet, VAE) keep PyTorch's default initialisation
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if isinstance(module, SlotQFormerDecoderConditioner):
                init.zeros_(module.null_local_embeddings)
                init.zeros_(module.null_global_embedding)
                module.init_layout_parameters()  # after its linears' default initialisation (children come first)
            return
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, SlotQFormerEncoder):
            init.normal_(module.query_tokens, mean=0.0, std=std)
            if module.query_log_sigma is not None:
                init.constant_(module.query_log_sigma, math.log(std))
        elif isinstance(module, SlotQFormerTextHead):
            init.zeros_(module.bias)
        elif isinstance(module, (Codebook, ResidualVectorQuantizer)):
            module.reset_parameters()
        elif isinstance(module, SlotQFormerForPreTraining):
            init.constant_(module.itc_temperature, self.config.itc_temperature)
            if module.teacher_projection is not None:
                init.copy_(module.teacher_projection, _teacher_projection(*module.teacher_projection.shape))


class SlotQFormerModel(SlotQFormerPreTrainedModel, vtok.VisualTokenizerMixin):
    """The Slot Q-Former tokenizer: images → 128 discrete ids (32 slots × 4 RVQ depths) and back to
    slot embeddings.

    Token order (``config.token_order``): ``"slot_major"`` (default) flattens ``[B, S, K]`` ids as
    slot0-depth0, slot0-depth1, …, slot0-depth(K-1), slot1-depth0, …; ``"depth_major"`` as
    depth0-slot0, depth0-slot1, …. ``VisualTokens.embeddings`` holds one rebuilt embedding per SLOT
    (`[B, num_slots, hidden_size]`, what the decoder is conditioned on): the K ids of a slot together make
    one embedding, and ``VisualTokens.token_groups`` gives the slot of every id.
    """

    def __init__(self, config: SlotQFormerConfig):
        super().__init__(config)
        self.vision_model = AutoModel.from_config(config.vision_config)
        if config.freeze_vision_encoder:
            self.vision_model.requires_grad_(False)
        vision_width = config.vision_feature_dim
        if config.vision_projection:
            # LayerNorm + MLP to the key/value width BLIP-2's cross-attention was trained with
            self.vision_projection = nn.Sequential(
                nn.LayerNorm(vision_width),
                nn.Linear(vision_width, config.encoder_hidden_size),
                nn.GELU(),
                nn.Linear(config.encoder_hidden_size, config.encoder_hidden_size),
            )
            input_dim = config.encoder_hidden_size
        else:
            self.vision_projection = None
            input_dim = vision_width
        # departure (config.vision_position_embedding): Slot Attention's soft position embedding on the patch grid
        self.vision_position_embedding = None
        if config.vision_position_embedding:
            self.vision_position_embedding = nn.Linear(4, input_dim)
            self.vision_position_embedding._slot_attention_default_init = True
        self.qformer = SlotQFormerEncoder(config, input_dim)
        self.quantizer = ResidualVectorQuantizer(
            config.hidden_size,
            config.codebook_size,
            config.rvq_depths,
            code_dim=config.codebook_dim,
            shared_codebook=config.shared_codebook,
            commitment_weight=config.commitment_weight,
            use_ema=True,
            ema_decay=config.codebook_ema_decay,
            kmeans_init=config.codebook_kmeans_init,
            dead_code_threshold=config.codebook_dead_code_threshold,
        )
        self.rebuild = SlotRebuilder(config.hidden_size, config.rebuild_num_layers, config.rebuild_num_heads)
        self.post_init()

    # ------------------------------------------------------------------ encoder
    def get_image_features(self, pixel_values: torch.Tensor) -> BaseModelOutput:
        """Patch features of the vision encoder (class/register tokens dropped), projected to the slot
        attention's input width: ``last_hidden_state`` `[B, num_patches, width]`."""
        outputs = self.vision_model(pixel_values=pixel_values)
        hidden = outputs.last_hidden_state
        if hidden.ndim == 4:  # convolutional encoders: [B, C, h, w] -> [B, h*w, C]
            hidden = hidden.flatten(2).transpose(1, 2)
        num_patches = (pixel_values.shape[-2] // self.config.vision_patch_size) * (
            pixel_values.shape[-1] // self.config.vision_patch_size
        )
        if hidden.shape[1] < num_patches:
            raise ValueError(
                f"The vision encoder returned {hidden.shape[1]} tokens, fewer than the {num_patches} patches "
                "expected from `image_size` and the vision config's `patch_size`."
            )
        hidden = hidden[:, hidden.shape[1] - num_patches :]  # CLS / register tokens come first
        config = self.config
        hidden = vtok.with_patch_colors(hidden, pixel_values, config.image_mean, config.image_std,
                                        config.vision_patch_size, config.color_feature_weight)  # fmt: skip
        if self.vision_projection is not None:
            hidden = self.vision_projection(hidden)
        if self.vision_position_embedding is not None:
            height = pixel_values.shape[-2] // config.vision_patch_size
            width = pixel_values.shape[-1] // config.vision_patch_size
            grid = vtok.grid_position_features(height, width, device=hidden.device, dtype=hidden.dtype)
            hidden = hidden + self.vision_position_embedding(grid)[None]
        return BaseModelOutput(last_hidden_state=hidden)

    def encode_slots(
        self,
        pixel_values: torch.Tensor,
        sample_slots: bool | None = None,
        generator: torch.Generator | None = None,
        output_hidden_states: bool = False,
    ) -> SlotQFormerEncoderOutput:
        """Continuous slot embeddings of ``pixel_values`` (the stage-1 representation)."""
        pixel_values = self._check_pixel_values(pixel_values)
        dtype = next(self.qformer.parameters()).dtype
        features = self.get_image_features(pixel_values.to(dtype)).last_hidden_state
        return self.qformer(features, sample_slots=sample_slots, generator=generator, output_hidden_states=output_hidden_states)

    # ------------------------------------------------------------------ quantizer
    def flatten_ids(self, ids: torch.LongTensor) -> torch.LongTensor:
        """`[B, num_slots, rvq_depths]` → `[B, num_visual_tokens]` in ``config.token_order``."""
        if self.config.token_order == "depth_major":
            ids = ids.transpose(1, 2)
        return ids.reshape(ids.shape[0], -1)

    def unflatten_ids(self, ids: torch.LongTensor) -> torch.LongTensor:
        """`[B, num_visual_tokens]` → `[B, num_slots, rvq_depths]` (inverse of :meth:`flatten_ids`)."""
        num_slots, depths = self.config.num_slots, self.config.rvq_depths
        if self.config.token_order == "depth_major":
            return ids.reshape(ids.shape[0], depths, num_slots).transpose(1, 2)
        return ids.reshape(ids.shape[0], num_slots, depths)

    def quantize(self, slot_embeddings: torch.Tensor) -> QuantizerOutput:
        """Residual VQ of slot embeddings (EMA codebook updates in training mode); ids `[B, S, K]`."""
        return self.quantizer(slot_embeddings)

    def rebuild_slots(self, quantized: torch.Tensor) -> torch.Tensor:
        """Quantized slot embeddings `[B, S, D]` → rebuilt continuous slot embeddings `[B, S, D]`."""
        return self.rebuild(quantized)

    def embed_ids(self, ids: torch.LongTensor) -> torch.FloatTensor:
        """Rebuilt slot embeddings `[B, num_slots, hidden_size]` of flattened ids `[B, num_visual_tokens]`."""
        ids = self._check_ids(ids)
        quantized = self.quantizer.decode(self.unflatten_ids(ids.to(self.device)))
        return self.rebuild_slots(quantized.to(next(self.rebuild.parameters(), quantized).dtype))

    def encode(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> vtok.VisualTokens:
        """Tokenize images: ``pixel_values`` `[B, 3, image_size, image_size]` (the image processor's output).

        Returns ``VisualTokens`` with ``ids`` `[B, num_visual_tokens]`, ``embeddings`` = ``embed_ids(ids)``
        `[B, num_slots, hidden_size]`, an all-ones ``attention_mask`` over the ids, ``token_groups`` (the slot
        of each id), ``assignments`` (slot-attention maps `[B, num_slots, num_patches]`) and, when asked, the
        Q-Former's ``hidden_states`` (``num_hidden_layers + 1`` tensors `[B, num_slots, hidden_size]`).
        """
        encoded = self.encode_slots(pixel_values, output_hidden_states=output_hidden_states)
        ids = self.flatten_ids(self.quantizer.encode(encoded.slot_embeddings))
        slots = torch.arange(self.config.num_slots, device=ids.device)[None, :, None]
        groups = self.flatten_ids(slots.expand(1, -1, self.config.rvq_depths))
        return self._discrete_tokens(ids, groups, assignments=encoded.assignments, hidden_states=encoded.hidden_states)

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> vtok.VisualTokens:
        return self.encode(pixel_values, output_hidden_states=output_hidden_states)

    def get_input_embeddings(self) -> nn.Module:
        """The vision encoder's patch embedding (what `enable_input_require_grads` hooks)."""
        return self.vision_model.get_input_embeddings()

    # ------------------------------------------------------------------ pretrained parts
    def load_blip2_qformer(self, qformer_path: str | os.PathLike) -> list[str]:
        """Copy a BLIP-2 Q-Former's weights (``Blip2QFormerModel`` or a whole BLIP-2 checkpoint folder).

        Mapping (layer ``i``):

        ============================================  ==========================================
        BLIP-2 (``[qformer.]`` prefix optional)        Slot Q-Former
        ============================================  ==========================================
        ``layernorm``                                 ``qformer.input_layernorm``
        ``encoder.layer.i.attention.attention.query`` ``qformer.layers.i.self_attention.to_q``
        ``….attention.attention.key`` / ``value``     ``….self_attention.to_k`` / ``to_v``
        ``….attention.output.dense`` / ``LayerNorm``  ``….self_attention.to_out`` / ``self_attention_norm``
        ``….crossattention.attention.query/key/value`` ``….slot_attention.to_q/to_k/to_v`` (slot layers)
        ``….intermediate_query.dense``                ``….ffn.0``
        ``….output_query.dense`` / ``LayerNorm``      ``….ffn.2`` / ``ffn_norm``
        ``….intermediate.dense``, ``….output.*``      ``….text_ffn.*`` (only without ``share_query_text_ffn``)
        ``query_tokens`` `[1, S, D]`                  ``qformer.query_tokens`` `[S, D]`
        ============================================  ==========================================

        With a shared FFN the query FFN of BLIP-2 is used (the queries carry the slot embeddings).
        Returns the names of the parameters written; raises ``ValueError`` on missing files, a different
        number of layers, or any shape mismatch (e.g. a width other than ``hidden_size``).
        """
        state = _read_safetensors(qformer_path, "qformer_path")
        if any(key.startswith("qformer.") for key in state):
            state = {
                key.removeprefix("qformer."): value
                for key, value in state.items()
                if key.startswith("qformer.") or key == "query_tokens"
            }
        layer_ids = {int(key.split(".")[2]) for key in state if key.startswith("encoder.layer.")}
        if not layer_ids:
            raise ValueError(f"`qformer_path` ({qformer_path}) holds no BLIP-2 Q-Former weights (`encoder.layer.*`).")
        if max(layer_ids) + 1 != self.config.num_hidden_layers:
            raise ValueError(
                f"`qformer_path` ({qformer_path}) has {max(layer_ids) + 1} Q-Former layers, but "
                f"`num_hidden_layers` is {self.config.num_hidden_layers}."
            )
        share = self.config.share_query_text_ffn
        mapping = {"layernorm": "qformer.input_layernorm", "query_tokens": "qformer.query_tokens"}
        for i in range(self.config.num_hidden_layers):
            src, dst = f"encoder.layer.{i}", f"qformer.layers.{i}"
            mapping.update(
                {
                    f"{src}.attention.attention.query": f"{dst}.self_attention.to_q",
                    f"{src}.attention.attention.key": f"{dst}.self_attention.to_k",
                    f"{src}.attention.attention.value": f"{dst}.self_attention.to_v",
                    f"{src}.attention.output.dense": f"{dst}.self_attention.to_out",
                    f"{src}.attention.output.LayerNorm": f"{dst}.self_attention_norm",
                    f"{src}.intermediate_query.dense": f"{dst}.ffn.0",
                    f"{src}.output_query.dense": f"{dst}.ffn.2",
                    f"{src}.output_query.LayerNorm": f"{dst}.ffn_norm",
                }
            )
            if self.qformer.layers[i].slot_attention is not None:
                for name, target in (("query", "to_q"), ("key", "to_k"), ("value", "to_v")):
                    mapping[f"{src}.crossattention.attention.{name}"] = f"{dst}.slot_attention.{target}"
            if not share:
                mapping[f"{src}.intermediate.dense"] = f"{dst}.text_ffn.0"
                mapping[f"{src}.output.dense"] = f"{dst}.text_ffn.2"
                mapping[f"{src}.output.LayerNorm"] = f"{dst}.text_ffn_norm"
        own = dict(self.named_parameters())
        copied = []
        with torch.no_grad():
            for key, value in state.items():
                stem, _, leaf = key.rpartition(".")
                if key == "query_tokens":
                    target, value = mapping[key], value.reshape(-1, value.shape[-1])
                elif stem in mapping:
                    target = f"{mapping[stem]}.{leaf}"
                else:
                    continue
                if target not in own:
                    continue
                if own[target].shape != value.shape:
                    raise ValueError(
                        f"`qformer_path` ({qformer_path}): {key} has shape {tuple(value.shape)} but {target} expects "
                        f"{tuple(own[target].shape)}; check `hidden_size`, `intermediate_size`, `num_slots` and "
                        "`encoder_hidden_size` against the BLIP-2 Q-Former config."
                    )
                own[target].copy_(value.to(own[target].dtype))
                copied.append(target)
        return copied


def _read_safetensors(path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = os.fspath(path)
    if os.path.isfile(path):
        files = [path]
    elif os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    else:
        raise ValueError(f"`{name}` must be a checkpoint folder or .safetensors file, got {path!r}.")
    if not files:
        raise ValueError(f"`{name}` ({path}) contains no .safetensors weights.")
    state = {}
    for file in files:
        state.update(load_file(file))
    return state


# ---------------------------------------------------------------------------------------------- training
class SlotQFormerTextEmbeddings(nn.Module):
    """BERT word + absolute position embeddings of the text branch (normalised by the Q-Former's
    input LayerNorm, as in BLIP-2)."""

    def __init__(self, config: SlotQFormerConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.text_pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.LongTensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]


class SlotQFormerTextHead(nn.Module):
    """BERT LM head; the output matrix is the word-embedding matrix (tied functionally)."""

    def __init__(self, config: SlotQFormerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.dense(hidden))), word_embeddings, self.bias)


@dataclass
class SlotQFormerForPreTrainingOutput(vtok.VTokPreTrainingOutput):
    """Losses of one training step (weighted ``loss`` first, then each unweighted component).

    Stage 1 fills ``loss_contrastive``, ``loss_text_generation``, ``loss_diffusion``, ``loss_global_mse``;
    stage 2 fills ``loss_reconstruction``, ``loss_commitment``, ``loss_diffusion``, ``loss_global_mse``; both fill
    ``loss_layout`` when ``config.layout_loss_weight > 0`` and ``loss_layout_colour`` when
    ``config.layout_colour_loss_weight > 0``; stage 1 fills ``loss_colour_reconstruction`` when
    ``config.colour_reconstruction_loss_weight > 0``; both fill ``loss_pixel`` when ``config.pixel_loss_weight > 0``.
    """

    loss_contrastive: torch.FloatTensor | None = None
    loss_text_generation: torch.FloatTensor | None = None
    loss_diffusion: torch.FloatTensor | None = None
    loss_global_mse: torch.FloatTensor | None = None
    loss_reconstruction: torch.FloatTensor | None = None
    loss_commitment: torch.FloatTensor | None = None
    loss_layout: torch.FloatTensor | None = None
    loss_layout_colour: torch.FloatTensor | None = None
    loss_colour_reconstruction: torch.FloatTensor | None = None
    loss_pixel: torch.FloatTensor | None = None
    slot_embeddings: torch.FloatTensor | None = None
    ids: torch.LongTensor | None = None
    assignments: torch.FloatTensor | None = None
    codebook_perplexity: torch.FloatTensor | None = None


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every process's tensor; the backward sums the gradients of all processes' losses
    and hands each process the slice of its own rows (every process must pass the same shape)."""

    @staticmethod
    def forward(ctx, features):
        gathered = [torch.empty_like(features) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, features.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        rows = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * rows : (dist.get_rank() + 1) * rows]


def _gather_with_grad(features: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather across processes keeping gradients for the local shard; returns (all, offset)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return _AllGatherWithGrad.apply(features), dist.get_rank() * features.shape[0]
    return features, 0


def _build_teacher(config) -> PreTrainedModel:
    """The teacher vision model: the class named in ``architectures`` when transformers has it
    (e.g. ``CLIPVisionModelWithProjection``), else ``AutoModel``."""
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None and isinstance(cls, type) and issubclass(cls, PreTrainedModel):
            return cls(config)
    return AutoModel.from_config(config)


def _teacher_projection(teacher_dim: int, global_dim: int) -> torch.Tensor:
    """Fixed (seeded, never trained) projection of teacher embeddings to the global-embedding width."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(teacher_dim, global_dim, generator=generator, device="cpu") / math.sqrt(teacher_dim)


def _teacher_embedding_dim(config) -> int:
    architectures = getattr(config, "architectures", None) or []
    if any(name.endswith("WithProjection") for name in architectures) and getattr(config, "projection_dim", None):
        return int(config.projection_dim)
    return int(config.hidden_size)


class SlotQFormerForPreTraining(SlotQFormerPreTrainedModel, vtok.ShippedAutoencoderMixin):
    """Slot Q-Former with everything its two training stages need; ``transformers.Trainer`` trains it.

    Batch keys (``forward`` arguments):
        pixel_values (`[B, 3, image_size, image_size]`, required): the image processor's output.
        input_ids, attention_mask (`[B, T]`): the caption, tokenised with the text tokenizer whose
            vocabulary has ``config.vocab_size`` entries (BERT-base's in the paper), right- or
            left-padded with ``config.text_pad_token_id``. Required in stage 1 when the contrastive or
            text-generation weight is non-zero; ignored in stage 2.
        decoder_pixel_values (`[B, 3, decoder_image_size, decoder_image_size]` in [-1, 1], optional):
            the image the decoder reconstructs; default: ``pixel_values`` un-normalised and resized.
        teacher_pixel_values (optional): the teacher's input; default: ``pixel_values`` un-normalised,
            resized to the teacher's image size and normalised with ``teacher_image_mean/std``.
        latents (`[B, *config.decoder_latent_shape]`, optional): with ``decoder_config.vae = "taef2"``, the scaled
            latents of the decoder's target image, cached by the trainer; default: encoded here.

    Stage 1 (``set_stage(1)``): trains the Q-Former (and the vision projection), the text branch, the
    conditioner and the UNet (its cross-attention only with ``unet_trainable="cross_attention"``) with
    0.5·L_ITC + 0.5·L_ITG + 1·L_diffusion + 0.5·L_MSE, on continuous slot embeddings.
    Stage 2 (``set_stage(2)``): freezes all of that and trains the RVQ projections (codebook by EMA)
    and the rebuild block with 1·L_reconstruction + 1·L_commitment + 0.1·L_diffusion + 0.1·L_MSE, the
    decoder seeing the rebuilt slots. Frozen parts stay in eval mode whatever ``train()`` says.

    The global MSE regresses the conditioner's global embedding onto the frozen teacher's image
    embedding (``image_embeds`` of a ``…WithProjection`` model, else ``pooler_output``, else the mean
    token); when the teacher's width differs from ``global_embedding_dim`` the teacher embedding goes
    through a fixed random projection (a saved buffer, never trained, so the target cannot collapse).
    """

    def __init__(self, config: SlotQFormerConfig):
        super().__init__(config)
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        decoder = config.decoder_config
        self.tokenizer = SlotQFormerModel(config)
        # text branch (the layers themselves are the tokenizer's Q-Former layers)
        self.text_embeddings = SlotQFormerTextEmbeddings(config)
        self.text_head = SlotQFormerTextHead(config)
        self.itc_image_projection = nn.Linear(config.hidden_size, config.itc_embed_dim)
        self.itc_text_projection = nn.Linear(config.hidden_size, config.itc_embed_dim)
        self.itc_temperature = nn.Parameter(torch.tensor(float(config.itc_temperature)))
        # frozen teacher for the global-embedding MSE
        self.teacher = _build_teacher(config.teacher_config)
        self.teacher.requires_grad_(False)
        conditioner_kwargs = dict(decoder.conditioner)
        global_dim = conditioner_kwargs["global_embedding_dim"]
        teacher_dim = _teacher_embedding_dim(config.teacher_config)
        if teacher_dim != global_dim:
            self.register_buffer("teacher_projection", _teacher_projection(teacher_dim, global_dim))
        else:
            self.teacher_projection = None
        # decoder
        if decoder.layout_channels:  # decoded on the patch grid (or layout_resolution's), painted at the UNet's size
            side = decoder.layout_resolution or config.image_size // config.vision_patch_size
            conditioner_kwargs.update(layout_channels=decoder.layout_channels, layout_grid=(side, side),
                                      layout_size=decoder.unet["sample_size"])  # fmt: skip
        self.conditioner = SlotQFormerDecoderConditioner(
            slot_dim=config.hidden_size, num_slots=config.num_slots, **conditioner_kwargs
        )
        self.unet = UNet2DConditionModel(**decoder.unet)
        # departure (config.colour_reconstruction_loss_weight): each slot's guess of the colour of the patches it wins
        self.colour_head = (
            nn.Sequential(nn.LayerNorm(config.hidden_size), nn.Linear(config.hidden_size, config.hidden_size), nn.GELU(),
                          nn.Linear(config.hidden_size, config.num_channels))
            if config.colour_reconstruction_loss_weight > 0 else None
        )  # fmt: skip
        # the decoder's own VAE; a shipped one (decoder_config.vae = "taef2") is not a submodule, see decoder_autoencoder
        self.vae = AutoencoderKL(**decoder.vae) if isinstance(decoder.vae, dict) and decoder.vae else None
        if self.vae is not None:
            self.vae.requires_grad_(False)
        # the schedule's tensors must be real even when from_pretrained builds the model on meta
        with torch.device("cpu"):
            self.noise_scheduler = DDPMScheduler(**decoder.scheduler)
        # diffusers modules keep PyTorch's default initialisation (see `_init_weights`)
        for module in [self.conditioner, self.unet] + ([self.vae] if self.vae is not None else []):
            for child in module.modules():
                child._slot_qformer_diffusers_part = True
        self.post_init()
        self.set_stage(config.stage)

    # ------------------------------------------------------------------ stages
    def set_stage(self, stage: int) -> SlotQFormerForPreTraining:
        """Choose the trainable parameters of training stage 1 or 2 (see the class docstring)."""
        check_choice("stage", stage, (1, 2))
        self.config.stage = stage
        self.requires_grad_(False)
        tokenizer = self.tokenizer
        if stage == 1:
            trainable = [tokenizer.qformer, self.text_embeddings, self.text_head, self.itc_image_projection,
                         self.itc_text_projection, self.conditioner]  # fmt: skip
            if self.colour_head is not None:
                trainable.append(self.colour_head)
            if tokenizer.vision_projection is not None:
                trainable.append(tokenizer.vision_projection)
            if tokenizer.vision_position_embedding is not None:
                trainable.append(tokenizer.vision_position_embedding)
            if not self.config.freeze_vision_encoder:
                trainable.append(tokenizer.vision_model)
            for module in trainable:
                module.requires_grad_(True)
            self.itc_temperature.requires_grad_(True)
            unet_trainable = self.config.decoder_config.unet_trainable
            if unet_trainable == "all":
                self.unet.requires_grad_(True)
            elif unet_trainable == "cross_attention":
                for name, parameter in self.unet.named_parameters():
                    if ".attn2." in name:
                        parameter.requires_grad_(True)
        else:
            tokenizer.rebuild.requires_grad_(True)
            for name, parameter in tokenizer.quantizer.named_parameters():
                # EMA codebooks are updated by their statistics, never by gradient
                if not name.startswith("codebooks.") or not tokenizer.quantizer.codebooks[0].use_ema:
                    parameter.requires_grad_(True)
        self.train(self.training)
        return self

    def _frozen_modules(self) -> list[nn.Module]:
        modules = [self.teacher] + ([self.vae] if self.vae is not None else [])
        tokenizer = self.tokenizer
        if self.config.freeze_vision_encoder or self.config.stage == 2:
            modules.append(tokenizer.vision_model)
        if self.config.stage == 2:
            modules += [tokenizer.qformer, self.conditioner, self.unet, self.text_embeddings, self.text_head]
            if self.colour_head is not None:
                modules.append(self.colour_head)
            if tokenizer.vision_projection is not None:
                modules.append(tokenizer.vision_projection)
            if tokenizer.vision_position_embedding is not None:
                modules.append(tokenizer.vision_position_embedding)
        else:
            modules += [tokenizer.quantizer, tokenizer.rebuild]
        return modules

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and hasattr(self, "noise_scheduler"):
            for module in self._frozen_modules():
                module.eval()
        return self

    # ------------------------------------------------------------------ pieces of the losses
    def decoder_targets(self, pixel_values: torch.Tensor, decoder_pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1] at the decoder's resolution."""
        size = self.config.decoder_config.image_size
        if decoder_pixel_values is not None:
            check_tensor("decoder_pixel_values", decoder_pixel_values, ndim=4, floating=True, finite=True)
            if tuple(decoder_pixel_values.shape) != (pixel_values.shape[0], 3, size, size):
                raise ValueError(
                    f"`decoder_pixel_values` must have shape [{pixel_values.shape[0]}, 3, {size}, {size}] "
                    f"(values in [-1, 1]), got {tuple(decoder_pixel_values.shape)}."
                )
            return decoder_pixel_values
        return vtok.decoder_images(pixel_values, self.config.image_mean, self.config.image_std, size)

    @torch.no_grad()
    def teacher_embedding(self, pixel_values: torch.Tensor, teacher_pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """The frozen teacher's image embedding (projected to ``global_embedding_dim`` if needed)."""
        if teacher_pixel_values is None:
            size = self.config.teacher_config.image_size
            size = size[0] if isinstance(size, (list, tuple)) else size
            images = vtok.unnormalize(pixel_values.float(), self.config.image_mean, self.config.image_std)
            if images.shape[-1] != size or images.shape[-2] != size:
                images = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
            mean = torch.tensor(self.config.teacher_image_mean, device=images.device)[:, None, None]
            std = torch.tensor(self.config.teacher_image_std, device=images.device)[:, None, None]
            teacher_pixel_values = (images - mean) / std
        else:
            check_tensor("teacher_pixel_values", teacher_pixel_values, ndim=4, floating=True, finite=True)
        dtype = next(self.teacher.parameters()).dtype
        outputs = self.teacher(pixel_values=teacher_pixel_values.to(dtype))
        embedding = getattr(outputs, "image_embeds", None)
        if embedding is None:
            embedding = getattr(outputs, "pooler_output", None)
        if embedding is None:
            embedding = outputs.last_hidden_state.mean(dim=1)
        embedding = embedding.float()
        if self.teacher_projection is not None:
            embedding = embedding @ self.teacher_projection.float()
        return embedding

    def diffusion_loss(
        self, slot_embeddings: torch.Tensor, latents: torch.Tensor, condition_dropout: bool, noise=None, timesteps=None,
        pixel_values: torch.Tensor | None = None,
    ):  # fmt: skip
        """Denoising loss of the UNet on ``latents`` (what it denoises: VAE latents or pixels, see
        ``decoder_samples``) conditioned on ``slot_embeddings`` (random ``noise``/``timesteps`` unless given;
        conditions dropped only in training); returns (loss, conditions, pixel loss). The pixel loss (None unless
        ``config.pixel_loss_weight`` and ``pixel_values``) decodes the clean latents the prediction implies on the
        first ``config.pixel_loss_max_images`` images with the frozen autoencoder and compares them with the image."""
        batch = slot_embeddings.shape[0]
        drop = None
        probability = self.config.decoder_config.condition_dropout_prob
        if condition_dropout and self.training and probability > 0:
            drop = torch.rand(batch, device=slot_embeddings.device) < probability
        condition = self.conditioner(slot_embeddings, drop_condition=drop)
        vtok.check_diffusion_draws(noise, timesteps, latents, self.noise_scheduler.config.num_train_timesteps)
        unet_dtype = self.unet.dtype
        with_pixel_loss = self.config.pixel_loss_weight > 0 and pixel_values is not None
        denoised = vtok.denoising_loss(
            self.unet,
            self.noise_scheduler,
            latents.to(unet_dtype),
            None if noise is None else noise.to(device=latents.device, dtype=unet_dtype),
            None if timesteps is None else timesteps.to(latents.device),
            sample_condition=condition.layout_map,  # None unless decoder_config.layout_channels
            encoder_hidden_states=condition.local_embeddings.to(unet_dtype),
            class_labels=condition.class_labels.to(unet_dtype),
            return_clean_prediction=with_pixel_loss,
        )
        if not with_pixel_loss:
            return denoised, condition, None
        loss, clean_prediction, signal = denoised
        first = self.config.pixel_loss_max_images
        # x̂_0 of an ε-prediction magnifies its error by sqrt((1 - ᾱ_t) / ᾱ_t): weighted by ᾱ_t, as SeTok's
        weights = signal[:first] if self.noise_scheduler.config.prediction_type == "epsilon" else None
        pixel_loss = vtok.decoded_pixel_loss(self.decoder_autoencoder(), clean_prediction[:first], pixel_values[:first],
                                             self.config.image_mean, self.config.image_std, weights=weights)  # fmt: skip
        return loss, condition, pixel_loss

    def colour_reconstruction_loss(self, slots: torch.Tensor, assignments: torch.Tensor, pixel_values: torch.Tensor):
        """MSE of every patch's mean colour (in [0, 1], on the slot attention's patch grid) against the slots' colour
        guesses (``colour_head``) mixed by the attention's own weights at that patch (`[B, S, N]`). A slot can only
        explain the patches it wins with ONE colour, so the attention must give differently coloured regions to
        different slots: the grouping pressure of a slot-attention autoencoder (Locatello et al.), which the diffusion
        decoder alone does not exert (docs/slot_qformer.md)."""
        config = self.config
        colours = vtok.patch_colors(pixel_values, config.image_mean, config.image_std, config.vision_patch_size)
        guesses = self.colour_head(slots).float()  # [B, S, 3]
        reconstruction = torch.einsum("bsn,bsc->bnc", assignments.float(), guesses)
        return F.mse_loss(reconstruction, colours)

    def _layout_losses(self, condition, assignments: torch.Tensor, pixel_values: torch.Tensor):
        """(weighted sum, layout loss, layout colour loss) of the losses the config switches on (None when off)."""
        config = self.config
        total, loss_layout, loss_layout_colour = 0.0, None, None
        if config.layout_loss_weight > 0:
            loss_layout = self.layout_loss(condition, assignments)
            total = total + config.layout_loss_weight * loss_layout
        if config.layout_colour_loss_weight > 0:
            loss_layout_colour = self.layout_colour_loss(condition, pixel_values)
            total = total + config.layout_colour_loss_weight * loss_layout_colour
        return total, loss_layout, loss_layout_colour

    def layout_colour_loss(self, condition, pixel_values: torch.Tensor) -> torch.Tensor:
        """MSE of every patch's mean colour (in [0, 1], on the patch grid the layout is decoded on) against the first
        three channels of the layout there (``condition.layout_cells``): the map the UNet reads then says each
        slot's colour outright, from the slot embeddings alone (so from ids too)."""
        colours = self.layout_grid_colours(pixel_values)
        return F.mse_loss(condition.layout_cells[..., : self.config.num_channels].float(), colours)

    def layout_grid_colours(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[B, cells, 3]`: the image's mean colour (in [0, 1]) in every cell of the layout grid: the patch colours when
        the layout is decoded on the patch grid, else the image area-averaged onto the layout's grid."""
        config = self.config
        height, width = self.conditioner.config.layout_grid
        if (height, width) == tuple(side // config.vision_patch_size for side in pixel_values.shape[-2:]):
            return vtok.patch_colors(pixel_values, config.image_mean, config.image_std, config.vision_patch_size)
        image = vtok.unnormalize(pixel_values.float(), config.image_mean, config.image_std)
        return F.adaptive_avg_pool2d(image, (height, width)).flatten(2).transpose(1, 2)

    def layout_grid_maps(self, assignments: torch.Tensor) -> torch.Tensor:
        """`[B, S, cells]`: the slot attention's maps (`[B, S, patches]`) on the layout grid, bilinearly resized when
        it is not the patch grid (still summing to one over slots: the interpolation mixes them with convex weights)."""
        height, width = self.conditioner.config.layout_grid
        if assignments.shape[-1] == height * width:
            return assignments
        side = math.isqrt(assignments.shape[-1])
        return F.interpolate(assignments.unflatten(-1, (side, side)), size=(height, width), mode="bilinear",
                             align_corners=False).flatten(2)  # fmt: skip

    def layout_loss(self, condition, assignments: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the decoded layout (``condition.layout_logits``, `[B, S, cells]`) against the slot
        attention's maps (`[B, S, cells]`, summing to one over slots; a fixed target), or against their one-hot
        winners (``config.layout_target="winner"``): the layout the decoder paints from the slot embeddings alone
        learns where the encoder's slots are."""
        target = self.layout_grid_maps(assignments.detach().float())
        if self.config.layout_target == "winner":
            target = F.one_hot(target.argmax(dim=1), target.shape[1]).transpose(1, 2).float()
        log_layout = condition.layout_logits.float().log_softmax(dim=1)
        return -(target * log_layout).sum(dim=1).mean()

    def _check_text(self, input_ids, attention_mask, batch_size: int):
        input_ids = check_tensor("input_ids", input_ids, ndim=2, integer=True)
        if input_ids.shape[0] != batch_size:
            raise ValueError(
                f"`input_ids` must have one caption per image ({batch_size}), got shape {tuple(input_ids.shape)}."
            )
        if input_ids.shape[1] < 2 or input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"`input_ids` must hold between 2 and {self.config.max_position_embeddings} tokens per caption, "
                f"got shape {tuple(input_ids.shape)}."
            )
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= self.config.vocab_size:
            raise ValueError(
                f"`input_ids` must be token ids in [0, {self.config.vocab_size}), got values in [{low}, {high}]."
            )
        if attention_mask is None:
            attention_mask = (input_ids != self.config.text_pad_token_id).long()
        else:
            check_tensor("attention_mask", attention_mask)
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"`attention_mask` must have the shape of `input_ids` {tuple(input_ids.shape)}, "
                    f"got {tuple(attention_mask.shape)}."
                )
        if not bool((attention_mask.sum(dim=1) > 0).all()):
            raise ValueError("`attention_mask` must keep at least one token of every caption.")
        return input_ids.long(), attention_mask.long()

    def text_losses(self, slots, layer_inputs, input_ids, attention_mask):
        """Image-text contrastive loss and image-grounded text generation loss (BLIP-2 style).

        Contrastive: the LAST (causal) slot query against the caption's last real token, in-batch
        negatives gathered over processes, learnable temperature. Generation: every text token attends
        to all slot queries of its image and causally to the text before it, and predicts the next
        token.
        """
        qformer = self.tokenizer.qformer
        text = self.text_embeddings(input_ids)
        text_hidden = qformer.encode_text(text, attention_mask)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        last = (attention_mask * (positions[None] + 1)).argmax(dim=1)
        text_features = F.normalize(self.itc_text_projection(text_hidden[torch.arange(len(last)), last]), dim=-1)
        image_features = F.normalize(self.itc_image_projection(slots[:, -1]), dim=-1)
        all_text, offset = _gather_with_grad(text_features)
        all_images, _ = _gather_with_grad(image_features)
        temperature = self.itc_temperature.clamp(0.001, 0.5)
        labels = torch.arange(slots.shape[0], device=slots.device) + offset
        smoothing = self.config.itc_label_smoothing
        loss_itc = 0.5 * (
            F.cross_entropy(image_features @ all_text.t() / temperature, labels, label_smoothing=smoothing)
            + F.cross_entropy(text_features @ all_images.t() / temperature, labels, label_smoothing=smoothing)
        )
        grounded = qformer.encode_text(text, attention_mask, query_layer_inputs=layer_inputs)
        logits = self.text_head(grounded[:, :-1], self.text_embeddings.word_embeddings.weight)
        labels = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
        loss_itg = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=-100,
            label_smoothing=self.config.itg_label_smoothing,
        )
        return loss_itc, loss_itg

    # ------------------------------------------------------------------ forward
    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        decoder_pixel_values: torch.Tensor | None = None,
        teacher_pixel_values: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        **kwargs: Unpack[vtok.PreTrainingKwargs],
    ) -> SlotQFormerForPreTrainingOutput:
        """Weighted loss of the current stage (``config.stage``); see the class docstring for the keys. ``noise``
        (shaped like the decoder input) and ``timesteps`` (`[B]` integers) fix the diffusion loss's random draws:
        with both, an eval-mode call is deterministic."""
        noise, timesteps = self._pretraining_draws(kwargs)
        config = self.config
        pixel_values = self.tokenizer._check_pixel_values(pixel_values)
        batch = pixel_values.shape[0]
        clean = self.decoder_samples(lambda: self.decoder_targets(pixel_values, decoder_pixel_values), latents, batch)
        teacher = self.teacher_embedding(pixel_values, teacher_pixel_values)
        if config.stage == 1:
            needs_text = config.contrastive_loss_weight > 0 or config.text_generation_loss_weight > 0
            if needs_text and input_ids is None:
                raise ValueError(
                    "`input_ids` (the captions) are required in stage 1 while `contrastive_loss_weight` or "
                    "`text_generation_loss_weight` is non-zero."
                )
            encoded = self.tokenizer.encode_slots(pixel_values, output_hidden_states=needs_text)
            slots = encoded.slot_embeddings
            loss = slots.new_zeros((), dtype=torch.float32)
            loss_itc = loss_itg = None
            if needs_text:
                input_ids, attention_mask = self._check_text(input_ids, attention_mask, batch)
                loss_itc, loss_itg = self.text_losses(slots, encoded.layer_inputs, input_ids, attention_mask)
                loss = loss + config.contrastive_loss_weight * loss_itc + config.text_generation_loss_weight * loss_itg
            loss_diffusion, condition, loss_pixel = self.diffusion_loss(slots, clean, True, noise, timesteps, pixel_values)
            loss_mse = F.mse_loss(condition.global_embedding.float(), teacher)
            loss = loss + config.diffusion_loss_weight * loss_diffusion + config.global_mse_loss_weight * loss_mse
            if loss_pixel is not None:
                loss = loss + config.pixel_loss_weight * loss_pixel
            layout_total, loss_layout, loss_layout_colour = self._layout_losses(condition, encoded.assignments, pixel_values)
            loss = loss + layout_total
            loss_colour = None
            if config.colour_reconstruction_loss_weight > 0:
                loss_colour = self.colour_reconstruction_loss(slots, encoded.assignments, pixel_values)
                loss = loss + config.colour_reconstruction_loss_weight * loss_colour
            return SlotQFormerForPreTrainingOutput(
                loss=loss,
                loss_colour_reconstruction=loss_colour,
                loss_contrastive=loss_itc,
                loss_text_generation=loss_itg,
                loss_diffusion=loss_diffusion,
                loss_global_mse=loss_mse,
                loss_layout=loss_layout,
                loss_layout_colour=loss_layout_colour,
                loss_pixel=loss_pixel,
                slot_embeddings=slots,
                assignments=encoded.assignments,
            )
        else:
            with torch.no_grad():
                encoded = self.tokenizer.encode_slots(pixel_values)
            slots = encoded.slot_embeddings.detach()
            quantized = self.tokenizer.quantize(slots)
            rebuilt = self.tokenizer.rebuild_slots(quantized.quantized)
            loss_reconstruction = F.mse_loss(rebuilt.float(), slots.float())
            loss_commitment = quantized.loss
            loss_diffusion, condition, loss_pixel = self.diffusion_loss(rebuilt, clean, False, noise, timesteps,
                                                                        pixel_values)  # fmt: skip
            loss_mse = F.mse_loss(condition.global_embedding.float(), teacher)
            loss = (
                config.reconstruction_loss_weight * loss_reconstruction
                + config.commitment_loss_weight * loss_commitment
                + config.stage2_diffusion_loss_weight * loss_diffusion
                + config.stage2_global_mse_loss_weight * loss_mse
            )
            if loss_pixel is not None:
                loss = loss + config.pixel_loss_weight * loss_pixel
            # the rebuilt slots must still say where they go (and in which colour)
            layout_total, loss_layout, loss_layout_colour = self._layout_losses(condition, encoded.assignments, pixel_values)
            loss = loss + layout_total
            return SlotQFormerForPreTrainingOutput(
                loss=loss,
                loss_diffusion=loss_diffusion,
                loss_global_mse=loss_mse,
                loss_layout=loss_layout,
                loss_layout_colour=loss_layout_colour,
                loss_reconstruction=loss_reconstruction,
                loss_commitment=loss_commitment,
                loss_pixel=loss_pixel,
                slot_embeddings=rebuilt,
                ids=self.tokenizer.flatten_ids(quantized.ids),
                assignments=encoded.assignments,
                codebook_perplexity=quantized.perplexity,
            )

    # ------------------------------------------------------------------ export / init
    def get_decoder_pipeline(self, *, scheduler=None, vae=None):
        """The decoder as a :class:`SlotQFormerDecoderPipeline` built from THIS model's modules.

        ``vae`` defaults to this model's (the shipped one named by ``decoder_config.vae``; ``None`` for a pixel-space
        decoder). ``scheduler`` defaults to
        DPM-Solver (multistep) with the training noise schedule, as in the paper, for a latent-space decoder. A
        pixel-space decoder (no VAE, the tiny preset) samples with DDIM and clips the predicted image to [-1, 1]:
        with the cosine schedule ᾱ(999) ≈ 2e-9, so an unclipped ε-prediction sampler amplifies the model's error
        at the first steps without bound.
        """
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        from .pipeline_slot_qformer import SlotQFormerDecoderPipeline

        vae = self.decoder_autoencoder() if vae is None else vae
        if scheduler is None and vae is None:
            scheduler = DDIMScheduler.from_config(self.noise_scheduler.config, clip_sample=True, clip_sample_range=1.0)
        elif scheduler is None:
            scheduler = DPMSolverMultistepScheduler.from_config(self.noise_scheduler.config)
        return SlotQFormerDecoderPipeline(
            tokenizer=self.tokenizer, conditioner=self.conditioner, unet=self.unet, scheduler=scheduler, vae=vae
        )

    @classmethod
    def from_pretrained_parts(
        cls,
        config: SlotQFormerConfig,
        vision_model_path: str | os.PathLike | None = None,
        qformer_path: str | os.PathLike | None = None,
        teacher_model_path: str | os.PathLike | None = None,
    ) -> SlotQFormerForPreTraining:
        """A new model whose vision encoder, Q-Former and/or teacher come from pretrained checkpoints.

        ``vision_model_path``: any folder ``AutoModel.from_pretrained`` loads into the vision encoder
        (e.g. a DINOv2 checkpoint); its config replaces ``config.vision_config``. ``qformer_path``: a
        BLIP-2 Q-Former (see :meth:`SlotQFormerModel.load_blip2_qformer`). ``teacher_model_path``: the
        teacher (e.g. CLIP ViT-H/14 with projection); its config replaces ``config.teacher_config``.
        """
        if not isinstance(config, SlotQFormerConfig):
            raise TypeError(f"`config` must be a SlotQFormerConfig, got {describe(config)}.")
        vision = teacher = None
        if vision_model_path is not None:
            vision = _load_part(AutoModel, vision_model_path, "vision_model_path")
            config.vision_config, config.vision_model_name_or_path = vision.config, os.fspath(vision_model_path)
        if teacher_model_path is not None:
            teacher_config = transformers.AutoConfig.from_pretrained(teacher_model_path)
            architectures = teacher_config.architectures or []
            teacher_cls = next((getattr(transformers, a) for a in architectures if hasattr(transformers, a)), AutoModel)
            teacher = _load_part(teacher_cls, teacher_model_path, "teacher_model_path")
            config.teacher_config = teacher.config
        config.validate()
        model = cls(config)
        if vision is not None:
            model.tokenizer.vision_model.load_state_dict(vision.state_dict())
        if teacher is not None:
            model.teacher.load_state_dict(teacher.state_dict())
        if qformer_path is not None:
            model.tokenizer.load_blip2_qformer(qformer_path)
        model.set_stage(config.stage)
        return model


def _load_part(loader, path, name: str):
    path = os.fspath(path)
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"`{name}` must be a checkpoint folder with a config.json, got {path!r}.")
    try:
        return loader.from_pretrained(path)
    except Exception as error:  # surface which argument failed
        raise ValueError(f"`{name}` ({path}) could not be loaded: {error}") from error


__all__ = [
    "SlotQFormerEncoderOutput",
    "SlotQFormerForPreTraining",
    "SlotQFormerForPreTrainingOutput",
    "SlotQFormerModel",
    "SlotQFormerPreTrainedModel",
]
