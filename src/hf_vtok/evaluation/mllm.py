"""MLLM quality on the shapes world: captions, visual QA, text-to-image and editing, with checkable answers.

Every scene of the shapes world comes with its object list, so each task can be scored without a judge model:

* :func:`caption_attribute_accuracy` — the generated caption must name the scene's (colour, shape) pairs
  ("red circle"); recall, precision and exact set match of the pairs.
* :func:`qa_accuracy` — generated answers to the dataset's questions (count, colour, shape, size, existence,
  position), compared word for word after normalisation; overall and per question type.
* :func:`text_to_image_accuracy` — images generated from the captions, checked with
  :func:`hf_vtok.data.check_attributes` (colour found, shape correct, object count); meant for ``style="flat"``
  scenes, the style the attribute checker reads.
* :func:`editing_accuracy` — the source image plus the edit instruction; the edited picture is checked against the
  edit's target objects, plus pixel L1 (and CLIP-I with ``clip_path``) against the target image — the MagicBrush
  metrics of Slot-MLLM.

Each function takes ``mllm`` as a folder (``model.save_pretrained`` + ``processor.save_pretrained``, optionally
with the decoder pipeline in ``decoder/``; or a text-to-image pipeline folder with ``mllm/`` and ``decoder/``) or as
a loaded :class:`~hf_vtok.mllm.VTokMLLMForConditionalGeneration` with its ``processor``.
"""

from __future__ import annotations

import os
import re
import string
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils.validation import check_int, describe

__all__ = [
    "CAPTION_PROMPT",
    "MLLM_GATES",
    "QA_PROMPT",
    "LoadedMLLM",
    "caption_attribute_accuracy",
    "editing_accuracy",
    "evaluate_mllm",
    "load_mllm_folder",
    "mentioned_pairs",
    "mllm_gate_verdicts",
    "qa_accuracy",
    "run_mllm_eval",
    "text_to_image_accuracy",
]

# Used when the processor records no trained phrasing (``VTokMLLMProcessor.task_prompts``).
CAPTION_PROMPT = "<image> Describe the image."
QA_PROMPT = "<image> {question}"


def _task_prompt(loaded: LoadedMLLM, task: str, given: str | None, fallback: str) -> str:
    """The prompt to ask: ``given``, else the model's trained phrasing for ``task``, else ``fallback``."""
    if given is not None:
        return given
    processor = loaded.processor
    if (getattr(processor, "task_prompts", None) or {}).get(task) is None:
        return fallback.replace("<image>", processor.image_token)
    if task == "qa":  # keep {question} for per-question formatting
        return processor.task_prompt("qa", question="{question}")
    return processor.task_prompt(task)


@dataclass
class LoadedMLLM:
    model: Any
    processor: Any
    decoder: Any = None
    path: Path | None = None


def load_mllm_folder(path: str | os.PathLike, *, load_decoder: bool = True) -> LoadedMLLM:
    """Load an MLLM folder: ``path`` itself (config.json + processor files, optional ``decoder/``) or a
    text-to-image pipeline folder holding ``mllm/`` (and ``processor/``, ``decoder/``)."""
    import json

    from ..mllm import VTokMLLMForConditionalGeneration, VTokMLLMProcessor
    from ..mllm.pipeline_mllm import load_decoder_pipeline

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`mllm` must be a folder path or a loaded model, got {describe(path)}.")
    root = Path(path)
    folder = root / "mllm" if (root / "mllm" / "config.json").is_file() else root
    # a text-to-image pipeline folder keeps its processor once, as the pipeline's `processor/` component
    processor_folder = root / "processor" if (root / "processor" / "processor_config.json").is_file() else folder
    for required in (folder / "config.json", processor_folder / "processor_config.json"):
        if not required.is_file():
            raise ValueError(
                f"`mllm` {str(root)!r} is not an MLLM folder: {required.name} is missing (save the model and its processor "
                "with save_pretrained)."
            )
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type != VTokMLLMForConditionalGeneration.config_class.model_type:
        raise ValueError(f"`mllm` {str(folder)!r} holds a {model_type!r} model, not a hf_vtok MLLM.")
    from ..utils.validation import check_safetensors_file

    for weights in sorted(root.glob("**/*.safetensors")):
        check_safetensors_file(weights, name="mllm")
    model = VTokMLLMForConditionalGeneration.from_pretrained(folder).eval()
    processor = VTokMLLMProcessor.from_pretrained(processor_folder)
    decoder = None
    if load_decoder:
        from ..mllm.parts import parts_decoder_folder, references_mllm_parts

        candidates = [root / "decoder", folder / "decoder"]
        if references_mllm_parts(folder):  # a parts folder decodes with its visual tokenizer's own decoder
            candidates.append(parts_decoder_folder(folder))
        for candidate in filter(None, candidates):
            if (candidate / "model_index.json").is_file():
                decoder = load_decoder_pipeline(candidate)
                decoder.set_progress_bar_config(disable=True)
                break
    return LoadedMLLM(model=model, processor=processor, decoder=decoder, path=root)


def _resolve(mllm: Any, processor: Any, decoder: Any = None, *, need_decoder: bool = False) -> LoadedMLLM:
    if isinstance(mllm, LoadedMLLM):
        loaded = mllm
    elif isinstance(mllm, (str, os.PathLike)):
        loaded = load_mllm_folder(mllm, load_decoder=decoder is None)
    else:
        from ..mllm import VTokMLLMForConditionalGeneration

        if not isinstance(mllm, VTokMLLMForConditionalGeneration):
            raise TypeError(f"`mllm` must be a folder path or a VTokMLLMForConditionalGeneration, got {describe(mllm)}.")
        if processor is None:
            raise ValueError("`processor` is required when `mllm` is a loaded model (pass its VTokMLLMProcessor).")
        loaded = LoadedMLLM(model=mllm, processor=processor)
    if processor is not None:
        loaded.processor = processor
    if decoder is not None:
        if isinstance(decoder, (str, os.PathLike)):
            from ..mllm.pipeline_mllm import load_decoder_pipeline

            decoder = load_decoder_pipeline(decoder)
        loaded.decoder = decoder
    if need_decoder and loaded.decoder is None:
        raise ValueError("`decoder` is required to render generated tokens: pass the tokenizer family's pipeline or a "
                         "folder with `decoder/`.")
    if loaded.decoder is not None and hasattr(loaded.decoder, "set_progress_bar_config"):
        loaded.decoder.set_progress_bar_config(disable=True)
    return loaded


def _rows(dataset, num_examples: int | None, required: tuple[str, ...]):
    if dataset is None or not hasattr(dataset, "column_names") or not hasattr(dataset, "__len__"):
        raise TypeError(f"`dataset` must be a datasets.Dataset of the shapes world, got {describe(dataset)}.")
    missing = [column for column in required if column not in dataset.column_names]
    if missing:
        raise ValueError(f"`dataset` must have the columns {list(required)} (the shapes world), missing {missing}.")
    count = len(dataset) if num_examples is None else min(len(dataset), check_int("num_examples", num_examples, minimum=1))
    if count == 0:
        raise ValueError("`dataset` must contain at least one example, got an empty dataset.")
    return dataset.select(range(count))


# ------------------------------------------------------------------------------------------------ text generation
def mentioned_pairs(text: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a text names, e.g. "a large red circle left of a blue square" →
    {("red", "circle"), ("blue", "square")} (plurals count; sizes may stand in between: "red large circle")."""
    from ..data.shapes import COLORS, SHAPES, SIZES

    if not isinstance(text, str):
        raise TypeError(f"`text` must be a string, got {describe(text)}.")
    colors, shapes, sizes = "|".join(COLORS), "|".join(SHAPES), "|".join(SIZES)
    pattern = re.compile(rf"\b({colors})\s+(?:(?:{sizes})\s+)?({shapes})s?\b")
    return {(m.group(1), m.group(2)) for m in pattern.finditer(text.lower())}


def _normalise_answer(text: str) -> str:
    words = text.lower().translate(str.maketrans("", "", string.punctuation)).split()
    return words[0] if words else ""


@torch.no_grad()
def _generate_text(loaded: LoadedMLLM, images: list, prompts: list[str], max_new_tokens: int, batch_size: int,
                   desc: str = "generating") -> list[str]:
    from tqdm.auto import tqdm

    model, processor = loaded.model, loaded.processor
    outputs: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=f"[eval] {desc}", unit="batch", disable=len(starts) < 2, leave=False):
        chunk_images, chunk_prompts = images[start : start + batch_size], prompts[start : start + batch_size]
        extra = {}
        if not model.config.is_discrete:  # continuous tokenizers: per-image placeholder counts
            pixel_values = processor.image_processor(chunk_images, return_tensors="pt")["pixel_values"]
            extra["num_image_tokens"] = model.count_image_tokens(pixel_values.to(model.device))
        batch = processor(images=chunk_images, text=chunk_prompts, use_chat_template=True, padding_side="left", **extra)
        batch = {k: (v.to(model.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        pad = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else processor.tokenizer.eos_token_id
        generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        outputs += processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return outputs


def caption_attribute_accuracy(
    mllm: Any,
    dataset,
    processor: Any = None,
    *,
    prompt: str | None = None,
    num_examples: int | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 8,
) -> dict:
    """Caption each scene and check that the caption names its (colour, shape) pairs.

    Returns ``{"pair_recall", "pair_precision", "exact_match", "num_examples", "examples": [...]}``: recall is the
    share of the scene's pairs that the caption names (the attribute accuracy), precision the share of named pairs
    that are in the scene (1 when nothing is named and nothing should be), exact match the share of captions
    naming exactly the scene's pairs. ``prompt`` defaults to the model's trained captioning phrasing
    (``processor.task_prompts``), else :data:`CAPTION_PROMPT`.
    """
    loaded = _resolve(mllm, processor)
    prompt = _task_prompt(loaded, "captioning", prompt, CAPTION_PROMPT)
    if not isinstance(prompt, str) or loaded.processor.image_token not in prompt:
        raise ValueError(f"`prompt` must be a string with one {loaded.processor.image_token} marker, got {prompt!r}.")
    rows = _rows(dataset, num_examples, ("image", "objects"))
    batch_size = check_int("batch_size", batch_size, minimum=1)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
    captions = _generate_text(loaded, [r.convert("RGB") for r in rows["image"]], [prompt] * len(rows), max_new_tokens, batch_size,
                              desc="captions")
    recall, precision, exact, examples = [], [], [], []
    for caption, objects in zip(captions, rows["objects"]):
        truth = {(o["color"], o["shape"]) for o in objects}
        named = mentioned_pairs(caption)
        hit = len(truth & named)
        recall.append(hit / len(truth) if truth else 1.0)
        precision.append(hit / len(named) if named else float(not truth))
        exact.append(float(named == truth))
        examples.append({"caption": caption, "expected": sorted(truth), "named": sorted(named)})
    return {"pair_recall": float(np.mean(recall)), "pair_precision": float(np.mean(precision)),
            "exact_match": float(np.mean(exact)), "num_examples": len(rows), "examples": examples}


def qa_accuracy(
    mllm: Any,
    dataset,
    processor: Any = None,
    *,
    prompt: str | None = None,
    num_examples: int | None = None,
    max_new_tokens: int = 4,
    batch_size: int = 8,
) -> dict:
    """Answer every question of the first ``num_examples`` scenes; an answer is right when its first word
    (lower-cased, punctuation removed) equals the reference answer. ``prompt`` (with ``{question}``) defaults
    to the model's trained QA phrasing, else :data:`QA_PROMPT`.

    Returns ``{"accuracy", "by_type": {type: accuracy}, "num_questions", "examples": [...]}``.
    """
    loaded = _resolve(mllm, processor)
    prompt = _task_prompt(loaded, "qa", prompt, QA_PROMPT)
    if not isinstance(prompt, str) or "{question}" not in prompt or loaded.processor.image_token not in prompt:
        raise ValueError(f"`prompt` must contain `{{question}}` and one {loaded.processor.image_token} marker, got {prompt!r}.")
    rows = _rows(dataset, num_examples, ("image", "questions"))
    batch_size = check_int("batch_size", batch_size, minimum=1)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
    images, prompts, references = [], [], []
    for image, questions in zip(rows["image"], rows["questions"]):
        for qa in questions:
            images.append(image.convert("RGB"))
            prompts.append(prompt.format(question=qa["question"]))
            references.append(qa)
    if not prompts:
        raise ValueError("`dataset` holds no questions.")
    answers = _generate_text(loaded, images, prompts, max_new_tokens, batch_size, desc="answers")
    by_type: dict[str, list[float]] = defaultdict(list)
    examples = []
    for answer, qa in zip(answers, references):
        correct = float(_normalise_answer(answer) == _normalise_answer(qa["answer"]))
        by_type[qa["type"]].append(correct)
        examples.append({"question": qa["question"], "answer": qa["answer"], "generated": answer, "correct": bool(correct)})
    everything = [v for values in by_type.values() for v in values]
    return {"accuracy": float(np.mean(everything)), "by_type": {k: float(np.mean(v)) for k, v in sorted(by_type.items())},
            "num_questions": len(everything), "examples": examples}


# ----------------------------------------------------------------------------------------------- image generation
def _attribute_scores(images: list, expected: list[list[dict]]) -> dict:
    from ..data.shapes import check_attributes

    color, shape, count, correct = [], [], [], []
    for image, objects in zip(images, expected):
        report = check_attributes(image, [{"color": o["color"], "shape": o["shape"], "x": o["x"], "y": o["y"]} for o in objects])
        color.append(report.color_accuracy)
        shape.append(report.shape_accuracy)
        count.append(float(report.count_correct))
        correct.append(float(report.all_correct))
    return {"color_accuracy": float(np.mean(color)), "shape_accuracy": float(np.mean(shape)),
            "count_accuracy": float(np.mean(count)), "all_correct": float(np.mean(correct))}


def _eval_bar(total: int, description: str):
    """The progress bar of an evaluation loop (generating a few hundred images takes most of an hour on a CPU)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"[eval] {description}", disable=total < 2, leave=False)


def _generation_kwargs(seed: int, guidance_scale: float, num_inference_steps: int, extra: dict | None) -> dict:
    kwargs = {"seed": check_int("seed", seed, minimum=0), "guidance_scale": guidance_scale, "progress": _eval_bar,
              "decoder_kwargs": {"num_inference_steps": check_int("num_inference_steps", num_inference_steps, minimum=1),
                                 "output_type": "pil"}}
    kwargs.update(extra or {})
    return kwargs


def text_to_image_accuracy(
    mllm: Any,
    dataset,
    processor: Any = None,
    decoder: Any = None,
    *,
    num_examples: int | None = None,
    guidance_scale: float | None = None,
    num_inference_steps: int = 25,
    seed: int = 0,
    batch_size: int = 8,
    return_images: bool = False,
    **generate_kwargs,
) -> dict:
    """Generate one image per caption and check the objects with :func:`hf_vtok.data.check_attributes`.

    Returns ``{"color_accuracy", "shape_accuracy", "count_accuracy", "all_correct", "num_examples"}`` (means over
    images; see :class:`hf_vtok.data.AttributeReport`), plus ``"images"`` with ``return_images``.
    """
    loaded = _resolve(mllm, processor, decoder, need_decoder=True)
    rows = _rows(dataset, num_examples, ("caption", "objects"))
    kwargs = _generation_kwargs(seed, guidance_scale, num_inference_steps, generate_kwargs)
    out = loaded.model.generate_images(list(rows["caption"]), loaded.processor, decoder=loaded.decoder,
                                       batch_size=check_int("batch_size", batch_size, minimum=1), **kwargs)
    result = _attribute_scores(list(out.images), list(rows["objects"]))
    result["num_examples"] = len(rows)
    if return_images:
        result["images"] = list(out.images)
    return result


def editing_accuracy(
    mllm: Any,
    dataset,
    processor: Any = None,
    decoder: Any = None,
    *,
    num_examples: int | None = None,
    guidance_scale: float | None = None,
    num_inference_steps: int = 25,
    seed: int = 0,
    batch_size: int = 8,
    clip_path: str | os.PathLike | None = None,
    return_images: bool = False,
    **generate_kwargs,
) -> dict:
    """Edit each scene's image with its instruction and check the result against the edit's target.

    Returns the attribute scores of :func:`text_to_image_accuracy` against ``edit_objects``, ``"l1"`` (mean
    absolute pixel difference to ``edit_image`` in [0, 1], at the generated resolution) and, with ``clip_path``,
    ``"clip_i"`` (CLIP image similarity to the target, ×100).
    """
    from PIL import Image

    loaded = _resolve(mllm, processor, decoder, need_decoder=True)
    rows = _rows(dataset, num_examples, ("image", "edit_instruction", "edit_image", "edit_objects"))
    keep = [i for i, instruction in enumerate(rows["edit_instruction"]) if instruction]
    if not keep:
        raise ValueError("`dataset` holds no edit pairs (generate it with with_edits=True).")
    rows = rows.select(keep)
    kwargs = _generation_kwargs(seed, guidance_scale, num_inference_steps, generate_kwargs)
    sources = [image.convert("RGB") for image in rows["image"]]
    out = loaded.model.generate_images(list(rows["edit_instruction"]), loaded.processor, images=sources,
                                       decoder=loaded.decoder, batch_size=check_int("batch_size", batch_size, minimum=1), **kwargs)
    edited = [image.convert("RGB") for image in out.images]
    result = _attribute_scores(edited, list(rows["edit_objects"]))
    targets = [t.convert("RGB").resize(e.size, Image.Resampling.BILINEAR) for t, e in zip(rows["edit_image"], edited)]
    result["l1"] = float(np.mean([np.abs(np.asarray(t, np.float64) - np.asarray(e, np.float64)).mean() / 255.0 for t, e in zip(targets, edited)]))
    if clip_path is not None:
        from .perceptual import clip_image_similarity

        result["clip_i"] = float(np.mean(clip_image_similarity(list(targets), list(edited), clip_path)))
    result["num_examples"] = len(rows)
    if return_images:
        result["images"] = edited
    return result


# ------------------------------------------------------------------------------------------------------ all tasks
def evaluate_mllm(
    mllm: Any,
    dataset,
    processor: Any = None,
    decoder: Any = None,
    *,
    num_examples: int | None = None,
    guidance_scale: float | None = None,
    num_inference_steps: int = 25,
    seed: int = 0,
    batch_size: int = 16,
    editing: bool = False,
    references: bool = True,
) -> dict:
    """Every shapes-world score of an MLLM in one call (what ``hf-vtok demo`` and the shipped card report).

    Returns ``{"caption_pair_recall", "caption_pair_precision", "caption_exact_match", "qa_accuracy",
    "qa_by_type", "t2i_color_accuracy", "t2i_shape_accuracy", "t2i_count_accuracy", "t2i_all_correct",
    "num_examples"}`` (plus ``"editing_*"`` with ``editing``), and under ``"samples"`` the captions, QA examples
    and generated images for pictures. Text-to-image needs a decoder; without one those keys are absent.
    Text-to-image samples with the model's own settings (``config.image_guidance_scale`` unless ``guidance_scale``
    is given, and ``config.image_temperature``), recorded as ``t2i_guidance_scale`` / ``t2i_temperature``.

    With ``references`` the numbers that say what a score means, all cheap: ``reference_caption_chance`` (pair recall
    of each scene's neighbour's caption), ``reference_qa_majority`` (always answering the commonest answer of the
    question type), and for the attribute checker ``reference_t2i_{color,shape}_real`` (the true scenes),
    ``…_chance`` (the neighbour scene: right world, wrong prompt) and ``…_tokenizer`` (the decoder
    reconstructing the true scene from its own tokens: the best an MLLM writing these tokens can draw).
    """
    loaded = _resolve(mllm, processor, decoder)
    rows = _rows(dataset, num_examples, ("image", "objects", "caption"))
    captions = caption_attribute_accuracy(loaded, rows, batch_size=batch_size)
    result: dict = {
        "caption_pair_recall": captions["pair_recall"],
        "caption_pair_precision": captions["pair_precision"],
        "caption_exact_match": captions["exact_match"],
        "num_examples": len(rows),
    }
    samples: dict = {"captions": captions["examples"]}
    if "questions" in rows.column_names:
        qa = qa_accuracy(loaded, rows, batch_size=batch_size)
        result["qa_accuracy"], result["qa_by_type"] = qa["accuracy"], qa["by_type"]
        samples["qa"] = qa["examples"]
    if loaded.decoder is not None:
        from ..mllm.generation import image_sampling_settings

        guidance_scale, temperature = image_sampling_settings(loaded.model.config, guidance_scale)
        result["t2i_guidance_scale"], result["t2i_temperature"] = guidance_scale, temperature
        # the decoder pipeline renders the drawn ids with its own checkpoint's guidance
        result["t2i_decoder_guidance_scale"] = getattr(loaded.decoder, "checkpoint_guidance_scale", None)
        t2i = text_to_image_accuracy(loaded, rows, guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                                     seed=seed, batch_size=batch_size, return_images=True)
        samples["images"] = t2i.pop("images")
        t2i.pop("num_examples")
        result.update({f"t2i_{key}": value for key, value in t2i.items()})
        if editing and "edit_instruction" in rows.column_names:
            edits = editing_accuracy(loaded, rows, guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                                     seed=seed, batch_size=batch_size, return_images=True)
            samples["edited"] = edits.pop("images")
            result.update({f"editing_{key}": value for key, value in edits.items()})
    if references:
        result.update(_reference_scores(loaded, rows, samples, num_inference_steps, seed, batch_size))
    result["samples"] = samples
    return result


def _reference_scores(loaded: LoadedMLLM, rows, samples: dict, num_inference_steps: int, seed: int, batch_size: int) -> dict:
    """Chance levels and ceilings for :func:`evaluate_mllm` (see there)."""
    objects = list(rows["objects"])

    def neighbour(items: list) -> list:  # scene i+1 for scene i: the same world, the wrong content
        return items[1:] + items[:1]

    truth = [{(o["color"], o["shape"]) for o in scene} for scene in objects]
    named = [mentioned_pairs(caption) for caption in neighbour(list(rows["caption"]))]
    out = {"reference_caption_chance": float(np.mean([len(t & n) / len(t) if t else 1.0 for t, n in zip(truth, named)]))}
    if "qa" in samples:
        by_type: dict[str, list[str]] = defaultdict(list)
        for questions in rows["questions"]:
            for qa in questions:
                by_type[qa["type"]].append(_normalise_answer(qa["answer"]))
        majority = {kind: max(sorted(set(answers)), key=answers.count) for kind, answers in by_type.items()}
        hits = [answer == majority[kind] for kind, answers in by_type.items() for answer in answers]
        out["reference_qa_majority"] = float(np.mean(hits))
        out["reference_qa_majority_by_type"] = {
            kind: float(np.mean([answer == majority[kind] for answer in answers])) for kind, answers in sorted(by_type.items())
        }
    if loaded.decoder is not None:
        images = [image.convert("RGB") for image in rows["image"]]
        real = _attribute_scores(images, objects)
        chance = _attribute_scores(neighbour(images), objects)
        reconstructed = []
        generator = torch.Generator().manual_seed(seed)
        from tqdm.auto import tqdm

        starts = range(0, len(images), batch_size)
        for start in tqdm(starts, desc="[eval] tokenizer redraws", unit="batch", disable=len(starts) < 2, leave=False):
            reconstructed += list(loaded.decoder(images=images[start : start + batch_size], num_inference_steps=num_inference_steps,
                                                 generator=generator, output_type="pil").images)
        ceiling = _attribute_scores(reconstructed, objects)
        for name, scores in (("real", real), ("chance", chance), ("tokenizer", ceiling)):
            out[f"reference_t2i_color_{name}"] = scores["color_accuracy"]
            out[f"reference_t2i_shape_{name}"] = scores["shape_accuracy"]
        samples["reconstructions"] = reconstructed
    return out


# Issue #16's MLLM gates (SmolLM2 on the shapes world, >= 256 held-out scenes).
MLLM_GATES: dict[str, float] = {"qa_accuracy": 0.60, "qa_type_margin": 0.15, "caption_pair_recall": 0.50,
                                "t2i_color_accuracy": 0.50, "t2i_shape_accuracy": 0.30}  # fmt: skip


def _verdict(gate: str, value, threshold: float) -> dict:
    passed = value is not None and np.isfinite(value) and value >= threshold
    return {"gate": gate, "value": None if value is None else round(float(value), 4), "threshold": threshold, "pass": bool(passed)}


def mllm_gate_verdicts(result: dict) -> list[dict]:
    """The MLLM gates of issue #16 for one :func:`evaluate_mllm` result (with references), each ``{"gate", "value",
    "threshold", "pass"}``; a missing figure fails its gate."""
    gates = MLLM_GATES
    verdicts = [_verdict(f"QA accuracy >= {gates['qa_accuracy']:.0%}", result.get("qa_accuracy"), gates["qa_accuracy"])]
    majority = result.get("reference_qa_majority_by_type") or {}
    for kind, accuracy in sorted((result.get("qa_by_type") or {}).items()):
        margin = None if kind not in majority else accuracy - majority[kind]
        verdicts.append(_verdict(f"QA '{kind}' >= its majority answer + {gates['qa_type_margin'] * 100:.0f} points",
                                 margin, gates["qa_type_margin"]))  # fmt: skip
    for key, name in (("caption_pair_recall", "caption attribute accuracy (pairs named)"),
                      ("t2i_color_accuracy", "text-to-image colour"), ("t2i_shape_accuracy", "text-to-image shape")):
        verdicts.append(_verdict(f"{name} >= {gates[key]:.0%}", result.get(key), gates[key]))
    return verdicts


def run_mllm_eval(
    mllms,
    *,
    out_dir: str | os.PathLike = "eval_out",
    num_images: int = 256,
    style: str = "flat",
    seed: int = 999,
    num_inference_steps: int = 25,
    batch_size: int = 16,
    print_fn=print,
) -> dict:
    """Evaluate MLLM folders on ``num_images`` held-out shapes scenes (``style``, seed ``seed``) rendered at each
    MLLM's tokenizer resolution: :func:`evaluate_mllm` with its chance / majority / tokenizer references and
    :func:`mllm_gate_verdicts`. Writes ``eval_mllm.json`` (settings with seed, scene count and commit; results;
    verdicts) and ``<name>_text_to_image.png`` to ``out_dir`` and returns what it wrote."""
    import json

    from ..data.shapes import STYLES, generate_shapes_dataset
    from .report import code_revision
    from .visualization import make_grid, save_png

    folders = [mllms] if isinstance(mllms, (str, os.PathLike)) else list(mllms or [])
    if not folders or not all(isinstance(folder, (str, os.PathLike)) for folder in folders):
        raise TypeError(f"`mllms` must be one or more MLLM folder paths, got {describe(mllms)}.")
    num_images = check_int("num_images", num_images, minimum=2)
    if style not in STYLES:
        raise ValueError(f"`style` must be one of {list(STYLES)}, got {style!r}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"settings": {"seed": seed, "num_images": num_images, "style": style,
                                 "num_inference_steps": num_inference_steps, "commit": code_revision()},
                    "mllms": {}, "gates": {}}  # fmt: skip
    for folder in folders:
        name = Path(folder).resolve().name
        loaded = load_mllm_folder(folder)
        size = int(loaded.processor.image_processor.crop_size["height"])
        dataset = generate_shapes_dataset(num_images, image_size=size, seed=seed, style=style, progress=False)
        result = evaluate_mllm(loaded, dataset, num_inference_steps=num_inference_steps, seed=0, batch_size=batch_size)
        samples = result.pop("samples")
        result["image_size"] = size
        verdicts = mllm_gate_verdicts(result)
        report["mllms"][name], report["gates"][name] = result, verdicts
        if samples.get("images"):
            shown = min(8, len(samples["images"]))
            tiles = [dataset[i]["image"] for i in range(shown)] + list(samples["images"][:shown])
            save_png(make_grid(tiles, ncols=shown, tile_size=128), out_dir / f"{name}_text_to_image.png")
        if print_fn is not None:
            rows = [("captions: pairs named", result.get("caption_pair_recall"), result.get("reference_caption_chance"),
                     "another scene's caption"),
                    ("QA accuracy", result.get("qa_accuracy"), result.get("reference_qa_majority"), "majority answer")]
            majority = result.get("reference_qa_majority_by_type", {})
            rows += [(f"  QA {kind}", value, majority.get(kind), "majority answer")
                     for kind, value in sorted(result.get("qa_by_type", {}).items())]
            for key in ("color", "shape"):
                rows.append((f"text-to-image {key}", result.get(f"t2i_{key}_accuracy"),
                             result.get(f"reference_t2i_{key}_tokenizer"), "tokenizer redrawing the true scene"))
                rows.append(("", None, result.get(f"reference_t2i_{key}_chance"), "another real scene"))
            sampling = (f"; drawing with guidance {result['t2i_guidance_scale']}, temperature {result['t2i_temperature']}"
                        if "t2i_guidance_scale" in result else "")
            print_fn(f"{name}: {num_images} held-out {style} scenes at {size} px, seed {seed}{sampling}")
            for label, value, reference, meaning in rows:
                shown_value = "" if value is None else f"{100 * value:5.1f} %"
                shown_reference = "" if reference is None else f"{100 * reference:5.1f} %"
                print_fn(f"  {label:<24} {shown_value:>8}   {meaning}: {shown_reference}")
            for verdict in verdicts:
                print_fn(f"[gate] {name}: {'PASS' if verdict['pass'] else 'FAIL'}  {verdict['gate']}  ({verdict['value']})")
    (out_dir / "eval_mllm.json").write_text(json.dumps(report, indent=2, default=float))
    return report
