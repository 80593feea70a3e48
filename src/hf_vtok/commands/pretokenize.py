"""`hf-vtok pretokenize`: tokenise an image dataset once into parquet shards (resumable)."""

from __future__ import annotations

import argparse

from .arguments import positive_int


def run(args: argparse.Namespace) -> int:
    from ..data.pretokenize import pretokenize_dataset

    result = pretokenize_dataset(
        args.tokenizer, args.dataset, args.out, num_proc=args.num_proc, batch_size=args.batch_size,
        shard_size=args.shard_size, overwrite=args.overwrite, split=args.split,
    )  # fmt: skip
    print(
        f"{result.num_rows} rows in {result.num_shards} shard(s) under {result.out_dir}: {len(result.shards_written)} "
        f"written, {len(result.shards_skipped)} already there; columns {result.columns}"
    )
    return 0


def register(commands) -> None:
    """Add the subcommand to the ``hf-vtok`` parser's subparsers."""
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
    pretokenize.add_argument("--num-proc", type=positive_int, default=1)
    pretokenize.add_argument("--batch-size", type=positive_int, default=32)
    pretokenize.add_argument("--shard-size", type=positive_int, default=1024, help="rows per shard (the unit of resumption)")
    pretokenize.add_argument("--split", default="train")
    pretokenize.add_argument("--overwrite", action="store_true", help="start again in a folder holding another run")
    pretokenize.set_defaults(handler=run)
