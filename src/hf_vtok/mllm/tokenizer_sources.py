"""Where visual tokenizers come from: the checkpoints shipped inside the package (``shipped:<name>``), training run
folders (``tokenizer/``) and plain tokenizer folders; ``load_visual_tokenizer`` loads any of them with its image
processor, ``tokenizer_fingerprint`` recognises the same weights again (a resumed run, an MLLM parts folder).

Lives in the ``mllm`` layer (it falls back to the MLLM processor's image processor) so that both the MLLM and the
data / training layers above it can use it; ``hf_vtok.data.pretokenize`` re-exports every name.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

#: The small trained checkpoints shipped inside the package: one folder per family whose ``decoder/`` pipeline holds
#: the tokenizer (``decoder/tokenizer/``, with its image processor) once, and ``mllm/`` (the demo MLLM).
SHIPPED_CHECKPOINTS_DIR = Path(__file__).parents[1] / "checkpoints"


def tokenizer_subfolder(folder: str | os.PathLike) -> Path | None:
    """Where a checkpoint keeps its tokenizer model: ``tokenizer/`` (a ``train-tokenizer`` run) or, when the
    tokenizer ships only as the decoder pipeline's component (the shipped checkpoints), ``decoder/tokenizer/``."""
    for candidate in (Path(folder) / "tokenizer", Path(folder) / "decoder" / "tokenizer"):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def shipped_tokenizer_folders() -> dict[str, Path]:
    """``{family: folder}`` of the tokenizer checkpoints shipped with the package (the MLLM's folder is not one)."""
    if not SHIPPED_CHECKPOINTS_DIR.is_dir():
        return {}
    return {folder.name: folder for folder in sorted(SHIPPED_CHECKPOINTS_DIR.iterdir())
            if (folder / "decoder" / "model_index.json").is_file() and tokenizer_subfolder(folder) and not (folder / "mllm").exists()}


def resolve_tokenizer_source(source: str | os.PathLike) -> str | os.PathLike:
    """``"shipped:<family>"`` → the folder of the checkpoint shipped with the package; anything else unchanged."""
    if isinstance(source, str) and source.startswith("shipped:"):
        family = source.split(":", 1)[1]
        shipped = shipped_tokenizer_folders()
        if family not in shipped:
            raise ValueError(f"`visual_tokenizer` {source!r}: no shipped checkpoint {family!r}; shipped: {sorted(shipped)}.")
        return str(shipped[family])
    return source


def load_visual_tokenizer(path: str | os.PathLike):
    """``(model, image_processor)`` from a tokenizer folder (``config.json`` + weights + image processor), a training
    run folder holding ``tokenizer/`` (what ``hf-vtok train-tokenizer`` writes) or a shipped checkpoint (the tokenizer
    in ``decoder/tokenizer/``). Needs no remote code."""
    from transformers import AutoImageProcessor, AutoModel

    from .. import models  # noqa: F401  (registers the tokenizer families with the Auto classes)

    path = resolve_tokenizer_source(path)
    folder = tokenizer_subfolder(path) or Path(path)
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"`tokenizer` must be a tokenizer folder (config.json, model.safetensors, preprocessor_config.json) or a "
            f"training output holding `tokenizer/`, got {str(path)!r}."
        )
    model = AutoModel.from_pretrained(folder).eval()
    if not hasattr(model, "encode"):
        raise TypeError(f"`tokenizer` at {str(path)!r} loads as {type(model).__name__}, which has no `encode`.")
    try:
        image_processor = AutoImageProcessor.from_pretrained(folder)
    except (OSError, ValueError):
        from .processing_mllm import image_processor_for

        image_processor = image_processor_for(model.config)
    return model, image_processor


def tokenizer_fingerprint(model) -> str:
    """A short hash of a tokenizer's config and a sample of its weights (to recognise a resumed run's tokenizer, and
    the tokenizer a parts folder's adapter was trained with). Where the tokenizer was loaded from, and with which
    transformers version, do not count: a shipped folder must match on every install; nor do the config fields only
    training reads (``config.training_only_fields`` and every ``*loss_weight*``), so a decoder-only stage that sets
    its own loss weights keeps the fingerprint of the tokenizer it left unchanged."""
    ignored = {"_name_or_path", "transformers_version", *getattr(model.config, "training_only_fields", ())}
    config = {key: value for key, value in model.config.to_dict().items() if key not in ignored and "loss_weight" not in key}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items())[:64]:
            flat = tensor.detach().reshape(-1)[:256].float().cpu().numpy()
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(flat).tobytes())
    return digest.hexdigest()[:16]


__all__ = [
    "SHIPPED_CHECKPOINTS_DIR",
    "load_visual_tokenizer",
    "resolve_tokenizer_source",
    "shipped_tokenizer_folders",
    "tokenizer_fingerprint",
    "tokenizer_subfolder",
]
