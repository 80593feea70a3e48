"""SeTok: semantic-equivalent vision tokenizer (Wu et al., Sec. 2.1-2.2, Appendix C-D).

Frozen vision encoder → density-peak clustering of the patch features (``clustering_setok``) → cluster merger
(2D position embedding, L self-attention blocks inside each cluster, average pooling) → one continuous token
per cluster, a *variable* number per image.

* :class:`SeTokModel` is the tokenizer: ``encode(pixel_values) -> VisualTokens`` with ``embeddings``
  ``[B, N_max, D]``, ``attention_mask`` marking each image's real tokens and ``assignments`` = the cluster
  masks ``[B, N_max, num_patches]``. ``N_max`` is the longest image of the batch (at most
  ``config.num_visual_tokens``). Tokens come in ``cluster_scan`` order: clusters in the order Algorithm 1 selected
  their seeds (descending seed score), the remainder mask last.
* :class:`SeTokForPreTraining` adds what stage I trains: the feature mapper + UNet image decoder (ε-prediction,
  eq. 3) and the mask decoder (BCE + Dice on matched object masks plus KL(M ‖ sg(π)), eq. 4).

The merger runs every cluster of a chunk of images in one pass, *packed*: with hard masks the patches are sorted
by (cluster size, cluster), so that the clusters of equal size sit next to each other in one token list. The
linear layers, norms and FFN run on that list (no padding, every patch once); attention runs once per distinct
cluster size on a ``[clusters, size, heads, head_dim]`` view of it (no mask, no padding: exactly the per-cluster
attention work sum_i n_i^2, in at most ~sqrt(2 x tokens) calls). The cluster means are taken inside the last
block: a pre-norm block (the released layout, or ``merger_norm="pre"``) applies its FFN's output projection to the
means instead of to every patch, since a mean commutes with a linear layer (a quarter fewer multiply-adds; the
cost is otherwise all in the linear layers, which the packing cannot make cheaper than a per-cluster loop). Soft
masks use padded per-cluster sequences because every patch belongs to every cluster with some weight.

Two block layouts (``config.merger_block_layout``): ``"paper"`` (default; Sec. 2.1 and D.1: each block is
self-attention, residual and normalisation, feed-forward) and ``"released"`` (the released code's one block: L
self-attention layers sharing one pre-LayerNorm, then one FFN; parameter names follow the released module so
that its weights map one to one, see :class:`SeTokReleasedMergerBlock`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Unpack

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import nn
from transformers import AutoModel, PreTrainedModel  # noqa: F401 - diffusers' loader looks it up here
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import can_return_tuple

from ...utils import modeling_utils as vtok
from ...utils.modeling_utils import Attention, FeedForward, sinusoidal_embedding_2d
from ...utils.validation import check_choice, check_tensor, describe
from .clustering_setok import SeTokClusteringOutput, density_peak_clustering
from .configuration_setok import SeTokConfig
from .modeling_setok_decoder import SeTokFeatureMapper

_MERGER_CHUNK_TOKENS = 1024  # patches per merger pass, soft masks (one 24 x 24 image)
_PACKED_CHUNK_TOKENS = 1152  # patches per packed merger pass (2 images of 24 x 24); see _merge_hard


# --------------------------------------------------------------------------------------------------------
# Cluster merger


def _segment_attention(query, key, value, segments) -> torch.Tensor:
    """Attention inside each cluster of a packed token list.

    ``query``/``key``/``value`` are ``[P, heads, head_dim]``; ``segments`` lists ``(start, stop, size)``: tokens
    ``start:stop`` are ``(stop - start) / size`` clusters of ``size`` consecutive tokens each. One unmasked
    ``scaled_dot_product_attention`` call per segment, on views (no gather, no padding).
    """
    out = torch.empty_like(query)
    heads, head_dim = query.shape[1:]
    for start, stop, size in segments:
        def view(tensor, start=start, stop=stop, size=size):
            return tensor[start:stop].view(-1, size, heads, head_dim).transpose(1, 2)

        view(out).copy_(F.scaled_dot_product_attention(view(query), view(key), view(value)))
    return out


def _packed_attention(attention: Attention, hidden_states: torch.Tensor, segments) -> torch.Tensor:
    """:class:`Attention` (self-attention) on a packed token list ``[P, C]``, restricted to each cluster."""
    heads = attention.num_heads
    query, key, value = (
        projection(hidden_states).unflatten(-1, (heads, attention.head_dim))
        for projection in (attention.to_q, attention.to_k, attention.to_v)
    )
    return attention.to_out(_segment_attention(query, key, value, segments).flatten(1))


class _PackedClusterMean:
    """``pool(rows [P, width]) -> [batch, slots, width]``: cluster means of packed rows, for ``masks``
    ``[batch, slots, N]`` whose patches were packed by ``order``.

    The pooling matrix is the (block-diagonal) masks with their columns in packed order, so rows are pooled where
    they lie (no unpacking copy); the masks carry the gradient, as ``masks @ rows / |cluster|`` does.
    ``coverage`` ``[batch, slots, 1]`` is the pool of a row of ones (1 for a cluster, 0 for an empty slot).
    """

    def __init__(self, masks: torch.Tensor, order: torch.Tensor):
        self.shape = masks.shape[:2]
        self.weights = (torch.block_diag(*masks) if masks.shape[0] > 1 else masks[0])[:, order]  # [batch * slots, P]
        mass = masks.sum(dim=-1, keepdim=True)
        self.scale = mass.clamp_min(1e-6)
        self.coverage = mass / self.scale

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        return (self.weights @ rows).unflatten(0, self.shape) / self.scale


def _pooled_residual_mlp(pool, residual, mlp_input, fc1: nn.Linear, act: nn.Module, fc2: nn.Linear) -> torch.Tensor:
    """``pool(residual + fc2(act(fc1(mlp_input))))`` with ``fc2`` applied after the pooling: a cluster mean commutes
    with a linear layer, so a pre-norm block's last projection runs once per cluster instead of once per patch
    (a quarter of the block's multiply-adds; equal to float rounding)."""
    pooled_hidden = pool(act(fc1(mlp_input)))
    return pool(residual) + F.linear(pooled_hidden, fc2.weight) + pool.coverage * fc2.bias


class SeTokMergerBlock(nn.Module):
    """Paper layout: self-attention and feed-forward with residuals; "Add & Norm" after each (``post``) or
    pre-norm (``pre``).

    ``forward(hidden_states [B, L, C], attention_mask)`` runs padded sequences; with ``segments`` it runs a packed
    token list ``[P, C]`` whose attention stays inside each cluster (see :func:`_segment_attention`), and with
    ``pool`` (:class:`_PackedClusterMean`) it returns the cluster means of its output.
    """

    def __init__(self, dim: int, num_heads: int, intermediate_size: int, norm: str, eps: float):
        super().__init__()
        self.attention = Attention(dim, num_heads)
        self.attention_norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = FeedForward(dim, intermediate_size)
        self.mlp_norm = nn.LayerNorm(dim, eps=eps)
        self.post_norm = norm == "post"

    def _attend(self, hidden_states, attention_mask, segments):
        if segments is not None:
            return _packed_attention(self.attention, hidden_states, segments)
        return self.attention(hidden_states, attention_mask=attention_mask)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                segments=None, pool=None) -> torch.Tensor:
        if self.post_norm:
            hidden_states = self.attention_norm(hidden_states + self._attend(hidden_states, attention_mask, segments))
            hidden_states = self.mlp_norm(hidden_states + self.mlp(hidden_states))
            return hidden_states if pool is None else pool(hidden_states)
        hidden_states = hidden_states + self._attend(self.attention_norm(hidden_states), attention_mask, segments)
        if pool is None:
            return hidden_states + self.mlp(self.mlp_norm(hidden_states))
        fc1, act, fc2 = self.mlp
        return _pooled_residual_mlp(pool, hidden_states, self.mlp_norm(hidden_states), fc1, act, fc2)


class SeTokReleasedAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection and an output ``proj`` (released layout)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"`dim` ({dim}) must be divisible by `num_heads` ({num_heads}).")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                segments=None) -> torch.Tensor:
        # qkv columns are (3, heads, head_dim), as in the released module.
        qkv = self.qkv(hidden_states).unflatten(-1, (3, self.num_heads, self.head_dim))
        if segments is not None:
            query, key, value = qkv.unbind(-3)  # [P, heads, head_dim]
            return self.proj(_segment_attention(query, key, value, segments).flatten(1))
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, heads, L, head_dim]
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            attention_mask = attention_mask[:, None, None, :] if attention_mask.ndim == 2 else attention_mask[:, None]
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        return self.proj(out.transpose(1, 2).flatten(2))


class SeTokReleasedMlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` (released layout; parameter names of the released module)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class SeTokReleasedMergerBlock(nn.Module):
    """The released code's merger block: ``num_attention_layers`` pre-norm self-attention layers that share one
    LayerNorm, then one pre-norm feed-forward layer::

        for attention in layers: x = x + attention(norm1(x))
        x = x + mlp(norm2(x))

    Parameter names follow the released module, so its state dict maps one to one: ``norm1.*``, ``norm2.*``,
    ``mlp.fc1.*``, ``mlp.fc2.*`` unchanged, ``layers.{i}.1.qkv.*`` / ``layers.{i}.1.proj.*`` ->
    ``layers.{i}.qkv.*`` / ``layers.{i}.proj.*`` (the released ``layers.{i}.0.*`` entries are the shared ``norm1``
    again). The released block is one of these with ``num_attention_layers`` = its depth (2 for both the
    intra-cluster and the inter-cluster encoder); its LayerNorms use torch's default eps 1e-5
    (``layer_norm_eps``). Dropout and drop-path (inference: identity) are not modelled.
    """

    def __init__(self, dim: int, num_heads: int, intermediate_size: int, num_attention_layers: int, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.layers = nn.ModuleList(SeTokReleasedAttention(dim, num_heads) for _ in range(num_attention_layers))
        self.mlp = SeTokReleasedMlp(dim, intermediate_size)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                segments=None, pool=None) -> torch.Tensor:
        """As :meth:`SeTokMergerBlock.forward` (``segments``: packed clusters; ``pool``: return cluster means)."""
        for attention in self.layers:
            hidden_states = hidden_states + attention(self.norm1(hidden_states), attention_mask, segments)
        if pool is None:
            return hidden_states + self.mlp(self.norm2(hidden_states))
        mlp = self.mlp
        return _pooled_residual_mlp(pool, hidden_states, self.norm2(hidden_states), mlp.fc1, mlp.act, mlp.fc2)


def _merger_blocks(config: SeTokConfig, depth: int) -> nn.ModuleList:
    dim, heads, width, eps = (config.feature_dim, config.merger_num_heads, config.merger_intermediate_size,
                              config.layer_norm_eps)
    if config.merger_block_layout == "released":
        return nn.ModuleList([SeTokReleasedMergerBlock(dim, heads, width, depth, eps)] if depth else [])
    return nn.ModuleList(SeTokMergerBlock(dim, heads, width, config.merger_norm, eps) for _ in range(depth))


class SeTokClusterMerger(nn.Module):
    """u_i = Avg(Merger(PE(X) ⊙ M_i + X ⊙ M_i)) for every cluster i of every image (Sec. 2.1), batched."""

    def __init__(self, config: SeTokConfig):
        super().__init__()
        dim = config.feature_dim
        self.dim = dim
        self.grid_size = config.grid_size
        self.hard_assignment = config.hard_assignment
        self.chunk_size = config.merger_chunk_size
        self.position_embedding = (
            nn.Parameter(torch.zeros(config.num_patches, dim)) if config.merger_position_embedding == "learned" else None
        )
        self.layers = _merger_blocks(config, config.merger_num_layers)
        self.inter_cluster_layers = _merger_blocks(config, config.inter_cluster_layers)
        # with `token_footprint` the last num_patches values of a token are its cluster's mask, not projected
        self.token_footprint = config.token_footprint
        content_dim = config.token_embedding_dim - (config.num_patches if config.token_footprint else 0)
        self.output_projection = nn.Linear(dim, content_dim) if content_dim != dim else None

    def position_embeddings(self, grid_size: tuple[int, int], device, dtype) -> torch.Tensor:
        """PE(X) for a ``height x width`` grid, row-major: ``[height * width, dim]``."""
        height, width = grid_size
        if self.position_embedding is not None:
            if height * width != self.position_embedding.shape[0]:
                raise ValueError(
                    f"Learned position embeddings cover {self.position_embedding.shape[0]} patches, got a "
                    f"{height}x{width} grid."
                )
            return self.position_embedding.to(dtype)
        return sinusoidal_embedding_2d(height, width, self.dim, device=device).to(dtype)

    def forward(
        self,
        features: torch.Tensor,
        masks: torch.Tensor,
        attention_mask: torch.Tensor,
        grid_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Tokens ``[B, T, token_dim]`` from features ``[B, N, C]``, masks ``[B, T, N]``, attention mask ``[B, T]``."""
        features = check_tensor("features", features, ndim=3, floating=True)
        masks = check_tensor("masks", masks, ndim=3, floating=True)
        batch, num, dim = features.shape
        if dim != self.dim:
            raise ValueError(f"`features` must have width {self.dim}, got shape {tuple(features.shape)}.")
        if masks.shape[0] != batch or masks.shape[2] != num:
            raise ValueError(
                f"`masks` must have shape [{batch}, num_tokens, {num}] to match `features` {tuple(features.shape)}, "
                f"got {tuple(masks.shape)}."
            )
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(masks.shape[:2]):
            raise ValueError(
                f"`attention_mask` must be a tensor of shape {tuple(masks.shape[:2])}, got {describe(attention_mask)}."
            )
        grid_size = self.grid_size if grid_size is None else tuple(grid_size)
        if grid_size[0] * grid_size[1] != num:
            raise ValueError(f"`grid_size` {grid_size} does not hold the {num} patches of `features`.")
        token_mask = attention_mask.bool()
        position = self.position_embeddings(grid_size, features.device, features.dtype)
        masks = masks.to(features.dtype)
        if self.hard_assignment:
            pooled = self._merge_hard(features, position, masks)
        else:
            pooled = self._merge_soft(features, position, masks, token_mask)
        for layer in self.inter_cluster_layers:
            pooled = layer(pooled, attention_mask=token_mask)
        if self.output_projection is not None:
            pooled = self.output_projection(pooled)
        if self.token_footprint:
            # the masks as they are (straight-through one-hot with hard assignment), so the tokens say where
            # their clusters lie; the footprints of an image's tokens sum to one on every patch
            pooled = torch.cat([pooled, masks.to(pooled.dtype)], dim=-1)
        return pooled * token_mask[..., None].to(pooled.dtype)

    def _chunk(self, num_per_item: int) -> int:
        return self.chunk_size or max(1, _MERGER_CHUNK_TOKENS // max(num_per_item, 1))

    def _merge_hard(self, features: torch.Tensor, position: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        # One-hot masks: X̂_i = (PE(X) + X) on cluster i. The patches of a chunk of images are packed by
        # (cluster size, cluster) and go through the blocks once; attention stays inside each cluster.
        batch, slots, num = masks.shape
        labels = masks.detach().argmax(dim=1)  # [B, N]
        # ~1k patches per pass: the GEMMs are already large, and the FFN activations stay below glibc's 32 MB mmap
        # threshold, so their memory is reused instead of page-faulted in again on every pass (4k-patch chunks
        # were ~10% slower on one CPU thread).
        chunk = self.chunk_size or max(1, _PACKED_CHUNK_TOKENS // max(num, 1))
        pooled = []
        for start in range(0, batch, chunk):
            images = slice(start, start + chunk)
            order, segments = _pack_clusters(labels[images], slots)
            packed = (features[images] + position).flatten(0, 1)[order]  # [P, C]
            # Average pooling per cluster; the (straight-through) masks carry the gradient to the clustering. The
            # last block pools its own output (a pre-norm block before its last projection).
            pool = _PackedClusterMean(masks[images], order)
            for layer in self.layers[:-1]:
                packed = layer(packed, segments=segments)
            pooled.append(self.layers[-1](packed, segments=segments, pool=pool) if len(self.layers) else pool(packed))
        return torch.cat(pooled, dim=0)

    def _merge_soft(self, features, position, masks, token_mask) -> torch.Tensor:
        # Soft masks: one padded sequence per real cluster, X̂_i = (PE(X) + X) ⊙ M_i over the patches with M_i > 0,
        # pooled with the mask weights.
        batch, slots, num = masks.shape
        image_index, slot_index = token_mask.nonzero(as_tuple=True)
        pooled = features.new_zeros(batch, slots, features.shape[-1])
        chunk = self._chunk(num)
        for start in range(0, image_index.shape[0], chunk):
            images, clusters = image_index[start : start + chunk], slot_index[start : start + chunk]
            weights = masks[images, clusters]  # [R, N]
            hidden = (features[images] + position) * weights[..., None]
            for layer in self.layers:
                hidden = layer(hidden, attention_mask=weights > 0)
            values = (weights[..., None] * hidden).sum(dim=1) / weights.sum(dim=-1, keepdim=True).clamp_min(1e-6)
            pooled = pooled.index_put((images, clusters), values)
        return pooled


def _pack_clusters(labels: torch.Tensor, slots: int):
    """Token order and attention segments of the packed merger for cluster ``labels`` ``[B, N]``.

    Returns ``order`` (indices into the flattened ``[B * N]`` patches: sorted by cluster size, then image and
    cluster, raster order inside a cluster) and ``segments`` = ``[(start, stop, size)]``, one per distinct size.
    """
    batch = labels.shape[0]
    cluster = (labels + slots * torch.arange(batch, device=labels.device)[:, None]).flatten()  # global cluster id
    sizes = torch.bincount(cluster, minlength=batch * slots)
    key = sizes[cluster] * (batch * slots) + cluster
    order = torch.sort(key, stable=True).indices
    distinct, counts = torch.unique_consecutive(sizes[cluster][order], return_counts=True)
    segments, start = [], 0
    for size, count in zip(distinct.tolist(), counts.tolist(), strict=True):
        segments.append((start, start + count, size))
        start += count
    return order, segments


# --------------------------------------------------------------------------------------------------------
# Models


class SeTokPreTrainedModel(vtok.VTokPreTrainedModel):
    config_class = SeTokConfig
    supports_gradient_checkpointing = False
    _no_split_modules: ClassVar[list[str]] = ["SeTokMergerBlock", "SeTokReleasedMergerBlock"]

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, SeTokClusterMerger) and module.position_embedding is not None:
            init.normal_(module.position_embedding, mean=0.0, std=std)


class SeTokModel(SeTokPreTrainedModel, vtok.VisualTokenizerMixin):
    """The SeTok tokenizer: vision encoder → density-peak clustering → cluster merger → variable-length tokens."""

    has_variable_token_count = True  # one token per cluster
    # Loading the tokenizer from a SeTokForPreTraining checkpoint skips the decoders quietly.
    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [r"^(feature_mapper|unet|vae|mask_decoder)\."]

    def __init__(self, config: SeTokConfig):
        super().__init__(config)
        self.vision_model = AutoModel.from_config(config.vision_config)
        # departure from the paper (merger_pixel_embedding): the patches' pixels, linearly embedded, join the features
        # the merger pools, so a token can carry the colour a frozen encoder leaves out
        patch = config.vision_config.patch_size
        self.pixel_embedding = (
            nn.Conv2d(config.num_channels, config.feature_dim, kernel_size=patch, stride=patch)
            if config.merger_pixel_embedding else None
        )
        self.merger = SeTokClusterMerger(config)
        self.post_init()
        self.set_vision_encoder_trainable(not config.freeze_vision_encoder)

    def set_vision_encoder_trainable(self, trainable: bool) -> None:
        """Freeze (paper, sub-phase 1) or unfreeze the vision encoder."""
        self.vision_model.requires_grad_(bool(trainable))

    def get_input_embeddings(self) -> nn.Module:
        """The vision encoder's patch embedding (what `enable_input_require_grads` hooks)."""
        return self.vision_model.get_input_embeddings()

    def get_image_features(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> BaseModelOutput:
        """Patch features of the vision encoder (CLS/register tokens dropped), the input of the clustering:
        ``last_hidden_state`` ``[B, num_patches, C]``; with ``output_hidden_states`` also the encoder's
        ``hidden_states`` (embeddings + one per layer)."""
        layer = self.config.vision_feature_layer
        trainable = any(parameter.requires_grad for parameter in self.vision_model.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            outputs = self.vision_model(pixel_values=pixel_values, output_hidden_states=output_hidden_states or layer != -1)
        hidden = outputs.last_hidden_state if layer == -1 else outputs.hidden_states[layer]
        num = self.config.num_patches
        if hidden.ndim != 3 or hidden.shape[1] < num:
            raise ValueError(
                f"The vision encoder returned hidden states of shape {tuple(hidden.shape)}; expected at least "
                f"{num} patch tokens ({self.config.grid_size[0]}x{self.config.grid_size[1]}). Check `vision_config`."
            )
        return BaseModelOutput(
            last_hidden_state=hidden[:, -num:], hidden_states=outputs.hidden_states if output_hidden_states else None
        )

    def _resolve_grid(self, num: int, grid_size) -> tuple[int, int]:
        if grid_size is not None:
            if (
                not isinstance(grid_size, (tuple, list))
                or len(grid_size) != 2
                or not all(isinstance(side, int) and side > 0 for side in grid_size)
            ):
                raise ValueError(f"`grid_size` must be a (height, width) pair of positive ints, got {grid_size!r}.")
            if grid_size[0] * grid_size[1] != num:
                raise ValueError(f"`grid_size` {tuple(grid_size)} does not hold the {num} patches of `features`.")
            return tuple(grid_size)
        if num == self.config.num_patches:
            return self.config.grid_size
        side = round(num**0.5)
        if side * side != num:
            raise ValueError(
                f"`features` has {num} patches, which is not a square grid: pass `grid_size=(height, width)`."
            )
        return (side, side)

    def clustering_features(self, features: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """What the clustering reads: the patch features, with the patches' mean colours when
        ``config.color_feature_weight > 0`` (then ``pixel_values`` are required)."""
        config = self.config
        if not config.color_feature_weight:
            return features
        if pixel_values is None:
            raise ValueError(f"`pixel_values` are required: color_feature_weight = {config.color_feature_weight} "
                             "adds the patches' mean colours to the clustering features.")  # fmt: skip
        return vtok.with_patch_colors(features, pixel_values, config.image_mean, config.image_std,
                                      config.vision_config.patch_size, config.color_feature_weight)  # fmt: skip

    def merger_features(self, features: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """What the merger pools: the patch features, plus the embedded patch pixels when
        ``config.merger_pixel_embedding`` (then ``pixel_values`` are required)."""
        if self.pixel_embedding is None:
            return features
        if pixel_values is None:
            raise ValueError("`pixel_values` are required: merger_pixel_embedding = True adds the embedded patch "
                             "pixels to the features the merger pools.")  # fmt: skip
        pixels = self.pixel_embedding(pixel_values.to(self.pixel_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        if pixels.shape[:2] != features.shape[:2]:
            raise ValueError(f"`pixel_values` of shape {tuple(pixel_values.shape)} make {pixels.shape[1]} patches, "
                             f"but `features` has {features.shape[1]}.")  # fmt: skip
        return features + pixels.to(features.dtype)

    def cluster(self, features: torch.Tensor, grid_size=None) -> SeTokClusteringOutput:
        """Density-peak clustering of patch features ``[B, N, C]`` with the config's settings."""
        features = check_tensor("features", features, ndim=3, floating=True)  # NaN/Inf raise in the clustering
        grid = self._resolve_grid(features.shape[1], grid_size)
        if self.config.position_before_clustering:  # released code: positions influence the distances
            features = features + sinusoidal_embedding_2d(*grid, features.shape[-1], device=features.device).to(
                features.dtype
            )
        generator = None
        if self.config.density_noise and self.config.density_noise_seed is not None:
            generator = torch.Generator(device=features.device).manual_seed(self.config.density_noise_seed)
        return density_peak_clustering(features, generator=generator, **self.config.clustering_kwargs())

    def _tokenize(self, features, grid_size=None, pixel_values=None) -> tuple[vtok.VisualTokens, SeTokClusteringOutput]:
        features = check_tensor("features", features, ndim=3, floating=True)
        if features.shape[-1] != self.config.feature_dim:
            raise ValueError(
                f"`features` must have width {self.config.feature_dim} (vision_config.hidden_size), "
                f"got shape {tuple(features.shape)}."
            )
        grid = self._resolve_grid(features.shape[1], grid_size)
        clusters = self.cluster(self.clustering_features(features, pixel_values), grid_size=grid)
        embeddings = self.merger(
            self.merger_features(features, pixel_values), clusters.masks.to(features.dtype), clusters.attention_mask,
            grid_size=grid,
        )
        tokens = vtok.VisualTokens(
            ids=None, embeddings=embeddings, attention_mask=clusters.attention_mask, assignments=clusters.masks
        )
        return tokens, clusters

    def tokenize_features(
        self, features: torch.Tensor, grid_size: tuple[int, int] | None = None, pixel_values: torch.Tensor | None = None
    ) -> vtok.VisualTokens:
        """Tokens from precomputed patch features ``[B, N, C]`` (``grid_size`` defaults to the config's grid;
        ``pixel_values``, the images they come from, when ``config.color_feature_weight > 0`` or
        ``config.merger_pixel_embedding``)."""
        return self._tokenize(features, grid_size, pixel_values)[0]

    def encode(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> vtok.VisualTokens:
        """Images ``[B, C, H, W]`` (normalised by :class:`SeTokImageProcessor`) → :class:`VisualTokens` (with the
        vision encoder's ``hidden_states`` when asked)."""
        pixel_values = self._check_pixel_values(pixel_values)
        features = self.get_image_features(pixel_values.to(self.dtype), output_hidden_states=output_hidden_states)
        tokens = self._tokenize(features.last_hidden_state, pixel_values=pixel_values)[0]
        tokens.hidden_states = features.hidden_states
        return tokens

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> vtok.VisualTokens:
        return self.encode(pixel_values, output_hidden_states=output_hidden_states)


# --------------------------------------------------------------------------------------------------------
# Mask decoder and losses (stage I, sub-phase 2)


class SeTokMaskDecoder(nn.Module):
    """OMG-Seg / Mask2Former-style mask head: one mask per token.

    The tokens are the queries; transformer layers let them attend to each other (padding masked) and to the
    projected patch features (with a 2D position embedding); each query's mask embedding is dot-multiplied with
    per-pixel embeddings upsampled from the patch grid (``num_upsample_layers`` transposed convolutions, x2 each).
    """

    def __init__(self, config: SeTokConfig):
        super().__init__()
        sizes = config.mask_decoder_config
        hidden = sizes.hidden_size
        self.hidden_size = hidden
        self.grid_size = config.grid_size
        self.upsample_factor = 2 ** sizes.num_upsample_layers
        self.token_projection = nn.Sequential(
            nn.LayerNorm(config.token_embedding_dim, eps=config.layer_norm_eps),
            nn.Linear(config.token_embedding_dim, hidden),
        )
        self.pixel_projection = nn.Sequential(
            nn.LayerNorm(config.feature_dim, eps=config.layer_norm_eps), nn.Linear(config.feature_dim, hidden)
        )
        self.layers = nn.ModuleList(
            vtok.TransformerBlock(hidden, sizes.num_heads, mlp_ratio=sizes.intermediate_size / hidden, cross_attention=True)
            for _ in range(sizes.num_layers)
        )
        self.query_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.mask_embedding = FeedForward(hidden, hidden, hidden)
        upsampling = []
        for _ in range(sizes.num_upsample_layers):
            upsampling += [
                nn.ConvTranspose2d(hidden, hidden, kernel_size=2, stride=2),
                nn.GroupNorm(8 if hidden % 8 == 0 else 1, hidden),
                nn.GELU(),
            ]
        upsampling.append(nn.Conv2d(hidden, hidden, kernel_size=1))
        self.pixel_decoder = nn.Sequential(*upsampling)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Mask logits ``[B, T, h * s, w * s]`` for tokens ``[B, T, D]`` over patch features ``[B, h*w, C]``."""
        batch = tokens.shape[0]
        height, width = self.grid_size
        token_mask = attention_mask.bool()
        queries = self.token_projection(tokens)
        pixels = self.pixel_projection(features)
        context = pixels + sinusoidal_embedding_2d(height, width, self.hidden_size, device=pixels.device).to(
            pixels.dtype
        )
        for layer in self.layers:
            queries = layer(queries, attention_mask=token_mask, context=context)
        queries = self.mask_embedding(self.query_norm(queries))
        pixel_map = self.pixel_decoder(pixels.transpose(1, 2).reshape(batch, self.hidden_size, height, width))
        return torch.einsum("btc,bchw->bthw", queries, pixel_map)


def _instance_targets(instance_mask: torch.Tensor, size: tuple[int, int], include_background: bool):
    """One binary target per region of the instance-id map, at ``size``: ``[B, G, P]`` and validity ``[B, G]``."""
    resized = F.interpolate(instance_mask[:, None].float(), size=size, mode="nearest")[:, 0].long()
    num_ids = int(resized.max()) + 1
    targets = F.one_hot(resized.flatten(1), num_ids).transpose(1, 2).float()
    valid = targets.sum(dim=-1) > 0
    if not include_background:
        valid[:, 0] = False
    return targets, valid


def _mask_losses(mask_logits, token_mask, targets, valid):
    """π = softmax over an image's tokens; Hungarian matching of tokens to regions on BCE + Dice; matched means.

    Returns the BCE and Dice losses of the matched pairs and log π (``[B, T, P]``).
    """
    from scipy.optimize import linear_sum_assignment

    batch, _slots = token_mask.shape
    logits = mask_logits.flatten(2).float().masked_fill(~token_mask[..., None], float("-inf"))
    log_pi = torch.log_softmax(logits, dim=1)
    pi = log_pi.exp()
    log_pi_clamped = log_pi.clamp_min(-100.0)  # as torch's BCE
    log_one_minus = torch.log1p(-pi.clamp(max=1.0 - 1e-6)).clamp_min(-100.0)
    num_pixels = targets.shape[-1]
    bce = -(log_pi_clamped @ targets.transpose(1, 2) + log_one_minus @ (1.0 - targets).transpose(1, 2)) / num_pixels
    intersection = pi @ targets.transpose(1, 2)
    dice = 1.0 - (2.0 * intersection + 1.0) / (pi.sum(-1)[:, :, None] + targets.sum(-1)[:, None, :] + 1.0)
    cost = (bce + dice).detach().cpu()
    batch_index, token_index, region_index = [], [], []
    for image in range(batch):
        tokens = token_mask[image].nonzero(as_tuple=True)[0].cpu()
        regions = valid[image].nonzero(as_tuple=True)[0].cpu()
        if len(tokens) == 0 or len(regions) == 0:
            continue
        rows, cols = linear_sum_assignment(cost[image][tokens][:, regions].numpy())
        batch_index += [image] * len(rows)
        token_index += tokens[rows].tolist()
        region_index += regions[cols].tolist()
    if not batch_index:
        zero = mask_logits.sum() * 0.0
        return zero, zero, log_pi
    index = (torch.tensor(batch_index), torch.tensor(token_index), torch.tensor(region_index))
    index = tuple(i.to(mask_logits.device) for i in index)
    return bce[index].mean(), dice[index].mean(), log_pi


def _consistency_kl(cluster_masks, log_pi, factor: int, grid_size, eps: float = 1e-8):
    """KL(M ‖ sg(π)) per patch (distributions over the tokens), averaged over patches and images."""
    batch, slots, _ = cluster_masks.shape
    height, width = grid_size
    pi = log_pi.detach().exp().reshape(batch, slots, height * factor, width * factor)
    pi_patch = F.avg_pool2d(pi, kernel_size=factor).flatten(2) if factor > 1 else pi.flatten(2)
    masks = cluster_masks.float()
    kl = masks * (torch.log(masks + eps) - torch.log(pi_patch + eps))
    return kl.sum(dim=1).mean()


@dataclass
class SeTokForPreTrainingOutput(vtok.VTokPreTrainingOutput):
    """Losses of :class:`SeTokForPreTraining` (``loss`` is the weighted sum that the Trainer optimises).

    Args:
        loss: ``diffusion_loss_weight * diffusion_loss`` (+ ``pixel_loss_weight * pixel_loss``, + mask terms in
            stage 2).
        diffusion_loss: ε-prediction MSE of the UNet (eq. 3).
        pixel_loss: ``ᾱ_t``-weighted pixel MSE of the decoded ``x̂_0`` on the first ``pixel_loss_max_images`` images
            (0 when ``pixel_loss_weight`` is 0; a departure, see the config).
        mask_loss: ``kl + bce + dice`` with their ``mask_*_loss_weight`` (eq. 4), stage 2 only.
        mask_bce_loss, mask_dice_loss, mask_kl_loss: its components.
        num_tokens: mean number of tokens per image of the batch.
        mask_logits: per-token mask logits ``[B, T, H_m, W_m]`` (stage 2).
    """

    diffusion_loss: torch.FloatTensor | None = None
    pixel_loss: torch.FloatTensor | None = None
    mask_loss: torch.FloatTensor | None = None
    mask_bce_loss: torch.FloatTensor | None = None
    mask_dice_loss: torch.FloatTensor | None = None
    mask_kl_loss: torch.FloatTensor | None = None
    num_tokens: torch.FloatTensor | None = None
    mask_logits: torch.FloatTensor | None = None


class SeTokForPreTraining(SeTokPreTrainedModel, vtok.ShippedAutoencoderMixin):
    """SeTok with its stage-I training heads, trainable by ``transformers.Trainer``.

    Submodules: ``tokenizer`` (:class:`SeTokModel`), ``feature_mapper`` (:class:`SeTokFeatureMapper`), ``unet``
    (diffusers ``UNet2DConditionModel``), ``vae`` (``AutoencoderKL`` or `None` = pixel space) and
    ``mask_decoder``. The noise schedule comes from ``config.decoder_config.scheduler``.

    Batch keys (what a collator must produce):
        * ``pixel_values`` ``[B, 3, H, W]``: images normalised by :class:`SeTokImageProcessor`.
        * ``instance_mask`` ``[B, H', W']`` (integer; stage 2 only): instance-id map, 0 = background, any
          resolution (nearest-resized to the mask decoder's); e.g. the shapes world's ``mask`` column through
          ``SeTokImageProcessor.preprocess_instance_masks``.
        * ``latents`` ``[B, *config.decoder_latent_shape]`` (optional): with ``decoder_config.vae = "taef2"``, the
          scaled latents of the image, cached by the trainer; by default encoded here.

    Stages (the two sub-phases of stage I, Sec. 2.2): ``set_stage(1)`` trains merger + feature mapper + the UNet
    parts named by ``decoder_config.unet_trainable`` with the diffusion loss; ``set_stage(2)`` adds the mask
    decoder and its losses and (``train_vision_encoder_in_stage2``) unfreezes the encoder.
    """

    def __init__(self, config: SeTokConfig):
        super().__init__(config)
        decoder = config.decoder_config
        self.tokenizer = SeTokModel(config)
        self.feature_mapper = SeTokFeatureMapper(
            token_dim=config.token_embedding_dim,
            footprint_grid=config.grid_size if config.token_footprint else None,
            footprint_channels=decoder.footprint_channels,
            **decoder.feature_mapper,
        )
        self.unet = UNet2DConditionModel(**decoder.unet)
        # the decoder's own VAE; a shipped one (decoder_config.vae = "taef2") is not a submodule, see decoder_autoencoder
        self.vae = AutoencoderKL(**decoder.vae) if isinstance(decoder.vae, dict) else None
        self.mask_decoder = SeTokMaskDecoder(config)
        # The diffusers parts initialise themselves; keep transformers' init away from them.
        for part in (self.feature_mapper, self.unet, self.vae):
            if part is not None:
                for module in part.modules():
                    module._is_hf_initialized = True
        self._noise_scheduler = None
        self.post_init()
        self.set_stage(config.stage)

    @property
    def noise_scheduler(self) -> DDPMScheduler:
        """Training noise schedule (built lazily on CPU, so that meta-device construction does not touch it)."""
        if self._noise_scheduler is None:
            with torch.device("cpu"):
                self._noise_scheduler = DDPMScheduler.from_config(self.config.decoder_config.scheduler)
        return self._noise_scheduler

    def set_stage(self, stage: int) -> SeTokForPreTraining:
        """Select the sub-phase of tokenizer pre-training and freeze/unfreeze the matching parameters; returns
        the model."""
        check_choice("stage", stage, (1, 2))
        self.config.stage = stage
        encoder_trainable = (not self.config.freeze_vision_encoder) or (
            stage == 2 and self.config.train_vision_encoder_in_stage2
        )
        self.tokenizer.set_vision_encoder_trainable(encoder_trainable)
        self.tokenizer.merger.requires_grad_(True)
        self.feature_mapper.requires_grad_(True)
        rule = self.config.decoder_config.unet_trainable
        for name, parameter in self.unet.named_parameters():
            parameter.requires_grad_(
                rule == "all" or (rule == "cross_attention_kv" and (".attn2.to_k." in name or ".attn2.to_v." in name))
            )
        if self.vae is not None:
            self.vae.requires_grad_(False)
        self.mask_decoder.requires_grad_(stage == 2)
        return self

    def save_tokenizer(self, save_directory, **kwargs) -> None:
        """Save only the tokenizer (``SeTokModel``), loadable with ``AutoModel.from_pretrained``."""
        self.tokenizer.save_pretrained(save_directory, **kwargs)

    def get_decoder_pipeline(self, *, scheduler=None, vae=None):
        """The :class:`SeTokDecoderPipeline` made of this model's own modules; ``scheduler`` defaults to DDIM with the
        training noise schedule, ``vae`` to this model's (or the shipped one named by ``decoder_config.vae``)."""
        from .pipeline_setok import SeTokDecoderPipeline

        return SeTokDecoderPipeline(
            tokenizer=self.tokenizer,
            feature_mapper=self.feature_mapper,
            unet=self.unet,
            scheduler=DDIMScheduler.from_config(self.noise_scheduler.config) if scheduler is None else scheduler,
            vae=self.decoder_autoencoder() if vae is None else vae,
        )

    def _diffusion_inputs(self, pixel_values: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        """What the UNet denoises: cached ``latents``, else the images in [-1, 1] at the decoder's resolution,
        encoded to latents when there is a VAE."""

        def images():
            vae = self.decoder_autoencoder()
            size = self.unet.config.sample_size * (1 if vae is None else vtok.autoencoder_compression(vae))
            return vtok.decoder_images(pixel_values, self.config.image_mean, self.config.image_std, size)

        return self.decoder_samples(images, latents, pixel_values.shape[0]).to(self.unet.dtype)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        instance_mask: torch.Tensor | None = None,  # [B, H, W] instance ids (0 = background), stage 2
        latents: torch.Tensor | None = None,
        **kwargs: Unpack[vtok.PreTrainingKwargs],
    ) -> SeTokForPreTrainingOutput:
        """Stage-I losses for a batch (see the class docstring for the keys); ``noise``/``timesteps`` are optional."""
        noise, timesteps = self._pretraining_draws(kwargs)
        pixel_values = self.tokenizer._check_pixel_values(pixel_values).to(self.dtype)
        batch = pixel_values.shape[0]
        stage = self.config.stage
        if stage == 2:
            instance_mask = check_tensor("instance_mask", instance_mask, ndim=3, integer=True)
            if instance_mask.shape[0] != batch:
                raise ValueError(
                    f"`instance_mask` must hold one map per image ({batch}), got shape {tuple(instance_mask.shape)}."
                )
            if int(instance_mask.min()) < 0:
                raise ValueError("`instance_mask` must hold non-negative instance ids (0 = background).")
        features = self.tokenizer.get_image_features(pixel_values).last_hidden_state
        tokens, clusters = self.tokenizer._tokenize(features, pixel_values=pixel_values)

        # Image decoder: ε-prediction (eq. 3) with condition dropout for classifier-free guidance.
        condition = self.feature_mapper(tokens.embeddings, tokens.attention_mask)
        clean = self._diffusion_inputs(pixel_values, latents)
        painted = None  # the footprint map concatenated to the UNet's input (decoder_config.footprint_channels)
        if self.config.decoder_config.footprint_channels:
            painted = self.feature_mapper.paint_footprints(tokens.embeddings, tokens.attention_mask, clean.shape[-1])
        dropout = self.config.decoder_config.condition_dropout_prob
        if self.training and dropout > 0:
            drop = torch.rand(batch, device=condition.device) < dropout
            condition = torch.where(drop[:, None, None], self.feature_mapper.null_embeddings(batch), condition)
            if painted is not None:
                null_map = self.feature_mapper.null_footprint_map(batch, painted.shape[-1]).to(painted.dtype)
                painted = torch.where(drop[:, None, None, None], null_map, painted)
        vtok.check_diffusion_draws(noise, timesteps, clean, self.noise_scheduler.config.num_train_timesteps)
        with_pixel_loss = self.config.pixel_loss_weight > 0  # only then is the implied clean latent needed
        denoised = vtok.denoising_loss(
            self.unet, self.noise_scheduler, clean, noise, timesteps, encoder_hidden_states=condition.to(self.unet.dtype),
            sample_condition=painted, return_clean_prediction=with_pixel_loss,
        )
        diffusion_loss, clean_prediction, signal = denoised if with_pixel_loss else (denoised, None, None)
        loss = self.config.diffusion_loss_weight * diffusion_loss
        pixel_loss = diffusion_loss.new_zeros(())
        if with_pixel_loss:
            first = self.config.pixel_loss_max_images
            pixel_loss = vtok.decoded_pixel_loss(
                self.decoder_autoencoder(), clean_prediction[:first], pixel_values[:first], self.config.image_mean,
                self.config.image_std, weights=signal[:first],
            )
            loss = loss + self.config.pixel_loss_weight * pixel_loss

        mask_terms = {}  # stage 2: the mask decoder's losses and logits
        if stage == 2:
            mask_logits = self.mask_decoder(tokens.embeddings, tokens.attention_mask, features)
            targets, valid = _instance_targets(
                instance_mask.to(mask_logits.device), tuple(mask_logits.shape[-2:]), self.config.mask_include_background
            )
            bce_loss, dice_loss, log_pi = _mask_losses(mask_logits, tokens.attention_mask.bool(), targets, valid)
            kl_loss = _consistency_kl(clusters.masks, log_pi, self.mask_decoder.upsample_factor, self.config.grid_size)
            mask_loss = (
                self.config.mask_kl_loss_weight * kl_loss
                + self.config.mask_bce_loss_weight * bce_loss
                + self.config.mask_dice_loss_weight * dice_loss
            )
            loss = loss + mask_loss
            mask_terms = {"mask_loss": mask_loss, "mask_bce_loss": bce_loss, "mask_dice_loss": dice_loss,
                          "mask_kl_loss": kl_loss, "mask_logits": mask_logits}  # fmt: skip
        num_tokens = tokens.attention_mask.sum(-1).float().mean()
        return SeTokForPreTrainingOutput(loss=loss, diffusion_loss=diffusion_loss, pixel_loss=pixel_loss,
                                         num_tokens=num_tokens, **mask_terms)  # fmt: skip


__all__ = [
    "SeTokClusterMerger",
    "SeTokForPreTraining",
    "SeTokForPreTrainingOutput",
    "SeTokMaskDecoder",
    "SeTokModel",
    "SeTokPreTrainedModel",
]
