"""The ``hf-vtok`` command line: one module per subcommand in ``hf_vtok.commands``; this one only dispatches.

Every subcommand has ``--help``. Heavy imports (torch models, datasets) happen inside the handlers so that
``hf-vtok --help`` answers at once; the training commands print the shipped text of their TRL parsers (see
:data:`~.arguments.HELP_TEXTS_DIR`). Errors are one line on stderr: exit status 2 for bad arguments (a ``ValueError`` /
``TypeError`` from the library), 1 for anything else; ``HF_VTOK_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from . import (
    convert_dinov2,
    data,
    demo,
    describe,
    evaluate,
    generate,
    pretokenize,
    push,
    reconstruct,
    tokenize,
    train_mllm,
    train_tokenizer,
    visualize,
)
from .arguments import HELP_TEXTS_DIR, installed_versions, render_help

SUBCOMMANDS = (
    demo, tokenize, reconstruct, visualize, generate, describe, train_tokenizer, evaluate, train_mllm, pretokenize,
    push, data, convert_dinov2,
)
# subcommands whose --help is the shipped text of their real (slow to import) parser: see `arguments.HELP_TEXTS_DIR`
SHIPPED_HELP = {"train-tokenizer": (train_tokenizer, "tokenizer"), "train-mllm": (train_mllm, "mllm")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-vtok",
        description="Visual tokenizers for multimodal LLMs (SlotQFormer, SeTok, DDTTokenizer) on the Hugging Face stack.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('hf_vtok').__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    for module in SUBCOMMANDS:
        module.register(commands)
    return parser


def help_texts() -> dict[str, str]:
    """The ``--help`` of every subcommand that ships it (those whose parser is TRL's), rendered from the real parsers
    (building them imports torch and TRL)."""
    from ..trainer.arguments import build_parser

    return {name: render_help(build_parser(kind, **module.PARSER_OPTIONS)) for name, (module, kind) in SHIPPED_HELP.items()}


def write_help_texts() -> None:
    """Regenerate the shipped ``--help`` texts (``make help-texts``) after a change to the training arguments."""
    HELP_TEXTS_DIR.mkdir(exist_ok=True)
    for name, text in help_texts().items():
        (HELP_TEXTS_DIR / f"{name}.txt").write_text(text, encoding="utf-8")
    (HELP_TEXTS_DIR / "versions.json").write_text(json.dumps(installed_versions(), indent=2) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # the training subcommands parse their own options (and --help) with the argument dataclasses
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "forwards_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.arguments = rest
    try:
        return args.handler(args)
    except Exception as error:
        if os.environ.get("HF_VTOK_DEBUG", "") not in ("", "0"):
            raise
        # Argument problems found by the library are exit status 2, like argparse's own; any other failure is 1.
        usage_error = isinstance(error, (ValueError, TypeError))
        message = " ".join(str(error).split()) or type(error).__name__
        label = "error" if usage_error else f"error ({type(error).__name__}; HF_VTOK_DEBUG=1 shows the traceback)"
        print(f"hf-vtok {args.command}: {label}: {message}", file=sys.stderr)
        return 2 if usage_error else 1


if __name__ == "__main__":
    sys.exit(main())
