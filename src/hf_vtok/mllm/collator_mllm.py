"""A data collator for ``Trainer`` / ``SFTTrainer`` built on :class:`VTokMLLMProcessor`.

Examples are dicts with a ``prompt`` and a ``completion`` (strings with ``<image>`` markers), or conversational
``messages`` whose last (assistant) turn is the target, and, when they hold markers, ``images`` (a list) or
``image`` (one); images may also sit inside the messages' content parts. Understanding data puts the image in the prompt (masked in
the labels), generation data in the completion (a target). Pre-tokenised generation data simply carries
``processor.ids_to_text(ids)`` in its completion and no image.

With ``prompt_dropout_prob`` (DDT-LLaMA drops 10 % of captions) the prompt text of generation examples is
replaced by the empty prompt, which is exactly the unconditional prompt classifier-free guidance uses at
inference.
"""

from __future__ import annotations

import random
from typing import Any

from ..utils.validation import check_float, describe
from .processing_mllm import VTokMLLMProcessor


class VTokMLLMDataCollator:
    """Collate prompt/completion examples into ``input_ids``, ``attention_mask``, ``labels`` (+ ``pixel_values``).

    Args:
        processor: the MLLM's processor.
        use_chat_template: format prompts with the chat template (user turn + generation prompt) and end the
            completions with the end-of-sequence token.
        prompt_dropout_prob: probability of replacing the prompt of an example whose completion holds an image
            (generation data) by the empty prompt.
        max_length: truncate longer sequences (an image cut by truncation raises).
        seed: seed of the dropout draws.
        num_image_tokens_fn: continuous tokenizers: ``pixel_values -> counts`` (e.g. ``model.count_image_tokens``).
    """

    def __init__(
        self,
        processor: VTokMLLMProcessor,
        use_chat_template: bool = True,
        prompt_dropout_prob: float = 0.0,
        max_length: int | None = None,
        seed: int | None = None,
        num_image_tokens_fn=None,
    ):
        if not isinstance(processor, VTokMLLMProcessor):
            raise TypeError(f"`processor` must be a VTokMLLMProcessor, got {describe(processor)}.")
        self.processor = processor
        self.use_chat_template = use_chat_template
        self.prompt_dropout_prob = check_float("prompt_dropout_prob", prompt_dropout_prob, minimum=0.0, maximum=1.0)
        self.max_length = max_length
        self.random = random.Random(seed)
        self.num_image_tokens_fn = num_image_tokens_fn

    def _split(self, index: int, example: dict[str, Any]) -> tuple[str, str, list]:
        """``(prompt, completion, images)`` of a prompt/completion or a conversational (``messages``) example."""
        images = example.get("images")
        if images is None and example.get("image") is not None:
            images = [example["image"]]
        images = list(images or [])
        if "messages" in example:
            messages = list(example["messages"])
            if not messages or messages[-1].get("role") != "assistant":
                raise ValueError(f"Example {index}: `messages` must end with an assistant turn (the target).")
            inline = [part.get("image") for m in messages if not isinstance(m["content"], str)
                      for part in m["content"] if part.get("type") == "image" and part.get("image") is not None]
            images = images or inline
            prompt = self.processor.apply_chat_template(messages[:-1], add_generation_prompt=True)
            completion = self.processor._flatten_message(messages[-1])["content"]
            return prompt, self.processor.join_completion(prompt, completion) + (self.processor.tokenizer.eos_token or ""), images
        if "prompt" not in example or "completion" not in example:
            raise KeyError(f"Example {index} needs 'prompt' and 'completion' (or 'messages') keys, got {sorted(example)}.")
        prompt, completion = example["prompt"], example["completion"]
        if self.use_chat_template:
            prompt = self.processor.format_prompt(prompt)
            completion = self.processor.join_completion(prompt, completion) + (self.processor.tokenizer.eos_token or "")
        return prompt, completion, images

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("`examples` must not be empty.")
        prompts, completions, images = [], [], []
        token = self.processor.image_token
        for index, example in enumerate(examples):
            if token in example.get("completion", "") and self.prompt_dropout_prob and self.random.random() < self.prompt_dropout_prob:
                # drop the words, keep input images (editing): the unconditional prompt of guidance
                example = {**example, "prompt": " ".join([token] * example["prompt"].count(token))}
            prompt, completion, sample_images = self._split(index, example)
            prompts.append(prompt)
            completions.append(completion)
            images.append(sample_images)
        has_images = any(images)
        counts = None
        if has_images and not self.processor.is_discrete:
            if self.num_image_tokens_fn is None:
                raise ValueError("`num_image_tokens_fn` is required to collate images for a continuous tokenizer.")
            pixel_values = self.processor.image_processor([i for sample in images for i in sample], return_tensors="pt")["pixel_values"]
            counts = self.num_image_tokens_fn(pixel_values)
        return dict(
            self.processor(
                images=images if has_images else None,
                text=prompts,
                completion=completions,
                num_image_tokens=counts,
                truncation=self.max_length is not None,
                max_length=self.max_length,
                padding_side="right",
            )
        )


__all__ = ["VTokMLLMDataCollator"]
