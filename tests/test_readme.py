"""The README runs as written.

Every fenced code block of ``README.md`` is either run here (Python blocks in a fresh interpreter each, from an
empty folder and offline; ``hf-vtok`` commands through the real command line) or named in ``NOT_RUN`` with the
reason and the test that covers it instead, and even those are checked against the parsers they would meet. Every
table of figures names the command that produced it, every link stays inside the repository, and the blocks of
``docs/*.md`` name only subcommands, recipes and scripts that exist and compile.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
RECIPES = ROOT / "training" / "recipes"
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(?P<indent> *)```(?P<language>[\w-]*)\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)\)")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}-{self.language or 'text'}"


def code_blocks(path: Path) -> list[Block]:
    blocks, opened, body = [], None, []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fence = FENCE.match(line)
        if opened is None and fence:
            opened, body = (number, fence["language"], len(fence["indent"])), []
        elif opened is not None and fence:
            start, language, indent = opened
            blocks.append(Block(path, start, language, "\n".join(row[indent:] for row in body) + "\n"))
            opened = None
        elif opened is not None:
            body.append(line)
    assert opened is None, f"{path.name}: the code block opened on line {opened[0]} is never closed"
    return blocks


def shell_commands(block: Block) -> list[str]:
    """The commands of a shell block, one per line (``\\`` continues a line), comments dropped, spaces normalised."""
    joined = block.text.replace("\\\n", " ")
    return [shlex.join(shlex.split(line, comments=True)) for line in joined.splitlines() if shlex.split(line, comments=True)]


def _names_a_test(reference: str) -> bool:
    """``tests/test_x.py::test_name`` names a test that exists (or a file, without ``::``)."""
    file, _, name = reference.partition("::")
    path = ROOT / file
    return path.is_file() and (not name or re.search(rf"^def {re.escape(name)}\(", path.read_text(), re.MULTILINE) is not None)


# ------------------------------------------------------------------------------------ commands that are not run
def check_make_target(argv: list[str]) -> None:
    target = argv[1]
    assert re.search(rf"^{target}:", (ROOT / "Makefile").read_text(), re.MULTILINE), f"the Makefile has no `{target}` target"


def check_training_command(argv: list[str]) -> None:
    """Parse a training command with the parser it would meet (recipe found, every flag known), without training."""
    from hf_vtok.trainer.arguments import parse_mllm_arguments, parse_tokenizer_arguments

    if argv[:2] == ["accelerate", "launch"]:
        config = argv[argv.index("--config_file") + 1]
        assert (ROOT / config).is_file(), f"no accelerate config {config} in the repository"
        argv = argv[argv.index("--config_file") + 2 :]
    elif argv[0] == "python":
        argv = argv[1:]
    if argv[0] == "hf-vtok":
        kind, family_argument, argv = argv[1].removeprefix("train-"), argv[1] == "train-tokenizer", argv[2:]
    else:
        script, argv = argv[0], argv[1:]
        assert (ROOT / script).is_file(), f"no script {script} in the repository"
        kind, family_argument = Path(script).stem.removeprefix("train_"), False
    if kind == "tokenizer":
        _, training_args = parse_tokenizer_arguments(argv, family_argument=family_argument)
    else:
        _, training_args, _ = parse_mllm_arguments(argv)
    assert training_args.output_dir == argv[argv.index("--output-dir") + 1]


# Commands that appear in README blocks but are not run here: exact command (as `shell_commands` writes it) ->
# (why not, the test that covers it, the check that it is still valid).
NOT_RUN = {
    "make demo": (
        "creates .venv, installs the package and runs the whole demo (minutes)",
        "tests/test_demo.py::test_demo_writes_pictures_and_metrics",
        check_make_target,
    ),
    "make test": ("is the test suite itself, which CI runs", ".ci/run", check_make_target),
    "hf-vtok train-tokenizer ddt --recipe ddt_tiny --output-dir runs/ddt": (
        "4000 training steps (tens of minutes on a CPU)",
        "tests/test_training_scale.py::test_a_training_arguments_flag_nobody_mentions_reaches_the_tokenizer_trainer",
        check_training_command,
    ),
    "accelerate launch --config_file training/accelerate/multi_gpu.yaml training/train_tokenizer.py --recipe "
    "slot_qformer_stage1_paper --output-dir runs/slot1 --dataset imagefolder:/data/images": (
        "several GPUs, the paper-size model and an image folder of your own",
        "tests/test_distributed.py::test_two_cpu_processes_stay_in_sync",
        check_training_command,
    ),
}

# Tables of the README that hold no measured figure, and what checks them instead.
TABLES_WITHOUT_FIGURES = {
    "| command | what it does |": "the subcommands, checked against the parser by test_the_command_table_lists_every_subcommand",
    "| layer | package | what it holds |": "the layer order, checked by tests/test_architecture.py",
}

# `hf-vtok` subcommands that take seconds on the shipped checkpoints: a README block of these is run as written.
QUICK_SUBCOMMANDS = {"--help", "data", "tokenize", "reconstruct", "visualize", "generate", "describe"}

README_BLOCKS = code_blocks(README)
RUNNABLE_SHELL = [
    block for block in README_BLOCKS
    if block.language in SHELL_LANGUAGES and not any(command in NOT_RUN for command in shell_commands(block))
]  # fmt: skip


def _environment() -> dict:
    environment = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    source = str(ROOT / "src")  # this checkout's package first, whether or not it is installed
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [source, environment.get("PYTHONPATH")]))
    return environment


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=_environment(), capture_output=True, text=True, timeout=900, check=False)


# --------------------------------------------------------------------------------------------------- the blocks
def test_every_readme_block_is_run_or_explained():
    """A new block must be runnable (Python, or `hf-vtok` commands) or named in NOT_RUN with its reason and test."""
    assert README_BLOCKS, "README.md has no code block"
    for block in README_BLOCKS:
        if block.language == "python":
            compile(block.text, block.name, "exec")
            continue
        assert block.language in SHELL_LANGUAGES, f"{block.name}: a code block must be ```python or ```bash"
        commands = shell_commands(block)
        assert commands, f"{block.name} is empty"
        if block in RUNNABLE_SHELL:
            slow = [command for command in commands if command.split()[:2][-1] not in QUICK_SUBCOMMANDS]
            assert not slow, f"{block.name}: {slow} is neither a quick `hf-vtok` command nor in NOT_RUN"
        else:
            missing = [command for command in commands if command not in NOT_RUN]
            assert not missing, f"{block.name}: a block with commands not run here holds {missing}, not in NOT_RUN"
    used = {command for block in README_BLOCKS if block.language in SHELL_LANGUAGES for command in shell_commands(block)}
    assert set(NOT_RUN) <= used, f"NOT_RUN names commands the README no longer shows: {set(NOT_RUN) - used}"


def test_the_two_set_up_commands_come_first():
    shell = [command for block in README_BLOCKS if block.language in SHELL_LANGUAGES for command in shell_commands(block)]
    assert shell[:2] == ["make demo", "make test"]
    assert sum(command.startswith("make ") for command in shell) == 2


@pytest.mark.parametrize("command", sorted(NOT_RUN), ids=lambda command: " ".join(command.split()[:4]))
def test_commands_not_run_are_still_valid_and_covered(command):
    reason, covering_test, check = NOT_RUN[command]
    assert reason and _names_a_test(covering_test), f"{command!r}: the covering test {covering_test} does not exist"
    check(shlex.split(command))


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in README_BLOCKS if b.language == "python"], ids=lambda block: block.name)
def test_readme_python_block_runs(block, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(block.text)
    result = _run([sys.executable, str(script)], cwd=tmp_path)
    assert result.returncode == 0, f"{block.name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("block", RUNNABLE_SHELL, ids=lambda block: block.name)
def test_readme_shell_block_runs(block, tmp_path):
    """The block's `hf-vtok` commands, in order, in one folder, through ``hf_vtok.commands.cli.main``."""
    runner = (
        "import json, shlex, sys\n"
        "from hf_vtok.commands.cli import main\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        status = main(argv)\n"
        "    except SystemExit as exit:\n"
        "        status = exit.code\n"
        "    if status not in (0, None):\n"
        "        sys.exit(f'`hf-vtok {shlex.join(argv)}` exited with {status}')\n"
    )
    commands = [shlex.split(command)[1:] for command in shell_commands(block)]
    result = _run([sys.executable, "-c", runner, json.dumps(commands)], cwd=tmp_path)
    assert result.returncode == 0, f"{block.name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    written = {path.name for path in tmp_path.rglob("*")}
    for command in commands:  # every --out the block names was written
        if "--out" in command:
            assert Path(command[command.index("--out") + 1]).name in written, f"`hf-vtok {shlex.join(command)}` wrote nothing"


def test_no_indented_code_block_escapes_the_test():
    """Indented (unfenced) code blocks would not be run: the README uses fences only."""
    inside, previous = False, ""
    for number, line in enumerate(README.read_text().splitlines(), start=1):
        if FENCE.match(line):
            inside = not inside
        elif not inside and line.startswith("    ") and not previous.strip():
            pytest.fail(f"README.md:{number} is an indented code block; fence it with ```bash or ```python")
        previous = line


# ----------------------------------------------------------------------------------------------- the figures
def _tables(text: str) -> list[tuple[str, str]]:
    """(header row, the first non-blank line after the table) of every table."""
    lines, tables, index = text.splitlines(), [], 0
    while index < len(lines):
        if lines[index].startswith("|"):
            header = lines[index]
            while index < len(lines) and lines[index].startswith("|"):
                index += 1
            after = next((line for line in lines[index:] if line.strip()), "")
            tables.append((header.strip(), after))
        index += 1
    return tables


def _known_subcommands() -> set[str]:
    from hf_vtok.commands.cli import build_parser

    parser = build_parser()
    return set(next(action for action in parser._actions if action.dest == "command").choices)


def test_every_table_of_figures_names_its_source():
    """Under every table of measured numbers: ``Source: `command` → where its JSON lives``, with a real command."""
    subcommands = _known_subcommands()
    tables = _tables(README.read_text())
    assert set(TABLES_WITHOUT_FIGURES) <= {header for header, _ in tables}
    for header, after in tables:
        if header in TABLES_WITHOUT_FIGURES:
            continue
        assert after.startswith("Source: "), f"the table {header!r} is not followed by a 'Source: `command` ...' line"
        source = README.read_text().split(after, 1)[1].split("\n\n", 1)[0]
        quoted = re.findall(r"`([^`]+)`", after + source)
        commands = [text for text in quoted if text.split()[0] in ("hf-vtok", "python", "pytest")]
        assert commands, f"the source of {header!r} names no command (`hf-vtok ...`, `python ...` or `pytest ...`)"
        for command in commands:
            words = command.split()
            if words[0] == "hf-vtok":
                assert words[1] in subcommands, f"{command!r}: no such subcommand"
            for word in words[1:]:
                if word.endswith(".py"):
                    assert (ROOT / word).is_file(), f"{command!r}: no {word} in the repository"
        for path in quoted:
            if path.split("/")[0] in ("src", "tests", "benchmarks", "training") and " " not in path:
                assert (ROOT / path).exists(), f"the source of {header!r} names {path}, which is not in the repository"


def test_the_command_table_lists_every_subcommand():
    text = README.read_text()
    listed = re.findall(r"^\| `hf-vtok ([\w-]+)", text, re.MULTILINE)
    assert sorted(listed) == sorted(_known_subcommands()), "the README's command table and `hf-vtok --help` differ"


# ------------------------------------------------------------------------------------------------- the links
def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda path: str(path.relative_to(ROOT)))
def test_every_link_stays_inside_the_repository(page):
    for match in LINK.finditer(page.read_text()):
        target, _, anchor = match["target"].partition("#")
        assert "://" not in target and not target.startswith("mailto:"), f"{page.name}: {match[0]} leaves the repository"
        path = (page.parent / target).resolve() if target else page
        assert path.is_relative_to(ROOT), f"{page.name}: {match[0]} points outside the repository"
        assert path.exists(), f"{page.name}: {match[0]} points to a file that does not exist"
        if anchor and path.suffix == ".md":
            headings = {_slug(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")}
            assert anchor in headings, f"{page.name}: {match[0]}: {path.name} has no heading #{anchor}"


# ----------------------------------------------------------------------------------------------- docs/*.md
DOCS_BLOCKS = [block for page in DOCS for block in code_blocks(page)]


def test_docs_python_blocks_compile():
    for block in DOCS_BLOCKS:
        if block.language == "python":
            compile(block.text, block.name, "exec")


def test_docs_shell_blocks_name_real_subcommands_recipes_and_scripts():
    subcommands = _known_subcommands()
    recipes = {path.stem for path in RECIPES.rglob("*.yaml")}
    for block in DOCS_BLOCKS:
        if block.language not in SHELL_LANGUAGES:
            continue
        for command in shell_commands(block):
            words = shlex.split(command)
            if words[0] == "hf-vtok":
                assert words[1] in subcommands, f"{block.name}: `{command}`: no subcommand {words[1]!r}"
            for flag, value in itertools.pairwise(words):
                if flag == "--recipe" and re.fullmatch(r"\w+", value):
                    assert value in recipes, f"{block.name}: `{command}`: no recipe {value!r} in training/recipes"
            for word in words:
                if word.endswith(".py") or (word.endswith(".yaml") and "/" in word):
                    assert (ROOT / word).is_file(), f"{block.name}: `{command}`: no {word} in the repository"


@pytest.mark.slow
def test_docs_python_blocks_import_names_that_exist(tmp_path):
    """The docs' snippets show paper-size use with placeholder paths, so they are not run; their imports are."""
    import ast

    imports = []
    for block in DOCS_BLOCKS:
        if block.language == "python":
            tree = ast.parse(block.text)
            imports += [f"{ast.unparse(node)}  # {block.name}" for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert imports
    script = tmp_path / "imports.py"
    script.write_text("\n".join(imports) + "\n")
    result = _run([sys.executable, str(script)], cwd=tmp_path)
    assert result.returncode == 0, f"an import of a docs/*.md snippet fails:\n{result.stderr[-3000:]}"
