"""Constrained image generation for :class:`VTokMLLMForConditionalGeneration`.

* :class:`VisualWindowLogitsProcessor` — a ``transformers`` ``LogitsProcessor`` for ``model.generate``: for the
  N positions after ``<boi>`` only the visual window ``[offset, offset + K)`` survives, then ``<eoi>`` is
  forced; outside images the visual window (and the ``<image>`` placeholder) can be masked so that text answers
  never contain visual ids (DDT-LLaMA masks each modality's logits this way).
* :func:`classifier_free_guidance` — ``uncond + g · (cond − uncond)`` on logits (g = 1 gives the conditional
  logits back).
* :func:`sample_from_logits` — temperature, top-k, top-p with a seeded ``torch.Generator``.
* :func:`generate_visual_ids` — the fast loop used by ``generate_images``: one prefill with a KV cache (the
  conditional and unconditional prompts share one batch), then exactly N steps that compute logits for the K
  visual rows only (``model.visual_logits``), which is most of the vocabulary cost saved for large LMs. Exactly
  N ids in ``[0, K)`` per image, by construction.
* :func:`generate_visual_embeddings` — the continuous counterpart (SeTok): the regression head predicts each
  visual embedding, guided the same way, and the LM head decides between ``<image>`` (one more token) and
  ``<eoi>`` (stop), within ``[1, num_visual_tokens]`` tokens.
* :func:`generate_images` — prompts (+ optional source images for editing) → tokens → pixels through the
  tokenizer family's decoder pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils import ModelOutput

from ..utils.validation import check_float, check_int, describe

# transformers 5.24 renamed the key/value cache `past_key_values` -> `cache` (argument and output field)
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"

try:  # tqdm ships with transformers
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None


# ---------------------------------------------------------------------------------------------------------------------
# logits processors and sampling
class VisualWindowLogitsProcessor(LogitsProcessor):
    """Keep generated images well-formed during ``model.generate``.

    For every row, the state is read from the generated ids: after the last ``<boi>`` (not yet closed by
    ``<eoi>``) with ``k < num_visual_tokens`` visual ids emitted, every logit outside
    ``[visual_token_offset, visual_token_offset + visual_vocab_size)`` becomes ``-inf``; when ``k`` reaches
    ``num_visual_tokens`` only ``<eoi>`` is allowed. Outside an image, ``mask_visual_in_text`` removes the
    visual window and ``image_token_id`` so that text never contains visual ids.

    Args:
        boi_token_id, eoi_token_id: ids of ``<boi>`` / ``<eoi>``.
        visual_token_offset, visual_vocab_size: the visual window.
        num_visual_tokens: N, visual ids per image.
        image_token_id: the ``<image>`` placeholder (masked in text when given).
        mask_visual_in_text: mask the window outside images (default True).
    """

    def __init__(
        self,
        boi_token_id: int,
        eoi_token_id: int,
        visual_token_offset: int,
        visual_vocab_size: int,
        num_visual_tokens: int,
        image_token_id: int | None = None,
        mask_visual_in_text: bool = True,
    ):
        self.boi_token_id = check_int("boi_token_id", boi_token_id, minimum=0)
        self.eoi_token_id = check_int("eoi_token_id", eoi_token_id, minimum=0)
        self.start = check_int("visual_token_offset", visual_token_offset, minimum=0)
        self.end = self.start + check_int("visual_vocab_size", visual_vocab_size, minimum=1)
        self.num_visual_tokens = check_int("num_visual_tokens", num_visual_tokens, minimum=1)
        self.image_token_id = image_token_id
        self.mask_visual_in_text = mask_visual_in_text

    @classmethod
    def from_config(cls, config, **kwargs) -> VisualWindowLogitsProcessor:
        """From a :class:`VTokMLLMConfig` after ``add_visual_tokens``."""
        if not getattr(config, "is_discrete", False) or not config.visual_vocab_ready:
            raise ValueError("`config` must be a VTokMLLMConfig of a discrete tokenizer after `add_visual_tokens`.")
        return cls(
            config.boi_token_id,
            config.eoi_token_id,
            config.visual_token_offset,
            config.visual_vocab_size,
            config.num_visual_tokens,
            image_token_id=config.image_token_id,
            **kwargs,
        )

    def image_state(self, input_ids: torch.LongTensor) -> tuple[torch.BoolTensor, torch.LongTensor]:
        """``(inside_image, visual_ids_emitted)`` per row."""
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device).expand_as(input_ids)
        last_boi = torch.where(input_ids == self.boi_token_id, positions, -1).amax(dim=1)
        last_eoi = torch.where(input_ids == self.eoi_token_id, positions, -1).amax(dim=1)
        inside = last_boi > last_eoi
        emitted = torch.where(inside, length - 1 - last_boi, torch.zeros_like(last_boi))
        return inside, emitted

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        inside, emitted = self.image_state(input_ids)
        vocab = scores.shape[-1]
        columns = torch.arange(vocab, device=scores.device)
        window = (columns >= self.start) & (columns < self.end)
        eoi = columns == self.eoi_token_id
        drawing = (inside & (emitted < self.num_visual_tokens))[:, None]
        closing = (inside & (emitted >= self.num_visual_tokens))[:, None]
        allowed = torch.where(drawing, window[None], torch.ones_like(window)[None].expand(scores.shape[0], -1))
        allowed = torch.where(closing, eoi[None], allowed)
        if self.mask_visual_in_text:
            text_block = window.clone()
            if self.image_token_id is not None and self.image_token_id < vocab:
                text_block[self.image_token_id] = True
            allowed = torch.where((~inside)[:, None], ~text_block[None], allowed)
        return scores.masked_fill(~allowed, float("-inf"))


def classifier_free_guidance(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """``uncond + g · (cond − uncond)``; ``g = 1`` returns ``cond``, ``g = 0`` returns ``uncond``."""
    if cond_logits.shape != uncond_logits.shape:
        raise ValueError(
            f"`cond_logits` and `uncond_logits` must have the same shape, got {tuple(cond_logits.shape)} and "
            f"{tuple(uncond_logits.shape)}."
        )
    if guidance_scale == 1.0:
        return cond_logits
    return uncond_logits + guidance_scale * (cond_logits - uncond_logits)


def sample_from_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.LongTensor:
    """Sample one index per row of ``logits`` `[B, K]`; ``temperature == 0`` is greedy. ``generator`` may be one
    generator or one per row."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    # Work on the top-k candidates only (sorted): top-p then needs no sort of the whole window, which for a
    # 65,536-code window costs more than the LM head itself.
    candidates = None
    if top_k is not None and top_k < logits.shape[-1]:
        values, candidates = torch.topk(logits, top_k, dim=-1)
    elif top_p is not None and top_p < 1.0:
        values, candidates = torch.sort(logits, descending=True, dim=-1)
    else:
        values = logits
    if top_p is not None and top_p < 1.0:
        probs = values.softmax(-1)
        remove = probs.cumsum(-1) - probs >= top_p  # keep the smallest prefix reaching top_p (never empty)
        values = values.masked_fill(remove, float("-inf"))
    probs = values.softmax(-1)
    if isinstance(generator, (list, tuple)):  # one generator per row: results do not depend on the batching
        if len(generator) != probs.shape[0]:
            raise ValueError(f"`generator` must be one generator or {probs.shape[0]} (one per row), got {len(generator)}.")
        choice = torch.stack(
            [torch.multinomial(row.to(g.device), 1, generator=g)[0].to(logits.device) for row, g in zip(probs, generator)]
        )
    else:
        device = generator.device if generator is not None else probs.device
        choice = torch.multinomial(probs.to(device), 1, generator=generator).squeeze(-1).to(logits.device)
    if candidates is None:
        return choice
    return candidates.gather(-1, choice[:, None]).squeeze(-1)


def _check_sampling(temperature, top_k, top_p, guidance_scale) -> tuple[float, int | None, float | None, float]:
    temperature = check_float("temperature", temperature, minimum=0.0)
    if top_k is not None:
        top_k = check_int("top_k", top_k, minimum=1)
    if top_p is not None:
        top_p = check_float("top_p", top_p, minimum=0.0, maximum=1.0, strict_minimum=True)
    guidance_scale = check_float("guidance_scale", guidance_scale, minimum=0.0)
    return temperature, top_k, top_p, guidance_scale


# ---------------------------------------------------------------------------------------------------------------------
# generation loops
@dataclass
class VisualGenerationOutput(ModelOutput):
    """What the generation loops return.

    Args:
        ids: `[B, N]` visual ids in ``[0, codebook_size)`` (discrete tokenizers).
        embeddings: `[B, N_max, D]` generated visual embeddings (continuous tokenizers).
        attention_mask: `[B, N]` 1 for generated tokens (all ones for discrete tokenizers).
        logits: per step, the guided logits `[B, K]` that were sampled from (with ``output_logits=True``).
        images: decoded images when a decoder pipeline was given (``generate_images``).
    """

    ids: torch.LongTensor | None = None
    embeddings: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None
    logits: tuple[torch.FloatTensor, ...] | None = None
    images: object | None = None


def _left_pad_concat(first: dict, second: dict, pad_id: int) -> dict:
    """Stack two left-padded batches (cond, uncond) into one, re-padding on the left."""
    length = max(first["input_ids"].shape[1], second["input_ids"].shape[1])

    def pad(tensor, value):
        gap = length - tensor.shape[1]
        return torch.nn.functional.pad(tensor, (gap, 0), value=value) if gap else tensor

    out = {
        "input_ids": torch.cat([pad(first["input_ids"], pad_id), pad(second["input_ids"], pad_id)]),
        "attention_mask": torch.cat([pad(first["attention_mask"], 0), pad(second["attention_mask"], 0)]),
    }
    pixels = [batch["pixel_values"] for batch in (first, second) if batch.get("pixel_values") is not None]
    if pixels:
        out["pixel_values"] = torch.cat(pixels)
    return out


def _progress(total: int, enabled, description: str):
    """A progress bar: ``enabled`` is a bool or a factory ``(total, description) -> bar`` (e.g. a pipeline's
    ``progress_bar``)."""
    if callable(enabled):
        return enabled(total, description)
    if tqdm is None or not enabled:
        return None
    return tqdm(total=total, desc=description, leave=False)


def _prefill(model, batch: dict, device):
    attention_mask = batch["attention_mask"].to(device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    outputs = model.model(
        input_ids=batch["input_ids"].to(device),
        pixel_values=None if batch.get("pixel_values") is None else batch["pixel_values"].to(device),
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
    )
    return outputs.last_hidden_state[:, -1], getattr(outputs, CACHE_NAME), attention_mask, position_ids[:, -1]


def _step(model, cache, attention_mask, last_position, input_ids=None, inputs_embeds=None):
    attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=1)
    last_position = last_position + 1
    outputs = model.model(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=last_position[:, None],
        cache=cache,
        use_cache=True,
    )
    return outputs.last_hidden_state[:, -1], getattr(outputs, CACHE_NAME), attention_mask, last_position


@torch.no_grad()
def generate_visual_ids(
    model,
    inputs: dict,
    uncond_inputs: dict | None = None,
    *,
    guidance_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    visual_logits_only: bool = True,
    output_logits: bool = False,
    pad_token_id: int = 0,
    progress: bool = False,
) -> VisualGenerationOutput:
    """Sample exactly N visual ids after prompts that end with ``<boi>``.

    Args:
        model: a :class:`VTokMLLMForConditionalGeneration` with a discrete tokenizer.
        inputs: left-padded ``input_ids``/``attention_mask`` (+ ``pixel_values``) ending with ``<boi>``.
        uncond_inputs: the unconditional prompts (same batch size) for classifier-free guidance; required when
            ``guidance_scale != 1``.
        guidance_scale, temperature, top_k, top_p: sampling controls (see :func:`sample_from_logits`).
        generator: a ``torch.Generator`` or one per prompt (then the samples do not depend on the batching).
        visual_logits_only: compute logits for the K visual rows only (fast path). ``False`` computes the full
            vocabulary and applies :class:`VisualWindowLogitsProcessor` (the reference path; same ids).
        output_logits: also return the guided visual logits of every step.
    """
    if not model.config.is_discrete:
        raise TypeError("`generate_visual_ids` needs a discrete visual tokenizer; use `generate_visual_embeddings`.")
    temperature, top_k, top_p, guidance_scale = _check_sampling(temperature, top_k, top_p, guidance_scale)
    use_cfg = guidance_scale != 1.0
    if use_cfg and uncond_inputs is None:
        raise ValueError("`uncond_inputs` are required for classifier-free guidance (`guidance_scale` != 1).")
    batch_size = inputs["input_ids"].shape[0]
    if use_cfg and uncond_inputs["input_ids"].shape[0] != batch_size:
        raise ValueError(
            f"`uncond_inputs` must hold {batch_size} prompts like `inputs`, got {uncond_inputs['input_ids'].shape[0]}."
        )
    config = model.config
    boi = config.boi_token_id
    if not bool((inputs["input_ids"][:, -1] == boi).all()):
        raise ValueError("Every prompt in `inputs` must end with the <boi> token (left padding).")
    batch = _left_pad_concat(inputs, uncond_inputs, pad_token_id) if use_cfg else inputs
    device = model.device
    num_tokens = config.num_visual_tokens
    start, end = model.visual_window
    window_processor = None if visual_logits_only else VisualWindowLogitsProcessor.from_config(config)
    hidden, cache, attention_mask, position = _prefill(model, batch, device)
    sequence = batch["input_ids"].to(device)  # only used by the reference (full-vocabulary) path
    ids, step_logits = [], []
    bar = _progress(num_tokens, progress, "visual tokens")
    for step in range(num_tokens):
        if visual_logits_only:
            logits = model.visual_logits(hidden)
        else:
            logits = window_processor(sequence, model.compute_logits(hidden))[:, start:end]
        if use_cfg:
            cond, uncond = logits.float().chunk(2)
            logits = classifier_free_guidance(cond, uncond, guidance_scale)
        if output_logits:
            step_logits.append(logits.float().cpu())
        chosen = sample_from_logits(logits, temperature, top_k, top_p, generator)
        ids.append(chosen)
        if bar is not None:
            bar.update()
        if step == num_tokens - 1:
            break  # <eoi> is forced: no forward needed for it
        next_tokens = (chosen + start)[:, None]
        if use_cfg:
            next_tokens = torch.cat([next_tokens, next_tokens])
        if window_processor is not None:
            sequence = torch.cat([sequence, next_tokens], dim=1)
        hidden, cache, attention_mask, position = _step(model, cache, attention_mask, position, input_ids=next_tokens)
    if bar is not None:
        bar.close()
    ids = torch.stack(ids, dim=1)
    return VisualGenerationOutput(
        ids=ids,
        attention_mask=torch.ones_like(ids),
        logits=tuple(step_logits) if output_logits else None,
    )


@torch.no_grad()
def generate_visual_embeddings(
    model,
    inputs: dict,
    uncond_inputs: dict | None = None,
    *,
    guidance_scale: float = 1.0,
    min_tokens: int = 1,
    max_tokens: int | None = None,
    output_logits: bool = False,
    pad_token_id: int = 0,
    progress: bool = False,
) -> VisualGenerationOutput:
    """Continuous tokenizers (SeTok): regress visual embeddings after prompts ending with ``<boi>``.

    At every step the LM head's two logits (``<image>`` = continue, ``<eoi>`` = stop), guided, decide whether
    the image goes on (greedy); the regression head gives the next embedding (guided the same way), which is
    projected and fed back. Each image gets between ``min_tokens`` and ``max_tokens`` (default: the tokenizer's
    maximum) tokens.
    """
    if model.config.is_discrete or model.regression_head is None:
        raise TypeError("`generate_visual_embeddings` needs a continuous visual tokenizer; use `generate_visual_ids`.")
    guidance_scale = check_float("guidance_scale", guidance_scale, minimum=0.0)
    limit = model.config.num_visual_tokens
    max_tokens = limit if max_tokens is None else check_int("max_tokens", max_tokens, minimum=1, maximum=limit)
    min_tokens = check_int("min_tokens", min_tokens, minimum=1, maximum=max_tokens)
    use_cfg = guidance_scale != 1.0
    if use_cfg and uncond_inputs is None:
        raise ValueError("`uncond_inputs` are required for classifier-free guidance (`guidance_scale` != 1).")
    config = model.config
    if not bool((inputs["input_ids"][:, -1] == config.boi_token_id).all()):
        raise ValueError("Every prompt in `inputs` must end with the <boi> token (left padding).")
    batch_size = inputs["input_ids"].shape[0]
    batch = _left_pad_concat(inputs, uncond_inputs, pad_token_id) if use_cfg else inputs
    device = model.device
    hidden, cache, attention_mask, position = _prefill(model, batch, device)
    decision_rows = torch.tensor([config.image_token_id, config.eoi_token_id], device=device)
    embeddings, alive_steps, step_logits = [], [], []
    alive = torch.ones(batch_size, dtype=torch.bool, device=device)
    bar = _progress(max_tokens, progress, "visual tokens")
    for step in range(max_tokens):
        decision = model._softcap(torch.nn.functional.linear(hidden, model.lm_head.weight[decision_rows]))
        vector = model.regression_head(hidden).float()
        if use_cfg:
            cond, uncond = decision.float().chunk(2)
            decision = classifier_free_guidance(cond, uncond, guidance_scale)
            cond_v, uncond_v = vector.chunk(2)
            vector = classifier_free_guidance(cond_v, uncond_v, guidance_scale)
        if output_logits:
            step_logits.append(decision.float().cpu())
        stop = decision[:, 1] > decision[:, 0]
        if step < min_tokens:
            stop = torch.zeros_like(stop)
        alive = alive & ~stop
        alive_steps.append(alive.clone())
        embeddings.append(vector)
        if bar is not None:
            bar.update()
        if not bool(alive.any()) or step == max_tokens - 1:
            break
        projected = model.model.projector(vector.to(model.model.projector.layers[0].weight.dtype))
        if use_cfg:
            projected = torch.cat([projected, projected])
        hidden, cache, attention_mask, position = _step(model, cache, attention_mask, position, inputs_embeds=projected[:, None])
    if bar is not None:
        bar.close()
    mask = torch.stack(alive_steps, dim=1).long()
    return VisualGenerationOutput(
        embeddings=torch.stack(embeddings, dim=1),
        attention_mask=mask,
        logits=tuple(step_logits) if output_logits else None,
    )


# ---------------------------------------------------------------------------------------------------------------------
# prompts → images
def _as_prompt_list(prompt, name: str = "prompt") -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise TypeError(f"`{name}` must be a string or a non-empty list of strings, got {describe(prompt)}.")


def build_generation_inputs(
    processor,
    prompts: Sequence[str],
    images=None,
    num_image_tokens=None,
    use_chat_template: bool = True,
) -> dict:
    """Left-padded prompts ending with ``<boi>``, tokenized exactly like the completions of generation data
    (``processor(text=prompt, completion="<image>", use_chat_template=...)``)."""
    texts = [processor.format_prompt(p) if use_chat_template else p for p in prompts]
    prefix = (" " if use_chat_template else "") + processor.boi_token
    encoded = processor(
        images=images,
        text=texts,
        num_image_tokens=num_image_tokens,
        padding=False,
        return_tensors=None,
        return_labels=False,
    )
    rows = encoded["input_ids"]
    rows = [rows] if rows and isinstance(rows[0], int) else rows
    boi_ids = processor.tokenizer(prefix, add_special_tokens=False)["input_ids"]
    if not boi_ids or boi_ids[-1] != processor.boi_token_id:
        boi_ids = [processor.boi_token_id]
    rows = [list(row) + list(boi_ids) for row in rows]
    length = max(len(r) for r in rows)
    pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad_id] * (length - len(r)) + r for r in rows], dtype=torch.long)
    attention_mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if encoded.get("pixel_values") is not None:
        out["pixel_values"] = encoded["pixel_values"]
    return out


def _image_lists(images, count: int):
    if images is None:
        return None
    if isinstance(images, (list, tuple)) and all(isinstance(item, (list, tuple)) for item in images):
        lists = [list(item) for item in images]
    elif isinstance(images, (list, tuple)):
        lists = [[item] for item in images]
    else:
        lists = [[images]]
    if len(lists) == 1 and count > 1:
        lists = lists * count
    if len(lists) != count:
        raise ValueError(f"`images` must hold one image (or list) per prompt ({count}), got {len(lists)}.")
    return lists


@torch.no_grad()
def generate_images(
    model,
    processor,
    prompt,
    *,
    images=None,
    negative_prompt: str | Sequence[str] | None = None,
    num_images_per_prompt: int = 1,
    guidance_scale: float = 8.0,
    temperature: float = 1.0,
    top_k: int | None = 4096,
    top_p: float | None = 0.9,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    use_chat_template: bool = True,
    use_task_prompts: bool = True,
    visual_logits_only: bool = True,
    decoder=None,
    decoder_kwargs: dict | None = None,
    output_logits: bool = False,
    progress: bool = True,
) -> VisualGenerationOutput:
    """Prompts (and, for editing, source images) → visual tokens → images.

    Args:
        model: a :class:`VTokMLLMForConditionalGeneration`.
        processor: its :class:`VTokMLLMProcessor`.
        prompt: one prompt or a list. For editing, put ``<image>`` where the source image goes (when missing, the
            image is placed before the instruction).
        images: source images for editing: one per prompt (or one for all).
        negative_prompt: the unconditional prompt for classifier-free guidance. Default: the empty prompt (the
            null caption of training-time caption dropout); with ``images``, the source image alone.
        num_images_per_prompt: samples per prompt.
        guidance_scale: classifier-free guidance on the logits (DDT-LLaMA: 8.0); 1 disables it.
        temperature, top_k, top_p: sampling of the visual ids (DDT-LLaMA: top-k 4096, top-p 0.9). Ignored by
            continuous tokenizers, whose embeddings are regressed.
        generator / seed: randomness (``seed`` builds a CPU generator). Every image gets its own generator seeded
            from it, so the random draws do not depend on ``batch_size`` (the ids may still differ between batch
            sizes through float rounding of batched products); the decoder noise uses ``generator`` itself.
        batch_size: rows per forward pass (default: everything at once).
        use_chat_template: format prompts with the processor's chat template.
        use_task_prompts: phrase each prompt the way the model was trained (the processor's
            ``task_prompts``: ``text_to_image`` for captions, ``editing`` for instructions whose image marker
            is not already placed); no effect when the processor has none.
        visual_logits_only: compute logits for the visual rows only (fast path).
        decoder: the tokenizer family's decoder pipeline; when given, ``images`` of the output hold its images.
        decoder_kwargs: extra arguments for the decoder (``num_inference_steps``, ``output_type``, ...).
        output_logits: return the guided logits of every step.
    """
    prompts = _as_prompt_list(prompt)
    count = check_int("num_images_per_prompt", num_images_per_prompt, minimum=1)
    temperature, top_k, top_p, guidance_scale = _check_sampling(temperature, top_k, top_p, guidance_scale)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, minimum=1)
    if seed is not None:
        if generator is not None:
            raise ValueError("Pass either `generator` or `seed`, not both.")
        generator = torch.Generator().manual_seed(check_int("seed", seed))
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator, got {describe(generator)}.")
    if not model.config.visual_vocab_ready or model.visual_tokenizer is None:
        raise ValueError("`model` has no visual vocabulary / tokenizer: build it with `from_text_model_and_tokenizer`.")
    image_lists = _image_lists(images, len(prompts))
    token = processor.image_token
    if use_task_prompts and getattr(processor, "task_prompts", None):
        if image_lists is None:
            prompts = [processor.task_prompt("text_to_image", caption=p) for p in prompts]
        elif all(len(imgs) == 1 for imgs in image_lists):
            prompts = [p if token in p else processor.task_prompt("editing", instruction=p) for p in prompts]
    if image_lists is not None:
        prompts = [p if token in p else " ".join([token] * len(imgs) + [p]) for p, imgs in zip(prompts, image_lists)]
        for index, (p, imgs) in enumerate(zip(prompts, image_lists)):
            if p.count(token) != len(imgs):
                raise ValueError(
                    f"`prompt` {index} holds {p.count(token)} {token} marker(s) but {len(imgs)} image(s) were given."
                )
    if negative_prompt is None:
        negatives = [" ".join([token] * len(imgs)) for imgs in image_lists] if image_lists is not None else [""] * len(prompts)
    else:
        negatives = _as_prompt_list(negative_prompt, "negative_prompt")
        if len(negatives) == 1:
            negatives = negatives * len(prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"`negative_prompt` must hold one prompt or {len(prompts)}, got {len(negatives)}.")

    # one row per generated image, each with its own generator seeded from `generator`, so that the random draws
    # do not depend on `batch_size`
    rows = [(p, n, None if image_lists is None else imgs) for p, n, imgs in zip(prompts, negatives, image_lists or [None] * len(prompts)) for _ in range(count)]
    row_generators = None
    if generator is not None:
        seeds = torch.randint(0, 2**62, (len(rows),), generator=generator, device=generator.device).tolist()
        row_generators = [torch.Generator(device=generator.device).manual_seed(seed) for seed in seeds]
    step = batch_size or len(rows)
    pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    results = []
    chunks = range(0, len(rows), step)
    bar = _progress(len(rows), progress if len(chunks) > 1 else False, "images")
    try:
        for begin in chunks:
            chunk = rows[begin : begin + step]
            chunk_images = None if image_lists is None else [imgs for _, _, imgs in chunk]
            counts = None
            if chunk_images is not None and not model.config.is_discrete:
                pixel_values = processor.image_processor([img for imgs in chunk_images for img in imgs], return_tensors="pt")["pixel_values"]
                counts = model.count_image_tokens(pixel_values.to(model.device))
            cond = build_generation_inputs(processor, [c[0] for c in chunk], chunk_images, counts, use_chat_template)
            uncond = None
            if guidance_scale != 1.0:
                negative_images = None
                if chunk_images is not None:
                    negative_images = [imgs if token in c[1] else [] for c, imgs in zip(chunk, chunk_images)]
                    negative_counts = None
                    if counts is not None:
                        per_image = iter(counts)
                        grouped = [[next(per_image) for _ in imgs] for imgs in chunk_images]
                        negative_counts = [n for g, c in zip(grouped, chunk) if token in c[1] for n in g]
                    if not any(negative_images):
                        negative_images, negative_counts = None, None
                    uncond = build_generation_inputs(processor, [c[1] for c in chunk], negative_images, negative_counts, use_chat_template)
                else:
                    uncond = build_generation_inputs(processor, [c[1] for c in chunk], None, None, use_chat_template)
            if model.config.is_discrete:
                out = generate_visual_ids(
                    model,
                    cond,
                    uncond,
                    guidance_scale=guidance_scale,
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                    generator=None if row_generators is None else row_generators[begin : begin + step],
                    visual_logits_only=visual_logits_only,
                    output_logits=output_logits,
                    pad_token_id=pad_id,
                    progress=progress if len(chunks) == 1 else False,
                )
            else:
                out = generate_visual_embeddings(
                    model, cond, uncond, guidance_scale=guidance_scale, output_logits=output_logits, pad_token_id=pad_id,
                    progress=progress if len(chunks) == 1 else False,
                )
            results.append(out)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)

    if model.config.is_discrete:
        output = VisualGenerationOutput(
            ids=torch.cat([r.ids for r in results]),
            attention_mask=torch.cat([r.attention_mask for r in results]),
        )
    else:
        width = max(r.embeddings.shape[1] for r in results)

        def pad(tensor):
            return torch.nn.functional.pad(tensor, (0, 0, 0, width - tensor.shape[1])) if tensor.ndim == 3 else torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]))

        output = VisualGenerationOutput(
            embeddings=torch.cat([pad(r.embeddings) for r in results]),
            attention_mask=torch.cat([pad(r.attention_mask) for r in results]),
        )
    if output_logits:
        output.logits = tuple(logit for r in results for logit in r.logits)
    if decoder is not None:
        output.images = decode_visual_tokens(decoder, output, generator=generator, **(decoder_kwargs or {}))
    return output


def decode_visual_tokens(decoder, tokens: VisualGenerationOutput, **kwargs):
    """Hand generated tokens to the family's decoder pipeline: ``token_ids`` (discrete) or ``token_embeddings`` +
    ``attention_mask`` (continuous). Returns the pipeline's ``images``."""
    if tokens.ids is not None:
        result = decoder(token_ids=tokens.ids.cpu(), **kwargs)
    else:
        result = decoder(token_embeddings=tokens.embeddings, attention_mask=tokens.attention_mask, **kwargs)
    return result.images if hasattr(result, "images") else result[0]


__all__ = [
    "VisualGenerationOutput",
    "VisualWindowLogitsProcessor",
    "build_generation_inputs",
    "classifier_free_guidance",
    "decode_visual_tokens",
    "generate_images",
    "generate_visual_embeddings",
    "generate_visual_ids",
    "sample_from_logits",
]
