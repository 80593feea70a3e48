"""``hf-vtok eval``: the quality table of one or several trained tokenizer folders, with pictures.

For every folder (a tokenizer + ``decoder/``, see :func:`~hf_vtok.evaluation.tokenizers.load_tokenizer_folder`):

* reconstruction on the shapes world (textured scenes) and on the natural photos bundled with scikit-image:
  PSNR, SSIM, and with ``perceptual_backbone`` the LPIPS-style distance, with ``clip_path`` CLIP-I (input vs
  reconstruction) and CLIP-T (reconstruction vs the scene caption);
* object discovery when the tokens come with per-patch assignments (slot attention, clusters): FG-ARI and
  matched mIoU against the true instance masks;
* variable token counts (SeTok): correlation of tokens with objects and the table by object count;
* discrete tokenizers: Slot-MLLM's random-code replacement (50 % of the visual tokens);
* decoders with prefix decoding (DDT): the PSNR-vs-prefix-length curve (PNG) and counterfactual interpolation.

Everything goes through the common API; only capabilities (ids, assignments, ``max_tokens``) decide what runs.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..utils.validation import check_int, describe
from .analysis import (
    line_chart,
    natural_photos,
    prefix_decoding_curve,
    random_code_replacement,
    tokens_by_object_count,
)
from .tokenizers import evaluate_tokenizer, load_tokenizer_folder

__all__ = ["default_tokenizer_folders", "format_table", "run_eval"]

TABLE_COLUMNS = (
    ("tokenizer", "tokenizer", "{}"),
    ("data", "data", "{}"),
    ("images", "images", "{}"),
    ("mean_tokens", "tokens", "{:.1f}"),
    ("psnr", "PSNR", "{:.2f}"),
    ("ssim", "SSIM", "{:.3f}"),
    ("perceptual", "LPIPS-style", "{:.3f}"),
    ("clip_i", "CLIP-I", "{:.1f}"),
    ("clip_t", "CLIP-T", "{:.1f}"),
    ("fg_ari", "FG-ARI", "{:.3f}"),
    ("miou", "mIoU", "{:.3f}"),
    ("tokens_objects_correlation", "r(tok,obj)", "{:.2f}"),
    ("replacement_psnr_drop_percent", "repl. dPSNR%", "{:.1f}"),
)


def default_tokenizer_folders() -> list[Path]:
    """Every shipped tokenizer checkpoint (``hf_vtok/checkpoints/<family>``)."""
    from ..data.pretokenize import shipped_tokenizer_folders

    return list(shipped_tokenizer_folders().values())


def format_table(rows: Sequence[dict]) -> str:
    """Rows of metrics as an aligned text table (the columns of :data:`TABLE_COLUMNS` present in any row)."""
    columns = [(key, title, fmt) for key, title, fmt in TABLE_COLUMNS if any(row.get(key) is not None for row in rows)]

    def cell(row, key, fmt):
        value = row.get(key)
        if value is None:
            return "-"
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return fmt.format(value)

    cells = [[title for _, title, _ in columns]] + [[cell(row, key, fmt) for key, _, fmt in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(text.rjust(width) if i else text.ljust(width) for i, (text, width) in enumerate(zip(line, widths))) for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _photo_dataset(num_photos: int | None):
    from datasets import Dataset
    from datasets import Image as ImageFeature

    photos = natural_photos()
    photos = dict(list(photos.items())[:num_photos]) if num_photos is not None else photos
    return Dataset.from_dict({"image": list(photos.values())}).cast_column("image", ImageFeature()), list(photos)


def _save(image, path: Path, written: list) -> None:
    from .visualization import save_png

    written.append(str(save_png(image, path)))


def _reconstruction_grid(evaluation, names: list[str], tile_size: int):
    """Inputs, reconstructions (captioned with their PSNR) and, when the tokens group patches, the group maps."""
    from .visualization import make_grid, overlay_masks

    count = len(evaluation.originals)
    tiles = list(evaluation.originals) + list(evaluation.reconstructions)
    captions = names[:count] + [f"{v:.1f} dB" for v in evaluation.psnr[:count]]
    if evaluation.group_maps:
        tiles += [overlay_masks(image, labels, background_id=None) for image, labels in zip(evaluation.originals, evaluation.group_maps)]
        captions += [f"{len(np.unique(labels))} groups" for labels in evaluation.group_maps]
    return make_grid(tiles, ncols=count, captions=captions, tile_size=tile_size)


def _evaluate_one(name: str, folder: Path, shapes, photos, photo_names, out_dir: Path, options: dict) -> dict:
    from .visualization import make_grid

    started = time.perf_counter()
    loaded = load_tokenizer_folder(folder)
    written: list[str] = []
    report: dict = {"folder": str(folder), "model_type": loaded.model.config.model_type,
                    "num_visual_tokens": int(loaded.model.config.num_visual_tokens),
                    "codebook_size": loaded.model.codebook_size, "pictures": written}
    common = {"num_inference_steps": options["num_inference_steps"], "seed": options["seed"],
                  "perceptual_backbone": options["perceptual_backbone"], "clip_path": options["clip_path"]}

    # --- shapes world: reconstruction + object discovery + token counts
    shapes_eval = evaluate_tokenizer(loaded, shapes, **common)
    report["shapes"] = shapes_eval.summary()
    if shapes_eval.num_tokens and shapes_eval.num_objects and len(set(shapes_eval.num_tokens)) > 1:
        report["tokens_by_objects"] = tokens_by_object_count(shapes_eval.num_tokens, shapes_eval.num_objects)
    _save(_reconstruction_grid(shapes_eval, ["input"] * len(shapes_eval.originals), 96), out_dir / f"{name}_shapes.png", written)

    # --- natural photos: reconstruction (+ cluster / slot maps)
    photo_eval = evaluate_tokenizer(loaded, photos, **common)
    report["photos"] = photo_eval.summary()
    _save(_reconstruction_grid(photo_eval, list(photo_names), 128), out_dir / f"{name}_photos.png", written)

    images = [image.convert("RGB") for image in shapes["image"][: options["analysis_images"]]]
    # --- Slot-MLLM B.1: random code replacement (discrete tokenizers)
    if loaded.model.is_discrete:
        replacement = random_code_replacement(loaded, images, fraction=0.5, num_inference_steps=options["num_inference_steps"], seed=options["seed"])
        report["random_code_replacement"] = replacement.summary()
        shown = replacement.images
        n = len(shown["input"])
        _save(make_grid(shown["input"] + shown["decoded"] + shown["replaced"], ncols=n,
                        captions=["input"] * n + ["decode(ids)"] * n + ["50% random codes"] * n, tile_size=96),
              out_dir / f"{name}_random_codes.png", written)

    # --- DDT §5.4: prefix decoding + counterfactual interpolation (pipelines with `max_tokens`)
    if "max_tokens" in inspect.signature(loaded.pipeline.__call__).parameters:
        curve = prefix_decoding_curve(loaded, images, num_inference_steps=options["num_inference_steps"], seed=options["seed"])
        report["prefix_decoding"] = {k: curve[k] for k in ("prefix_lengths", "psnr", "ssim")}
        chart = line_chart({name: (curve["prefix_lengths"], curve["psnr"])}, title="reconstruction from the first n tokens",
                           xlabel="tokens seen by the decoder (n)", ylabel="PSNR (dB)", log_x=True)
        _save(chart, out_dir / f"{name}_prefix_curve.png", written)
        if len(images) >= 2 and hasattr(loaded.pipeline, "num_tokens"):
            from ..models.ddt import counterfactual_interpolation

            ids = loaded.model.encode(loaded.image_processor(images[:2], return_tensors="pt").pixel_values).ids
            total = ids.shape[1]
            strip = counterfactual_interpolation(loaded.pipeline, ids[0], ids[1], span=[(0, total // 2), (total // 2, total)],
                                                 num_inference_steps=options["num_inference_steps"], seed=options["seed"], return_strip=True)
            strip = strip.resize((strip.width * 2, strip.height * 2), resample=0)  # nearest: 64 px tiles are small
            _save(strip, out_dir / f"{name}_counterfactual.png", written)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def _table_rows(name: str, report: dict) -> list[dict]:
    rows = []
    for data in ("shapes", "photos"):
        if data not in report:
            continue
        row = {"tokenizer": name, "data": data, **report[data]}
        row["images"] = report.get(f"num_{data}")
        if data == "shapes" and "random_code_replacement" in report:
            row["replacement_psnr_drop_percent"] = report["random_code_replacement"]["psnr_drop_percent"]
        rows.append(row)
    return rows


def run_eval(
    tokenizers: Sequence[str | Path] | None = None,
    *,
    out_dir: str | Path = "eval_out",
    num_images: int = 16,
    num_inference_steps: int = 25,
    seed: int = 0,
    perceptual_backbone: str | Path | None = None,
    clip_path: str | Path | None = None,
    analysis_images: int = 8,
    num_photos: int | None = None,
    print_fn=print,
) -> dict:
    """Evaluate tokenizer folders (default: every shipped checkpoint) and write PNGs and ``eval.json``.

    ``num_photos`` limits the natural photos (default: all of :func:`~hf_vtok.evaluation.analysis.natural_photos`);
    ``analysis_images`` the scenes used by the token analyses. Returns ``{"tokenizers": {name: report}, "table":
    [rows], "out_dir": ...}``; ``print_fn`` receives the progress lines and the final table (``None``: silent).
    """
    from ..data.shapes import generate_shapes_dataset

    say = print_fn or (lambda *_: None)
    num_images = check_int("num_images", num_images, minimum=1, maximum=4096)
    num_inference_steps = check_int("num_inference_steps", num_inference_steps, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    analysis_images = check_int("analysis_images", analysis_images, minimum=1)
    if num_photos is not None:
        num_photos = check_int("num_photos", num_photos, minimum=1)
    if not isinstance(out_dir, (str, Path)):
        raise TypeError(f"`out_dir` must be a folder path, got {describe(out_dir)}.")
    if tokenizers is None:
        folders = default_tokenizer_folders()
        if not folders:
            raise ValueError(
                "`tokenizers`: no folder given and no checkpoint ships under hf_vtok/checkpoints; pass --tokenizer DIR "
                "(a folder with tokenizer/ and decoder/, e.g. the output of `hf-vtok train-tokenizer`)."
            )
    else:
        if isinstance(tokenizers, (str, Path)):
            tokenizers = [tokenizers]
        folders = [Path(t) for t in tokenizers]
        if not folders:
            raise ValueError("`tokenizers` must name at least one folder, got an empty list.")
        for folder in folders:
            if not folder.is_dir():
                raise ValueError(f"`tokenizers`: {str(folder)!r} is not a folder.")
    for option, value in (("perceptual_backbone", perceptual_backbone), ("clip_path", clip_path)):
        if value is not None and not (Path(value) / "config.json").is_file():
            raise ValueError(f"`{option}` must be a local model folder with a config.json, got {str(value)!r}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = generate_shapes_dataset(num_images, seed=seed, style="textured", with_edits=False, progress=False)
    photos, photo_names = _photo_dataset(num_photos)
    options = {"num_inference_steps": num_inference_steps, "seed": seed, "perceptual_backbone": perceptual_backbone,
                   "clip_path": clip_path, "analysis_images": min(analysis_images, num_images)}
    reports, rows, names = {}, [], []
    for folder in folders:
        name = folder.name or "tokenizer"
        while name in names:
            name = f"{name}_{len(names)}"
        names.append(name)
        say(f"[eval] {name}: {folder}")
        with torch.no_grad():
            report = _evaluate_one(name, folder, shapes, photos, photo_names, out_dir, options)
        report["num_shapes"], report["num_photos"] = num_images, len(photo_names)
        reports[name] = report
        rows += _table_rows(name, report)
        if "tokens_by_objects" in report:
            table = report["tokens_by_objects"]
            say(f"[eval] {name}: tokens vs objects (r = {table['correlation']}): " + ", ".join(
                f"{row['objects']} obj → {row['mean_tokens']:.1f} tokens (n={row['images']})" for row in table["table"]))
        if "random_code_replacement" in report:
            r = report["random_code_replacement"]
            say(f"[eval] {name}: 50% random codes: PSNR {r['psnr_original']:.2f} → {r['psnr_replaced']:.2f} dB "
                f"({r['psnr_drop_percent']:+.1f}% drop), SSIM {r['ssim_original']:.3f} → {r['ssim_replaced']:.3f}")
        if "prefix_decoding" in report:
            curve = report["prefix_decoding"]
            say(f"[eval] {name}: prefix decoding PSNR " + ", ".join(f"n={n}: {p:.2f}" for n, p in zip(curve["prefix_lengths"], curve["psnr"])))
        say(f"[eval] {name}: {len(report['pictures'])} pictures in {out_dir} ({report['seconds']} s)")
    result = {"tokenizers": reports, "table": rows, "out_dir": str(out_dir),
              "settings": {"num_images": num_images, "num_inference_steps": num_inference_steps, "seed": seed,
                           "perceptual_backbone": None if perceptual_backbone is None else str(perceptual_backbone),
                           "clip_path": None if clip_path is None else str(clip_path)}}
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2, default=str))
    say(format_table(rows))
    return result
