"""argparse types shared by the subcommands."""

from __future__ import annotations

import argparse


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
