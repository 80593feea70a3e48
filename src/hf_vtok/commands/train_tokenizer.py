"""`hf-vtok train-tokenizer FAMILY`: one training stage of a tokenizer family with ``transformers.Trainer``.

Every option is a field of :class:`~hf_vtok.trainer.arguments.TokenizerArguments` or of ``TrainingArguments``
(``--help`` lists them, from the text those parsers print, shipped: see :data:`~.arguments.HELP_TEXTS_DIR`);
``--recipe`` reads a YAML recipe first, the other options override it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import print_shipped_help

DESCRIPTION = (
    "Train one stage of a tokenizer family with transformers.Trainer (shapes world by default), from a recipe "
    "(training/recipes/tokenizer/*.yaml by name, or a YAML/JSON path) and any TrainingArguments flag. Several devices: "
    "`accelerate launch -m hf_vtok.commands.cli train-tokenizer ...`."
)

PARSER_OPTIONS = {
    "family_argument": True, "prog": "hf-vtok train-tokenizer", "description": DESCRIPTION,
    "usage": "hf-vtok train-tokenizer FAMILY [--recipe NAME_OR_PATH] [--FIELD VALUE ...] (--help lists the fields)",
}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    print_shipped_help("train-tokenizer", args.arguments)  # exits when it prints
    from ..trainer.arguments import parse_tokenizer_arguments
    from ..trainer.tokenizer_trainer import loss_dropped, train_tokenizer

    script_args, training_args = parse_tokenizer_arguments(args.arguments, **PARSER_OPTIONS)
    init_from = Path(script_args.init_from) if script_args.init_from else None
    if init_from and not ((init_from / "training_model").is_dir() or (init_from / "decoder" / "model_index.json").is_file()):
        raise ValueError(f"`init_from` must be the output folder of a previous train-tokenizer stage (holding "
                         f"training_model/) or an exported tokenizer folder (holding decoder/), got "
                         f"{script_args.init_from!r}.")  # fmt: skip
    _, trainer = train_tokenizer(script_args, training_args)
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    if losses:
        print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} ({'fell' if loss_dropped(history) else 'did not fall clearly'})")
    print(f"saved tokenizer/, decoder/ and training_model/ under {training_args.output_dir}")
    return 0


def register(commands) -> None:
    """Add the subcommand; its options are parsed in :func:`run` from the argument dataclasses."""
    train = commands.add_parser("train-tokenizer", help="train one stage of a tokenizer with transformers.Trainer",
                                description=DESCRIPTION, add_help=False)  # fmt: skip
    train.set_defaults(handler=run, forwards_arguments=True)
