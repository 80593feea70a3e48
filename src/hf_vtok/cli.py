"""The ``hf-vtok`` command line.

Every subcommand has ``--help``. Heavy imports (torch models, datasets) happen inside the handlers
so that ``hf-vtok --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


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
    )
    if args.recipe:
        recipe = TokenizerTrainingRecipe.from_file(args.recipe, **overrides)
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
        "recipe file (training/recipes/*.json) or from the options below. Launch it with `accelerate launch "
        "-m hf_vtok.cli train-tokenizer ...` for several devices.",
    )
    train.add_argument("family", choices=("slot_qformer", "setok", "ddt"))
    train.add_argument("--recipe", help="JSON recipe; the options below override its fields")
    train.add_argument("--stage", type=_positive_int, default=None, help="training stage (SlotQFormer: 1 or 2)")
    train.add_argument("--output-dir", required=True)
    train.add_argument("--max-steps", type=_positive_int, default=None)
    train.add_argument("--batch-size", type=_positive_int, default=None)
    train.add_argument("--learning-rate", type=float, default=None)
    train.add_argument("--num-train-images", type=_positive_int, default=None)
    train.add_argument("--seed", type=_non_negative_int, default=None)
    train.add_argument("--init-from", default=None, help="output folder of the previous stage")
    train.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output-dir")
    train.set_defaults(handler=_cmd_train_tokenizer)

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
