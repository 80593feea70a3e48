"""The DDT decoder: an MMDiT (SD3-style joint-attention diffusion transformer) conditioned on a visible
prefix of the timestep tokens.

* :func:`visible_token_counts` is ``k(t)``: how many tokens the decoder sees at noise level ``t``.
* :class:`DDTTokenConditioner` turns the 16-d codes into the MMDiT's context stream (a linear projection,
  as in the paper, plus 1D sinusoidal positions) and builds the key mask that hides tokens ``>= k(t)``.
* :class:`DDTDecoderTransformer` is the MMDiT. Unlike diffusers' ``SD3Transformer2DModel`` (whose joint
  attention ignores attention masks and which requires a pooled text vector), it takes an
  ``encoder_attention_mask`` over the context keys and no pooled embedding (the paper removes it): hidden
  tokens are masked out of every attention, so they cannot change the prediction.

Both are diffusers ``ModelMixin``/``ConfigMixin`` classes, so they save and load with the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from transformers import initialization as init

from ...utils.modeling_utils import sinusoidal_embedding_1d, sinusoidal_embedding_2d
from ...utils.validation import check_choice, check_float, check_int, check_tensor, describe

TOKEN_SCHEDULES = ("uniform", "staged")
HIDDEN_TOKEN_MODES = ("mask", "zero")


# ---------------------------------------------------------------------------------------------- k(t)
def visible_token_counts(
    sigmas: torch.Tensor,
    num_tokens: int,
    token_schedule: str = "uniform",
    staged_boundaries: Sequence[float] | None = None,
    staged_counts: Sequence[int] | None = None,
) -> torch.LongTensor:
    """``k(t)``: number of visible tokens at noise levels ``sigmas`` (any shape, values in [0, 1]).

    ``"uniform"``: token ``i`` (0-based) belongs to timestep ``(i+1)/T``, so ``k(t) = ceil(t·T)``.
    ``"staged"``: stage ``s`` covers ``(b_{s-1}, b_s]`` and adds ``staged_counts[s]`` tokens linearly over it.
    Both are non-decreasing in ``t`` and clamped to ``[1, T]`` (token 0 is visible at every ``t``).
    """
    check_tensor("sigmas", sigmas, floating=True, non_empty=False)
    # float32 noise levels such as 0.2 are 0.2000000030: round to 1e-6 so stage boundaries stay exact
    t = torch.round(sigmas.detach().double().clamp(0.0, 1.0) * 1e6) / 1e6
    if token_schedule == "uniform":
        counts = torch.ceil(t * num_tokens - 1e-9)
    elif token_schedule == "staged":
        if staged_boundaries is None or staged_counts is None:
            raise ValueError("`staged_boundaries` and `staged_counts` are required by the staged token schedule.")
        right = torch.tensor(list(staged_boundaries), dtype=torch.float64, device=t.device)
        left = torch.cat([right.new_zeros(1), right[:-1]])
        sizes = torch.tensor(list(staged_counts), dtype=torch.float64, device=t.device)
        before = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
        stage = torch.searchsorted(right, t.contiguous()).clamp(max=len(right) - 1)
        fraction = (t - left[stage]) / (right[stage] - left[stage])
        counts = before[stage] + torch.ceil(fraction * sizes[stage] - 1e-9)
    else:
        raise ValueError(f"`token_schedule` must be one of {list(TOKEN_SCHEDULES)}, got {token_schedule!r}.")
    return counts.clamp(1, num_tokens).long()


# ---------------------------------------------------------------------------------------------- init
def init_ddt_module(module: nn.Module, std: float = 0.02) -> None:
    """Weight init shared by the tokenizer (transformers) and the decoder (diffusers) modules.

    Linear/conv: Xavier-uniform, zero bias (DiT/MMDiT); layers flagged ``_zero_init`` (adaLN-Zero
    modulations, the output projection) start at zero; norms at identity; learned queries ~ N(0, std).
    Uses ``transformers.initialization`` so weights loaded by ``from_pretrained`` are never overwritten.
    """
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        if getattr(module, "_zero_init", False):
            init.zeros_(module.weight)
        else:
            init.xavier_uniform_(module.weight)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        if module.weight is not None:
            init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            init.zeros_(module.bias)
    for name in getattr(module, "_normal_init_parameters", ()):
        init.normal_(getattr(module, name), mean=0.0, std=std)


def zero_init(layer: nn.Module) -> nn.Module:
    layer._zero_init = True
    return layer


# ---------------------------------------------------------------------------------------------- token anchors
def coarse_to_fine_order(side: int) -> torch.LongTensor:
    """The patches of a ``side x side`` grid (row-major indices) in bit-reversed Morton order: every prefix is spread
    over the whole grid (the first four are one per quadrant, the next twelve fill a 4 x 4 division, ...)."""
    bits = max(1, (side - 1).bit_length())
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    code = torch.zeros_like(rows)
    for bit in range(bits):  # interleave, most significant bit last, i.e. the Morton code with its bits reversed
        code |= ((rows >> (bits - 1 - bit)) & 1) << (2 * bit + 1)
        code |= ((cols >> (bits - 1 - bit)) & 1) << (2 * bit)
    return torch.argsort(code.flatten())


def token_anchor_distances(num_tokens: int, anchor_grid: int, grid_height: int, grid_width: int, device=None):
    """Squared distance from each patch of a ``grid_height x grid_width`` grid to each token's anchor, in units of
    that grid's patches: ``[grid_height * grid_width, num_tokens]``.

    Token ``i`` is anchored at the centre of the ``i mod anchor_grid²``-th patch of :func:`coarse_to_fine_order`
    on the tokenizer's ``anchor_grid x anchor_grid`` patch grid, so encoder and decoder agree on where a token
    lives even when their grids differ."""
    anchors = coarse_to_fine_order(anchor_grid)[torch.arange(num_tokens) % (anchor_grid * anchor_grid)]
    anchor_rows = (anchors // anchor_grid + 0.5) / anchor_grid  # image fractions
    anchor_cols = (anchors % anchor_grid + 0.5) / anchor_grid
    rows = (torch.arange(grid_height * grid_width) // grid_width + 0.5) / grid_height
    cols = (torch.arange(grid_height * grid_width) % grid_width + 0.5) / grid_width
    distance = ((rows[:, None] - anchor_rows[None]) * grid_height) ** 2 + (
        (cols[:, None] - anchor_cols[None]) * grid_width
    ) ** 2
    return distance.float().to(device)


def token_anchor_slots(num_tokens: int, anchor_grid: int, grid_height: int, grid_width: int, device=None):
    """The tokens anchored in each patch's cell: ``[grid_height * grid_width, depth]`` token indices, ``-1`` where a
    cell has fewer tokens (``depth = ceil(num_tokens / anchor_grid²)``).

    A patch of a ``grid_height x grid_width`` grid belongs to the cell of the ``anchor_grid x anchor_grid`` grid that
    holds its centre; the tokens anchored there (:func:`token_anchor_distances`) are ``m, m + anchor_grid², ...`` in
    prefix order, ``m`` being the cell's place in :func:`coarse_to_fine_order`."""
    cells = anchor_grid * anchor_grid
    depth = -(-num_tokens // cells)
    place = torch.argsort(coarse_to_fine_order(anchor_grid))  # cell -> its place in the anchor order
    rows = ((torch.arange(grid_height * grid_width) // grid_width + 0.5) * anchor_grid / grid_height).long()
    cols = ((torch.arange(grid_height * grid_width) % grid_width + 0.5) * anchor_grid / grid_width).long()
    slots = place[rows * anchor_grid + cols][:, None] + cells * torch.arange(depth)[None]
    return slots.masked_fill(slots >= num_tokens, -1).to(device)


# ---------------------------------------------------------------------------------------------- blocks
def joint_attention(
    streams: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    num_heads: int,
    attention_mask: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """One attention over the concatenation of several streams' (q, k, v) `[B, L_i, D]`; outputs split back.

    ``attention_mask``: boolean (True = attend) or an additive float bias, broadcastable to ``[B, heads, L, L]``
    (L = sum of L_i).
    """
    lengths = [q.shape[1] for q, _, _ in streams]
    query, key, value = (torch.cat([s[i] for s in streams], dim=1) for i in range(3))
    batch, length, dim = query.shape
    head_dim = dim // num_heads

    def heads(x):
        return x.view(batch, length, num_heads, head_dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(query), heads(key), heads(value), attn_mask=attention_mask)
    out = out.transpose(1, 2).reshape(batch, length, dim)
    return list(out.split(lengths, dim=1))


class MLP(nn.Sequential):
    """SD3's feed-forward: Linear, GELU (tanh), Linear."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__(nn.Linear(dim, hidden_dim), nn.GELU(approximate="tanh"), nn.Linear(hidden_dim, dim))


class AdaLNModulation(nn.Module):
    """``Linear(SiLU(c))`` split in ``chunks`` modulation vectors, zero-initialised (adaLN-Zero)."""

    def __init__(self, dim: int, chunks: int):
        super().__init__()
        self.chunks = chunks
        self.linear = zero_init(nn.Linear(dim, chunks * dim))

    def forward(self, condition: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(F.silu(condition)).unsqueeze(1).chunk(self.chunks, dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DDTJointTransformerBlock(nn.Module):
    """One MMDiT block: image and token streams with their own adaLN-Zero, QKV, output and MLP weights,
    joined for attention. ``context_pre_only`` (last block): the token stream only provides keys/values."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, context_pre_only: bool, qk_norm: bool):
        super().__init__()
        self.num_heads = num_heads
        self.context_pre_only = context_pre_only
        head_dim = dim // num_heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm1_context = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = AdaLNModulation(dim, 6)
        self.modulation_context = AdaLNModulation(dim, 2 if context_pre_only else 6)
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.add_qkv = nn.Linear(dim, 3 * dim)
        self.norm_q = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else None
        self.norm_k = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else None
        self.norm_added_q = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else None
        self.norm_added_k = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else None
        self.to_out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = MLP(dim, int(dim * mlp_ratio))
        if not context_pre_only:
            self.to_add_out = nn.Linear(dim, dim)
            self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.ff_context = MLP(dim, int(dim * mlp_ratio))

    def _qkv(self, x, projection, norm_q, norm_k):
        q, k, v = projection(x).chunk(3, dim=-1)
        if norm_q is not None:
            shape = q.shape
            q = norm_q(q.unflatten(-1, (self.num_heads, -1))).reshape(shape)
            k = norm_k(k.unflatten(-1, (self.num_heads, -1))).reshape(shape)
        return q, k, v

    def forward(self, hidden_states, encoder_hidden_states, temb, attention_mask=None):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(temb)
        context_mod = self.modulation_context(temb)
        x = modulate(self.norm1(hidden_states), shift_msa, scale_msa)
        c = modulate(self.norm1_context(encoder_hidden_states), context_mod[0], context_mod[1])
        image_out, context_out = joint_attention(
            [
                self._qkv(x, self.to_qkv, self.norm_q, self.norm_k),
                self._qkv(c, self.add_qkv, self.norm_added_q, self.norm_added_k),
            ],
            self.num_heads,
            attention_mask,
        )
        hidden_states = hidden_states + gate_msa * self.to_out(image_out)
        hidden_states = hidden_states + gate_mlp * self.ff(modulate(self.norm2(hidden_states), shift_mlp, scale_mlp))
        if self.context_pre_only:
            return hidden_states, None
        _, _, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = context_mod
        encoder_hidden_states = encoder_hidden_states + c_gate_msa * self.to_add_out(context_out)
        encoder_hidden_states = encoder_hidden_states + c_gate_mlp * self.ff_context(
            modulate(self.norm2_context(encoder_hidden_states), c_shift_mlp, c_scale_mlp)
        )
        return hidden_states, encoder_hidden_states


# ---------------------------------------------------------------------------------------------- conditioner
class DDTTokenConditioner(ModelMixin, ConfigMixin):
    """Timestep tokens → the MMDiT's token stream, with the prefix mask of ``k(t)``.

    ``token_schedule``, ``staged_boundaries``, ``staged_counts``: ``k(t)``, see :func:`visible_token_counts`.
    ``token_position_embedding`` adds 1D sinusoidal positions (the token's index) to the projected codes.
    ``hidden_token_mode``: ``"mask"`` removes tokens ``>= k`` from the attention keys; ``"zero"`` replaces their
    codes with zeros and keeps them in the sequence.
    """

    @register_to_config
    def __init__(
        self,
        num_tokens: int = 480,  # T
        token_dim: int = 16,  # width of the codes
        hidden_size: int = 1536,  # the MMDiT width
        token_schedule: str = "uniform",
        staged_boundaries: list[float] | None = None,
        staged_counts: list[int] | None = None,
        token_position_embedding: bool = True,
        hidden_token_mode: str = "mask",
    ):
        super().__init__()
        check_int("num_tokens", num_tokens, minimum=1)
        check_int("token_dim", token_dim, minimum=1)
        check_int("hidden_size", hidden_size, minimum=2)
        check_choice("token_schedule", token_schedule, TOKEN_SCHEDULES)
        check_choice("hidden_token_mode", hidden_token_mode, HIDDEN_TOKEN_MODES)
        if token_schedule == "staged" and (staged_boundaries is None or staged_counts is None):
            raise ValueError("`staged_boundaries` and `staged_counts` are required when token_schedule='staged'.")
        self.token_proj = nn.Linear(token_dim, hidden_size)
        self.apply(init_ddt_module)

    def num_visible_tokens(self, sigmas: torch.Tensor, max_tokens: torch.Tensor | int | None = None) -> torch.LongTensor:
        """``min(k(sigma), max_tokens)`` per sample; ``sigmas`` in [0, 1] (``t``, not the 0..1000 timestep)."""
        counts = visible_token_counts(
            sigmas,
            self.config.num_tokens,
            self.config.token_schedule,
            self.config.staged_boundaries,
            self.config.staged_counts,
        )
        if max_tokens is not None:
            counts = torch.minimum(counts, torch.as_tensor(max_tokens, device=counts.device, dtype=torch.long))
        return counts

    def forward(
        self, token_embeddings: torch.Tensor, num_visible_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns ``(encoder_hidden_states [B, n, hidden], encoder_attention_mask [B, n] bool or None)``.

        ``num_visible_tokens`` `[B]` (0 = null condition). In ``"mask"`` mode the sequence is cut to the
        largest visible count of the batch (positions masked for every sample carry no information).
        """
        check_tensor("token_embeddings", token_embeddings, ndim=3, floating=True)
        check_tensor("num_visible_tokens", num_visible_tokens, ndim=1, integer=True)
        batch, length, dim = token_embeddings.shape
        if dim != self.config.token_dim:
            raise ValueError(
                f"`token_embeddings` must have last dimension {self.config.token_dim}, got shape {tuple(token_embeddings.shape)}."
            )
        if length > self.config.num_tokens:
            raise ValueError(
                f"`token_embeddings` holds at most {self.config.num_tokens} tokens per image, got {length}."
            )
        if num_visible_tokens.shape[0] != batch:
            raise ValueError(
                f"`num_visible_tokens` must have one entry per image ({batch}), got shape {tuple(num_visible_tokens.shape)}."
            )
        num_visible_tokens = num_visible_tokens.to(token_embeddings.device).clamp(0, length)
        positions = torch.arange(length, device=token_embeddings.device)
        visible = positions[None, :] < num_visible_tokens[:, None]
        if self.config.hidden_token_mode == "zero":
            token_embeddings = token_embeddings * visible[..., None].to(token_embeddings.dtype)
            mask = None
        else:
            keep = max(1, int(num_visible_tokens.max()))
            token_embeddings, visible, positions = token_embeddings[:, :keep], visible[:, :keep], positions[:keep]
            mask = visible
        hidden = self.token_proj(token_embeddings.to(self.token_proj.weight.dtype))
        if self.config.token_position_embedding:
            hidden = hidden + sinusoidal_embedding_1d(positions, self.config.hidden_size).to(hidden.dtype)
        return hidden, mask


# ---------------------------------------------------------------------------------------------- MMDiT
class DDTDecoderTransformer(ModelMixin, ConfigMixin):
    """MMDiT velocity predictor ``v(x_t, t, tokens)`` with a key mask over the token stream.

    SD3's architecture (patch embedding + fixed 2D sin-cos positions, timestep MLP, ``num_layers`` joint
    blocks with adaLN-Zero, the last one ``context_pre_only``, adaptive final norm, linear unpatchify)
    without the pooled text projection and with ``encoder_attention_mask``.

    ``timestep`` is on the scheduler's scale (``t · num_train_timesteps``, 0..1000).

    ``token_locality_prior`` (departure from the paper, 0 = off): every image patch's attention logits to the
    tokens are lowered by the prior x the squared distance (in patches) to each token's anchor
    (:func:`token_anchor_distances` on the tokenizer's ``token_anchor_grid``, by default this grid's side), so
    each patch starts by reading the tokens of its own neighbourhood instead of averaging all of them.

    ``token_anchor_injection`` (departure from the paper, off by default): every image patch also adds a linear
    projection of the visible tokens anchored in its cell (:func:`token_anchor_slots`; the ``num_anchor_tokens``
    tokens of the tokenizer on its ``token_anchor_grid``) to its input, so where each token is read is fixed by
    construction, as in a convolutional decoder; the joint attention still reads every token.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["DDTJointTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 16,
        out_channels: int | None = None,
        num_layers: int = 24,
        num_attention_heads: int = 24,
        attention_head_dim: int = 64,
        mlp_ratio: float = 4.0,
        qk_norm: bool = False,
        frequency_embedding_dim: int = 256,
        token_locality_prior: float = 0.0,
        token_anchor_grid: int | None = None,
        token_anchor_injection: bool = False,
        num_anchor_tokens: int | None = None,
    ):
        super().__init__()
        check_float("token_locality_prior", token_locality_prior, minimum=0.0)
        if token_anchor_grid is not None:
            check_int("token_anchor_grid", token_anchor_grid, minimum=1)
        if not isinstance(token_anchor_injection, bool):
            raise TypeError(f"`token_anchor_injection` must be a bool, got {describe(token_anchor_injection)}.")
        if token_anchor_injection:
            check_int("num_anchor_tokens", num_anchor_tokens, minimum=1)
        check_int("sample_size", sample_size, minimum=1)
        check_int("patch_size", patch_size, minimum=1)
        if sample_size % patch_size:
            raise ValueError(f"`sample_size` ({sample_size}) must be divisible by `patch_size` ({patch_size}).")
        check_int("in_channels", in_channels, minimum=1)
        check_int("num_layers", num_layers, minimum=1)
        check_int("num_attention_heads", num_attention_heads, minimum=1)
        check_int("attention_head_dim", attention_head_dim, minimum=1)
        check_float("mlp_ratio", mlp_ratio, minimum=0.0, strict_minimum=True)
        dim = num_attention_heads * attention_head_dim
        if dim % 4:
            raise ValueError(f"The width `num_attention_heads` x `attention_head_dim` must be divisible by 4, got {dim}.")
        self.out_channels = out_channels or in_channels
        self.inner_dim = dim
        self.pos_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.time_embed = nn.Sequential(nn.Linear(frequency_embedding_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.transformer_blocks = nn.ModuleList(
            DDTJointTransformerBlock(dim, num_attention_heads, mlp_ratio, i == num_layers - 1, qk_norm)
            for i in range(num_layers)
        )
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation_out = AdaLNModulation(dim, 2)
        self.proj_out = zero_init(nn.Linear(dim, patch_size * patch_size * self.out_channels))
        if token_anchor_injection:
            grid = token_anchor_grid or sample_size // patch_size
            depth = -(-num_anchor_tokens // (grid * grid))
            self.token_injection = nn.Linear(depth * dim, dim, bias=False)
        self.gradient_checkpointing = False
        self.apply(init_ddt_module)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predict the velocity ``ε - x_0`` for ``hidden_states`` `[B, C, H, W]` at ``timestep`` `[B]`.

        ``encoder_hidden_states`` `[B, n, width]` (from :class:`DDTTokenConditioner`),
        ``encoder_attention_mask`` `[B, n]` boolean, False = that token is hidden from every attention.
        """
        cfg = self.config
        check_tensor("hidden_states", hidden_states, ndim=4, floating=True)
        if hidden_states.shape[1] != cfg.in_channels:
            raise ValueError(
                f"`hidden_states` must have {cfg.in_channels} channels, got shape {tuple(hidden_states.shape)}."
            )
        height, width = hidden_states.shape[-2:]
        if height % cfg.patch_size or width % cfg.patch_size:
            raise ValueError(
                f"`hidden_states` height and width must be multiples of patch_size={cfg.patch_size}, "
                f"got shape {tuple(hidden_states.shape)}."
            )
        batch = hidden_states.shape[0]
        check_tensor("encoder_hidden_states", encoder_hidden_states, ndim=3, floating=True, non_empty=False)
        if encoder_hidden_states.shape[0] != batch or encoder_hidden_states.shape[-1] != self.inner_dim:
            raise ValueError(
                f"`encoder_hidden_states` must have shape [{batch}, n, {self.inner_dim}], "
                f"got {tuple(encoder_hidden_states.shape)}."
            )
        timestep = torch.as_tensor(timestep, device=hidden_states.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        if timestep.shape != (batch,):
            raise ValueError(f"`timestep` must be a scalar or have shape [{batch}], got {describe(timestep)}.")

        patches_h, patches_w = height // cfg.patch_size, width // cfg.patch_size
        x = self.pos_embed(hidden_states.to(self.pos_embed.weight.dtype)).flatten(2).transpose(1, 2)
        x = x + sinusoidal_embedding_2d(patches_h, patches_w, self.inner_dim, device=x.device).to(x.dtype)
        temb = self.time_embed(
            sinusoidal_embedding_1d(timestep.float(), cfg.frequency_embedding_dim).to(x.dtype)
        )
        context = encoder_hidden_states.to(x.dtype)

        attention_mask = None
        if encoder_attention_mask is not None:
            check_tensor("encoder_attention_mask", encoder_attention_mask, ndim=2, non_empty=False)
            if encoder_attention_mask.shape != context.shape[:2]:
                raise ValueError(
                    f"`encoder_attention_mask` must have shape {tuple(context.shape[:2])}, "
                    f"got {tuple(encoder_attention_mask.shape)}."
                )
            image_keys = torch.ones(batch, x.shape[1], dtype=torch.bool, device=x.device)
            keys = torch.cat([image_keys, encoder_attention_mask.to(device=x.device, dtype=torch.bool)], dim=1)
            attention_mask = keys[:, None, None, :]
        if cfg.token_locality_prior:
            attention_mask = self._locality_bias(patches_h, patches_w, context.shape[1], attention_mask, x.dtype)
        if cfg.token_anchor_injection and context.shape[1]:
            x = x + self._anchored_tokens(context, encoder_attention_mask, patches_h, patches_w)

        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x, context = self._gradient_checkpointing_func(block, x, context, temb, attention_mask)
            else:
                x, context = block(x, context, temb, attention_mask)

        shift, scale = self.modulation_out(temb)
        x = self.proj_out(modulate(self.norm_out(x), shift, scale))
        # unpatchify: [B, h*w, p*p*C] -> [B, C, h*p, w*p]
        p = cfg.patch_size
        x = x.view(batch, patches_h, patches_w, p, p, self.out_channels)
        sample = torch.einsum("nhwpqc->nchpwq", x).reshape(batch, self.out_channels, patches_h * p, patches_w * p)
        if not return_dict:
            return (sample,)
        return Transformer2DModelOutput(sample=sample)

    def _anchored_tokens(self, context, key_mask, patches_h, patches_w) -> torch.Tensor:
        """``token_injection`` of the visible tokens anchored in each patch's cell, ``[B, patches, width]``."""
        cfg = self.config
        slots = token_anchor_slots(
            cfg.num_anchor_tokens, cfg.token_anchor_grid or patches_h, patches_h, patches_w, context.device
        )
        present = (slots >= 0) & (slots < context.shape[1])  # the conditioner may cut the hidden tail
        slots = slots.clamp(0, context.shape[1] - 1)
        weight = present[None].to(context.dtype)  # [1, P, depth]
        if key_mask is not None:
            weight = weight * key_mask.to(device=context.device, dtype=context.dtype)[:, slots]
        gathered = context[:, slots] * weight[..., None]  # [B, P, depth, width]
        return self.token_injection(gathered.flatten(2))

    def _locality_bias(self, patches_h, patches_w, num_context, key_mask, dtype) -> torch.Tensor:
        """Additive ``[B or 1, 1, L, L]`` attention bias: image rows x token columns get ``-prior x distance²``;
        keys hidden by ``key_mask`` (``[B, 1, 1, L]`` bool) get ``-inf``."""
        device = self.pos_embed.weight.device
        num_image = patches_h * patches_w
        total = num_image + num_context
        distances = token_anchor_distances(
            num_context, self.config.token_anchor_grid or patches_h, patches_h, patches_w, device
        )
        bias = torch.zeros(total, total, dtype=dtype, device=device)
        bias[:num_image, num_image:] = -self.config.token_locality_prior * distances.to(dtype)
        bias = bias[None, None]
        if key_mask is not None:
            bias = bias.masked_fill(~key_mask, float("-inf"))
        return bias


__all__ = [
    "DDTDecoderTransformer",
    "DDTJointTransformerBlock",
    "DDTTokenConditioner",
    "coarse_to_fine_order",
    "init_ddt_module",
    "token_anchor_distances",
    "token_anchor_slots",
    "visible_token_counts",
]

