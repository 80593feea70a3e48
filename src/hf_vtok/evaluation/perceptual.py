"""Deep-feature metrics from LOCAL weights: an LPIPS-style perceptual distance and CLIP scores.

Nothing here downloads anything: every function takes the path of a folder written by ``save_pretrained``
(a Dinov2 / CLIP / SigLIP / ViT / ConvNeXt checkpoint you already have, or a tiny random model saved by a test).

* :func:`perceptual_distance` is **LPIPS-style, not LPIPS**: it follows Zhang et al. (2018) — deep features of
  several layers, each feature vector unit-normalised over its channels, squared differences summed over
  channels and averaged over positions, then averaged over layers — but with a transformers backbone of your
  choice and WITHOUT LPIPS' learned per-channel linear weights (the "baseline" variant of the paper with all
  weights equal to 1). Numbers are therefore comparable between tokenizers measured with the same backbone,
  not with published LPIPS values. 0 for identical images; at most 4 (opposite features everywhere).
* :func:`clip_score` is CLIPScore as in torchmetrics: ``max(100 · cos(image, text), 0)`` with a CLIP-like model
  (anything with ``get_image_features`` / ``get_text_features``, e.g. ``CLIPModel``, ``SiglipModel``).
* :func:`clip_image_similarity` is CLIP-I (the editing metric of Slot-MLLM's MagicBrush evaluation):
  ``100 · cos(image_a, image_b)`` of the CLIP image embeddings.

Images follow :mod:`hf_vtok.evaluation.metrics`' conventions (numpy channel-last, torch channel-first, PIL; floats
in [0, 1], ``uint8`` divided by 255). They are resized to the backbone's ``image_size`` (bilinear, antialiased)
and normalised with the folder's ``preprocessor_config.json`` mean/std when it has one, else CLIP's constants for
CLIP-like models and ImageNet's otherwise.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)

from ..utils.validation import check_int, describe
from .metrics import _image_batch, _output

__all__ = ["clip_image_similarity", "clip_score", "load_vision_backbone", "perceptual_distance"]

IMAGENET_MEAN, IMAGENET_STD = tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
CLIP_MEAN, CLIP_STD = tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD)


@dataclass(frozen=True)
class _Backbone:
    model: Any  # the full model (CLIP: the dual encoder) in eval mode
    vision: Any  # the module that maps pixel_values to hidden states
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device


def _check_folder(path: Any, name: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{name}` must be the path of a local model folder, got {describe(path)}.")
    folder = os.fspath(path)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ValueError(
            f"`{name}` must be a local folder saved with `save_pretrained` (with a config.json), got {folder!r}. "
            "Weights are never downloaded here."
        )
    return os.path.realpath(folder)


def _device(device: Any) -> torch.device:
    try:
        return torch.device("cpu" if device is None else device)
    except (TypeError, RuntimeError) as error:
        raise ValueError(f"`device` must name a torch device such as 'cpu' or 'cuda', got {device!r}.") from error


@functools.lru_cache(maxsize=4)
def _load(folder: str, device: str) -> _Backbone:
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).to(device).eval()
    vision = getattr(model, "vision_model", None) or model
    vision_config = getattr(config, "vision_config", None) or config
    size = getattr(vision_config, "image_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    clip_like = "clip" in config.model_type or "siglip" in config.model_type
    mean, std = (CLIP_MEAN, CLIP_STD) if clip_like else (IMAGENET_MEAN, IMAGENET_STD)
    processor_file = os.path.join(folder, "preprocessor_config.json")
    if os.path.isfile(processor_file):
        with open(processor_file, encoding="utf-8") as handle:
            saved = json.load(handle)
        mean, std = tuple(saved.get("image_mean", mean)), tuple(saved.get("image_std", std))
    return _Backbone(model, vision, size, mean, std, torch.device(device))


def load_vision_backbone(path: str | os.PathLike, *, device: Any = None) -> _Backbone:
    """Load (and cache, 4 folders at most) a transformers vision model from a local folder.

    A dual encoder (CLIP, SigLIP: a ``vision_model`` attribute) contributes its vision tower.
    """
    folder = _check_folder(path, "backbone_path")
    return _load(folder, str(_device(device)))


def _pixel_values(name: str, images: Any, backbone: _Backbone) -> tuple[torch.Tensor, bool]:
    """Images → normalised ``[B, 3, H, W]`` at the backbone's size, and whether the input was batched."""
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError(f"`{name}` must contain at least one image, got an empty {type(images).__name__}.")
        arrays = []
        for index, image in enumerate(images):
            array, batched = _image_batch(f"{name}[{index}]", image)
            if batched:
                raise ValueError(f"`{name}[{index}]` must be one image, got a batch {describe(image)}.")
            arrays.append(torch.from_numpy(array[0]).permute(2, 0, 1).float())
        # list items may differ in size: resize each, then stack
        tensors = [_resize(t[None], backbone.image_size) for t in arrays]
        pixels, batched = torch.cat(tensors), True
    else:
        array, batched = _image_batch(name, images)
        pixels = _resize(torch.from_numpy(array).permute(0, 3, 1, 2).float(), backbone.image_size)
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    elif pixels.shape[1] == 4:
        pixels = pixels[:, :3]
    elif pixels.shape[1] != 3:
        raise ValueError(f"`{name}` must have 1, 3 or 4 channels, got {pixels.shape[1]}.")
    mean = torch.tensor(backbone.mean, dtype=pixels.dtype)[:, None, None]
    std = torch.tensor(backbone.std, dtype=pixels.dtype)[:, None, None]
    return (pixels - mean) / std, batched


def _resize(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(pixels.shape[-2:]) == size:
        return pixels
    return F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)


def _hidden_states(backbone: _Backbone, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    dtype = next(backbone.vision.parameters()).dtype
    out = backbone.vision(pixel_values=pixel_values.to(backbone.device, dtype), output_hidden_states=True)
    states = getattr(out, "hidden_states", None)
    if not states:
        raise TypeError(
            f"`backbone_path` model {type(backbone.vision).__name__} returns no `hidden_states`; use a vision model "
            "that supports `output_hidden_states=True` (ViT, Dinov2, CLIP vision, ConvNeXt, ...)."
        )
    return states


def _unit_channels(features: torch.Tensor) -> torch.Tensor:
    """Unit-normalise each feature vector over its channels (dim 1 for ``[B, C, H, W]``, last for ``[B, N, C]``)."""
    dim = 1 if features.ndim == 4 else -1
    features = features.float()
    return features / (features.norm(dim=dim, keepdim=True) + 1e-10)


@torch.no_grad()
def perceptual_distance(
    a: Any,
    b: Any,
    backbone_path: str | os.PathLike,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    device: Any = None,
) -> float | np.ndarray:
    """LPIPS-style distance between images ``a`` and ``b`` with any transformers vision backbone (local folder).

    Per layer: unit-normalise each feature vector over channels, sum the squared differences over channels,
    average over positions; then average over ``layers`` (indices into ``hidden_states``; default: all of them,
    the embedding output included). **Not** LPIPS: there are no learned per-channel weights (module docstring).

    Args:
        a, b: two images or two batches of the same shape, or two equally long lists of images (any sizes).
        backbone_path: folder of a transformers vision model (``save_pretrained`` output).
        layers: hidden-state indices to use.
        batch_size: images per forward pass.
        device: where to run the backbone (default CPU).

    Returns:
        A float for one pair, a numpy array with one value per pair for batches / lists.
    """
    backbone = load_vision_backbone(backbone_path, device=device)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    first, batched = _pixel_values("a", a, backbone)
    second, second_batched = _pixel_values("b", b, backbone)
    if len(first) != len(second) or batched != second_batched:
        raise ValueError(f"`a` and `b` must hold the same number of images, got {describe(a)} and {describe(b)}.")
    if not isinstance(a, (list, tuple)) and _image_batch("a", a)[0].shape != _image_batch("b", b)[0].shape:
        raise ValueError(f"`a` and `b` must be images of the same shape, got {describe(a)} and {describe(b)}.")
    values = []
    for start in range(0, len(first), batch_size):
        states_a = _hidden_states(backbone, first[start : start + batch_size])
        states_b = _hidden_states(backbone, second[start : start + batch_size])
        chosen = range(len(states_a)) if layers is None else layers
        per_layer = []
        for index in chosen:
            index = check_int("layers", index, minimum=-len(states_a), maximum=len(states_a) - 1)
            fa, fb = _unit_channels(states_a[index]), _unit_channels(states_b[index])
            channel_dim = 1 if fa.ndim == 4 else -1
            squared = ((fa - fb) ** 2).sum(dim=channel_dim)
            per_layer.append(squared.reshape(squared.shape[0], -1).mean(dim=1))
        if not per_layer:
            raise ValueError("`layers` must name at least one hidden state, got an empty list.")
        values.extend(torch.stack(per_layer).mean(dim=0).double().cpu().tolist())
    return _output(values, batched)


def _clip_model(clip_path: Any, device: Any) -> tuple[_Backbone, str]:
    folder = _check_folder(clip_path, "clip_path")
    backbone = _load(folder, str(_device(device)))
    if not (hasattr(backbone.model, "get_image_features") and hasattr(backbone.model, "get_text_features")):
        raise TypeError(
            "`clip_path` must hold a CLIP-like dual encoder (get_image_features / get_text_features), "
            f"got {type(backbone.model).__name__}."
        )
    return backbone, folder


def _embedding(output: Any) -> torch.Tensor:
    # transformers 5 returns a BaseModelOutputWithPooling whose pooler_output is the projected embedding
    tensor = output if isinstance(output, torch.Tensor) else output.pooler_output
    return F.normalize(tensor.float(), dim=-1)


def _image_embeddings(backbone: _Backbone, name: str, images: Any, batch_size: int) -> tuple[torch.Tensor, bool]:
    pixels, batched = _pixel_values(name, images, backbone)
    dtype = next(backbone.model.parameters()).dtype
    chunks = [
        _embedding(backbone.model.get_image_features(pixel_values=pixels[s : s + batch_size].to(backbone.device, dtype)))
        for s in range(0, len(pixels), batch_size)
    ]
    return torch.cat(chunks), batched


@torch.no_grad()
def clip_score(
    images: Any,
    texts: str | Sequence[str],
    clip_path: str | os.PathLike,
    *,
    batch_size: int = 16,
    device: Any = None,
) -> float | np.ndarray:
    """CLIPScore of each (image, text) pair: ``max(100 · cos(E_image, E_text), 0)`` (torchmetrics' definition).

    Args:
        images: one image, a batch, or a list of images (one per text).
        texts: one string per image.
        clip_path: local folder of a CLIP-like model, with its text tokenizer saved beside it.

    Returns:
        A float for one pair, a numpy array with one value per pair otherwise.
    """
    from transformers import AutoTokenizer

    backbone, folder = _clip_model(clip_path, device)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    single_text = isinstance(texts, str)
    text_list = [texts] if single_text else texts
    if not isinstance(text_list, (list, tuple)) or not text_list or not all(isinstance(t, str) for t in text_list):
        raise TypeError(f"`texts` must be a string or a non-empty list of strings, got {describe(texts)}.")
    image_embeddings, batched = _image_embeddings(backbone, "images", images, batch_size)
    if len(image_embeddings) != len(text_list):
        raise ValueError(
            f"`images` and `texts` must pair up one to one, got {len(image_embeddings)} image(s) and {len(text_list)} text(s)."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"`clip_path` {folder!r} has no loadable text tokenizer: {error}") from error
    text_config = getattr(backbone.model.config, "text_config", None)
    max_length = getattr(text_config, "max_position_embeddings", None) or 77
    text_embeddings = []
    for start in range(0, len(text_list), batch_size):
        tokens = tokenizer(
            list(text_list[start : start + batch_size]), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        tokens = {k: v.to(backbone.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        text_embeddings.append(_embedding(backbone.model.get_text_features(**tokens)))
    cosine = (image_embeddings * torch.cat(text_embeddings)).sum(-1)
    values = (100.0 * cosine).clamp(min=0).double().cpu().tolist()
    return _output(values, batched or not single_text)


@torch.no_grad()
def clip_image_similarity(
    a: Any, b: Any, clip_path: str | os.PathLike, *, batch_size: int = 16, device: Any = None
) -> float | np.ndarray:
    """CLIP-I: ``100 · cos`` of the CLIP image embeddings of ``a`` and ``b`` (pairs of images or of batches)."""
    backbone, _ = _clip_model(clip_path, device)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    first, batched = _image_embeddings(backbone, "a", a, batch_size)
    second, second_batched = _image_embeddings(backbone, "b", b, batch_size)
    if len(first) != len(second) or batched != second_batched:
        raise ValueError(f"`a` and `b` must hold the same number of images, got {describe(a)} and {describe(b)}.")
    return _output((100.0 * (first * second).sum(-1)).double().cpu().tolist(), batched)

