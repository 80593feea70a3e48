"""``hf-vtok eval``: every quality figure of one or several trained tokenizer folders beside its baselines, with pictures.

For every style of held-out shapes scenes (flat and textured, ``num_images`` each, one seed, one size) the baselines
are computed once (:func:`~hf_vtok.evaluation.quality.style_baselines`: mean colour, a 16×16 thumbnail, the TAEF2
round trip, colour k-means, a fixed grid, the original image's colour fidelity) and every tokenizer is measured on the
same scenes (:func:`~hf_vtok.evaluation.quality.measure_tokenizer`: PSNR, SSIM, object colour fidelity, FG-ARI/mIoU,
token counts, random and shuffled tokens, the DDT prefix curve, the same-bits thumbnail) and judged against issue
#16's gates. Besides: reconstruction of natural photos (optionally LPIPS-style and CLIP scores), Slot-MLLM's
random-code replacement and DDT's counterfactual interpolation, as pictures.

Everything goes through the common API; only capabilities (ids, assignments, ``max_tokens``) decide what runs.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..utils.validation import check_choice, check_int, describe
from .analysis import line_chart, natural_photos, random_code_replacement
from .metrics import psnr
from .quality import GRID, gate_verdicts, load_scenes, measure_tokenizer, style_baselines
from .tokenizers import encode_images, evaluate_tokenizer, load_tokenizer_folder

__all__ = ["code_revision", "default_tokenizer_folders", "format_table", "run_eval"]


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
# The per-style table: a tokenizer's row beside the baselines of the same scenes.
STYLE_COLUMNS = (
    ("row", "", "{}"),
    ("psnr", "PSNR", "{:.2f}"),
    ("ssim", "SSIM", "{:.3f}"),
    ("colour_fidelity", "colour", "{:.0%}"),
    ("fg_ari", "FG-ARI", "{:.3f}"),
    ("miou", "mIoU", "{:.3f}"),
    ("mean_tokens", "tokens", "{:.1f}"),
    ("count_share", "tok=obj+1", "{:.0%}"),
    ("distinct_ids_per_image", "distinct ids", "{:.1f}"),
    ("bits_per_image", "bits", "{:.0f}"),
    ("random_psnr", "random", "{:.2f}"),
    ("shuffled_psnr", "shuffled", "{:.2f}"),
    ("gates", "gates", "{}"),
)


def default_tokenizer_folders() -> list[Path]:
    """Every shipped tokenizer checkpoint (``hf_vtok/checkpoints/<family>``)."""
    from ..data.pretokenize import shipped_tokenizer_folders

    return list(shipped_tokenizer_folders().values())


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]] = TABLE_COLUMNS) -> str:
    """Rows of metrics as an aligned text table (the ``(key, title, format)`` columns present in any row)."""
    columns = [(key, title, fmt) for key, title, fmt in columns if any(row.get(key) is not None for row in rows)]

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


def code_revision() -> str:
    """``git rev-parse HEAD`` of the checkout this package runs from (``-dirty`` with local changes), else the version."""
    from importlib.metadata import PackageNotFoundError, version

    here = Path(__file__).resolve()
    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(here.parent), *args], capture_output=True, text=True, timeout=20)

        # a package installed inside some other repository must not report that repository's commit
        if git("ls-files", "--error-unmatch", here.name).returncode == 0:
            head = git("rev-parse", "HEAD")
            if head.returncode == 0:
                return head.stdout.strip() + ("-dirty" if git("diff", "--quiet", "HEAD").returncode else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"hf_vtok {version('hf-vtok')}"
    except PackageNotFoundError:
        return "hf_vtok (unknown version)"


def _training_seed(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / "recipe.json").read_text())["dataset_seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _evaluate_one(name: str, loaded, scenes: dict, baselines: dict, photos, photo_names, out_dir: Path, options: dict) -> dict:
    from tqdm.auto import tqdm

    from .visualization import make_grid, reconstruction_grid

    started = time.perf_counter()
    model, written = loaded.model, []
    report: dict = {"folder": str(loaded.path), "model_type": model.config.model_type,
                    "num_visual_tokens": int(model.config.num_visual_tokens), "codebook_size": model.codebook_size,
                    "guidance_scale": loaded.pipeline.checkpoint_guidance_scale, "pictures": written, "styles": {}}
    steps, seed = options["num_inference_steps"], options["seed"]

    # --- held-out shapes scenes, every style: the figures, their gates, and a picture
    total = sum(len(s.batches(options["batch_size"])) for s in scenes.values())
    with tqdm(total=total, desc=f"[eval] {name}", unit="batch", disable=not options["progress"]) as bar:
        for style, style_scenes in scenes.items():
            metrics = measure_tokenizer(loaded, style_scenes, num_inference_steps=steps, seed=seed,
                                        batch_size=options["batch_size"], progress=bar)
            shown = metrics.pop("pictures")
            metrics["gates"] = gate_verdicts(model.config.model_type, style, metrics, baselines[style])
            report["styles"][style] = metrics
            values = np.atleast_1d(psnr(np.stack(shown["originals"]), np.stack(shown["reconstructions"])))
            _save(reconstruction_grid(shown["originals"], shown["reconstructions"], values, shown["group_maps"],
                                       [style] * len(values), 96), out_dir / f"{name}_{style}.png", written)
    report["bits_per_image"] = metrics["bits_per_image"]
    curves = {style: m["psnr_by_prefix"] for style, m in report["styles"].items() if "psnr_by_prefix" in m}
    if curves:  # DDT §5.4: PSNR vs the number of tokens the decoder sees
        lengths = [int(n) for n in next(iter(curves.values()))]
        report["prefix_decoding"] = {"prefix_lengths": lengths, "psnr": {style: list(c.values()) for style, c in curves.items()}}
        chart = line_chart({f"{name} ({style})": (lengths, list(c.values())) for style, c in curves.items()},
                           title="reconstruction from the first n tokens", xlabel="tokens seen by the decoder (n)",
                           ylabel="PSNR (dB)", log_x=True)
        _save(chart, out_dir / f"{name}_prefix_curve.png", written)

    # --- natural photos: reconstruction (+ cluster / slot maps)
    common = {"num_inference_steps": steps, "seed": seed, "perceptual_backbone": options["perceptual_backbone"],
              "clip_path": options["clip_path"]}
    photo_eval = evaluate_tokenizer(loaded, photos, **common)
    report["photos"] = photo_eval.summary()
    _save(reconstruction_grid(photo_eval.originals, photo_eval.reconstructions, photo_eval.psnr, photo_eval.group_maps,
                               list(photo_names), 128), out_dir / f"{name}_photos.png", written)

    images = next(iter(scenes.values())).pil[: options["analysis_images"]]
    # --- Slot-MLLM B.1: random code replacement (discrete tokenizers)
    if model.is_discrete:
        replacement = random_code_replacement(loaded, images, fraction=0.5, num_inference_steps=steps, seed=seed)
        report["random_code_replacement"] = replacement.summary()
        shown = replacement.images
        n = len(shown["input"])
        _save(make_grid(shown["input"] + shown["decoded"] + shown["replaced"], ncols=n,
                        captions=["input"] * n + ["decode(ids)"] * n + ["50% random codes"] * n, tile_size=96),
              out_dir / f"{name}_random_codes.png", written)

    # --- DDT §5.4: counterfactual interpolation (pipelines with `max_tokens` and `num_tokens`)
    if curves and len(images) >= 2 and hasattr(loaded.pipeline, "num_tokens"):
        from ..models.ddt import counterfactual_interpolation

        ids = encode_images(loaded, images[:2])[0].ids
        half = ids.shape[1] // 2
        strip = counterfactual_interpolation(loaded.pipeline, ids[0], ids[1], span=[(0, half), (half, ids.shape[1])],
                                             num_inference_steps=steps, seed=seed, return_strip=True)
        strip = strip.resize((strip.width * 2, strip.height * 2), resample=0)  # nearest: 64 px tiles are small
        _save(strip, out_dir / f"{name}_counterfactual.png", written)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def _style_rows(style: str, baselines: dict, reports: dict) -> list[dict]:
    """The rows of one style's table: the baselines, then every tokenizer with its same-bits thumbnail and counts."""
    rows = [{"row": f"{GRID} {values['grid_side']}x{values['grid_side']}" if name == GRID else name, **values}
            for name, values in baselines.items()]
    for name, report in reports.items():
        metrics = report["styles"][style]
        gates, counts = metrics["gates"], metrics.get("token_count")
        rows.append({"row": name, **metrics, "count_share": counts and counts["share"],
                     "gates": f"{sum(g['pass'] for g in gates)}/{len(gates)} pass" if gates else None})
        if "same_bits_thumbnail" in metrics:
            thumb = metrics["same_bits_thumbnail"]
            rows.append({"row": f"  thumbnail {thumb['side']}x{thumb['side']}, {thumb['bits_per_channel']} bit",
                         **thumb, "bits_per_image": thumb["bits"]})
        if counts:
            rows.append({"row": "  counts shuffled across scenes (chance)", "count_share": counts["chance"]})
            rows.append({"row": f"  always {counts['majority_count']} tokens (majority)", "count_share": counts["majority"]})
    return rows


def run_eval(
    tokenizers: Sequence[str | Path] | None = None,
    *,
    out_dir: str | Path = "eval_out",
    num_images: int = 256,
    styles: Sequence[str] = ("flat", "textured"),
    image_size: int | None = None,
    num_inference_steps: int = 10,
    seed: int = 999,
    batch_size: int = 32,
    perceptual_backbone: str | Path | None = None,
    clip_path: str | Path | None = None,
    analysis_images: int = 8,
    num_photos: int | None = None,
    progress: bool = True,
    print_fn=print,
) -> dict:
    """Evaluate tokenizer folders (default: every shipped checkpoint) and write PNGs and ``eval.json``.

    ``num_images`` scenes per style of ``styles`` at ``image_size`` pixels (default: the size the decoders draw, the
    largest when they differ; the gates are defined at 128 px on 256 scenes), seed ``seed`` (the shipped checkpoints
    train on seed 0). ``num_photos`` limits the natural photos; ``analysis_images`` the scenes of the random-code and
    counterfactual pictures. Returns the dictionary written to ``eval.json`` (``settings``, ``styles`` with the
    baselines, ``tokenizers``, ``table``, ``gates``); ``print_fn`` receives the tables and gate lines (``None``:
    silent), ``progress`` shows tqdm bars.
    """
    from ..data.shapes import STYLES
    from ..utils.autoencoder_taef2 import load_taef2

    say = print_fn or (lambda *_: None)
    num_images = check_int("num_images", num_images, minimum=1, maximum=4096)
    num_inference_steps = check_int("num_inference_steps", num_inference_steps, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    analysis_images = check_int("analysis_images", analysis_images, minimum=1)
    if isinstance(styles, str) or not isinstance(styles, Sequence) or not styles:
        raise ValueError(f"`styles` must be a non-empty list of {list(STYLES)}, got {describe(styles)}.")
    styles = list(dict.fromkeys(check_choice("styles", style, STYLES) for style in styles))
    if image_size is not None:
        image_size = check_int("image_size", image_size, minimum=16, maximum=1024)
    if num_photos is not None:
        num_photos = check_int("num_photos", num_photos, minimum=1)
    if not isinstance(out_dir, (str, Path)):
        raise TypeError(f"`out_dir` must be a folder path, got {describe(out_dir)}.")
    if tokenizers is None:
        from ..utils.external_weights import missing_source_of_folder

        folders = []
        for folder in default_tokenizer_folders():  # a shipped folder whose frozen encoder's package is absent: skip it
            missing = missing_source_of_folder(folder)
            if missing:
                say(f"[eval] {folder.name}: skipped, its vision encoder is rebuilt from a package that is not installed ({missing})")
            else:
                folders.append(folder)
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
    loaded = {}
    for folder in folders:
        name = folder.name or "tokenizer"
        while name in loaded:
            name = f"{name}_{len(loaded)}"
        loaded[name] = load_tokenizer_folder(folder)
    image_size = image_size or max(tokenizer.decoder_image_size for tokenizer in loaded.values())
    if image_size % 8:
        raise ValueError(f"`image_size` must be a multiple of 8 (the TAEF2 baseline's latent grid), got {image_size}.")
    training_seeds = {name: _training_seed(Path(folder)) for name, folder in zip(loaded, folders)}
    for name, training_seed in training_seeds.items():
        if training_seed == seed:
            say(f"[eval] warning: {name} was trained on shapes seed {seed}: these scenes are not held out (pick another --seed)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"seed": seed, "num_images_per_style": num_images, "styles": styles, "image_size": image_size,
                "num_inference_steps": num_inference_steps, "batch_size": batch_size, "commit": code_revision(),
                "training_dataset_seeds": training_seeds,
                "gates_calibrated": image_size == 128 and num_images >= 256,
                "perceptual_backbone": None if perceptual_backbone is None else str(perceptual_backbone),
                "clip_path": None if clip_path is None else str(clip_path)}
    say(f"[eval] {num_images} held-out scenes per style ({', '.join(styles)}) at {image_size} px, seed {seed}, "
        f"{num_inference_steps} sampling steps, commit {settings['commit']}")

    scenes, baselines = {}, {}
    autoencoder = load_taef2()
    for style in styles:
        started = time.perf_counter()
        scenes[style] = load_scenes(style, num_images, image_size, seed)
        with torch.no_grad():
            baselines[style] = style_baselines(scenes[style], batch_size=batch_size, autoencoder=autoencoder)
        say(f"[eval] {style} baselines in {time.perf_counter() - started:.1f} s")
    photos, photo_names = _photo_dataset(num_photos)
    options = {"num_inference_steps": num_inference_steps, "seed": seed, "batch_size": batch_size, "progress": progress,
               "perceptual_backbone": perceptual_backbone, "clip_path": clip_path, "analysis_images": min(analysis_images, num_images)}
    reports, photo_rows = {}, []
    for name, tokenizer in loaded.items():
        say(f"[eval] {name}: {tokenizer.path}")
        untrained = tokenizer.model.config.untrained_token_parts
        if untrained:  # e.g. a SlotQFormer run that stopped after stage 1: its ids go through random weights
            say(f"[eval] {name}: WARNING: {untrained} are untrained; every figure below decodes ids through them")
        with torch.no_grad():
            report = _evaluate_one(name, tokenizer, scenes, baselines, photos, photo_names, out_dir, options)
        if untrained:
            report["warning"] = f"untrained: {untrained}"
        reports[name] = report
        photo_rows.append({"tokenizer": name, "data": "photos", "images": len(photo_names), **report["photos"]})
        say(f"[eval] {name}: {len(report['pictures'])} pictures in {out_dir} ({report['seconds']} s)")

    table, verdicts = [], []
    for style in styles:
        rows = _style_rows(style, baselines[style], reports)
        table += [{"style": style, **{key: row.get(key) for key, _, _ in STYLE_COLUMNS}} for row in rows]
        say(f"\n== {style}: {num_images} scenes at {image_size} px, seed {seed}, {num_inference_steps} steps ==")
        say(format_table(rows, STYLE_COLUMNS))
        for name, report in reports.items():
            metrics = report["styles"][style]
            if "psnr_by_prefix" in metrics:
                say(f"{name}: PSNR by prefix " + ", ".join(f"n={n}: {p:.2f}" for n, p in metrics["psnr_by_prefix"].items()))
            for gate in metrics["gates"]:
                verdicts.append({"tokenizer": name, "style": style, **gate})
                value = "n/a" if gate["value"] is None else f"{gate['value']:.3f}"
                say(f"[gate] {name} {style}: {'PASS' if gate['pass'] else 'FAIL'}  {gate['gate']}  ({value})")
    say("\n" + format_table(photo_rows))
    result = {"settings": settings,
              "styles": {style: {"num_images": num_images, "seed": seed, "image_size": image_size, "baselines": baselines[style]}
                         for style in styles},
              "tokenizers": reports, "table": table + photo_rows, "out_dir": str(out_dir),
              "gates": {"passed": sum(v["pass"] for v in verdicts), "total": len(verdicts), "verdicts": verdicts}}
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2, default=str))
    return result
