"""Start-up time of ``import hf_vtok`` and of ``hf-vtok ... --help``: the median of fresh interpreters.

Targets (issue 17, on 2 CPU cores): ``import hf_vtok`` <= 2 s, every ``hf-vtok ... --help`` <= 1.5 s. The bare
interpreter is measured too, as the floor. Times only; the tests assert the behaviour (no torch loaded) instead. The
training commands print the shipped text of their TRL parsers (``hf_vtok/commands/help/``); ``--real-parsers`` also
times rendering it from those parsers, as it was before.

    python benchmarks/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
COMMANDS = {
    "python -c pass (floor)": ["-c", "pass"],
    "import hf_vtok": ["-c", "import hf_vtok"],
    "hf-vtok --help": ["-m", "hf_vtok.commands.cli", "--help"],
    **{f"hf-vtok {name} --help": ["-m", "hf_vtok.commands.cli", *name.split(), "--help"]
       for name in ("demo", "tokenize", "reconstruct", "visualize", "generate", "describe", "eval", "pretokenize", "push",
                    "data shapes", "convert-dinov2", "train-tokenizer", "train-mllm")},
}  # fmt: skip
# what --help of the training commands cost when it was rendered by their parsers (TrainingArguments / SFTConfig)
REAL_PARSERS = {
    f"{name} (its TRL parser)": ["-c", (f"from hf_vtok.commands.{module} import PARSER_OPTIONS\n"
                                        f"from hf_vtok.trainer.arguments import build_parser\n"
                                        f"build_parser({kind!r}, **PARSER_OPTIONS).format_help()")]
    for name, module, kind in (("train-tokenizer", "train_tokenizer", "tokenizer"), ("train-mllm", "train_mllm", "mllm"))
}  # fmt: skip


def median_seconds(arguments: list[str], repeats: int) -> float:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *arguments], env=environment, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh interpreters per command (default: 5)")
    parser.add_argument("--real-parsers", action="store_true", help="also time building the training commands' help")
    args = parser.parse_args()
    print(f"median of {args.repeats} fresh interpreters, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    commands = {**COMMANDS, **(REAL_PARSERS if args.real_parsers else {})}
    for label, arguments in commands.items():
        print(f"{label:<34} {median_seconds(arguments, args.repeats):6.2f} s", flush=True)


if __name__ == "__main__":
    main()
