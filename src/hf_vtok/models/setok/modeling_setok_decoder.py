"""SeTok decoder conditioning: the feature mapper between the variable-length tokens and the UNet.

Sec. 2.2 (stage I): "the vision tokens obtained from the tokenizer are fed into a learnable feature mapper
(i.e. Q-former) module as the inputs of the U-Net ... the learnable module consists of four cross-attention
layers", initialised from BERT-base (Appendix D.1). :class:`SeTokFeatureMapper` is that module: a fixed set of
learned queries, each layer BERT-style (post-norm) self-attention among the queries, cross-attention to the
tokens (padding tokens masked out) and a feed-forward layer, then a projection to the UNet's
``cross_attention_dim``. Whatever the number of tokens of an image, the UNet sees ``num_queries`` context vectors.

With ``footprint_channels`` (a departure, for tokens that carry their cluster's mask: ``SeTokConfig.token_footprint``)
it also paints every token's projected content over its footprint, resized to the UNet's resolution: a spatial map
that the UNet reads concatenated to its input, so where each token goes is given rather than learned through
cross-attention (the DDT decoder needed the same, ``token_anchor_injection``: docs/ddt.md).

It also holds the learned null condition used for classifier-free guidance: training replaces the condition by
it with probability ``decoder_config["condition_dropout"]``, and the pipeline uses it as the unconditional branch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from hf_vtok.utils.modeling_utils import Attention, FeedForward
from hf_vtok.utils.validation import check_tensor, describe


class SeTokFeatureMapperLayer(nn.Module):
    """Q-Former layer: query self-attention, cross-attention to the tokens, feed-forward (Add & Norm after each)."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, token_dim: int, eps: float):
        super().__init__()
        self.self_attention = Attention(hidden_size, num_heads)
        self.self_attention_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.cross_attention = Attention(hidden_size, num_heads, context_dim=token_dim)
        self.cross_attention_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.mlp = FeedForward(hidden_size, intermediate_size)
        self.mlp_norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        queries = self.self_attention_norm(queries + self.self_attention(queries))
        queries = self.cross_attention_norm(
            queries + self.cross_attention(queries, context=tokens, attention_mask=token_mask)
        )
        return self.mlp_norm(queries + self.mlp(queries))


class SeTokFeatureMapper(ModelMixin, ConfigMixin):
    """Maps a variable number of SeTok tokens ``[B, T, token_dim]`` to ``[B, num_queries, cross_attention_dim]``:
    ``num_queries`` learned queries (the length of the UNet's context) through BERT-base-sized layers."""

    @register_to_config
    def __init__(
        self,
        token_dim: int = 1408,  # SeTokConfig.token_embedding_dim (EVA-CLIP ViT-g/14 width)
        hidden_size: int = 768,  # BERT-base
        num_layers: int = 4,  # "four cross-attention layers" (Sec. 2.2)
        num_heads: int = 12,  # BERT-base
        intermediate_size: int = 3072,  # BERT-base
        num_queries: int = 32,  # BLIP-2's (the paper gives none)
        cross_attention_dim: int = 768,  # the SD v1.5 UNet's
        layer_norm_eps: float = 1e-12,  # BERT's
        footprint_grid: tuple[int, int] | None = None,  # the tokenizer's patch grid when its tokens end in a footprint
        footprint_channels: int = 0,  # paper: 0 (no spatial map)
    ):
        super().__init__()
        if footprint_channels and footprint_grid is None:
            raise ValueError(
                f"`footprint_channels` ({footprint_channels}) paints tokens over their footprints: `footprint_grid` "
                "must give the tokenizer's patch grid (height, width)."
            )
        footprint_size = 0 if footprint_grid is None else int(footprint_grid[0]) * int(footprint_grid[1])
        if footprint_size >= token_dim:
            raise ValueError(
                f"A `footprint_grid` of {footprint_size} patches leaves no content in tokens of width {token_dim}."
            )
        self.footprint_size = footprint_size
        self.footprint_projection = (
            nn.Sequential(nn.LayerNorm(token_dim - footprint_size, eps=layer_norm_eps),
                          nn.Linear(token_dim - footprint_size, footprint_channels))
            if footprint_channels else None
        )  # fmt: skip
        self.token_norm = nn.LayerNorm(token_dim, eps=layer_norm_eps)
        self.queries = nn.Parameter(torch.randn(num_queries, hidden_size) * 0.02)
        self.query_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.layers = nn.ModuleList(
            SeTokFeatureMapperLayer(hidden_size, num_heads, intermediate_size, token_dim, layer_norm_eps)
            for _ in range(num_layers)
        )
        self.output_projection = nn.Linear(hidden_size, cross_attention_dim)
        # Learned unconditional context for classifier-free guidance.
        self.null_condition = nn.Parameter(torch.zeros(num_queries, cross_attention_dim))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def null_embeddings(self, batch_size: int) -> torch.Tensor:
        """The unconditional context ``[batch_size, num_queries, cross_attention_dim]``."""
        return self.null_condition[None].expand(batch_size, -1, -1)

    def paint_footprints(self, token_embeddings: torch.Tensor, attention_mask: torch.Tensor, size: int) -> torch.Tensor:
        """The spatial condition ``[B, footprint_channels, size, size]``: at every position, the projected content of
        the tokens whose footprints (bilinearly resized from the patch grid) cover it, weighted by that cover."""
        if self.footprint_projection is None:
            raise ValueError("This feature mapper has no `footprint_channels`: it paints no spatial condition.")
        batch, length, _ = token_embeddings.shape
        height, width = self.config.footprint_grid
        content, footprints = token_embeddings.split([token_embeddings.shape[-1] - self.footprint_size,
                                                      self.footprint_size], dim=-1)  # fmt: skip
        real = attention_mask.to(token_embeddings.device, token_embeddings.dtype)[..., None]
        footprints = (footprints * real).reshape(batch * length, 1, height, width)
        footprints = F.interpolate(footprints, size=(size, size), mode="bilinear", align_corners=False)
        footprints = footprints.reshape(batch, length, size, size)
        values = self.footprint_projection(content) * real  # [B, T, C]
        painted = torch.einsum("btyx,btc->bcyx", footprints, values)
        # a partition of the grid (hard clusters) covers every position exactly once; regressed tokens may not:
        # overlaps are averaged, uncovered positions stay 0 (the null condition's map)
        cover = footprints.sum(dim=1, keepdim=True).clamp_min(1.0)
        return painted / cover

    def null_footprint_map(self, batch_size: int, size: int) -> torch.Tensor:
        """The unconditional spatial condition: nothing painted."""
        return self.null_condition.new_zeros(batch_size, self.config.footprint_channels, size, size)

    def forward(self, token_embeddings: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Context for the UNet from tokens ``[B, T, token_dim]`` and their mask ``[B, T]`` (1 = real token)."""
        token_embeddings = check_tensor("token_embeddings", token_embeddings, ndim=3, floating=True)
        batch, length, width = token_embeddings.shape
        if width != self.config.token_dim:
            raise ValueError(
                f"`token_embeddings` must have width {self.config.token_dim} (the tokenizer's token_embedding_dim), "
                f"got shape {tuple(token_embeddings.shape)}."
            )
        if attention_mask is None:
            token_mask = torch.ones(batch, length, dtype=torch.bool, device=token_embeddings.device)
        else:
            if not isinstance(attention_mask, torch.Tensor):
                raise TypeError(f"`attention_mask` must be a torch.Tensor, got {describe(attention_mask)}.")
            if tuple(attention_mask.shape) != (batch, length):
                raise ValueError(
                    f"`attention_mask` must have shape {(batch, length)} to match `token_embeddings`, "
                    f"got {tuple(attention_mask.shape)}."
                )
            token_mask = attention_mask.to(token_embeddings.device).bool()
            if token_mask.device.type != "meta" and not bool(token_mask.any(dim=-1).all()):
                raise ValueError("`attention_mask` must mark at least one real token in every row.")
        tokens = self.token_norm(token_embeddings)
        queries = self.query_norm(self.queries)[None].expand(batch, -1, -1).to(tokens.dtype)
        for layer in self.layers:
            queries = layer(queries, tokens, token_mask)
        return self.output_projection(queries)


__all__ = ["SeTokFeatureMapper"]
