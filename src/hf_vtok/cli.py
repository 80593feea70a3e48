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
