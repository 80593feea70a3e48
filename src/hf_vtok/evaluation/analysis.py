"""The papers' token analyses, written once against the common tokenizer API.

* :func:`random_code_replacement` — Slot-MLLM appendix B.1 (Table 8): replace a fraction of an image's visual
  tokens by random codes from the whole codebook and measure how much the reconstruction degrades. A large drop
  means every token carries its own part of the image; a small one, that tokens are redundant. Any discrete
  tokenizer (SlotQFormer, DDT).
* :func:`prefix_decoding_curve` — DDT §5.4 (Fig. 8): reconstruction quality when the decoder sees only the first
  ``n`` tokens, for growing ``n`` (pipelines with a ``max_tokens`` argument: DDT). Drawn with :func:`line_chart`.
* :func:`tokens_by_object_count` — SeTok: does the number of tokens follow the number of objects?
* :func:`natural_photos` — the photos bundled with scikit-image and scikit-learn.

The line chart is drawn with matplotlib.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..utils.validation import check_float, check_int, describe
from .tokenizers import LoadedTokenizer, decode_tokens, encode_images, reconstruction_scores, resize_images

__all__ = [
    "NATURAL_PHOTO_NAMES",
    "ReplacementResult",
    "line_chart",
    "natural_photos",
    "prefix_decoding_curve",
    "random_code_replacement",
    "replace_random_codes",
    "tokens_by_object_count",
]

# Bundled with scikit-image (no download); camera is greyscale and exercises the mode conversion.
NATURAL_PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field")


def natural_photos(names: Sequence[str] | None = None, *, include_sklearn: bool = True) -> dict[str, Image.Image]:
    """RGB PIL photos by name: scikit-image's ``names`` (default :data:`NATURAL_PHOTO_NAMES`) plus, with
    ``include_sklearn``, scikit-learn's ``china`` and ``flower``."""
    from skimage import data as skimage_data

    names = NATURAL_PHOTO_NAMES if names is None else names
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"`names` must be a list of scikit-image photo names, got {describe(names)}.")
    photos = {}
    for name in names:
        loader = getattr(skimage_data, str(name), None)
        if loader is None or not callable(loader):
            raise ValueError(f"`names` must name scikit-image photos such as {list(NATURAL_PHOTO_NAMES)}, got {name!r}.")
        photos[str(name)] = Image.fromarray(np.asarray(loader())).convert("RGB")
    if include_sklearn:
        from sklearn.datasets import load_sample_images

        sample = load_sample_images()
        for filename, array in zip(sample.filenames, sample.images):
            photos[filename.rsplit("/", 1)[-1].split(".")[0]] = Image.fromarray(array).convert("RGB")
    return photos


# --------------------------------------------------------------------------------------------------------------
# Slot-MLLM B.1: replace a fraction of the tokens with random codes
# --------------------------------------------------------------------------------------------------------------


def _ids_per_unit(config) -> int:
    """Ids that make up one visual token: all depths of a slot for slot-major residual ids, else 1."""
    num_slots = getattr(config, "num_slots", None)
    if config.token_order == "slot_major" and num_slots and config.num_visual_tokens % num_slots == 0:
        return config.num_visual_tokens // num_slots
    return 1


def replace_random_codes(
    ids: torch.LongTensor,
    codebook_size: int,
    *,
    fraction: float = 0.5,
    group_size: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[torch.LongTensor, torch.BoolTensor]:
    """Replace ``round(fraction · units)`` randomly chosen units of ``group_size`` consecutive ids per image by
    codes drawn uniformly from ``[0, codebook_size)``. Returns the new ids and the mask of replaced positions."""
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.is_floating_point() or ids.numel() == 0:
        raise ValueError(f"`ids` must be a non-empty integer tensor [B, N], got {describe(ids)}.")
    codebook_size = check_int("codebook_size", codebook_size, minimum=1)
    fraction = check_float("fraction", fraction, minimum=0.0, maximum=1.0)
    group_size = check_int("group_size", group_size, minimum=1)
    batch, length = ids.shape
    if length % group_size:
        raise ValueError(f"`group_size` ({group_size}) must divide the number of ids per image ({length}).")
    units = length // group_size
    count = round(fraction * units)
    chosen = torch.zeros(batch, units, dtype=torch.bool)
    for row in range(batch):
        chosen[row, torch.randperm(units, generator=generator)[:count]] = True
    mask = chosen.repeat_interleave(group_size, dim=1)
    random_codes = torch.randint(0, codebook_size, ids.shape, generator=generator)
    return torch.where(mask, random_codes, ids.cpu().long()), mask


@dataclass
class ReplacementResult:
    """Per-image numbers of :func:`random_code_replacement` (``summary()`` gives means and relative drops)."""

    fraction: float
    group_size: int
    psnr_original: list = field(default_factory=list)  # input vs decode(ids)
    psnr_replaced: list = field(default_factory=list)  # input vs decode(replaced ids)
    psnr_between: list = field(default_factory=list)  # decode(ids) vs decode(replaced ids)
    ssim_original: list = field(default_factory=list)
    ssim_replaced: list = field(default_factory=list)
    ssim_between: list = field(default_factory=list)
    images: dict = field(default_factory=dict)  # "input", "decoded", "replaced": lists of HxWx3 arrays

    def summary(self) -> dict:
        def mean(values):
            values = [v for v in values if not np.isnan(v)]  # inf (identical images) is kept: it is the answer
            return float(np.mean(values)) if values else float("nan")

        out = {"fraction": self.fraction, "group_size": self.group_size}
        for metric in ("psnr", "ssim"):
            original, replaced = mean(getattr(self, f"{metric}_original")), mean(getattr(self, f"{metric}_replaced"))
            out[f"{metric}_original"] = round(original, 4)
            out[f"{metric}_replaced"] = round(replaced, 4)
            out[f"{metric}_drop_percent"] = round(100.0 * (original - replaced) / abs(original), 2) if original else float("nan")
            out[f"{metric}_between"] = round(mean(getattr(self, f"{metric}_between")), 4)
        return out


@torch.no_grad()
def random_code_replacement(
    loaded: LoadedTokenizer,
    images: Any,
    *,
    fraction: float = 0.5,
    group_size: int | str = "auto",
    num_inference_steps: int = 25,
    seed: int = 0,
    keep_images: int = 8,
    **pipeline_kwargs,
) -> ReplacementResult:
    """Slot-MLLM appendix B.1 for any discrete tokenizer.

    Encodes ``images`` to ids, replaces ``fraction`` of each image's visual tokens by random codes from the whole
    codebook (the paper: 50 % of the 32 slot tokens, codes 0–8191), and decodes both id sets from the same
    initial noise. Reports PSNR/SSIM of each decode against the input (what the paper's Table 8 shows, with the
    relative drop) and between the two decodes.

    Args:
        loaded: a :class:`~hf_vtok.evaluation.tokenizers.LoadedTokenizer` (``load_tokenizer_folder``).
        images: PIL images, arrays, paths (anything the image processor takes).
        fraction: share of visual tokens replaced, in [0, 1].
        group_size: ids replaced together as one visual token; ``"auto"``: all residual depths of a slot for
            slot-major ids (SlotQFormer: a slot is the paper's "visual token"), else 1.
        pipeline_kwargs: extra decoder arguments (e.g. ``guidance_scale``).
    """
    if not getattr(loaded.model, "is_discrete", False):
        raise TypeError(
            f"`loaded` must hold a discrete tokenizer (ids and a codebook) for random code replacement, got "
            f"{type(loaded.model).__name__} (continuous tokens)."
        )
    steps = check_int("num_inference_steps", num_inference_steps, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    group = _ids_per_unit(loaded.model.config) if group_size == "auto" else check_int("group_size", group_size, minimum=1)
    tokens, originals = encode_images(loaded, images)
    generator = torch.Generator().manual_seed(seed)
    replaced, _ = replace_random_codes(tokens.ids, loaded.model.codebook_size, fraction=fraction, group_size=group,
                                       generator=generator)
    decoded = decode_tokens(loaded, {"token_ids": tokens.ids}, steps, seed, **pipeline_kwargs)
    altered = decode_tokens(loaded, {"token_ids": replaced}, steps, seed, **pipeline_kwargs)
    targets = resize_images(originals, decoded.shape[1:3])
    result = ReplacementResult(fraction=float(fraction), group_size=group)
    for name, first, second in (("original", targets, decoded), ("replaced", targets, altered), ("between", decoded, altered)):
        psnr_values, ssim_values = reconstruction_scores(first, second)
        getattr(result, f"psnr_{name}").extend(psnr_values)
        getattr(result, f"ssim_{name}").extend(ssim_values)
    result.images = {"input": list(targets[:keep_images]), "decoded": list(decoded[:keep_images]), "replaced": list(altered[:keep_images])}
    return result


# --------------------------------------------------------------------------------------------------------------
# DDT §5.4: prefix decoding
# --------------------------------------------------------------------------------------------------------------


def default_prefix_lengths(total: int) -> list[int]:
    """1, 2, 4, ..., and ``total``."""
    return [2**i for i in range(math.ceil(math.log2(total)))] + [total]


def has_prefix_decoding(pipeline) -> bool:
    """Whether the decoder can render from the first ``n`` tokens only (a ``max_tokens`` argument: DDT)."""
    return "max_tokens" in inspect.signature(pipeline.__call__).parameters


def decode_prefixes(loaded: LoadedTokenizer, token_ids, prefix_lengths: Sequence[int], steps: int, seed: int,
                    **pipeline_kwargs) -> dict:
    """``{n: token_ids decoded from their first n ids}`` for every ``n`` of ``prefix_lengths``, all from the same
    initial noise (DDT: the decoder sees ``min(k(t), n)`` tokens)."""
    if not has_prefix_decoding(loaded.pipeline):
        raise TypeError(
            f"prefix decoding needs a decoder pipeline with a `max_tokens` argument (DDT); "
            f"{type(loaded.pipeline).__name__} has none."
        )
    tokens = {"token_ids": token_ids}
    return {n: decode_tokens(loaded, tokens, steps, seed, max_tokens=n, **pipeline_kwargs) for n in prefix_lengths}


@torch.no_grad()
def prefix_decoding_curve(
    loaded: LoadedTokenizer,
    images: Any,
    *,
    prefix_lengths: Sequence[int] | None = None,
    num_inference_steps: int = 25,
    seed: int = 0,
    **pipeline_kwargs,
) -> dict:
    """PSNR/SSIM of decoding each image from its first ``n`` tokens only, for every ``n`` in ``prefix_lengths``
    (:func:`decode_prefixes`; default 1, 2, 4, ..., T).

    Returns ``{"prefix_lengths": [...], "psnr": [...], "ssim": [...], "psnr_per_image": [[...], ...]}`` (means over
    images, then the per-image values for each ``n``).
    """
    total = int(loaded.model.config.num_visual_tokens)
    if prefix_lengths is None:
        prefix_lengths = default_prefix_lengths(total)
    if isinstance(prefix_lengths, (str, bytes)) or not isinstance(prefix_lengths, Sequence) or not prefix_lengths:
        raise ValueError(f"`prefix_lengths` must be a non-empty list of ints in [1, {total}], got {describe(prefix_lengths)}.")
    prefix_lengths = [check_int("prefix_lengths", n, minimum=1, maximum=total) for n in prefix_lengths]
    steps = check_int("num_inference_steps", num_inference_steps, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    tokens, originals = encode_images(loaded, images)
    curve = {"prefix_lengths": prefix_lengths, "psnr": [], "ssim": [], "psnr_per_image": []}
    for decoded in decode_prefixes(loaded, tokens.ids, prefix_lengths, steps, seed, **pipeline_kwargs).values():
        psnr_values, ssim_values = reconstruction_scores(originals, decoded)
        finite = [value for value in psnr_values if np.isfinite(value)]
        curve["psnr_per_image"].append(psnr_values)
        curve["psnr"].append(float(np.mean(finite)) if finite else float("inf"))
        curve["ssim"].append(float(np.mean(ssim_values)))
    return curve


# --------------------------------------------------------------------------------------------------------------
# SeTok: token count vs object count
# --------------------------------------------------------------------------------------------------------------


def tokens_by_object_count(num_tokens: Sequence[int], num_objects: Sequence[int]) -> dict:
    """Pearson correlation of tokens and objects per image, and a table of token counts by object count.

    Returns ``{"correlation": r or None, "table": [{"objects", "images", "mean_tokens", "std_tokens", "min", "max"}]}``
    (``correlation`` is None when either count is constant).
    """
    tokens = np.asarray(list(num_tokens), dtype=np.float64)
    objects = np.asarray(list(num_objects), dtype=np.float64)
    if tokens.ndim != 1 or tokens.shape != objects.shape or tokens.size == 0:
        raise ValueError(
            f"`num_tokens` and `num_objects` must be equally long non-empty lists, got {tokens.size} and {objects.size}."
        )
    correlation = None
    if tokens.std() > 0 and objects.std() > 0:
        correlation = round(float(np.corrcoef(tokens, objects)[0, 1]), 4)
    table = []
    for count in sorted(set(objects.astype(int).tolist())):
        chosen = tokens[objects == count]
        table.append({"objects": count, "images": int(chosen.size), "mean_tokens": round(float(chosen.mean()), 3),
                      "std_tokens": round(float(chosen.std()), 3), "min": int(chosen.min()), "max": int(chosen.max())})
    return {"correlation": correlation, "table": table}


# --------------------------------------------------------------------------------------------------------------
# A line chart with matplotlib
# --------------------------------------------------------------------------------------------------------------


def line_chart(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    size: tuple[int, int] = (560, 360),
    log_x: bool = False,
) -> Image.Image:
    """A line chart (markers + lines, grid, legend) of ``{name: (xs, ys)}`` drawn with matplotlib, as an RGB image
    of ``size`` pixels. Non-finite values (e.g. PSNR of a perfect reconstruction) are left out; ``log_x``: log2 x axis.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    if not isinstance(series, Mapping) or not series:
        raise ValueError(f"`series` must be a non-empty mapping name → (xs, ys), got {describe(series)}.")
    figure = Figure(figsize=(size[0] / 100, size[1] / 100), dpi=100, layout="tight")
    axes = figure.add_subplot()
    for name, pair in series.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or len(pair[0]) != len(pair[1]):
            raise ValueError(f"`series[{name!r}]` must be a pair (xs, ys) of equal lengths, got {describe(pair)}.")
        points = sorted((float(x), float(y)) for x, y in zip(*pair) if math.isfinite(float(x)) and math.isfinite(float(y)))
        points = [(x, y) for x, y in points if x > 0] if log_x else points
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=str(name))
    if log_x:
        axes.set_xscale("log", base=2)
        axes.xaxis.set_major_formatter(ScalarFormatter())  # 16, not 2^4
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.grid(alpha=0.3)
    axes.legend()
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
