"""The ``hf-vtok`` command line.

Every subcommand has ``--help``. Heavy imports (torch models, datasets) happen inside the handlers
so that ``hf-vtok --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _int_at_least(minimum: int, description: str):
    """An argparse ``type`` accepting integers >= ``minimum`` (``description`` names them in errors)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {description} integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {description} integer, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "positive")
_non_negative_int = _int_at_least(0, "non-negative")


def _cmd_data_shapes(args: argparse.Namespace) -> int:
    from .data.shapes import write_shapes_dataset

    out = write_shapes_dataset(
        args.out,
        args.num_images,
        image_size=args.image_size,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        style=args.style,
        seed=args.seed,
        with_edits=not args.no_edits,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.num_images} scenes to {out} (images/, masks/, metadata.jsonl)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, train=args.train, num_images=args.num_images, seed=args.seed, families=args.families)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation.report import run_eval

    run_eval(
        args.tokenizer,
        out_dir=args.out,
        num_images=args.num_images,
        num_inference_steps=args.steps,
        seed=args.seed,
        perceptual_backbone=args.perceptual_backbone,
        clip_path=args.clip,
        num_photos=args.num_photos,
    )
    return 0


def _cmd_train_tokenizer(args: argparse.Namespace) -> int:
    from .training import TokenizerTrainingRecipe, loss_dropped, train_tokenizer

    overrides = dict(
        family=args.family,
        stage=args.stage,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        init_from=args.init_from,
        num_train_images=args.num_train_images,
        eval_steps=args.eval_steps,
    )
    if args.recipe:
        recipe = TokenizerTrainingRecipe.from_name(args.recipe, **overrides)
    else:
        defaults = {key: value for key, value in overrides.items() if value is not None}
        recipe = TokenizerTrainingRecipe(**defaults).validate()
    _, trainer = train_tokenizer(recipe, args.output_dir, resume_from_checkpoint=args.resume or None)
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    if losses:
        print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} ({'fell' if loss_dropped(history) else 'did not fall clearly'})")
    print(f"saved tokenizer/, decoder/ and training_model/ under {args.output_dir}")
    return 0


def _cmd_train_mllm(args: argparse.Namespace) -> int:
    from .mllm_training import MLLMTrainingRecipe, loss_fell, train_mllm

    recipe = MLLMTrainingRecipe.from_name(
        args.recipe,
        visual_tokenizer=args.visual_tokenizer, decoder=args.decoder, base_model=args.base_model, dataset=args.dataset,
        init_from=args.init_from, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, seed=args.seed, report_to=args.report_to, save_steps=args.save_steps,
        push_to_hub=True if args.push_to_hub else None, hub_model_id=args.push_to_hub,
    )  # fmt: skip
    _, _, summary = train_mllm(recipe, args.output_dir, resume_from_checkpoint=args.resume or None)
    if summary["first_loss"] is not None:
        trend = "fell" if loss_fell(summary) else "did not fall clearly"
        print(f"loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f} ({trend})")
    print(f"saved the MLLM pipeline (mllm/, processor/, decoder/), adapter/ and recipe.json under {args.output_dir}")
    return 0


def _cmd_pretokenize(args: argparse.Namespace) -> int:
    from .pretokenize import pretokenize_dataset

    result = pretokenize_dataset(
        args.tokenizer, args.dataset, args.out, num_proc=args.num_proc, batch_size=args.batch_size,
        shard_size=args.shard_size, overwrite=args.overwrite, split=args.split,
    )  # fmt: skip
    print(
        f"{result.num_rows} rows in {result.num_shards} shard(s) under {result.out_dir}: {len(result.shards_written)} "
        f"written, {len(result.shards_skipped)} already there; columns {result.columns}"
    )
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from .hub import push_folder

    plan = push_folder(
        args.folder, args.repo_id, private=args.private, dry_run=args.dry_run, staging_dir=args.staging_dir,
        include_training_model=not args.no_training_model, license=args.license,
    )  # fmt: skip
    print(f"{'would upload' if args.dry_run else 'uploaded'} {len(plan.files)} files ({plan.kind}) to {plan.repo_id}:")
    for name in plan.files:
        print(f"  {name}")
    if plan.skipped:
        print(f"kept local: {len(plan.skipped)} files (checkpoints, pre-tokenised data, pickles)")
    if args.dry_run:
        print(f"staged folder (exactly what would be uploaded): {plan.staging_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-vtok",
        description="Visual tokenizers for multimodal LLMs (SlotQFormer, SeTok, DDTTokenizer) on the Hugging Face stack.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('hf_vtok').__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser(
        "demo",
        help="run the end-to-end demo on the built-in shapes world and write PNGs",
        description="Generate the shapes world, tokenize and reconstruct it with every tokenizer whose small "
        "trained checkpoint ships with the package (or retrain them with --train), and write PNG pictures and "
        "metrics to --out.",
    )
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--train", action="store_true", help="retrain the tiny checkpoints from scratch first")
    demo.add_argument("--num-images", type=_positive_int, default=16, help="scenes to show (default: 16)")
    demo.add_argument("--seed", type=_non_negative_int, default=1234, help="seed of the demo scenes")
    demo.add_argument(
        "--families", nargs="*", default=None, help="tokenizer families to include (default: all that are available)"
    )
    demo.set_defaults(handler=_cmd_demo)

    train = commands.add_parser(
        "train-tokenizer",
        help="train one stage of a tokenizer with transformers.Trainer",
        description="Train a tokenizer family (one stage) with transformers.Trainer on the shapes world, from a "
        "recipe (a name from hf_vtok/recipes/ or a JSON file) or from the options below. Launch it with `accelerate launch "
        "-m hf_vtok.cli train-tokenizer ...` for several devices.",
    )
    train.add_argument("family", choices=("slot_qformer", "setok", "ddt"))
    train.add_argument("--recipe", help="recipe name (hf_vtok/recipes/*.json) or JSON path; the options below override its fields")
    train.add_argument("--stage", type=_positive_int, default=None, help="training stage (SlotQFormer: 1 or 2)")
    train.add_argument("--output-dir", required=True)
    train.add_argument("--max-steps", type=_positive_int, default=None)
    train.add_argument("--batch-size", type=_positive_int, default=None)
    train.add_argument("--learning-rate", type=float, default=None)
    train.add_argument("--num-train-images", type=_positive_int, default=None)
    train.add_argument("--seed", type=_non_negative_int, default=None)
    train.add_argument("--init-from", default=None, help="output folder of the previous stage")
    train.add_argument(
        "--eval-steps", type=_non_negative_int, default=None,
        help="log FG-ARI / mIoU / tokens per image of the token maps on 64 held-out scenes every N steps (0: never)",
    )
    train.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output-dir")
    train.set_defaults(handler=_cmd_train_tokenizer)

    evaluate = commands.add_parser(
        "eval",
        help="quality table of trained tokenizer folders, with pictures",
        description="Reconstruction (PSNR, SSIM; LPIPS-style and CLIP scores with local weights), object discovery "
        "(FG-ARI, mIoU), token counts, random-code replacement and prefix decoding of each tokenizer folder "
        "(tokenizer/ + decoder/) on the shapes world and on natural photos; writes PNGs and eval.json to --out. "
        "See docs/evaluation.md.",
    )
    evaluate.add_argument(
        "--tokenizer", nargs="+", default=None, metavar="DIR",
        help="tokenizer folder(s) with tokenizer/ and decoder/ (default: every checkpoint shipped under hf_vtok/checkpoints)",
    )
    evaluate.add_argument("--num-images", type=_positive_int, default=16, help="shapes-world scenes (default: 16)")
    evaluate.add_argument("--out", default="eval_out", help="output folder for PNGs and eval.json (default: eval_out)")
    evaluate.add_argument("--steps", type=_positive_int, default=25, help="decoder sampling steps (default: 25)")
    evaluate.add_argument("--seed", type=_non_negative_int, default=0)
    evaluate.add_argument(
        "--perceptual-backbone", default=None, metavar="DIR",
        help="local transformers vision model folder (Dinov2, CLIP, ...) for the LPIPS-style distance",
    )
    evaluate.add_argument("--clip", default=None, metavar="DIR", help="local CLIP folder (model + tokenizer) for CLIP-I/CLIP-T")
    evaluate.add_argument("--num-photos", type=_positive_int, default=None, help="natural photos to use (default: all bundled)")
    evaluate.set_defaults(handler=_cmd_eval)

    train_mllm = commands.add_parser(
        "train-mllm",
        help="train an MLLM stage (any causal LM + a frozen visual tokenizer) with TRL / PEFT",
        description="Train one MLLM stage from a recipe (hf_vtok/recipes/*mllm*.json, ddt_llama_*.json, or a JSON path): "
        "images are pre-tokenised once, tasks become plain text (packed), LoRA trains the adapters and only the new "
        "visual rows. Launch with `accelerate launch -m hf_vtok.cli train-mllm ...` for several devices. See "
        "docs/training.md.",
    )
    train_mllm.add_argument("--recipe", required=True, help="recipe name or JSON path; the options below override it")
    train_mllm.add_argument("--output-dir", required=True)
    train_mllm.add_argument("--visual-tokenizer", default=None, help="tokenizer folder (a train-tokenizer output) or random:<family>")
    train_mllm.add_argument("--decoder", default=None, help="decoder pipeline folder (default: the tokenizer's sibling decoder/)")
    train_mllm.add_argument("--base-model", default=None, help="causal LM folder or Hub id (tiny-llama: a random tiny Llama)")
    train_mllm.add_argument("--dataset", default=None, help="shapes, a pre-tokenised folder, or an image dataset source")
    train_mllm.add_argument("--init-from", default=None, help="output folder of the previous MLLM stage")
    train_mllm.add_argument("--max-steps", type=int, default=None)
    train_mllm.add_argument("--batch-size", type=_positive_int, default=None)
    train_mllm.add_argument("--learning-rate", type=float, default=None)
    train_mllm.add_argument("--seed", type=_non_negative_int, default=None)
    train_mllm.add_argument("--save-steps", type=_non_negative_int, default=None)
    train_mllm.add_argument("--report-to", default=None, help="tensorboard, wandb, none, ... (Trainer's report_to)")
    train_mllm.add_argument("--push-to-hub", default=None, metavar="ORG/NAME", help="upload the result with a model card")
    train_mllm.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output-dir")
    train_mllm.set_defaults(handler=_cmd_train_mllm)

    pretokenize = commands.add_parser(
        "pretokenize",
        help="tokenise an image dataset once into parquet shards (resumable)",
        description="Map every image column of a dataset through a visual tokenizer (batched, --num-proc workers) and "
        "write ids (or SeTok embeddings) as parquet shards; run it again to resume after an interruption.",
    )
    pretokenize.add_argument("--tokenizer", required=True, help="tokenizer folder or train-tokenizer output")
    pretokenize.add_argument(
        "--dataset", required=True,
        help="shapes:N[:style[:seed]], imagefolder:DIR, parquet:GLOB, webdataset:GLOB, arrow:DIR or a Hub dataset name",
    )
    pretokenize.add_argument("--out", required=True, help="output folder")
    pretokenize.add_argument("--num-proc", type=_positive_int, default=1)
    pretokenize.add_argument("--batch-size", type=_positive_int, default=32)
    pretokenize.add_argument("--shard-size", type=_positive_int, default=1024, help="rows per shard (the unit of resumption)")
    pretokenize.add_argument("--split", default="train")
    pretokenize.add_argument("--overwrite", action="store_true", help="start again in a folder holding another run")
    pretokenize.set_defaults(handler=_cmd_pretokenize)

    push = commands.add_parser(
        "push",
        help="upload a tokenizer / MLLM folder to the Hub with a model card",
        description="Stage a train-tokenizer or train-mllm output (safetensors and configs only; no checkpoints or "
        "pickles), write README.md from the hf_vtok/model_cards/ templates, and upload it. --dry-run stops after staging.",
    )
    push.add_argument("folder")
    push.add_argument("--repo-id", required=True, help="ORG/NAME")
    push.add_argument("--private", action="store_true")
    push.add_argument("--dry-run", action="store_true", help="stage only and print what would be uploaded")
    push.add_argument("--staging-dir", default=None, help="where to stage (default: a temporary folder)")
    push.add_argument("--no-training-model", action="store_true", help="leave training_model/ out")
    push.add_argument("--license", default="apache-2.0")
    push.set_defaults(handler=_cmd_push)

    data = commands.add_parser("data", help="built-in datasets", description="Built-in datasets.")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATASET")
    data_commands.required = True
    shapes = data_commands.add_parser(
        "shapes",
        help="write the shapes world as an image folder",
        description="Write the seeded shapes world (images, instance masks, captions, QA and edit pairs) as an "
        "image folder that `datasets.load_dataset('imagefolder', data_dir=OUT)` reads.",
    )
    shapes.add_argument("--num-images", type=_positive_int, default=1000, help="number of scenes (default: 1000)")
    shapes.add_argument("--out", required=True, help="folder to write")
    shapes.add_argument("--image-size", type=_positive_int, default=64, help="side in pixels (default: 64)")
    shapes.add_argument("--min-objects", type=_positive_int, default=1)
    shapes.add_argument("--max-objects", type=_positive_int, default=4)
    shapes.add_argument("--style", choices=("textured", "flat"), default="textured")
    shapes.add_argument("--seed", type=_non_negative_int, default=0)
    shapes.add_argument("--no-edits", action="store_true", help="skip the edit pairs")
    shapes.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    shapes.set_defaults(handler=_cmd_data_shapes)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError) as error:
        # Argument problems found by the library: one clear line, not a traceback.
        print(f"hf-vtok {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
