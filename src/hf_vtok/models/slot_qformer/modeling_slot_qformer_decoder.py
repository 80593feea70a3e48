"""Decoder-side conditioning of the Slot Q-Former (Slot-MLLM §2.1.1, "Visual Decoder").

Slot embeddings pass through transformer block(s) to become the *local* embeddings that condition
the UNet through cross-attention; an MLP head turns them into the *global* embedding that unCLIP-SD
adds to the timestep embedding (``UNet2DConditionModel(class_embed_type="projection")``). The global
embedding is also what the training loss ``L_MSE`` aligns with a frozen CLIP image embedding.

Classifier-free guidance: during training the condition of a random subset of the batch is replaced
by learned null embeddings (``null_local_embeddings`` / ``null_global_embedding``); at sampling time
the same null condition is the unconditional branch.

With ``layout_channels`` (a departure, off in the paper) the conditioner also decodes a *layout* from the slots alone:
learned queries, one per cell of the slot attention's patch grid, attend over the slots (``layout_type="queries"``), or
each slot draws one Gaussian bump from its own centre, scale and bias (``"gaussian"``), or a bump plus a correction at
every cell (``"broadcast"``: each slot broadcast over the grid and read with every cell's position by a small MLP, as
Slot Attention's spatial broadcast decoder, Locatello et al. 2020, so that a slot can draw its outline, not only its
place); a softmax over slots, like slot attention's own maps, gives every cell to the slots, and every slot's projected
content (with ``"broadcast"``, corrected at every cell) is painted over the cells it wins, resized to the UNet's
resolution: a spatial map that goes in as extra UNet input channels. Cross-attention alone has to learn where each
slot belongs, which a small CPU-trained UNet did not (SeTok's decoder: 15.0 dB without its token footprints, 23.9 dB
with them; docs/slot_qformer.md). The layout is a function of the slot embeddings only,
so ids an LLM generates decode the same way; ``SlotQFormerConfig.layout_loss_weight`` teaches it the slot attention
maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from ...utils.modeling_utils import TransformerBlock, grid_position_features
from ...utils.validation import check_choice, check_float, check_int, check_tensor

# how a slot scores the layout's cells (``SlotQFormerDecoderConditioner.layout_logits``)
LAYOUT_TYPES = ("queries", "gaussian", "broadcast")


@dataclass
class SlotQFormerConditionOutput(BaseOutput):
    """Conditions for the UNet.

    Args:
        local_embeddings: `[B, num_slots, hidden_size]`, the UNet's ``encoder_hidden_states``.
        global_embedding: `[B, global_embedding_dim]`, the predicted image embedding (regressed onto
            the teacher embedding by ``L_MSE``).
        class_labels: `[B, projection_class_embeddings_input_dim]`, what the UNet's class-embedding
            projection receives (the global embedding, plus a noise-level embedding for unCLIP-SD).
        layout_logits: with ``layout_channels``, `[B, num_slots, grid_height * grid_width]`: each grid cell's logits
            over the slots (always the predicted ones, for the layout loss).
        layout_cells: with ``layout_channels``, `[B, grid_height * grid_width, layout_channels]`: the layout on its
            grid before resizing (always the predicted one, for ``SlotQFormerConfig.layout_colour_loss_weight``).
        layout_map: with ``layout_channels``, `[B, layout_channels, layout_size, layout_size]`: the slots painted
            over their cells (zeros for dropped rows and in the null condition), the UNet's extra input channels.
    """

    local_embeddings: torch.Tensor
    global_embedding: torch.Tensor
    class_labels: torch.Tensor
    layout_logits: torch.Tensor | None = None
    layout_cells: torch.Tensor | None = None
    layout_map: torch.Tensor | None = None


class SlotQFormerDecoderConditioner(ModelMixin, ConfigMixin):
    """Slot embeddings → (local embeddings, global embedding) for an unCLIP-style UNet.

    ``noise_level_embedding`` appends unCLIP-SD's noise-level embedding (of level 0: no noise augmentation) to
    the global embedding, so that the UNet's class projection takes ``2 × global_embedding_dim`` inputs as in the
    released unCLIP-SD 2.1 UNet. ``layout_channels`` / ``layout_grid`` / ``layout_size``: the layout map (see the
    module docstring; 0 = off, the paper); ``layout_type``: how a slot scores the layout's cells (``layout_logits``);
    ``layout_hidden_size``: the width of the ``"broadcast"`` layout's MLP; ``layout_min_scale``: the smallest scale
    σ of a bump, as a fraction of the image (0: half a cell of the layout grid).
    """

    @register_to_config
    def __init__(
        self,
        slot_dim: int = 768,  # the Q-Former width
        num_slots: int = 32,  # length of the null local condition
        hidden_size: int = 1024,  # local embeddings = the UNet's cross_attention_dim
        num_layers: int = 1,  # paper: one "Transformer decoder block"; released code: 4
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        global_embedding_dim: int = 1024,  # CLIP ViT-H/14's image embedding
        noise_level_embedding: bool = True,
        layout_channels: int = 0,  # paper: 0 (cross-attention is the only path from the slots to the UNet)
        layout_grid: tuple[int, int] | list[int] | None = None,  # the cells the layout is decoded on (the patch grid)
        layout_size: int | None = None,  # the side of the painted map (the UNet's sample size)
        layout_type: str = "queries",  # how a slot scores the cells: one of LAYOUT_TYPES
        layout_hidden_size: int = 128,  # the "broadcast" layout's MLP width
        layout_min_scale: float = 0.0,  # the bumps' smallest σ (fraction of the image); 0 = half a layout cell
    ):
        super().__init__()
        check_int("slot_dim", slot_dim, minimum=1)
        check_int("num_slots", num_slots, minimum=1)
        check_int("hidden_size", hidden_size, minimum=1)
        check_int("num_layers", num_layers, minimum=0)
        check_int("num_heads", num_heads, minimum=1)
        check_int("global_embedding_dim", global_embedding_dim, minimum=1)
        check_int("layout_channels", layout_channels, minimum=0)
        if layout_channels:
            if not isinstance(layout_grid, (list, tuple)) or len(layout_grid) != 2:
                raise ValueError(
                    f"`layout_grid` must be the (height, width) of the patch grid when `layout_channels` ({layout_channels}) "
                    f"paints a layout, got {layout_grid!r}."
                )
            for value in layout_grid:
                check_int("layout_grid[i]", value, minimum=1)
            check_int("layout_size", layout_size, minimum=1)
        check_choice("layout_type", layout_type, LAYOUT_TYPES)
        check_int("layout_hidden_size", layout_hidden_size, minimum=1)
        check_float("layout_min_scale", layout_min_scale, minimum=0.0, maximum=1.0)
        self.proj_in = nn.Linear(slot_dim, hidden_size)
        self.blocks = nn.ModuleList(TransformerBlock(hidden_size, num_heads, mlp_ratio) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(hidden_size)
        self.global_head = nn.Sequential(
            nn.LayerNorm(hidden_size),
            nn.Linear(hidden_size, hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, global_embedding_dim),
        )
        # learned unconditional (classifier-free guidance) condition
        self.null_local_embeddings = nn.Parameter(torch.zeros(num_slots, hidden_size))
        self.null_global_embedding = nn.Parameter(torch.zeros(global_embedding_dim))
        if layout_channels:
            cells = int(layout_grid[0]) * int(layout_grid[1])
            if layout_type == "queries":
                self.layout_queries = nn.Parameter(torch.randn(cells, hidden_size) * hidden_size**-0.5)
                self.layout_keys = nn.Linear(hidden_size, hidden_size)
            else:  # "gaussian" and "broadcast": each slot's bump, a centre (y, x), a scale and a bias
                self.layout_geometry = nn.Linear(hidden_size, 4)
            self.layout_values = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, layout_channels))
            if layout_type == "broadcast":  # every (slot, cell) pair: a logit and a content correction
                self.layout_slot_projection = nn.Sequential(nn.LayerNorm(hidden_size),
                                                            nn.Linear(hidden_size, layout_hidden_size))  # fmt: skip
                self.layout_position_projection = nn.Linear(4, layout_hidden_size)
                # a learned embedding per cell on top (DINOSAUR's MLP decoder, Seitzer et al. 2023): outlines need not
                # be smooth functions of (y, x)
                self.layout_cell_embeddings = nn.Parameter(torch.empty(cells, layout_hidden_size))
                self.layout_mlp = nn.Sequential(nn.GELU(), nn.Linear(layout_hidden_size, layout_hidden_size), nn.GELU(),
                                                nn.Linear(layout_hidden_size, 1 + layout_channels))  # fmt: skip
            self.init_layout_parameters()

    def init_layout_parameters(self) -> None:
        """The layout's own initialisation (called again by the training model's ``_init_weights``, after the default
        one of its linears): the broadcast correction starts at exactly zero, so that a ``"broadcast"`` layout starts
        as the Gaussian layout of the same weights (a run warm-started from a Gaussian one keeps what it learned: a
        pure broadcast layout, tried first, painted the scene's mean colour everywhere after 400 steps), and learns
        the outlines from there."""
        if not self.config.layout_channels or self.config.layout_type != "broadcast":
            return
        with torch.no_grad():
            self.layout_cell_embeddings.normal_(0.0, 0.02)
            self.layout_mlp[-1].weight.zero_()
            self.layout_mlp[-1].bias.zero_()

    @property
    def class_embedding_dim(self) -> int:
        return self.config.global_embedding_dim * (2 if self.config.noise_level_embedding else 1)

    def class_labels(self, global_embedding: torch.Tensor) -> torch.Tensor:
        """What the UNet's ``class_labels`` receives for a global embedding."""
        if not self.config.noise_level_embedding:
            return global_embedding
        noise_level = torch.zeros(global_embedding.shape[0], device=global_embedding.device)
        level = get_timestep_embedding(
            noise_level, global_embedding.shape[-1], flip_sin_to_cos=True, downscale_freq_shift=0
        ).to(global_embedding.dtype)
        return torch.cat([global_embedding, level], dim=-1)

    def null_condition(self, batch_size: int) -> SlotQFormerConditionOutput:
        """The unconditional branch for classifier-free guidance (with a layout: an all-zero map)."""
        check_int("batch_size", batch_size, minimum=1)
        local = self.null_local_embeddings[None].expand(batch_size, -1, -1)
        global_embedding = self.null_global_embedding[None].expand(batch_size, -1)
        layout_map = None
        if self.config.layout_channels:
            size = self.config.layout_size
            layout_map = local.new_zeros(batch_size, self.config.layout_channels, size, size)
        return SlotQFormerConditionOutput(local, global_embedding, self.class_labels(global_embedding),
                                          layout_map=layout_map)  # fmt: skip

    def layout_logits(self, local: torch.Tensor) -> torch.Tensor:
        """`[B, num_slots, cells]`: every cell of the layout grid scores every slot. ``"queries"``: the cell's learned
        query against the slot's key. ``"gaussian"``: an isotropic Gaussian bump, ``bias - |cell - centre|² / 2σ²``,
        with the slot's own centre (in [0, 1]), scale and bias: a slot-attention layout is a few compact objects over
        a background, which a bump and a broad, low one describe in four numbers each (the centre is what the
        slots' soft position embedding makes readable, see ``SlotQFormerConfig.vision_position_embedding``).
        ``"broadcast"``: the bump plus the spatial broadcast MLP's correction (``decode_layout``)."""
        return self.decode_layout(local)[0]

    def decode_layout(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits `[B, S, cells]`, contents): what every slot paints, `[B, S, layout_channels]`, or for
        ``"broadcast"`` a content per cell, `[B, S, cells, layout_channels]`: every slot broadcast over the grid, its
        projection added to a projection of each cell's (y, x, 1 - y, 1 - x) and the cell's learned embedding, and a
        shared MLP corrects the bump's logit and the slot's content there (zero at initialisation)."""
        logits, contents = self._slot_layout_logits(local), self.layout_values(local)
        if self.config.layout_type != "broadcast":
            return logits, contents
        positions = grid_position_features(*self.config.layout_grid, device=local.device, dtype=local.dtype)
        cells = self.layout_position_projection(positions) + self.layout_cell_embeddings.to(local.dtype)
        correction = self.layout_mlp(self.layout_slot_projection(local)[:, :, None] + cells[None, None])
        return logits + correction[..., 0], contents[:, :, None] + correction[..., 1:]

    def _slot_layout_logits(self, local: torch.Tensor) -> torch.Tensor:
        if self.config.layout_type in ("gaussian", "broadcast"):
            centres, scales, bias = self.gaussian_geometry(local)
            # (y, x) of every cell, made here: a non-persistent buffer is left uninitialised by from_pretrained
            cells = grid_position_features(*self.config.layout_grid, device=local.device)[:, :2]  # [cells, 2]
            distance = ((cells[None, None] - centres[:, :, None]) ** 2).sum(dim=-1)  # [B, S, cells]
            return (bias[..., None] - 0.5 * distance / scales[..., None] ** 2).to(local.dtype)
        keys = self.layout_keys(local)
        return torch.einsum("pd,bsd->bsp", self.layout_queries.to(keys.dtype), keys) * keys.shape[-1] ** -0.5

    def gaussian_geometry(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each slot's bump for ``layout_type="gaussian"``: centre `[B, S, 2]` (y, x) in (0, 1), scale σ `[B, S]` and
        bias `[B, S]`. σ lies between half a cell (or ``layout_min_scale``) and twice the image (log-linear in a
        sigmoid), so that no slot embedding, however far from training (stage 2 starts from freshly quantised slots),
        gives an infinite logit."""
        geometry = self.layout_geometry(local).float()  # [B, S, 4]
        smallest = math.log(self.config.layout_min_scale or 0.5 / max(self.config.layout_grid))
        largest = math.log(2.0)
        scales = torch.exp(smallest + (largest - smallest) * geometry[..., 2].sigmoid())
        return geometry[..., :2].sigmoid(), scales, geometry[..., 3]

    def layout_contents(self, local: torch.Tensor) -> torch.Tensor:
        """What each slot paints: `[B, S, layout_channels]`, or `[B, S, cells, layout_channels]` for ``"broadcast"``."""
        return self.decode_layout(local)[1]

    def layout_cells(self, layout_logits: torch.Tensor, local: torch.Tensor,
                     contents: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """`[B, cells, layout_channels]`: each cell of the layout grid holds the slots' contents (``layout_contents``,
        when already computed) mixed by its softmax over slots (the weights at every cell sum to one)."""
        weights = layout_logits.float().softmax(dim=1).to(local.dtype)
        contents = self.layout_contents(local) if contents is None else contents
        if contents.ndim == 4:  # a content per (slot, cell)
            return torch.einsum("bsp,bspc->bpc", weights, contents)
        return torch.einsum("bsp,bsc->bpc", weights, contents)

    def paint_layout(self, layout_logits: torch.Tensor, local: torch.Tensor, cells: torch.Tensor | None = None):
        """`[B, layout_channels, layout_size, layout_size]`: each slot's projected content over the cells it wins,
        bilinearly resized from the grid (``cells``, the output of ``layout_cells``, when already computed)."""
        height, width = self.config.layout_grid
        size = self.config.layout_size
        cells = self.layout_cells(layout_logits, local) if cells is None else cells
        grid = cells.transpose(1, 2).reshape(cells.shape[0], cells.shape[2], height, width)
        # resizing the mixed grid = mixing the resized masks (both steps are linear), at a fraction of the cost
        return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)

    def forward(
        self, slot_embeddings: torch.Tensor, drop_condition: torch.Tensor | None = None
    ) -> SlotQFormerConditionOutput:
        """Condition the UNet on ``slot_embeddings`` (`[B, num_slots, slot_dim]`).

        ``drop_condition`` (bool `[B]`) replaces the chosen rows by the null condition (training-time
        condition dropout); ``global_embedding`` in the output is always the predicted one, so that the
        MSE to the teacher embedding is computed for every row.
        """
        check_tensor("slot_embeddings", slot_embeddings, ndim=3, floating=True)
        if slot_embeddings.shape[1:] != (self.config.num_slots, self.config.slot_dim):
            raise ValueError(
                f"`slot_embeddings` must have shape [B, {self.config.num_slots}, {self.config.slot_dim}], "
                f"got {tuple(slot_embeddings.shape)}."
            )
        hidden = self.proj_in(slot_embeddings)
        for block in self.blocks:
            hidden = block(hidden)
        local = self.norm_out(hidden)
        global_embedding = self.global_head(local.mean(dim=1))
        class_global = global_embedding
        layout_logits = layout_cells = layout_map = None
        if self.config.layout_channels:
            layout_logits, contents = self.decode_layout(local)
            layout_cells = self.layout_cells(layout_logits, local, contents=contents)
            layout_map = self.paint_layout(layout_logits, local, cells=layout_cells)
        if drop_condition is not None:
            check_tensor("drop_condition", drop_condition, ndim=1)
            if drop_condition.shape[0] != slot_embeddings.shape[0]:
                raise ValueError(
                    f"`drop_condition` must have one entry per image ({slot_embeddings.shape[0]}), "
                    f"got shape {tuple(drop_condition.shape)}."
                )
            drop = drop_condition.bool().to(local.device)
            local = torch.where(drop[:, None, None], self.null_local_embeddings[None].to(local.dtype), local)
            class_global = torch.where(
                drop[:, None], self.null_global_embedding[None].to(global_embedding.dtype), global_embedding
            )
            if layout_map is not None:
                layout_map = layout_map.masked_fill(drop[:, None, None, None], 0.0)
        return SlotQFormerConditionOutput(local, global_embedding, self.class_labels(class_global),
                                          layout_logits=layout_logits, layout_cells=layout_cells,
                                          layout_map=layout_map)  # fmt: skip


__all__ = ["LAYOUT_TYPES", "SlotQFormerConditionOutput", "SlotQFormerDecoderConditioner"]
