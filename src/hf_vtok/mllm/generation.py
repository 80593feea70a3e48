"""Image generation for :class:`VTokMLLMForConditionalGeneration`, through ``model.generate``.

* :class:`VisualWindowLogitsProcessor` — a ``LogitsProcessor``: for the N positions after ``<boi>`` only the
  visual window ``[offset, offset + K)`` survives, then ``<eoi>`` is forced; outside images the window (and the
  ``<image>`` placeholder) is masked so that text answers never contain visual ids (DDT-LLaMA masks each
  modality's logits this way).
* :func:`image_generation_config` — the ``GenerationConfig`` of image generation: N + 1 new tokens ending with
  ``<eoi>``, DDT-LLaMA's visual sampling (top-k 4096, top-p 0.9) and classifier-free guidance through
  transformers' own ``guidance_scale`` + ``negative_prompt_ids`` (``UnbatchedClassifierFreeGuidanceLogitsProcessor``).
* :func:`generate_images` — prompts (+ source images for editing) → ``model.generate`` → visual ids → pixels
  through the tokenizer family's decoder pipeline. Inside ``model.visual_rows_head()`` the LM head scores only
  the visual rows and ``<eoi>`` (``benchmarks/bench_mllm_generation.py``).
* :func:`generate_visual_embeddings` — the continuous counterpart (SeTok), which ``generate`` cannot express
  because every step feeds back a regressed embedding rather than a token: the regression head predicts each
  visual embedding and the ``<image>``/``<eoi>`` logits decide whether the image goes on.

Nothing here imports the model classes: the functions take the model as an argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm  # a transformers dependency
from transformers import DynamicCache, GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.streamers import BaseStreamer
from transformers.utils import ModelOutput

from ..utils.validation import check_float, check_int, describe


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
        self._masks = {}

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

    def allowed_tokens(self, vocab_size: int, device) -> torch.BoolTensor:
        """`[3, V]` allowed columns while drawing an image, when closing it, and in text (built once per size)."""
        key = (vocab_size, str(device))
        if key not in self._masks:
            columns = torch.arange(vocab_size, device=device)
            window = (columns >= self.start) & (columns < self.end)
            text = ~window
            if self.mask_visual_in_text and self.image_token_id is not None:
                text &= columns != self.image_token_id
            self._masks[key] = torch.stack([window, columns == self.eoi_token_id, text if self.mask_visual_in_text else torch.ones_like(window)])
        return self._masks[key]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        inside, emitted = self.image_state(input_ids)
        state = torch.where(inside, (emitted >= self.num_visual_tokens).long(), 2)  # 0 drawing, 1 closing, 2 text
        return scores.masked_fill(~self.allowed_tokens(scores.shape[-1], scores.device)[state], float("-inf"))


def image_sampling_settings(config, guidance_scale: float | None = None, temperature: float | None = None) -> tuple:
    """``(guidance_scale, temperature)`` for drawing: the values given, else the MLLM config's
    ``image_guidance_scale`` / ``image_temperature`` (a config saved before them loads their defaults)."""
    return (config.image_guidance_scale if guidance_scale is None else guidance_scale,
            config.image_temperature if temperature is None else temperature)


def _check_sampling(guidance_scale, temperature, top_k, top_p) -> tuple[float, float, int, float]:
    """Validated sampling settings; ``top_k=None`` → 0 and ``top_p=None`` → 1 (off: ``None`` would let
    ``generate`` take the model's own defaults)."""
    return (
        check_float("guidance_scale", guidance_scale, minimum=0.0),
        check_float("temperature", temperature, minimum=0.0),
        0 if top_k is None else check_int("top_k", top_k, minimum=1),
        1.0 if top_p is None else check_float("top_p", top_p, minimum=0.0, maximum=1.0, strict_minimum=True),
    )


def image_generation_config(
    config,
    *,
    guidance_scale: float = 8.0,
    temperature: float = 1.0,
    top_k: int | None = 4096,
    top_p: float | None = 0.9,
    pad_token_id: int | None = None,
    **kwargs,
) -> GenerationConfig:
    """The ``GenerationConfig`` that draws one image after a prompt ending with ``<boi>``.

    N visual ids then ``<eoi>`` (``max_new_tokens = N + 1``, ``eos_token_id = <eoi>``; pass
    :class:`VisualWindowLogitsProcessor` to ``generate`` to keep them in the window). Defaults are DDT-LLaMA's
    visual sampling settings: classifier-free guidance 8 (transformers' ``guidance_scale``, with the unconditional
    prompt given as ``negative_prompt_ids``; 1 disables it), top-k 4096, top-p 0.9; ``temperature = 0`` is greedy.
    Save it beside a model with ``save_pretrained(path, config_file_name="image_generation_config.json")``.

    Args:
        config: a :class:`VTokMLLMConfig` of a discrete tokenizer after ``add_visual_tokens``.
        pad_token_id: defaults to the text config's.
        **kwargs: other ``GenerationConfig`` fields (``output_scores``, ``return_dict_in_generate``, ...).
    """
    if not getattr(config, "is_discrete", False) or not config.visual_vocab_ready:
        raise ValueError("`config` must be a VTokMLLMConfig of a discrete tokenizer after `add_visual_tokens`.")
    guidance_scale, temperature, top_k, top_p = _check_sampling(guidance_scale, temperature, top_k, top_p)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    return GenerationConfig(
        max_new_tokens=config.num_visual_tokens + 1,
        eos_token_id=config.eoi_token_id,
        pad_token_id=config.text_config.pad_token_id if pad_token_id is None else pad_token_id,
        guidance_scale=guidance_scale,
        **sampling,
        **kwargs,
    )


@dataclass
class VisualGenerationOutput(ModelOutput):
    """What :func:`generate_images` returns.

    Args:
        ids: `[B, N]` visual ids in ``[0, codebook_size)`` (discrete tokenizers).
        embeddings: `[B, N_max, D]` generated visual embeddings (continuous tokenizers).
        attention_mask: `[B, N]` 1 for generated tokens (all ones for discrete tokenizers).
        logits: with ``output_logits``, per visual step the processed scores over the window `[B, K]` (guided,
            constrained and warped: what was sampled from), or the guided ``<image>``/``<eoi>`` logits `[B, 2]`
            (continuous tokenizers).
        images: decoded images when a decoder pipeline was given.
    """

    ids: torch.LongTensor | None = None
    embeddings: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None
    logits: tuple[torch.FloatTensor, ...] | None = None
    images: object | None = None


def _progress(total: int, enabled, description: str):
    """A progress bar: ``enabled`` is a bool or a factory ``(total, description) -> bar`` (e.g. a pipeline's
    ``progress_bar``)."""
    if callable(enabled):
        return enabled(total, description)
    if not enabled:
        return None
    return tqdm(total=total, desc=description, leave=False)


class _ProgressStreamer(BaseStreamer):
    """Advances a progress bar by one per generated token (``generate`` first hands it the prompt)."""

    def __init__(self, bar):
        self.bar, self.prompt_seen = bar, False

    def put(self, value):
        if self.prompt_seen:
            self.bar.update()
        self.prompt_seen = True

    def end(self):
        self.bar.close()


@torch.no_grad()
def generate_visual_embeddings(
    model,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.LongTensor,
    *,
    guidance_scale: float = 1.0,
    min_tokens: int = 1,
    max_tokens: int | None = None,
    output_logits: bool = False,
    progress: bool = False,
) -> VisualGenerationOutput:
    """Continuous tokenizers (SeTok): regress visual embeddings after left-padded prompts ending with ``<boi>``.

    With guidance (``guidance_scale != 1``) the unconditional prompts follow the conditional ones in the same
    batch. At every step the guided logits of ``<image>`` (one more token) and ``<eoi>`` (stop) decide, greedily,
    whether the image goes on; the regression head gives the next embedding (guided the same way), which is
    projected and fed back. Each image gets between ``min_tokens`` and ``max_tokens`` (default: the tokenizer's
    maximum) tokens.
    """
    if model.config.is_discrete or model.regression_head is None:
        raise TypeError("`generate_visual_embeddings` needs a continuous visual tokenizer; use `generate_images`.")
    guidance_scale = check_float("guidance_scale", guidance_scale, minimum=0.0)
    limit = model.config.num_visual_tokens
    max_tokens = limit if max_tokens is None else check_int("max_tokens", max_tokens, minimum=1, maximum=limit)
    min_tokens = check_int("min_tokens", min_tokens, minimum=1, maximum=max_tokens)
    use_cfg = guidance_scale != 1.0

    def guide(values):  # uncond + g (cond - uncond) on the two halves of the batch
        if not use_cfg:
            return values.float()
        cond, uncond = values.float().chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    decision_rows = [model.config.image_token_id, model.config.eoi_token_id]
    cache = DynamicCache()  # filled in place by the language model
    embeddings, alive_steps, step_logits = [], [], []
    alive = torch.ones(inputs_embeds.shape[0] // (2 if use_cfg else 1), dtype=torch.bool, device=inputs_embeds.device)
    bar = _progress(max_tokens, progress, "visual tokens")
    with model.visual_rows_head():  # the head scores <image> and <eoi> only
        for step in range(max_tokens):
            hidden = model.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache, use_cache=True)
            hidden = hidden.last_hidden_state[:, -1]
            decision = guide(model.compute_logits(hidden)[:, decision_rows])
            vector = guide(model.regression_head(hidden))
            alive = alive & ~((decision[:, 1] > decision[:, 0]) & (step >= min_tokens))
            alive_steps.append(alive.clone())
            embeddings.append(vector)
            step_logits.append(decision.cpu())
            if bar is not None:
                bar.update()
            if not bool(alive.any()):
                break
            projected = model.model.projector(vector.to(inputs_embeds.dtype))
            inputs_embeds = torch.cat([projected, projected] if use_cfg else [projected])[:, None]
            attention_mask = F.pad(attention_mask, (0, 1), value=1)
    if bar is not None:
        bar.close()
    return VisualGenerationOutput(
        embeddings=torch.stack(embeddings, dim=1),
        attention_mask=torch.stack(alive_steps, dim=1).long(),
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
    prefix = processor.join_completion(texts[0], processor.boi_token) if use_chat_template and texts else processor.boi_token
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


def _prompt_batch(model, processor, prompts: list[str], image_lists, use_chat_template: bool) -> dict:
    """Left-padded prompts ending with ``<boi>`` with their images already merged: token ids for discrete
    tokenizers (an image in the prompt is its visual ids, so that transformers' unconditional branch, which
    passes no ``pixel_values``, can read edited images too) or ``inputs_embeds`` for continuous ones."""
    images = image_lists if image_lists is not None and any(image_lists) else None
    counts = None
    if images is not None and not model.config.is_discrete:
        pixel_values = processor.image_processor([i for imgs in images for i in imgs], return_tensors="pt")["pixel_values"]
        counts = model.count_image_tokens(pixel_values.to(model.device))
    batch = {k: v.to(model.device) for k, v in build_generation_inputs(processor, prompts, images, counts, use_chat_template).items()}
    pixel_values = batch.pop("pixel_values", None)
    if pixel_values is not None:
        embeds, merged, _, _ = model.model.merge_images(batch["input_ids"], pixel_values, num_image_tokens=counts)
        batch["input_ids"] = merged if merged is not None else batch["input_ids"]
    if not model.config.is_discrete:
        batch["inputs_embeds"] = embeds if pixel_values is not None else model.get_input_embeddings()(batch.pop("input_ids"))
        batch.pop("input_ids", None)
    return batch


def _left_pad_concat(first: dict, second: dict) -> dict:
    """Stack two left-padded ``inputs_embeds`` batches (cond, uncond) into one."""
    length = max(first["attention_mask"].shape[1], second["attention_mask"].shape[1])

    def pad(tensor):
        return F.pad(tensor, (0, 0) * (tensor.ndim - 2) + (length - tensor.shape[1], 0))

    return {key: torch.cat([pad(first[key]), pad(second[key])]) for key in ("inputs_embeds", "attention_mask")}


def _draw_visual_ids(model, cond: dict, uncond: dict | None, config: GenerationConfig, seed: int | None,
                     visual_rows_only: bool, bar) -> VisualGenerationOutput:
    """One ``model.generate`` call (seeded when ``seed`` is given) → the N visual ids of every prompt."""
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None), model.visual_rows_head(visual_rows_only):
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(
            **cond,
            negative_prompt_ids=None if uncond is None else uncond["input_ids"],
            negative_prompt_attention_mask=None if uncond is None else uncond["attention_mask"],
            generation_config=config,
            logits_processor=LogitsProcessorList([VisualWindowLogitsProcessor.from_config(model.config)]),
            streamer=None if bar is None else _ProgressStreamer(bar),
        )
    start, end = model.visual_window
    ids = out.sequences[:, cond["input_ids"].shape[1] :][:, : model.config.num_visual_tokens] - start
    scores = tuple(step[:, start:end] for step in out.scores[:-1]) if config.output_scores else None
    return VisualGenerationOutput(ids=ids, attention_mask=torch.ones_like(ids), logits=scores)


@torch.no_grad()
def generate_images(
    model,
    processor,
    prompt,
    *,
    images=None,
    negative_prompt: str | Sequence[str] | None = None,
    num_images_per_prompt: int = 1,
    guidance_scale: float | None = None,
    temperature: float | None = None,
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

    Discrete tokenizers go through ``model.generate`` with :func:`image_generation_config` and
    :class:`VisualWindowLogitsProcessor`; continuous ones through :func:`generate_visual_embeddings`.

    Args:
        model: a :class:`VTokMLLMForConditionalGeneration`.
        processor: its :class:`VTokMLLMProcessor`.
        prompt: one prompt or a list. For editing, put ``<image>`` where the source image goes (when missing, the
            image is placed before the instruction).
        images: source images for editing: one per prompt (or one for all).
        negative_prompt: the unconditional prompt for classifier-free guidance. Default: the empty prompt (the
            null caption of training-time caption dropout); with ``images``, the source image alone.
        num_images_per_prompt: samples per prompt.
        guidance_scale: classifier-free guidance on the logits (DDT-LLaMA: 8.0); 1 disables it. Default: the
            model's ``config.image_guidance_scale``.
        temperature, top_k, top_p: sampling of the visual ids (DDT-LLaMA: top-k 4096, top-p 0.9); ``temperature=0``
            is greedy (default: ``config.image_temperature``). Ignored by continuous tokenizers, whose embeddings
            are regressed.
        generator / seed: randomness (``seed`` builds a CPU generator). Each batch samples under a seed drawn from
            it, so a seed gives the same ids for the same ``batch_size``; the decoder noise uses ``generator``.
        batch_size: images per ``generate`` call (default: everything at once).
        use_chat_template: format prompts with the processor's chat template.
        use_task_prompts: phrase each prompt the way the model was trained (the processor's
            ``task_prompts``: ``text_to_image`` for captions, ``editing`` for instructions whose image marker
            is not already placed); no effect when the processor has none.
        visual_logits_only: score only the visual rows of the LM head (``model.visual_rows_head()``; same ids).
        decoder: the tokenizer family's decoder pipeline; when given, ``images`` of the output hold its images.
        decoder_kwargs: extra arguments for the decoder (``num_inference_steps``, ``output_type``, ...).
        output_logits: return the scores of every visual step (see :class:`VisualGenerationOutput`).
    """
    prompts = _as_prompt_list(prompt)
    count = check_int("num_images_per_prompt", num_images_per_prompt, minimum=1)
    if not model.config.visual_vocab_ready or model.visual_tokenizer is None:
        raise ValueError("`model` has no visual vocabulary / tokenizer: build it with `from_text_model_and_tokenizer`.")
    guidance_scale, temperature = image_sampling_settings(model.config, guidance_scale, temperature)
    guidance_scale = _check_sampling(guidance_scale, temperature, top_k, top_p)[0]
    discrete = model.config.is_discrete
    if discrete:
        pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
        config = image_generation_config(model.config, guidance_scale=guidance_scale, temperature=temperature, top_k=top_k,
                                         top_p=top_p, pad_token_id=pad_id, output_scores=output_logits, return_dict_in_generate=True)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, minimum=1)
    if seed is not None:
        if generator is not None:
            raise ValueError("Pass either `generator` or `seed`, not both.")
        generator = torch.Generator().manual_seed(check_int("seed", seed))
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator, got {describe(generator)}.")
    image_lists = _image_lists(images, len(prompts))
    token = processor.image_token
    if use_task_prompts and getattr(processor, "task_prompts", None):
        if image_lists is None:
            prompts = [processor.task_prompt("text_to_image", caption=p) for p in prompts]
        elif all(len(imgs) == 1 for imgs in image_lists):
            prompts = [p if token in p else processor.task_prompt("editing", instruction=p) for p in prompts]
    image_lists = image_lists or [[] for _ in prompts]
    prompts = [p if token in p or not imgs else " ".join([token] * len(imgs) + [p]) for p, imgs in zip(prompts, image_lists)]
    for index, (p, imgs) in enumerate(zip(prompts, image_lists)):
        if p.count(token) != len(imgs):
            raise ValueError(f"`prompt` {index} holds {p.count(token)} {token} marker(s) but {len(imgs)} image(s) were given.")
    if negative_prompt is None:
        negatives = [" ".join([token] * len(imgs)) for imgs in image_lists]
    else:
        negatives = _as_prompt_list(negative_prompt, "negative_prompt")
        negatives = negatives * len(prompts) if len(negatives) == 1 else negatives
        if len(negatives) != len(prompts):
            raise ValueError(f"`negative_prompt` must hold one prompt or {len(prompts)}, got {len(negatives)}.")

    rows = [(p, n, imgs) for p, n, imgs in zip(prompts, negatives, image_lists) for _ in range(count)]
    step = batch_size or len(rows)
    was_training = model.training
    model.eval()
    results = []
    chunks = range(0, len(rows), step)
    bar = _progress(len(rows), progress if len(chunks) > 1 else False, "images")
    try:
        for begin in chunks:
            chunk = rows[begin : begin + step]
            cond = _prompt_batch(model, processor, [r[0] for r in chunk], [r[2] for r in chunk], use_chat_template)
            uncond = None
            if guidance_scale != 1.0:  # the negative prompt keeps the images its markers ask for
                uncond = _prompt_batch(model, processor, [r[1] for r in chunk], [r[2] if token in r[1] else [] for r in chunk], use_chat_template)
            token_progress = progress if len(chunks) == 1 else False
            if discrete:
                chunk_seed = None if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
                bar_ = _progress(config.max_new_tokens, token_progress, "visual tokens")
                results.append(_draw_visual_ids(model, cond, uncond, config, chunk_seed, visual_logits_only, bar_))
            else:
                batch = cond if uncond is None else _left_pad_concat(cond, uncond)
                results.append(generate_visual_embeddings(model, batch["inputs_embeds"], batch["attention_mask"], guidance_scale=guidance_scale,
                                                          output_logits=output_logits, progress=token_progress))
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)

    width = max(r.attention_mask.shape[1] for r in results)
    output = VisualGenerationOutput(attention_mask=torch.cat([F.pad(r.attention_mask, (0, width - r.attention_mask.shape[1])) for r in results]))
    if discrete:
        output.ids = torch.cat([r.ids for r in results])
    else:
        output.embeddings = torch.cat([F.pad(r.embeddings, (0, 0, 0, width - r.embeddings.shape[1])) for r in results])
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
    "decode_visual_tokens",
    "generate_images",
    "generate_visual_embeddings",
    "image_generation_config",
    "image_sampling_settings",
]
