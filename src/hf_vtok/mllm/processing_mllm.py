"""``VTokMLLMProcessor``: text tokenizer + the visual tokenizer's image processor, for any tokenizer family.

What it does:

* expands every ``<image>`` marker in the text to ``<boi>`` + N ``<image>`` placeholders + ``<eoi>``; the
  model later fills the placeholder positions (discrete tokenizers: with the LM's own embedding rows of
  ``offset + id``; continuous ones: with projected embeddings);
* applies a chat template ("USER: ... ASSISTANT: ..." by default, as in the papers; any Jinja template or a
  named preset);
* builds labels: with ``completion=...`` the prompt is masked (-100) and the completion is the target; image
  placeholders inside the completion stay ``image_token_id`` and the model swaps them for the image's visual
  ids (discrete) or regresses the embeddings there (continuous), so the same call prepares understanding
  (image in the prompt) and generation (image in the completion) examples;
* converts between visual ids and text (``ids_to_text`` / ``text_to_ids``) so that images pre-tokenised once
  with ``datasets.map`` train as plain token sequences (with packing).

Placeholder count N: discrete tokenizers have a fixed count per image (``num_visual_tokens``, saved in the
processor config). A continuous tokenizer with a variable count (SeTok) needs the count of every image:
pass ``num_image_tokens=[n_1, n_2, ...]`` (``VTokMLLMForConditionalGeneration.count_image_tokens(pixel_values)``
computes it; the pipelines do this for you). A processor cannot hold a model, hence this split.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
from transformers.processing_utils import ProcessorMixin
from transformers.utils.chat_template_utils import render_jinja_template

from ..utils.validation import check_int, check_token_ids, describe
from .vocabulary import BOI_TOKEN, EOI_TOKEN, IMAGE_TOKEN, code_token, code_tokens

_CONTENT_MACRO = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'image' -%}{{ image_token }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)

#: Named chat templates. Each accepts string contents and content lists with ``{"type": "image"}`` parts.
CHAT_TEMPLATES: dict[str, str] = {
    # Vicuna/LLaVA style used by Slot-MLLM and SeTok ("USER: ... ASSISTANT: ...").
    "user_assistant": _CONTENT_MACRO
    + "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ render(message['content']) + ' ' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'USER: ' + render(message['content']) + ' ' }}"
    "{%- else -%}{{ 'ASSISTANT: ' + render(message['content']) + eos_token + ' ' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}",
    "chatml": _CONTENT_MACRO
    + "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + render(message['content']) + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}",
    # No roles at all: "<caption> <boi> ... <eoi>" (DDT-LLaMA's pre-training format).
    "plain": _CONTENT_MACRO
    + "{%- for message in messages -%}{{ render(message['content']) }}"
    "{%- if message['role'] == 'assistant' -%}{{ eos_token }}{%- endif -%}{{ ' ' if not loop.last else '' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt and messages -%}{{ ' ' }}{%- endif -%}",
}
DEFAULT_CHAT_TEMPLATE = "user_assistant"

#: The fields each task prompt must hold (``{image}`` becomes the processor's image marker).
TASK_PROMPT_FIELDS: dict[str, tuple[str, ...]] = {
    "captioning": ("image",),
    "qa": ("image", "question"),
    "text_to_image": ("caption",),
    "editing": ("image", "instruction"),
}


def check_task_prompts(task_prompts) -> dict[str, str] | None:
    """Validate ``{task: prompt}`` (the phrasing a model was trained with, e.g. ``"{caption} generate an image"``)."""
    if task_prompts is None:
        return None
    if not isinstance(task_prompts, dict):
        raise TypeError(f"`task_prompts` must be a dict {{task: prompt}}, got {describe(task_prompts)}.")
    checked = {}
    for task, prompt in task_prompts.items():
        if task not in TASK_PROMPT_FIELDS:
            raise ValueError(f"`task_prompts` keys must be among {sorted(TASK_PROMPT_FIELDS)}, got {task!r}.")
        if not isinstance(prompt, str):
            raise TypeError(f"`task_prompts[{task!r}]` must be a string, got {describe(prompt)}.")
        missing = [name for name in TASK_PROMPT_FIELDS[task] if "{" + name + "}" not in prompt]
        if missing:
            raise ValueError(f"`task_prompts[{task!r}]` must contain {['{' + m + '}' for m in missing]}, got {prompt!r}.")
        checked[task] = prompt
    return checked


def resolve_chat_template(chat_template: str | None) -> str | None:
    """A Jinja chat template from a preset name (``CHAT_TEMPLATES``) or a Jinja string (validated)."""
    if chat_template is None:
        return None
    if not isinstance(chat_template, str):
        raise TypeError(f"`chat_template` must be a preset name or a Jinja string, got {describe(chat_template)}.")
    if chat_template in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[chat_template]
    if "{{" not in chat_template and "{%" not in chat_template:
        raise ValueError(
            f"`chat_template` must be one of {sorted(CHAT_TEMPLATES)} or a Jinja template, got {chat_template!r}."
        )
    import jinja2  # transformers' optional "chat-template" dependency

    try:
        jinja2.Environment().parse(chat_template)
    except jinja2.TemplateSyntaxError as error:
        raise ValueError(f"`chat_template` is not a valid Jinja template: {error}") from None
    return chat_template


def image_processor_for(visual_tokenizer_config, **kwargs):
    """The image processor registered for a visual tokenizer's config class, sized to ``config.image_size``.

    Uses the PIL backend (no torchvision needed) and the config's ``image_mean``/``image_std`` when it has them.
    """
    classes = IMAGE_PROCESSOR_MAPPING.get(type(visual_tokenizer_config), None)
    if classes is None:
        raise ValueError(
            f"No image processor is registered for {type(visual_tokenizer_config).__name__}; import hf_vtok, or "
            "pass `image_processor=` yourself."
        )
    if isinstance(classes, dict):
        cls = classes.get("pil") or next(c for c in classes.values() if c is not None)
    elif isinstance(classes, (tuple, list)):
        cls = next(c for c in classes if c is not None)
    else:
        cls = classes
    values: dict[str, Any] = {}
    size = getattr(visual_tokenizer_config, "image_size", None)
    if isinstance(size, int):
        values["size"] = {"shortest_edge": size}
        values["crop_size"] = {"height": size, "width": size}
    for name in ("image_mean", "image_std"):
        value = getattr(visual_tokenizer_config, name, None)
        if value is not None:
            values[name] = list(value)
    values.update(kwargs)
    return cls(**values)


def _flatten_images(images) -> tuple[list | None, list[int] | None]:
    """Images as a flat list, plus per-sample counts when a list of lists was given."""
    if images is None:
        return None, None
    if isinstance(images, (list, tuple)) and len(images) and all(isinstance(item, (list, tuple)) for item in images):
        counts = [len(item) for item in images]
        return [image for item in images for image in item], counts
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images), None
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images), None
    if isinstance(images, (list, tuple)):
        return list(images), None
    return [images], None


class VTokMLLMProcessor(ProcessorMixin):
    r"""Processor of :class:`VTokMLLMForConditionalGeneration`.

    Args:
        image_processor: the visual tokenizer's image processor (e.g. ``image_processor_for(config)``).
        tokenizer: the text tokenizer after :func:`~hf_vtok.mllm.add_visual_tokens`.
        chat_template (`str`, *optional*): a preset name (``"user_assistant"`` = "USER: ... ASSISTANT: ...",
            ``"chatml"``, ``"plain"``) or a Jinja template; defaults to the tokenizer's template if it has one,
            else ``"user_assistant"``. Templates see ``messages``, ``add_generation_prompt``, ``eos_token``,
            ``bos_token`` and ``image_token``.
        num_visual_tokens (`int`): placeholders per image (the maximum for variable-length tokenizers).
        codebook_size (`int`, *optional*): the visual codebook size; ``None`` for continuous tokenizers.
        task_prompts (`dict`, *optional*): the prompt phrasing the model was trained with, per task
            (``captioning``, ``qa``, ``text_to_image``, ``editing``; e.g. ``"{caption} generate an image"``).
            Training writes it; :meth:`task_prompt`, the generation pipelines and the evaluation use it so
            that a trained model is asked the way it learned. ``None``: prompts are used as given.

    Build one from the parts with :meth:`from_visual_tokenizer`.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        num_visual_tokens=None,
        codebook_size=None,
        task_prompts=None,
        **kwargs,
    ):
        if image_processor is None or tokenizer is None:
            raise ValueError(
                f"`image_processor` and `tokenizer` are both required, got image_processor={describe(image_processor)} "
                f"and tokenizer={describe(tokenizer)}."
            )
        if chat_template is None:
            chat_template = getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
        chat_template = resolve_chat_template(chat_template)
        self.num_visual_tokens = check_int("num_visual_tokens", num_visual_tokens, minimum=1) if num_visual_tokens is not None else None
        if self.num_visual_tokens is None:
            raise ValueError("`num_visual_tokens` is required (tokens per image, from the visual tokenizer config).")
        self.codebook_size = None if codebook_size is None else check_int("codebook_size", codebook_size, minimum=1)
        self.task_prompts = check_task_prompts(task_prompts)
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)
        for name, default in (("image_token", IMAGE_TOKEN), ("boi_token", BOI_TOKEN), ("eoi_token", EOI_TOKEN)):
            token = getattr(tokenizer, name, None) or default
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token not in tokenizer.get_vocab():
                raise ValueError(
                    f"`tokenizer` has no {token!r} token: run `hf_vtok.mllm.add_visual_tokens(tokenizer, model, "
                    "visual_tokenizer)` first."
                )
            setattr(self, name, token)
            setattr(self, f"{name}_id", token_id)
        if self.codebook_size is not None:
            first, last = code_token(0, self.codebook_size), code_token(self.codebook_size - 1, self.codebook_size)
            vocab = tokenizer.get_vocab()
            if first not in vocab or last not in vocab or vocab[last] - vocab[first] != self.codebook_size - 1:
                raise ValueError(
                    f"`tokenizer` lacks the contiguous code tokens {first}..{last}: run `add_visual_tokens` first."
                )
            self.visual_token_offset = vocab[first]
        else:
            self.visual_token_offset = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_visual_tokenizer(cls, tokenizer, visual_tokenizer, image_processor=None, chat_template=None, task_prompts=None):
        """Processor for ``visual_tokenizer`` (a VisualTokenizerMixin model or its config) and a text tokenizer
        already grown by ``add_visual_tokens``."""
        config = getattr(visual_tokenizer, "config", visual_tokenizer)
        if not isinstance(getattr(config, "num_visual_tokens", None), int):
            raise TypeError(f"`visual_tokenizer` must be a VisualTokenizerMixin model or its config, got {describe(visual_tokenizer)}.")
        if image_processor is None:
            image_processor = image_processor_for(config)
        return cls(
            image_processor=image_processor,
            tokenizer=tokenizer,
            chat_template=chat_template,
            num_visual_tokens=config.num_visual_tokens,
            codebook_size=getattr(config, "codebook_size", None),
            task_prompts=task_prompts,
        )

    @property
    def is_discrete(self) -> bool:
        return self.codebook_size is not None

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]

    # ------------------------------------------------------------------ chat formatting
    def _render(self, messages, add_generation_prompt: bool, chat_template: str | None = None) -> str:
        template = resolve_chat_template(chat_template) if chat_template is not None else self.chat_template
        if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise ValueError(
                "`conversation` must be a list of {'role': ..., 'content': ...} messages, got "
                f"{describe(messages)}."
            )
        rendered, _ = render_jinja_template(
            [[self._flatten_message(message) for message in messages]],
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            eos_token=self.tokenizer.eos_token or "",
            bos_token=self.tokenizer.bos_token or "",
            image_token=self.image_token,
        )
        return rendered[0]

    def _flatten_message(self, message: dict) -> dict:
        """Content lists (``[{"type": "image"}, {"type": "text", "text": ...}]``) → one string with ``<image>``
        markers, so that any text-only chat template (e.g. the LM tokenizer's own) renders multimodal messages."""
        content = message["content"]
        if isinstance(content, str):
            return message
        if not isinstance(content, (list, tuple)):
            raise TypeError(f"A message `content` must be a string or a list of parts, got {describe(content)}.")
        pieces = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image":
                pieces.append(self.image_token)
            elif kind == "text":
                pieces.append(part.get("text", ""))
            else:
                raise ValueError(f"Unsupported message part {describe(part)}: expected type 'image' or 'text'.")
        return {**message, "content": " ".join(p for p in pieces if p)}

    def task_prompt(self, task: str, **values: str) -> str:
        """The prompt for ``task`` in the phrasing of :attr:`task_prompts`, e.g.
        ``task_prompt("qa", question="what colour is the circle?")`` → ``"<image> what colour is the circle?"``.

        ``{image}`` becomes the image marker. Without a trained phrasing for ``task`` the prompt is the
        task's main value (the caption, the instruction, the question) after the image marker, if any.
        """
        if task not in TASK_PROMPT_FIELDS:
            raise ValueError(f"`task` must be one of {sorted(TASK_PROMPT_FIELDS)}, got {task!r}.")
        values = {"image": self.image_token, **values}
        missing = [name for name in TASK_PROMPT_FIELDS[task] if name not in values]
        if missing:
            raise ValueError(f"`task_prompt({task!r})` needs the value(s) {missing}.")
        template = (self.task_prompts or {}).get(task)
        if template is None:
            template = " ".join("{" + name + "}" for name in TASK_PROMPT_FIELDS[task])
        try:
            return template.format(**values)
        except KeyError as error:
            raise ValueError(f"`task_prompts[{task!r}]` uses the field {error}, which was not given.") from None

    def format_prompt(self, prompt: str, chat_template: str | None = None) -> str:
        """One user turn followed by the generation prompt, e.g. ``"USER: <prompt> ASSISTANT:"``."""
        if not isinstance(prompt, str):
            raise TypeError(f"`prompt` must be a string, got {describe(prompt)}.")
        return self._render([{"role": "user", "content": prompt}], add_generation_prompt=True, chat_template=chat_template)

    @staticmethod
    def join_completion(prompt: str, completion: str) -> str:
        """The completion as it follows ``prompt``: one space after ``"ASSISTANT:"``, nothing after a generation prompt
        that already ends in whitespace (ChatML's ``"assistant\\n"``), where a space would merge with the newline into
        one token that inference never sees."""
        return completion if prompt[-1:].isspace() else " " + completion

    def apply_chat_template(
        self,
        conversation,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tokenize: bool = False,
        return_dict: bool = False,
        return_tensors: str | None = None,
        processor_kwargs: dict | None = None,
        **kwargs,
    ):
        """Render one conversation (or a list of them) with the chat template.

        Image parts (``{"type": "image", "image": PIL | array | path}``) become ``<image>`` markers; with
        ``tokenize=True`` the images are processed too and the result is what ``__call__`` returns.
        """
        batched = isinstance(conversation, (list, tuple)) and len(conversation) > 0 and isinstance(conversation[0], (list, tuple))
        conversations = conversation if batched else [conversation]
        texts, images = [], []
        for messages in conversations:
            messages = getattr(messages, "messages", messages)  # transformers' Chat wrapper
            text = self._render(list(messages), add_generation_prompt and not continue_final_message, chat_template)
            if continue_final_message and self.tokenizer.eos_token and text.rstrip().endswith(self.tokenizer.eos_token):
                text = text.rstrip()[: -len(self.tokenizer.eos_token)]
            texts.append(text)
            sample_images = []
            for message in messages:
                content = message["content"]
                if isinstance(content, str):
                    continue
                for part in content:
                    if part.get("type") == "image":
                        image = part.get("image", part.get("path", part.get("url")))
                        if image is None:
                            raise ValueError("An image part of `conversation` has no 'image', 'path' or 'url'.")
                        if isinstance(image, str) and image.startswith(("http://", "https://")):
                            from transformers.image_utils import load_image

                            image = load_image(image)
                        sample_images.append(image)
            images.append(sample_images)
        if not tokenize:
            return texts if batched else texts[0]
        options = dict(processor_kwargs or {})
        options.update({k: v for k, v in kwargs.items() if k in ("padding", "truncation", "max_length", "padding_side", "num_image_tokens")})
        has_images = any(images)
        out = self(text=texts, images=images if has_images else None, return_tensors=return_tensors, **options)
        return out if return_dict else out["input_ids"]

    # ------------------------------------------------------------------ main entry point
    def _expansion(self, count: int) -> str:
        return self.boi_token + self.image_token * count + self.eoi_token

    def __call__(
        self,
        images=None,
        text: str | Sequence[str] | None = None,
        completion: str | Sequence[str] | None = None,
        *,
        num_image_tokens: Sequence[int] | None = None,
        use_chat_template: bool = False,
        return_labels: bool | None = None,
        mask_image_labels: bool = False,
        padding: bool | str = True,
        padding_side: str | None = None,
        truncation: bool = False,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        add_special_tokens: bool = True,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Tokenize text (and optional completions), expand image markers and process the images.

        Args:
            images: one image, a flat list (consumed in order by the ``<image>`` markers of all samples), or one
                list per sample. PIL images, arrays, tensors in [0, 1] or paths.
            text: prompt(s) with ``<image>`` markers.
            completion: target(s), one per prompt: the prompt is masked in ``labels``, the completion is learnt.
                ``<image>`` markers in a completion make that image a generation target.
            num_image_tokens: placeholders per image, in marker order; required for continuous tokenizers
                (variable counts), must equal ``num_visual_tokens`` for discrete ones.
            use_chat_template: wrap each prompt as a user turn + generation prompt and end each completion with
                the end-of-sequence token.
            return_labels: build ``labels`` (default: only when ``completion`` is given). Without a
                completion, labels are the input ids with padding masked.
            mask_image_labels: also mask every image span (``<boi>``, placeholders, ``<eoi>``) in the labels
                (understanding-only language-modeling data).
            padding, padding_side, truncation, max_length, pad_to_multiple_of, add_special_tokens,
                return_tensors: as for the tokenizer.
        """
        if kwargs:
            unknown = sorted(k for k in kwargs if k not in ("return_attention_mask", "images_kwargs", "text_kwargs"))
            if unknown:
                raise TypeError(f"Unexpected keyword argument(s) {unknown} for VTokMLLMProcessor.__call__.")
        if text is None and images is None:
            raise ValueError("Pass `text` (with `<image>` markers) and/or `images`.")
        if text is None:
            flat, _ = _flatten_images(images)
            text = [self.image_token] * len(flat) if len(flat) > 1 else self.image_token
        single = isinstance(text, str)
        texts = [text] if single else list(text) if isinstance(text, Iterable) else None
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"`text` must be a string or a list of strings, got {describe(text)}.")
        completions = None
        if completion is not None:
            completions = [completion] if isinstance(completion, str) else list(completion)
            if len(completions) != len(texts) or not all(isinstance(c, str) for c in completions):
                raise ValueError(
                    f"`completion` must hold one string per prompt ({len(texts)}), got {describe(completion)}."
                )
        if use_chat_template:
            texts = [self.format_prompt(t) for t in texts]
            if completions is not None:
                eos = self.tokenizer.eos_token or ""
                completions = [self.join_completion(t, c) + eos for t, c in zip(texts, completions)]
        if return_labels is None:
            return_labels = completions is not None

        # --- images ↔ markers
        segments = [[t] if completions is None else [t, completions[i]] for i, t in enumerate(texts)]
        markers = [[segment.count(self.image_token) for segment in sample] for sample in segments]
        total_markers = sum(sum(m) for m in markers)
        flat_images, per_sample = _flatten_images(images)
        num_images = 0 if flat_images is None else len(flat_images)
        if per_sample is not None:
            if len(per_sample) != len(texts):
                raise ValueError(
                    f"`images` holds {len(per_sample)} per-sample lists for {len(texts)} text(s); pass one list per text."
                )
            for index, (count, sample) in enumerate(zip(per_sample, markers)):
                if count != sum(sample):
                    raise ValueError(
                        f"`text` sample {index} has {sum(sample)} {self.image_token} marker(s) but `images[{index}]` "
                        f"holds {count} image(s)."
                    )
        if total_markers != num_images:
            raise ValueError(
                f"`text` holds {total_markers} {self.image_token} marker(s) but {num_images} image(s) were passed in "
                "`images`; pass exactly one image per marker."
            )
        counts = self._token_counts(num_images, num_image_tokens)

        # --- expand markers (in order over samples, prompt before completion)
        counter = iter(counts)
        pattern = re.compile(re.escape(self.image_token))
        expanded = [
            [pattern.sub(lambda _m: self._expansion(next(counter)), segment) for segment in sample] for sample in segments
        ]

        # --- tokenize
        rows, label_rows = [], []
        for sample in expanded:
            ids = self.tokenizer(sample[0], add_special_tokens=add_special_tokens)["input_ids"]
            labels = list(ids) if completions is None else [-100] * len(ids)
            if completions is not None:
                target = self.tokenizer(sample[1], add_special_tokens=False)["input_ids"]
                ids = ids + target
                labels = labels + list(target)
            if truncation and max_length is not None:
                ids, labels = ids[:max_length], labels[:max_length]
            rows.append(ids)
            label_rows.append(labels)
        remaining = iter(counts)
        expected = [sum(next(remaining) for _ in range(sum(sample))) for sample in markers]
        for index, ids in enumerate(rows):
            found = sum(1 for token in ids if token == self.image_token_id)
            if found != expected[index]:
                raise ValueError(
                    f"Sample {index} holds {found} image placeholders after tokenization, expected {expected[index]}: "
                    "`max_length` truncated an image (or the text contains raw placeholders). Increase `max_length`."
                )
        if mask_image_labels:
            masked = {self.image_token_id, self.boi_token_id, self.eoi_token_id}
            label_rows = [[-100 if token in masked else label for token, label in zip(ids, labels)] for ids, labels in zip(rows, label_rows)]

        side = padding_side or self.tokenizer.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"`padding_side` must be 'left' or 'right', got {side!r}.")
        length = max(len(r) for r in rows)
        if padding == "max_length" and max_length is not None:
            length = max(length, max_length)
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        if not padding and len({len(r) for r in rows}) > 1 and return_tensors is not None:
            raise ValueError("Texts of different lengths need `padding=True` to be returned as tensors.")
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        if pad_id is None:
            raise ValueError("`tokenizer` has neither a pad nor an end-of-sequence token to pad with.")

        def pad(values: list, fill: int) -> list:
            gap = [fill] * ((length - len(values)) if padding else 0)
            return gap + values if side == "left" else values + gap

        data: dict[str, Any] = {
            "input_ids": [pad(ids, pad_id) for ids in rows],
            "attention_mask": [pad([1] * len(ids), 0) for ids in rows],
        }
        if return_labels:  # padding never contributes, whatever pad id the tokenizer uses
            data["labels"] = [pad(labels, -100) for labels in label_rows]
        if flat_images:
            data["pixel_values"] = self.image_processor(flat_images, return_tensors="pt")["pixel_values"]
            if not self.is_discrete:
                data["num_image_tokens"] = list(counts)
        if return_tensors == "pt":
            data.update({key: torch.tensor(value, dtype=torch.long) for key, value in data.items() if key != "pixel_values"})
        elif return_tensors is not None:
            raise ValueError(f"`return_tensors` must be 'pt' or None, got {return_tensors!r}.")
        elif single and completions is None:
            for key in ("input_ids", "attention_mask", "labels"):
                if key in data:
                    data[key] = data[key][0]
        return BatchFeature(data=data)

    def _token_counts(self, num_images: int, num_image_tokens) -> list[int]:
        if num_image_tokens is None:
            if num_images and not self.is_discrete:
                raise ValueError(
                    "`num_image_tokens` is required for a continuous visual tokenizer with a variable token count: "
                    "pass one count per image, e.g. `model.count_image_tokens(pixel_values)`."
                )
            return [self.num_visual_tokens] * num_images
        if isinstance(num_image_tokens, torch.Tensor):
            num_image_tokens = num_image_tokens.tolist()
        if isinstance(num_image_tokens, int) and not isinstance(num_image_tokens, bool):
            num_image_tokens = [num_image_tokens] * num_images
        if not isinstance(num_image_tokens, (list, tuple)) or len(num_image_tokens) != num_images:
            raise ValueError(
                f"`num_image_tokens` must hold one count per image ({num_images}), got {describe(num_image_tokens)}."
            )
        counts = [check_int("num_image_tokens", n, minimum=1, maximum=self.num_visual_tokens) for n in num_image_tokens]
        if self.is_discrete and any(n != self.num_visual_tokens for n in counts):
            raise ValueError(
                f"`num_image_tokens` must be {self.num_visual_tokens} for every image of a discrete tokenizer, got {counts}."
            )
        return counts

    # ------------------------------------------------------------------ visual ids ↔ text
    def _require_discrete(self, name: str) -> None:
        if not self.is_discrete:
            raise TypeError(f"`{name}` is only defined for discrete visual tokenizers; this processor's is continuous.")

    def ids_to_text(self, ids) -> str | list[str]:
        """Visual ids ``[N]`` (one image) or ``[B, N]`` → ``"<boi><v_00012>...<eoi>"`` string(s).

        Feed the strings to the tokenizer like any text: this is how images pre-tokenised once with
        ``datasets.map`` become plain (packable) training sequences.
        """
        self._require_discrete("ids_to_text")
        if isinstance(ids, (list, tuple)):
            try:
                ids = torch.tensor(ids, dtype=torch.long)
            except (TypeError, ValueError) as error:
                raise TypeError(f"`ids` must be a LongTensor [N] / [B, N] or nested lists of ints: {error}") from None
        if not isinstance(ids, torch.Tensor) or ids.ndim not in (1, 2) or ids.is_floating_point():
            raise TypeError(f"`ids` must be an integer tensor of shape [N] or [B, N], got {describe(ids)}.")
        single = ids.ndim == 1
        ids = ids[None] if single else ids
        ids = check_token_ids(ids, codebook_size=self.codebook_size, num_tokens=self.num_visual_tokens)
        table = code_tokens(self.codebook_size)
        texts = [self.boi_token + "".join(map(table.__getitem__, row)) + self.eoi_token for row in ids.tolist()]
        return texts[0] if single else texts

    def text_to_ids(self, sequence, *, strict: bool = True) -> list[torch.LongTensor]:
        """Every image in ``sequence`` (a string, or token ids ``[L]``) → a list of ``[N]`` visual id tensors.

        With ``strict`` a ``<boi>`` without ``<eoi>``, a non-visual token inside an image, or a count other than
        ``num_visual_tokens`` raises a ``ValueError`` naming ``sequence``.
        """
        self._require_discrete("text_to_ids")
        if isinstance(sequence, str):
            tokens = self.tokenizer(sequence, add_special_tokens=False)["input_ids"]
        elif isinstance(sequence, torch.Tensor):
            if sequence.ndim != 1 or sequence.is_floating_point():
                raise TypeError(f"`sequence` must be a string or 1-D token ids, got {describe(sequence)}.")
            tokens = sequence.tolist()
        elif isinstance(sequence, (list, tuple)) and all(isinstance(t, (int, np.integer)) for t in sequence):
            tokens = [int(t) for t in sequence]
        else:
            raise TypeError(f"`sequence` must be a string or 1-D token ids, got {describe(sequence)}.")
        offset, size = self.visual_token_offset, self.codebook_size
        images, current = [], None
        for position, token in enumerate(tokens):
            if token == self.boi_token_id:
                if current is not None and strict:
                    raise ValueError(f"`sequence` breaks the visual window: a second <boi> at position {position} before <eoi>.")
                current = []
            elif token == self.eoi_token_id:
                if current is None:
                    if strict:
                        raise ValueError(f"`sequence` breaks the visual window: <eoi> at position {position} without <boi>.")
                    continue
                if strict and len(current) != self.num_visual_tokens:
                    raise ValueError(
                        f"`sequence` breaks the visual window: an image holds {len(current)} visual ids, expected "
                        f"{self.num_visual_tokens}."
                    )
                images.append(torch.tensor(current, dtype=torch.long))
                current = None
            elif current is not None:
                if offset <= token < offset + size:
                    current.append(token - offset)
                elif strict:
                    raise ValueError(
                        f"`sequence` breaks the visual window: token id {token} at position {position} lies outside "
                        f"[{offset}, {offset + size}) inside an image."
                    )
        if current is not None and strict:
            raise ValueError("`sequence` breaks the visual window: <boi> without a closing <eoi>.")
        return images


__all__ = [
    "CHAT_TEMPLATES",
    "DEFAULT_CHAT_TEMPLATE",
    "TASK_PROMPT_FIELDS",
    "VTokMLLMProcessor",
    "check_task_prompts",
    "image_processor_for",
    "resolve_chat_template",
]
