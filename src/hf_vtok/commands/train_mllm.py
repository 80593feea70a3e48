"""`hf-vtok train-mllm`: one MLLM training stage with TRL and PEFT.

Every option is a field of :class:`~hf_vtok.trainer.arguments.MLLMArguments`, TRL's ``SFTConfig`` or ``ModelConfig``
(``--help`` lists them, from the text those parsers print, shipped: see :data:`~.arguments.HELP_TEXTS_DIR`);
``--recipe`` reads a YAML recipe first, the other options override it.
"""

from __future__ import annotations

import argparse

from .arguments import print_shipped_help

DESCRIPTION = (
    "Train one MLLM stage from a recipe (training/recipes/mllm/*.yaml by name, or a YAML/JSON path) and any SFTConfig / "
    "ModelConfig flag: images are pre-tokenised once, tasks become plain text (packed), LoRA (--use_peft) trains the "
    "adapters and only the new visual rows. Several devices: `accelerate launch -m hf_vtok.commands.cli train-mllm ...`."
)

PARSER_OPTIONS = {
    "prog": "hf-vtok train-mllm", "description": DESCRIPTION,
    "usage": "hf-vtok train-mllm [--recipe NAME_OR_PATH] [--FIELD VALUE ...] (--help lists the fields)",
}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    print_shipped_help("train-mllm", args.arguments)  # exits when it prints
    from ..trainer.arguments import parse_mllm_arguments
    from ..trainer.mllm_trainer import loss_fell, train_mllm

    arguments = parse_mllm_arguments(args.arguments, **PARSER_OPTIONS)
    _, _, summary = train_mllm(*arguments)
    if summary["first_loss"] is not None:
        trend = "fell" if loss_fell(summary) else "did not fall clearly"
        print(f"loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f} ({trend})")
    print(f"saved the MLLM pipeline (mllm/, processor/, decoder/), adapter/ and recipe.json under {arguments[1].output_dir}")
    return 0


def register(commands) -> None:
    """Add the subcommand; its options are parsed in :func:`run` from the argument dataclasses."""
    train = commands.add_parser("train-mllm", help="train an MLLM stage (any causal LM + a frozen visual tokenizer) with TRL / PEFT",
                                description=DESCRIPTION, add_help=False)  # fmt: skip
    train.set_defaults(handler=run, forwards_arguments=True)
