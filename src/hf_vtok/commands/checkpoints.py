"""What the subcommands that run checkpoints share: their parser layout, where ``--tokenizer`` / ``--decoder`` /
``--mllm`` point, image loading, and the progress bar that announces how long a loop will take.

A checkpoint source is ``shipped:<name>`` (a folder under ``hf_vtok/checkpoints``) or a folder: a training run or
shipped folder (``tokenizer/`` and ``decoder/``, or only ``decoder/`` with the tokenizer in ``decoder/tokenizer/``),
a bare tokenizer folder, a bare decoder pipeline folder, or an MLLM folder. Every problem is a ``ValueError`` that
names the argument, which ``hf-vtok`` prints as one line (exit status 2).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

SHIPPED_PREFIX = "shipped:"
ESTIMATE_ABOVE_SECONDS = 3.0  # shorter loops go without an estimate: the progress bar says enough


def add_command(commands, name: str, *, help: str, description: str, examples: str) -> argparse.ArgumentParser:
    """A subparser whose description is wrapped and whose "Examples:" epilog keeps its lines as written."""
    return commands.add_parser(
        name,
        help=help,
        description=textwrap.fill(description, width=100),
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_images_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or http(s) URLs")


def checkpoint_folder(source: str, argument: str) -> Path:
    """The folder ``source`` names (``shipped:<name>`` or a path); ``argument`` (e.g. ``"--decoder"``) names it in errors."""
    from ..data.pretokenize import SHIPPED_CHECKPOINTS_DIR

    if source.startswith(SHIPPED_PREFIX):
        name = source[len(SHIPPED_PREFIX) :]
        folder = SHIPPED_CHECKPOINTS_DIR / name
        shipped = sorted(path.name for path in SHIPPED_CHECKPOINTS_DIR.iterdir() if (path / "decoder").is_dir())
        if not name or name not in shipped:
            raise ValueError(f"`{argument}` {source!r}: no checkpoint of that name ships with hf_vtok; shipped: {shipped}.")
        return folder
    folder = Path(source)
    if not folder.is_dir():
        raise ValueError(f"`{argument}` must be a checkpoint folder or shipped:<name>, got {source!r}, which is not a folder.")
    return folder


@contextlib.contextmanager
def quiet_loading(source: str, argument: str) -> Iterator[None]:
    """Load without transformers' and diffusers' per-file progress bars (the tiny checkpoints load in a blink), and
    turn a folder that cannot be read into one clear error."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    restore = [module.enable_progress_bar for module in (diffusers_logging, transformers_logging) if module.is_progress_bar_enabled()]
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    except OSError as error:
        raise ValueError(f"`{argument}` {source!r} could not be loaded ({error}).") from None
    finally:
        for enable in restore:
            enable()


def tokenizer_folder(source: str, argument: str = "--tokenizer") -> Path:
    """The tokenizer inside ``source``: ``tokenizer/``, else ``decoder/tokenizer/``, else ``source`` itself."""
    root = checkpoint_folder(source, argument)
    for folder in (root / "tokenizer", root / "decoder" / "tokenizer", root):
        if (folder / "config.json").is_file():
            return folder
    raise ValueError(
        f"`{argument}` {source!r} holds no visual tokenizer (config.json in the folder, in tokenizer/ or in decoder/tokenizer/)."
    )


def load_tokenizer(source: str, argument: str = "--tokenizer"):
    """``(model, image_processor)`` of the visual tokenizer ``source`` points to."""
    from ..data.pretokenize import load_visual_tokenizer

    folder = tokenizer_folder(source, argument)
    with quiet_loading(source, argument):
        return load_visual_tokenizer(folder)


def load_decoder(source: str, argument: str = "--decoder"):
    """The family's decoder pipeline in ``source`` (``decoder/`` or the folder itself), progress bar off."""
    from ..mllm.pipeline_mllm import load_decoder_pipeline

    root = checkpoint_folder(source, argument)
    for folder in (root / "decoder", root):
        if (folder / "model_index.json").is_file():
            with quiet_loading(source, argument):
                pipeline = load_decoder_pipeline(folder)
            pipeline.set_progress_bar_config(disable=True)
            return pipeline
    raise ValueError(f"`{argument}` {source!r} holds no decoder pipeline (model_index.json in the folder or in decoder/).")


def load_mllm(source: str, argument: str = "--mllm"):
    """The MLLM, its processor and its decoder (:class:`hf_vtok.evaluation.mllm.LoadedMLLM`)."""
    from ..evaluation.mllm import load_mllm_folder

    folder = checkpoint_folder(source, argument)
    with quiet_loading(source, argument):
        return load_mllm_folder(folder)


def load_images(sources: Sequence[str], argument: str = "IMAGE") -> list:
    """RGB PIL images from paths or http(s) URLs (``transformers.image_utils.load_image``)."""
    from transformers.image_utils import load_image

    images = []
    for source in sources:
        if not source.startswith(("http://", "https://")) and not Path(source).is_file():
            raise ValueError(f"`{argument}` must be an image file or an http(s) URL, got {source!r}, which is not a file.")
        try:
            images.append(load_image(source))
        except Exception as error:  # noqa: BLE001  (PIL's and the HTTP client's many error types all mean this)
            raise ValueError(f"`{argument}` {source!r} is not a readable image ({error}).") from None
    return images


def output_folder(path: str) -> Path:
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"`--out` must be a folder, got {path!r}, which is a file.")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def map_with_estimate(work: Callable, items: Sequence, what: str, unit: str = "image") -> list:
    """``[work(item) for item in items]`` under a progress bar; the first item is timed and, when the rest will take
    more than a few seconds, one line on stderr says how long the whole loop will (``what`` names the work)."""
    from tqdm.auto import tqdm

    results = []
    started = time.perf_counter()
    with tqdm(total=len(items), desc=what, unit=unit, file=sys.stderr) as bar:
        for index, item in enumerate(items):
            results.append(work(item))
            bar.update()
            each = time.perf_counter() - started
            if index == 0 and each * (len(items) - 1) > ESTIMATE_ABOVE_SECONDS:
                bar.write(f"{what}: {len(items)} {unit}s at {each:.1f} s each, about {each * len(items):.0f} s in all", file=sys.stderr)
    return results


def image_name(index: int, source: str | None) -> str:
    """A file stem for output ``index``: its position and the input's own stem (``"001_cat"``)."""
    stem = Path(source.split("?")[0]).stem if source else ""
    return f"{index:03d}_{stem}" if stem else f"{index:03d}"


def tokenizer_fingerprint(model) -> str:
    """``hf_vtok.data.pretokenize.tokenizer_fingerprint`` of the weights and config, but not of the folder they were
    loaded from (its config digest includes ``_name_or_path``): the same tokenizer in two folders matches."""
    from ..data.pretokenize import tokenizer_fingerprint as fingerprint

    loaded_from, model.config._name_or_path = model.config._name_or_path, ""
    try:
        return fingerprint(model)
    finally:
        model.config._name_or_path = loaded_from
