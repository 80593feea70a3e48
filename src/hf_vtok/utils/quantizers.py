"""Vector quantizers shared by the discrete tokenizers.

* :class:`Codebook` holds the code vectors (always float32) and their EMA statistics.
* :class:`VectorQuantizer` maps vectors to their nearest code (Euclidean or cosine), with an
  optional low-dimensional projection, straight-through gradients, a commitment loss, EMA or
  gradient codebook updates, k-means initialisation, dead-code revival and usage statistics.
  DDT uses it as: cosine, L2-normalised 16-d codes, EMA, dead-code reset.
* :class:`ResidualVectorQuantizer` quantizes the residual left by the previous depth K times,
  optionally with ONE codebook shared by every depth (Slot-MLLM: 4 depths, 8192 × 32).

The nearest-code search never builds a one-hot matrix nor the full ``[tokens, codebook]`` distance
matrix: tokens are processed in chunks sized so that one chunk's score block stays under
``search_budget`` elements, each chunk's scores come from one matrix product, and only the argmin /
argmax survives the chunk.

Under ``torch.distributed`` the EMA statistics, the k-means initialisation and the dead-code
replacements are reduced / broadcast so that every process keeps the same codebook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput

from .validation import check_choice, check_float, check_int, check_tensor

DISTANCES = ("euclidean", "cosine")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _broadcast(tensor: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.broadcast(tensor, src=0)
    return tensor


@dataclass
class QuantizerOutput(ModelOutput):
    """Output of :class:`VectorQuantizer` and :class:`ResidualVectorQuantizer`.

    Args:
        quantized: quantized vectors in the input space, with straight-through gradients to the input.
        ids: code indices, shape ``input.shape[:-1]`` (plus a trailing depth axis for residual VQ).
        loss: the weighted quantization loss to add to the training loss (commitment, plus the
            codebook term when the codebook is learned by gradient).
        commitment_loss: ``||z - sg(e)||²`` averaged over tokens (unweighted).
        perplexity: ``exp(entropy)`` of this batch's code histogram (per depth for residual VQ).
        usage: fraction of the codebook used by this batch.
        residual_norms: mean L2 norm of the residual left after each depth (residual VQ only).
    """

    quantized: torch.FloatTensor | None = None
    ids: torch.LongTensor | None = None
    loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    perplexity: torch.FloatTensor | None = None
    usage: torch.FloatTensor | None = None
    residual_norms: torch.FloatTensor | None = None


class Codebook(nn.Module):
    """Code vectors plus the EMA statistics that update them.

    The module is named ``codebook`` inside every quantizer so that models can list it in
    ``_keep_in_fp32_modules_strict``: the nearest-code search must not change with the model dtype.
    """

    def __init__(
        self,
        codebook_size: int,
        code_dim: int,
        distance: str = "euclidean",
        use_ema: bool = True,
        ema_decay: float = 0.99,
        ema_epsilon: float = 1e-5,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0,
        search_budget: int = 2**22,
    ):
        super().__init__()
        self.codebook_size = check_int("codebook_size", codebook_size, minimum=1)
        self.code_dim = check_int("code_dim", code_dim, minimum=1)
        self.distance = check_choice("distance", distance, DISTANCES)
        self.use_ema = bool(use_ema)
        self.ema_decay = check_float("ema_decay", ema_decay, minimum=0.0, maximum=1.0)
        self.ema_epsilon = check_float("ema_epsilon", ema_epsilon, minimum=0.0, strict_minimum=True)
        self.kmeans_init = bool(kmeans_init)
        self.kmeans_iters = check_int("kmeans_iters", kmeans_iters, minimum=1)
        self.dead_code_threshold = check_float("dead_code_threshold", dead_code_threshold, minimum=0.0)
        self.search_budget = check_int("search_budget", search_budget, minimum=1)

        # Gradient-learned codebooks are a Parameter; EMA codebooks change only through the
        # statistics below, so they are a Parameter without gradient (it still saves, loads and
        # follows .to(device) like any weight, and optimisers skip it). float32 whatever the default
        # dtype, so that a model built in bfloat16 keeps the codebook of `_keep_in_fp32_modules_strict`.
        self.weight = nn.Parameter(torch.empty(codebook_size, code_dim, dtype=torch.float32), requires_grad=not self.use_ema)
        self.register_buffer("cluster_size", torch.empty(codebook_size, dtype=torch.float32))
        self.register_buffer("embed_sum", torch.empty(codebook_size, code_dim, dtype=torch.float32))
        self.register_buffer("initialized", torch.empty((), dtype=torch.bool))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random codes (unit-norm for cosine distance), one use per code, ``initialized`` unless k-means will seed
        them. The families' ``_init_weights`` call it, so a model built on the meta device and initialised with
        ``init_weights()`` gets real statistics; tensors loaded by ``from_pretrained`` are left alone."""
        init.normal_(self.weight)
        if self.distance == "cosine":
            init.copy_(self.weight, F.normalize(self.weight, dim=-1))
        init.ones_(self.cluster_size)
        init.copy_(self.embed_sum, self.weight * self.cluster_size[:, None])
        init.constant_(self.initialized, not self.kmeans_init)

    def _float32(self):
        """Keep the codebook in float32 even if the surrounding model was cast to half precision."""
        if self.weight.dtype != torch.float32:
            self.weight.data = self.weight.data.float()
            self.cluster_size.data = self.cluster_size.data.float()
            self.embed_sum.data = self.embed_sum.data.float()

    @property
    def codes(self) -> torch.Tensor:
        """The code vectors used for search and lookup (unit-normalised for cosine distance)."""
        return F.normalize(self.weight, dim=-1) if self.distance == "cosine" else self.weight

    @torch.no_grad()
    def search(self, vectors: torch.Tensor) -> torch.LongTensor:
        """Nearest code of each row of ``vectors`` (`[N, code_dim]`), chunk by chunk.

        Euclidean: argmin over ``||e||² - 2 z·e`` (``||z||²`` is constant per row). Cosine: argmax of
        ``ẑ·ê``. Memory per chunk is ``chunk × codebook_size`` scores, never ``N × codebook_size``.
        """
        codes = self.codes.float()
        vectors = vectors.float()
        if self.distance == "cosine":
            vectors = F.normalize(vectors, dim=-1)
            half_code_norms = None
        else:
            half_code_norms = 0.5 * codes.pow(2).sum(-1)
        chunk = max(1, self.search_budget // self.codebook_size)
        ids = torch.empty(vectors.shape[0], dtype=torch.long, device=vectors.device)
        codes_t = codes.t()
        for start in range(0, vectors.shape[0], chunk):
            block = vectors[start : start + chunk]
            if half_code_norms is None:
                ids[start : start + chunk] = (block @ codes_t).argmax(dim=-1)
            else:
                # argmin ||z-e||² = argmax (z·e - ||e||²/2): one addmm, no square roots. The score
                # block is never bound to a name, so it is freed before the next chunk allocates.
                ids[start : start + chunk] = torch.addmm(half_code_norms, block, codes_t, beta=-1.0).argmax(dim=-1)
        return ids

    def lookup(self, ids: torch.LongTensor) -> torch.Tensor:
        return F.embedding(ids, self.codes)

    @torch.no_grad()
    def kmeans_initialize(self, vectors: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Lloyd's k-means on one batch of vectors, then seed the EMA statistics from it."""
        vectors = vectors.float()
        if self.distance == "cosine":
            vectors = F.normalize(vectors, dim=-1)
        num = vectors.shape[0]
        picks = (
            torch.randperm(num, generator=generator, device="cpu")[: self.codebook_size]
            if num >= self.codebook_size
            else torch.randint(num, (self.codebook_size,), generator=generator, device="cpu")
        )
        centres = vectors[picks.to(vectors.device)].clone()
        counts = torch.ones(self.codebook_size, device=vectors.device)
        for _ in range(self.kmeans_iters):
            self.weight.data.copy_(centres)
            assign = self.search(vectors)
            counts = torch.bincount(assign, minlength=self.codebook_size).float()
            sums = torch.zeros_like(centres).index_add_(0, assign, vectors)
            new_centres = sums / counts.clamp(min=1.0)[:, None]
            if self.distance == "cosine":
                new_centres = F.normalize(new_centres, dim=-1)
            # empty clusters keep their previous centre
            centres = torch.where(counts[:, None] > 0, new_centres, centres)
        centres = _broadcast(centres.contiguous())
        counts = _broadcast(counts.contiguous())
        self.weight.data.copy_(centres)
        self.cluster_size.data.copy_(counts.clamp(min=1.0))
        self.embed_sum.data.copy_(centres * self.cluster_size[:, None])
        self.initialized.fill_(True)

    @torch.no_grad()
    def ema_update(self, vectors: torch.Tensor, ids: torch.LongTensor) -> None:
        """Move each code towards the mean of the vectors assigned to it (summed over processes)."""
        vectors = vectors.float()
        if self.distance == "cosine":
            vectors = F.normalize(vectors, dim=-1)
        counts = torch.bincount(ids, minlength=self.codebook_size).float()
        sums = torch.zeros(self.codebook_size, self.code_dim, device=vectors.device).index_add_(0, ids, vectors)
        _all_reduce_sum(counts)
        _all_reduce_sum(sums)
        decay = self.ema_decay
        self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        self.embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
        # Laplace smoothing keeps rarely used codes from dividing by ~0
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.ema_epsilon) / (total + self.codebook_size * self.ema_epsilon) * total
        means = self.embed_sum / smoothed[:, None]
        self.weight.data.copy_(F.normalize(means, dim=-1) if self.distance == "cosine" else means)

    @torch.no_grad()
    def revive_dead_codes(self, vectors: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """Replace codes whose EMA usage fell below ``dead_code_threshold`` by random batch vectors.

        Returns the number of codes replaced. Rank 0 draws the replacements and broadcasts them.
        """
        if self.dead_code_threshold <= 0:
            return 0
        dead = self.cluster_size < self.dead_code_threshold
        dead = _broadcast(dead.to(torch.uint8)).bool()
        num_dead = int(dead.sum())
        if num_dead == 0 or vectors.shape[0] == 0:
            return 0
        vectors = vectors.float()
        if self.distance == "cosine":
            vectors = F.normalize(vectors, dim=-1)
        picks = torch.randint(vectors.shape[0], (num_dead,), generator=generator, device="cpu").to(vectors.device)
        replacements = _broadcast(vectors[picks].contiguous())
        self.weight.data[dead] = replacements
        # a revived code starts as if used exactly at the threshold, so it is not reset again at once
        self.cluster_size.data[dead] = self.dead_code_threshold
        self.embed_sum.data[dead] = replacements * self.dead_code_threshold
        return num_dead


def _usage_statistics(ids: torch.LongTensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    counts = torch.bincount(ids.reshape(-1), minlength=codebook_size).float()
    probs = counts / counts.sum().clamp(min=1.0)
    entropy = -(probs * torch.log(probs.clamp(min=1e-12))).sum()
    return entropy.exp(), (counts > 0).float().mean()


def _output_dtype(project_out: nn.Module) -> torch.dtype:
    """dtype of the model around the quantizer (the output projection's), float32 without one."""
    weight = getattr(project_out, "weight", None)
    return weight.dtype if weight is not None else torch.float32


def _lookup(codebook: Codebook, ids: torch.LongTensor, l2_normalize: bool) -> torch.Tensor:
    codes = codebook.lookup(ids)
    return F.normalize(codes, dim=-1) if l2_normalize else codes


def _quantize(
    codebook: Codebook, z: torch.Tensor, l2_normalize: bool, commitment_weight: float, update: bool
) -> tuple[torch.Tensor, torch.LongTensor, torch.Tensor, torch.Tensor]:
    """Quantize vectors already in code space (`[N, code_dim]`, float32).

    Returns ``(quantized, ids, loss, commitment)``; ``quantized`` carries straight-through gradients
    to ``z``. With ``update`` an EMA codebook is k-means-initialised if needed, moves towards the
    assigned means and revives its dead codes.
    """
    if update and not bool(codebook.initialized):
        codebook.kmeans_initialize(z.detach())
    ids = codebook.search(z.detach())
    codes = _lookup(codebook, ids, l2_normalize)
    commitment = F.mse_loss(z, codes.detach())
    loss = commitment_weight * commitment
    if not codebook.use_ema:
        loss = loss + F.mse_loss(codes, z.detach())
    if update and codebook.use_ema:
        codebook.ema_update(z.detach(), ids)
        codebook.revive_dead_codes(z.detach())
    quantized = z + (codes - z).detach()
    return quantized, ids, loss, commitment


class VectorQuantizer(nn.Module):
    """Nearest-code vector quantizer with straight-through gradients.

    Args:
        dim: width of the vectors to quantize.
        codebook_size: number of codes.
        code_dim: width of the codes; when it differs from ``dim`` the input is projected down
            (``project_in``) before the search and the code projected back up (``project_out``).
        distance: ``"euclidean"`` or ``"cosine"`` (cosine implies L2-normalised codes and inputs).
        l2_normalize: L2-normalise the (projected) inputs and codes before a Euclidean search too.
        commitment_weight: weight β of ``||z - sg(e)||²``.
        use_ema: update codes by exponential moving averages (no codebook gradient) instead of the
            codebook loss ``||sg(z) - e||²``.
        ema_decay, kmeans_init, kmeans_iters, dead_code_threshold: see :class:`Codebook`.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        code_dim: int | None = None,
        distance: str = "euclidean",
        l2_normalize: bool = False,
        commitment_weight: float = 0.25,
        use_ema: bool = True,
        ema_decay: float = 0.99,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0,
        search_budget: int = 2**22,
    ):
        super().__init__()
        self.dim = check_int("dim", dim, minimum=1)
        code_dim = dim if code_dim is None else check_int("code_dim", code_dim, minimum=1)
        self.commitment_weight = check_float("commitment_weight", commitment_weight, minimum=0.0)
        self.l2_normalize = bool(l2_normalize) or distance == "cosine"
        self.codebook = Codebook(
            codebook_size,
            code_dim,
            distance=distance,
            use_ema=use_ema,
            ema_decay=ema_decay,
            kmeans_init=kmeans_init,
            kmeans_iters=kmeans_iters,
            dead_code_threshold=dead_code_threshold,
            search_budget=search_budget,
        )
        self.project_in = nn.Linear(dim, code_dim) if code_dim != dim else nn.Identity()
        self.project_out = nn.Linear(code_dim, dim) if code_dim != dim else nn.Identity()

    @property
    def codebook_size(self) -> int:
        return self.codebook.codebook_size

    def _to_code_space(self, x: torch.Tensor) -> torch.Tensor:
        z = self.project_in(x).float()
        return F.normalize(z, dim=-1) if self.l2_normalize else z

    def _codes_for(self, ids: torch.LongTensor) -> torch.Tensor:
        return _lookup(self.codebook, ids, self.l2_normalize)

    def encode(self, x: torch.Tensor) -> torch.LongTensor:
        """Code index of each vector of ``x`` (`[..., dim]` → `[...]`), without any update."""
        check_tensor("x", x, floating=True, finite=True)  # NaN distances would silently pick code 0
        if x.shape[-1] != self.dim:
            raise ValueError(f"`x` must have last dimension {self.dim}, got shape {tuple(x.shape)}.")
        self.codebook._float32()
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = self._to_code_space(x)
            return self.codebook.search(z.reshape(-1, z.shape[-1])).reshape(x.shape[:-1])

    def decode(self, ids: torch.LongTensor) -> torch.Tensor:
        """Vectors in the input space for code indices ``ids`` (`[...]` → `[..., dim]`)."""
        check_tensor("ids", ids, integer=True)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise ValueError(
                f"`ids` must be in [0, {self.codebook_size}), got values in [{int(ids.min())}, {int(ids.max())}]."
            )
        self.codebook._float32()
        return self.project_out(self._codes_for(ids.long()).to(self._out_dtype()))

    def _out_dtype(self) -> torch.dtype:
        return _output_dtype(self.project_out)

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        """Quantize ``x`` (`[..., dim]`); EMA updates happen only in training mode."""
        check_tensor("x", x, floating=True, finite=True)
        if x.shape[-1] != self.dim:
            raise ValueError(f"`x` must have last dimension {self.dim}, got shape {tuple(x.shape)}.")
        self.codebook._float32()
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = self._to_code_space(x).reshape(-1, self.codebook.code_dim)
            quantized, ids, loss, commitment = _quantize(
                self.codebook, z, self.l2_normalize, self.commitment_weight, update=self.training
            )
        quantized = self.project_out(quantized.to(self._out_dtype())).reshape(*x.shape[:-1], self.dim)
        perplexity, usage = _usage_statistics(ids, self.codebook_size)
        return QuantizerOutput(
            quantized=quantized.to(x.dtype),
            ids=ids.reshape(x.shape[:-1]),
            loss=loss,
            commitment_loss=commitment,
            perplexity=perplexity,
            usage=usage,
        )


class ResidualVectorQuantizer(nn.Module):
    """Residual VQ: depth ``d`` quantizes what depths ``0..d-1`` left unexplained.

    The input is projected once to the code space (``dim → code_dim``), quantized residually there,
    and the sum of the codes projected back (``code_dim → dim``), as in Slot-MLLM's 768 → 32 → 768.
    With ``shared_codebook`` every depth searches the same :class:`Codebook`, whose EMA statistics
    are then accumulated over all depths and applied once per step.

    ``ids`` have shape ``[..., num_depths]``. The buffer ``codebook_usage`` (`[num_depths, codebook_size]`, int64) counts
    how often each depth picked each code in training forwards (summed over processes): which codes a depth really
    uses over a whole run, where ``QuantizerOutput.usage`` sees one batch. Its shape is also the only record of
    ``num_depths`` in a checkpoint with a shared codebook, so a config edited to another depth count fails to load
    instead of silently giving every id another meaning.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        num_depths: int,
        code_dim: int | None = None,
        shared_codebook: bool = True,
        distance: str = "euclidean",
        l2_normalize: bool = False,
        commitment_weight: float = 0.25,
        use_ema: bool = True,
        ema_decay: float = 0.99,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0,
        search_budget: int = 2**22,
    ):
        super().__init__()
        self.dim = check_int("dim", dim, minimum=1)
        self.num_depths = check_int("num_depths", num_depths, minimum=1)
        code_dim = dim if code_dim is None else check_int("code_dim", code_dim, minimum=1)
        self.code_dim = code_dim
        self.shared_codebook = bool(shared_codebook)
        self.project_in = nn.Linear(dim, code_dim) if code_dim != dim else nn.Identity()
        self.project_out = nn.Linear(code_dim, dim) if code_dim != dim else nn.Identity()
        codebook_kwargs = dict(
            distance=distance,
            use_ema=use_ema,
            ema_decay=ema_decay,
            kmeans_init=kmeans_init,
            kmeans_iters=kmeans_iters,
            dead_code_threshold=dead_code_threshold,
            search_budget=search_budget,
        )
        self.l2_normalize = bool(l2_normalize) or distance == "cosine"
        self.commitment_weight = check_float("commitment_weight", commitment_weight, minimum=0.0)
        # one codebook for every depth, or one per depth
        self.codebooks = nn.ModuleList(
            Codebook(codebook_size, code_dim, **codebook_kwargs)
            for _ in range(1 if self.shared_codebook else self.num_depths)
        )
        self.register_buffer("codebook_usage", torch.empty(self.num_depths, codebook_size, dtype=torch.long))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """No code used yet (the codebooks reset themselves). The families' ``_init_weights`` call it, so that a model
        built on the meta device gets real counts; a count loaded by ``from_pretrained`` is left alone."""
        init.zeros_(self.codebook_usage)

    @torch.no_grad()
    def _count_usage(self, ids: torch.LongTensor) -> None:
        """Add the codes each depth picked (``ids``: `[N, num_depths]`) to ``codebook_usage``, summed over processes."""
        depth_offsets = torch.arange(self.num_depths, device=ids.device) * self.codebook_size
        counts = torch.bincount((ids + depth_offsets).reshape(-1), minlength=self.codebook_usage.numel())
        self.codebook_usage += _all_reduce_sum(counts).view_as(self.codebook_usage)

    def codebook_at(self, depth: int) -> Codebook:
        return self.codebooks[0 if self.shared_codebook else depth]

    @property
    def codebook_size(self) -> int:
        return self.codebooks[0].codebook_size

    def _check_input(self, x):
        check_tensor("x", x, floating=True, finite=True)
        if x.shape[-1] != self.dim:
            raise ValueError(f"`x` must have last dimension {self.dim}, got shape {tuple(x.shape)}.")
        for codebook in self.codebooks:
            codebook._float32()

    def _out_dtype(self) -> torch.dtype:
        return _output_dtype(self.project_out)

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        """Quantize ``x`` (`[..., dim]`) at every depth; EMA updates happen only in training mode."""
        self._check_input(x)
        # A shared codebook is updated once, after every depth has searched the same codes.
        update_each_depth = self.training and not self.shared_codebook
        with torch.autocast(device_type=x.device.type, enabled=False):
            residual = self.project_in(x).float().reshape(-1, self.code_dim)
            if self.training and self.shared_codebook and not bool(self.codebooks[0].initialized):
                self.codebooks[0].kmeans_initialize(residual.detach())
            total = torch.zeros_like(residual)
            ids, losses, commitments, residual_norms, searched = [], [], [], [], []
            for depth in range(self.num_depths):
                quantized, depth_ids, loss, commitment = _quantize(
                    self.codebook_at(depth), residual, self.l2_normalize, self.commitment_weight, update_each_depth
                )
                searched.append(residual.detach())
                total = total + quantized
                residual = residual - quantized.detach()
                ids.append(depth_ids)
                losses.append(loss)
                commitments.append(commitment)
                residual_norms.append(residual.norm(dim=-1).mean())
            if self.training and self.shared_codebook and self.codebooks[0].use_ema:
                vectors = torch.cat(searched)
                self.codebooks[0].ema_update(vectors, torch.cat(ids))
                self.codebooks[0].revive_dead_codes(vectors)
        ids = torch.stack(ids, dim=-1)
        if self.training:
            self._count_usage(ids)
        quantized = self.project_out(total.to(self._out_dtype())).reshape(*x.shape[:-1], self.dim)
        stats = [_usage_statistics(ids[:, d], self.codebook_size) for d in range(self.num_depths)]
        return QuantizerOutput(
            quantized=quantized.to(x.dtype),
            ids=ids.reshape(*x.shape[:-1], self.num_depths),
            loss=torch.stack(losses).sum(),
            commitment_loss=torch.stack(commitments).mean(),
            perplexity=torch.stack([s[0] for s in stats]),
            usage=torch.stack([s[1] for s in stats]),
            residual_norms=torch.stack(residual_norms),
        )

    def encode(self, x: torch.Tensor) -> torch.LongTensor:
        """Ids `[..., num_depths]` of ``x`` (`[..., dim]`) without updating anything."""
        self._check_input(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            residual = self.project_in(x).float().reshape(-1, self.code_dim)
            ids = []
            for depth in range(self.num_depths):
                codebook = self.codebook_at(depth)
                depth_ids = codebook.search(residual)
                residual = residual - _lookup(codebook, depth_ids, self.l2_normalize)
                ids.append(depth_ids)
        return torch.stack(ids, dim=-1).reshape(*x.shape[:-1], self.num_depths)

    def decode(self, ids: torch.LongTensor) -> torch.Tensor:
        """Sum of the codes of every depth, projected back: `[..., num_depths]` → `[..., dim]`."""
        check_tensor("ids", ids, integer=True)
        if ids.shape[-1] != self.num_depths:
            raise ValueError(f"`ids` must have last dimension {self.num_depths} (depths), got {tuple(ids.shape)}.")
        if int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size:
            raise ValueError(
                f"`ids` must be in [0, {self.codebook_size}), got values in [{int(ids.min())}, {int(ids.max())}]."
            )
        for codebook in self.codebooks:
            codebook._float32()
        total = sum(
            _lookup(self.codebook_at(d), ids[..., d].long(), self.l2_normalize) for d in range(self.num_depths)
        )
        return self.project_out(total.to(self._out_dtype()))
