"""The quality figures of ``hf-vtok eval``: one style of held-out shapes scenes, its baselines, a tokenizer's metrics on
the same scenes and the gate verdicts (issue #16). See docs/evaluation.md for the definitions.

Every reconstruction, the baselines' included, is compared with the scene at the evaluation size; a decoder that
renders at another size is resized to it (:func:`~hf_vtok.evaluation.tokenizers.resize_images`). Each scene is
encoded once; its ids (or embeddings) are decoded as they are, as random and shuffled decoys and, for decoders with
a ``max_tokens`` argument (DDT), from every prefix, all from the same initial noise.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..utils.validation import check_int
from .analysis import decode_prefixes, default_prefix_lengths, has_prefix_decoding, replace_random_codes
from .baselines import (
    colour_matches,
    grid_partition,
    mean_colour_images,
    taef2_round_trip,
    thumbnail_for_bits,
    thumbnail_images,
    token_count_agreement,
)
from .metrics import (
    color_kmeans_segmentation,
    distinct_ids_per_image,
    foreground_ari,
    mean_iou_matched,
    psnr,
    ssim,
)
from .tokenizers import LoadedTokenizer, decode_tokens, encode_images, group_maps, resize_images, token_inputs

__all__ = ["GATES", "THUMBNAIL_MARGIN_DB", "Scenes", "gate_verdicts", "load_scenes", "measure_tokenizer", "style_baselines"]

# Issue #16's gates, by model type; PSNR thresholds by style (defined at 128 px on >= 256 scenes per style).
GATES: dict[str, dict] = {
    "ddt_tokenizer": {"psnr": {"textured": 18.5, "flat": 27.0}, "decoys": ("random",), "decoy_drop_db": 6.0,
                      "colour_fidelity": 0.90, "prefix_rising": True},
    "slot_qformer": {"psnr": {"textured": 17.5, "flat": 24.0}, "decoys": ("random", "shuffled"), "decoy_drop_db": 4.0,
                     "colour_fidelity": 0.80, "fg_ari": 0.60},
    "setok": {"psnr": {"textured": 17.5, "flat": 24.0}, "decoys": ("random", "shuffled"), "decoy_drop_db": 4.0,
              "colour_fidelity": 0.80, "count_share": 0.70},
}
# Every discrete tokenizer must beat the thumbnail carrying as many bits as its ids by this much.
THUMBNAIL_MARGIN_DB: dict[str, float] = {"textured": 1.5, "flat": 4.0}
GRID_SIDES = (2, 3, 4)
MEAN_COLOUR, FIXED_THUMBNAIL, TAEF2 = "mean colour", "thumbnail 16x16, 8 bit", "TAEF2 round trip (ceiling)"
ORIGINAL, KMEANS, GRID = "original image", "colour k-means (k = objects + 1)", "fixed grid"


@dataclass
class Scenes:
    """One style of held-out scenes: PIL images, ``[N, S, S, 3]`` floats in [0, 1], instance masks, colour names."""

    style: str
    seed: int
    pil: list
    images: np.ndarray
    masks: np.ndarray
    colours: list  # per scene, the colour name of object id i at position i - 1

    def batches(self, batch_size: int):
        return [slice(start, start + batch_size) for start in range(0, len(self.pil), batch_size)]


def load_scenes(style: str, num_images: int, image_size: int, seed: int) -> Scenes:
    """``num_images`` shapes-world scenes of ``style`` (rows depend only on ``(seed, i)``; both styles share layouts)."""
    from ..data.shapes import generate_shapes_dataset

    data = generate_shapes_dataset(num_images, image_size=image_size, style=style, seed=seed, with_edits=False, progress=False)
    pil = [image.convert("RGB") for image in data["image"]]
    colours = []
    for objects in data["objects"]:
        names = [None] * max((o["id"] for o in objects), default=0)
        for o in objects:
            names[o["id"] - 1] = o["color"]
        colours.append(names)
    return Scenes(style, seed, pil, np.stack([np.asarray(p, dtype=np.float32) / 255.0 for p in pil]),
                  np.stack([np.asarray(m, dtype=np.int64) for m in data["mask"]]), colours)


class _Scores:
    """Per-image values (per object for colour fidelity) under a key, averaged by :meth:`summary`."""

    def __init__(self):
        self.values = defaultdict(list)

    def add(self, key: str, values) -> None:
        self.values[key].extend(np.atleast_1d(values).tolist())

    def add_reconstruction(self, prefix: str, targets, reconstructions, masks) -> None:
        reconstructions = resize_images(reconstructions, targets.shape[1:3])
        self.add(f"{prefix}psnr", psnr(targets, reconstructions))
        self.add(f"{prefix}ssim", ssim(targets, reconstructions))
        self.add(f"{prefix}colour_fidelity", colour_matches(reconstructions, masks, targets))

    def summary(self) -> dict:
        def mean(values):
            values = [float(v) for v in values if np.isfinite(v)]
            return round(float(np.mean(values)), 4) if values else None

        return {key: mean(values) for key, values in self.values.items()}


def _discovery(masks: np.ndarray, predicted: np.ndarray) -> dict:
    return {"fg_ari": float(np.nanmean(foreground_ari(masks, predicted))), "miou": float(np.nanmean(mean_iou_matched(masks, predicted)))}


def style_baselines(scenes: Scenes, *, batch_size: int = 32, autoencoder=None) -> dict[str, dict]:
    """The rows every tokenizer of ``scenes``' style is printed beside (names: the module constants)."""
    scores = {name: _Scores() for name in (MEAN_COLOUR, FIXED_THUMBNAIL, TAEF2)}
    build = {MEAN_COLOUR: mean_colour_images, FIXED_THUMBNAIL: lambda x: thumbnail_images(x, 16),
             TAEF2: lambda x: taef2_round_trip(x, autoencoder, batch_size=batch_size)}
    for batch in scenes.batches(batch_size):
        targets, masks = scenes.images[batch], scenes.masks[batch]
        for name, make in build.items():
            scores[name].add_reconstruction("", targets, make(targets), masks)
    rows = {ORIGINAL: {"colour_fidelity": round(float(colour_matches(scenes.images, scenes.masks, scenes.colours).mean()), 4)}}
    rows.update({name: score.summary() for name, score in scores.items()})
    rows[FIXED_THUMBNAIL]["bits_per_image"] = 16 * 16 * 3 * 8
    kmeans = np.stack([color_kmeans_segmentation(image, len(names) + 1, seed=scenes.seed)
                       for image, names in zip(scenes.images, scenes.colours)])
    rows[KMEANS] = _discovery(scenes.masks, kmeans)
    size = scenes.masks.shape[-1]
    grids = {side: _discovery(scenes.masks, np.broadcast_to(grid_partition(size, side), scenes.masks.shape)) for side in GRID_SIDES}
    best = max(grids, key=lambda side: grids[side]["fg_ari"])  # the strongest fixed grid is the baseline to beat
    rows[GRID] = {**grids[best], "grid_side": best}
    return rows


DECOYS = ("random", "shuffled")  # what decoy_tokens makes: tokens that do not describe the scene


def decoy_tokens(tokens, every_image: list, generator: torch.Generator, batch: slice, codebook_size: int | None) -> dict:
    """Random and shuffled versions of one batch's tokens, as pipeline arguments.

    Discrete: ids drawn uniformly from the codebook, and each image's ids in a random order. Continuous: Gaussian
    embeddings with the per-dimension mean and std of the real tokens (same counts), and each scene decoded from the
    next scene's tokens (the last from the first).
    """
    if tokens.ids is not None:
        ids = tokens.ids
        shuffled = torch.stack([row[torch.randperm(len(row), generator=generator)] for row in ids])
        random_ids, _ = replace_random_codes(ids, codebook_size, fraction=1.0, generator=generator)
        return {"random": {"token_ids": random_ids},
                "shuffled": {"token_ids": shuffled}}
    real = torch.cat(every_image)
    noise = torch.randn(tokens.embeddings.shape, generator=generator) * real.std(0, correction=0) + real.mean(0)
    partners = [every_image[(i + 1) % len(every_image)] for i in range(batch.start, batch.start + len(tokens.embeddings))]
    lengths = torch.tensor([len(p) for p in partners])
    return {"random": {"token_embeddings": noise, "attention_mask": tokens.attention_mask},
            "shuffled": {"token_embeddings": torch.nn.utils.rnn.pad_sequence(partners, batch_first=True),
                         "attention_mask": (torch.arange(int(lengths.max()))[None] < lengths[:, None]).long()}}


@torch.no_grad()
def measure_tokenizer(
    loaded: LoadedTokenizer,
    scenes: Scenes,
    *,
    num_inference_steps: int = 10,
    seed: int = 0,
    batch_size: int = 32,
    keep_images: int = 8,
    guidance_scale: float | None = None,
    prefix_lengths: Sequence[int] | None = None,
    decoys: Sequence[str] = DECOYS,
    progress=None,
) -> dict:
    """Every issue-#16 figure of one tokenizer on ``scenes`` (keys: docs/evaluation.md), plus ``"pictures"``: the
    first ``keep_images`` inputs, reconstructions and token group maps. ``progress`` (a tqdm bar) advances by one per
    batch and, after the first, receives the estimated duration.

    A sampling sweep (``training/sweep_decoder_sampling.py``) narrows the work: ``guidance_scale`` overrides the
    decoder's own (None keeps it), ``prefix_lengths`` the prefix lengths decoded by a DDT decoder (None: the default
    ladder; ``[]``: none) and ``decoys`` which decoy tokens are decoded (the draws stay those of a full run)."""
    steps = check_int("num_inference_steps", num_inference_steps, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    unknown = sorted(set(decoys) - set(DECOYS))
    if isinstance(decoys, str) or unknown:
        raise ValueError(f"`decoys` must be a subset of {list(DECOYS)}, got {decoys!r}.")
    model, size = loaded.model, scenes.images.shape[1]
    num_visual_tokens = int(model.config.num_visual_tokens)
    codebook_size = model.codebook_size if model.is_discrete else None
    bits = num_visual_tokens * math.log2(codebook_size) if codebook_size else None
    prefixes = default_prefix_lengths(num_visual_tokens)[:-1] if has_prefix_decoding(loaded.pipeline) else []
    if prefix_lengths is not None:
        if prefix_lengths and not has_prefix_decoding(loaded.pipeline):
            raise ValueError(f"`prefix_lengths` {list(prefix_lengths)}: {type(loaded.pipeline).__name__} cannot decode "
                             "from a prefix of the tokens (only DDT's decoder can).")  # fmt: skip
        prefixes = [check_int("prefix_lengths", n, minimum=1) for n in prefix_lengths]
    sampling = {} if guidance_scale is None else {"guidance_scale": float(guidance_scale)}
    thumbnail = thumbnail_for_bits(bits, max_side=size) if bits else None

    batches = scenes.batches(batch_size)
    encoded = [encode_images(loaded, scenes.pil[batch])[0] for batch in batches]
    every_image = [] if model.is_discrete else [t.embeddings[i, t.attention_mask[i].bool()] for t in encoded for i in range(len(t.embeddings))]
    generator = torch.Generator().manual_seed(seed)
    scores, counts, distinct, pictures = _Scores(), [], [], {"originals": [], "reconstructions": [], "group_maps": []}
    started = time.perf_counter()
    for batch, tokens in zip(batches, encoded):
        targets, masks = scenes.images[batch], scenes.masks[batch]
        noise_seed = seed + batch.start  # every variant of a batch starts from the same noise
        reconstructions = decode_tokens(loaded, token_inputs(tokens), steps, noise_seed, **sampling)
        scores.add_reconstruction("", targets, reconstructions, masks)
        for name, decoy in decoy_tokens(tokens, every_image, generator, batch, codebook_size).items():
            if name in decoys:
                scores.add_reconstruction(f"{name}_", targets, decode_tokens(loaded, decoy, steps, noise_seed, **sampling), masks)
        prefix_decodes = decode_prefixes(loaded, tokens.ids, prefixes, steps, noise_seed, **sampling) if prefixes else {}
        for n, decoded in prefix_decodes.items():
            scores.add(f"prefix_{n}", psnr(targets, resize_images(decoded, (size, size))))
        if thumbnail:
            scores.add_reconstruction("thumbnail_", targets, thumbnail_images(targets, *thumbnail), masks)
        counts += tokens.attention_mask.sum(-1).tolist()
        if model.is_discrete:
            distinct += distinct_ids_per_image(tokens.ids, tokens.attention_mask).tolist()
        kept = len(pictures["originals"])
        pictures["originals"] += list(targets[: keep_images - kept])
        pictures["reconstructions"] += list(resize_images(reconstructions, (size, size))[: keep_images - kept])
        maps = group_maps(tokens, size)
        if maps is not None:
            scores.add("fg_ari", foreground_ari(masks, maps))
            scores.add("miou", mean_iou_matched(masks, maps))
            pictures["group_maps"] += list(maps[: keep_images - kept])
        if progress is not None:
            progress.update(1)
            if progress.n == 1:
                seconds = time.perf_counter() - started
                progress.write(f"[eval] first batch took {seconds:.1f} s: about {seconds * progress.total / 60:.1f} min for "
                               f"all {progress.total} batches of this tokenizer")
    summary = scores.summary()
    result = {key: summary.pop(key, None) for key in ("psnr", "ssim", "colour_fidelity", "fg_ari", "miou")}
    for name in DECOYS:
        result[f"{name}_psnr"] = summary.get(f"{name}_psnr")
        result[f"{name}_colour_fidelity"] = summary.get(f"{name}_colour_fidelity")
    if prefixes:
        result["psnr_by_prefix"] = {**{str(n): summary[f"prefix_{n}"] for n in prefixes}, str(num_visual_tokens): result["psnr"]}
    result["mean_tokens"] = round(float(np.mean(counts)), 4)
    result["distinct_ids_per_image"] = round(float(np.mean(distinct)), 4) if distinct else None
    num_objects = [len(names) for names in scenes.colours]
    if len(set(counts)) > 1 or not model.is_discrete:  # variable token counts: SeTok's one token per object (+ bg)
        result["token_count"] = token_count_agreement(counts, num_objects)
    result["bits_per_image"] = None if bits is None else round(bits, 2)
    if thumbnail:
        side, depth = thumbnail
        result["same_bits_thumbnail"] = {"side": side, "bits_per_channel": depth, "bits": side * side * 3 * depth,
                                         **{key: summary[f"thumbnail_{key}"] for key in ("psnr", "ssim", "colour_fidelity")}}
    result["num_images"], result["seed"], result["image_size"] = len(scenes.pil), scenes.seed, size
    result["pictures"] = pictures
    return result


def _verdict(gate: str, value, threshold: float, strict: bool = False) -> dict:
    passed = value is not None and math.isfinite(value) and (value > threshold if strict else value >= threshold)
    return {"gate": gate, "value": None if value is None else round(float(value), 4), "threshold": threshold,
            "pass": bool(passed)}


def gate_verdicts(model_type: str, style: str, metrics: dict, baselines: dict) -> list[dict]:
    """Issue #16's gates that apply to ``model_type`` on ``style``, each ``{"gate", "value", "threshold", "pass"}``.

    ``metrics`` is :func:`measure_tokenizer`'s result, ``baselines`` :func:`style_baselines`' for the same scenes. A
    missing figure fails its gate. Unknown model types and styles without thresholds get no gates.
    """
    spec = GATES.get(model_type)
    if spec is None or style not in spec["psnr"]:
        return []
    value = metrics.get
    verdicts = [_verdict(f"PSNR >= {spec['psnr'][style]} dB", value("psnr"), spec["psnr"][style])]
    for decoy in spec["decoys"]:
        drop = None if value("psnr") is None or value(f"{decoy}_psnr") is None else value("psnr") - value(f"{decoy}_psnr")
        verdicts.append(_verdict(f"{decoy} tokens decode >= {spec['decoy_drop_db']} dB worse", drop, spec["decoy_drop_db"]))
    if spec.get("prefix_rising"):
        curve = list((value("psnr_by_prefix") or {}).values())
        rise = min(np.diff(curve)) if len(curve) > 1 else None
        verdicts.append(_verdict("PSNR rises with every prefix length (smallest rise, dB)", rise, 0.0, strict=True))
    if "same_bits_thumbnail" in metrics or value("bits_per_image") is not None:
        thumbnail = (value("same_bits_thumbnail") or {}).get("psnr")
        margin = None if value("psnr") is None or thumbnail is None else value("psnr") - thumbnail
        verdicts.append(_verdict(f"beats the same-bits thumbnail by >= {THUMBNAIL_MARGIN_DB[style]} dB", margin, THUMBNAIL_MARGIN_DB[style]))
    verdicts.append(_verdict(f"object colour fidelity >= {spec['colour_fidelity']:.0%}", value("colour_fidelity"), spec["colour_fidelity"]))
    if "fg_ari" in spec:
        verdicts.append(_verdict(f"FG-ARI >= {spec['fg_ari']}", value("fg_ari"), spec["fg_ari"]))
        for name in (KMEANS, GRID):
            other = baselines.get(name, {}).get("fg_ari")
            gap = None if value("fg_ari") is None or other is None else value("fg_ari") - other
            verdicts.append(_verdict(f"FG-ARI above {name}", gap, 0.0, strict=True))
    if "count_share" in spec:
        share = (value("token_count") or {}).get("share")
        verdicts.append(_verdict(f"tokens = objects + 1 ± 1 on >= {spec['count_share']:.0%} of images", share, spec["count_share"]))
    return verdicts
