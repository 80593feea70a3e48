"""`hf-vtok data shapes`: write the built-in shapes world as an image folder."""

from __future__ import annotations

import argparse

from .arguments import non_negative_int, positive_int


def run(args: argparse.Namespace) -> int:
    from ..data.shapes import write_shapes_dataset

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


def register(commands) -> None:
    """Add the subcommand to the ``hf-vtok`` parser's subparsers."""
    data = commands.add_parser("data", help="built-in datasets", description="Built-in datasets.")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATASET")
    data_commands.required = True
    shapes = data_commands.add_parser(
        "shapes",
        help="write the shapes world as an image folder",
        description="Write the seeded shapes world (images, instance masks, captions, QA and edit pairs) as an "
        "image folder that `datasets.load_dataset('imagefolder', data_dir=OUT)` reads.",
    )
    shapes.add_argument("--num-images", type=positive_int, default=1000, help="number of scenes (default: 1000)")
    shapes.add_argument("--out", required=True, help="folder to write")
    shapes.add_argument("--image-size", type=positive_int, default=64, help="side in pixels (default: 64)")
    shapes.add_argument("--min-objects", type=positive_int, default=1)
    shapes.add_argument("--max-objects", type=positive_int, default=4)
    shapes.add_argument("--style", choices=("textured", "flat"), default="textured")
    shapes.add_argument("--seed", type=non_negative_int, default=0)
    shapes.add_argument("--no-edits", action="store_true", help="skip the edit pairs")
    shapes.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    shapes.set_defaults(handler=run)
