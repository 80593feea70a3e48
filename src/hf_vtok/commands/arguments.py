"""argparse helpers shared by the subcommands: argument types and the shipped ``--help`` of the training commands."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def int_at_least(minimum: int, description: str):
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


positive_int = int_at_least(1, "positive")
non_negative_int = int_at_least(0, "non-negative")


# ---------------------------------------------------------------------------------------------- shipped --help texts
# The training subcommands' parsers are TRL's, built from TrainingArguments / SFTConfig / ModelConfig: importing them
# loads torch, transformers, PEFT and TRL (about 4 s). Their `--help` is the text those real parsers print, generated
# by `make help-texts` (`hf_vtok.commands.cli.write_help_texts`) and shipped beside this module, so that it answers
# at once; tests/test_cli_errors.py regenerates it from the live parsers and fails when the two differ. Every other
# use of the options goes through the real parsers.
HELP_TEXTS_DIR = Path(__file__).parent / "help"
HELP_WIDTH = 78  # argparse's width on an 80-column terminal (and when stdout is not a terminal)


def asks_for_help(arguments: Sequence[str]) -> bool:
    """Whether ``arguments`` hold ``-h`` / ``--help`` as an option (not after ``--``)."""
    options = arguments[: arguments.index("--")] if "--" in arguments else arguments
    return any(argument in ("-h", "--help") for argument in options)


# the packages whose dataclasses fill the training parsers: the shipped text holds only for the versions it was
# rendered with (recorded in help/versions.json); with any other installed version the real parser answers
HELP_PACKAGES = ("transformers", "trl", "peft")


def installed_versions() -> dict[str, str]:
    """The installed versions of :data:`HELP_PACKAGES` (package metadata only: nothing is imported)."""
    from importlib.metadata import version

    return {name: version(name) for name in HELP_PACKAGES}


def shipped_help(command: str) -> str | None:
    """The shipped ``--help`` of ``command``, or ``None`` when the installed transformers / TRL / PEFT are not the
    versions it was rendered with (the caller then lets the real parser print it)."""
    recorded = json.loads((HELP_TEXTS_DIR / "versions.json").read_text(encoding="utf-8"))
    if recorded != installed_versions():
        return None
    return (HELP_TEXTS_DIR / f"{command}.txt").read_text(encoding="utf-8")


def print_shipped_help(command: str, arguments: Sequence[str]) -> None:
    """If ``arguments`` ask for help and the shipped text of ``command`` holds for the installed versions, print it
    and exit with status 0, as argparse does after its own ``--help``; otherwise return and leave the arguments (and
    any ``--help``) to the real parser."""
    text = shipped_help(command) if asks_for_help(arguments) else None
    if text is not None:
        sys.stdout.write(text)
        raise SystemExit(0)


def render_help(parser: argparse.ArgumentParser) -> str:
    """``parser``'s help at :data:`HELP_WIDTH` columns, whatever the terminal."""
    parser.formatter_class = functools.partial(parser.formatter_class, width=HELP_WIDTH)
    return parser.format_help()
