"""``VTokMLLMForConditionalGeneration``: any causal LM that reads and writes images through any visual tokenizer.

Standard transformers layout (what TRL's fused LM head and PEFT expect)::

    VTokMLLMForConditionalGeneration
      model: VTokMLLMModel             -> BaseModelOutputWithPast (last_hidden_state, past_key_values)
        language_model                 AutoModel.from_config(config.text_config)   (LlamaModel, GPT2Model, ...)
        visual_tokenizer               AutoModel.from_config(config.visual_tokenizer_config), frozen
        projector                      continuous tokenizers only: visual width -> LM width
      lm_head                          tied to the input embeddings when the LM ties them
      regression_head                  continuous tokenizers only: LM width -> visual width (MSE, SeTok stage II)

Images enter through ``pixel_values`` and the ``<image>`` placeholders the processor wrote:

* discrete tokenizers (SlotQFormer, DDT): the tokenizer's ids replace the placeholders as ``offset + id``, so
  each visual token is read through the LM's OWN embedding row (the same rows the LM head scores when it
  writes images). With ``labels``, placeholders that are targets (label = ``image_token_id``) become the same
  visual ids: images in the completion train generation online.
* continuous tokenizers (SeTok): the embeddings go through ``projector`` into the placeholder positions; at
  target positions the regression head is trained with MSE on the tokenizer embeddings and the LM head learns
  ``<image>`` ("one more visual token") versus ``<eoi>`` (the end-of-image decision).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import can_return_tuple

from ..utils.modeling_utils import VisualTokens
from ..utils.validation import check_tensor, describe
from .configuration_mllm import VTokMLLMConfig
from .generation import generate_images

# transformers 5.24 renamed the key/value cache argument and output field from `past_key_values` to `cache`; the
# models accept either name and pass the language model the one its version uses.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def _resolve_cache(cache, past_key_values):
    if cache is not None and past_key_values is not None:
        raise ValueError("Pass the key/value cache as `cache` or as `past_key_values`, not both.")
    return cache if cache is not None else past_key_values


@dataclass
class VTokMLLMModelOutputWithPast(BaseModelOutputWithPast):
    """``BaseModelOutputWithPast`` plus what the image merge produced.

    Args:
        merged_input_ids: discrete tokenizers: ``input_ids`` with every placeholder replaced by ``offset + id``.
        image_token_mask: `[B, L]` True at the image placeholder positions that were filled.
        visual_embeddings: continuous tokenizers: the tokenizer embeddings `[num_placeholders, D]` in
            placeholder order (the regression targets).
    """

    merged_input_ids: torch.LongTensor | None = None
    image_token_mask: torch.BoolTensor | None = None
    visual_embeddings: torch.FloatTensor | None = None


@dataclass
class VTokMLLMCausalLMOutputWithPast(CausalLMOutputWithPast):
    """Output of :class:`VTokMLLMForConditionalGeneration`: ``CausalLMOutputWithPast`` plus the two loss terms.

    ``loss`` = ``text_loss`` (cross-entropy over text and visual ids) + ``regression_loss_weight`` x
    ``regression_loss`` (continuous tokenizers only).
    """

    text_loss: torch.FloatTensor | None = None
    regression_loss: torch.FloatTensor | None = None


def placeholder_runs(mask: torch.Tensor) -> torch.LongTensor:
    """Lengths of the runs of True in a `[B, L]` mask, in row-major order (one run per image)."""
    padded = F.pad(mask.long(), (1, 1)).flatten()
    change = padded[1:] - padded[:-1]
    starts = (change == 1).nonzero().flatten()
    ends = (change == -1).nonzero().flatten()
    return ends - starts


class VTokMLLMProjector(nn.Module):
    """MLP from the visual token width to the LM width (continuous tokenizers)."""

    def __init__(self, in_dim: int, out_dim: int, num_layers: int, activation: str):
        super().__init__()
        dims = [in_dim] + [out_dim] * num_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.act = ACT2FN[activation]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden)
            if index < len(self.layers) - 1:
                hidden = self.act(hidden)
        return hidden


class VTokMLLMPreTrainedModel(PreTrainedModel):
    config_class = VTokMLLMConfig
    config: VTokMLLMConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement: ClassVar[list[str]] = [CACHE_NAME]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def freeze_visual_tokenizer(self) -> None:
        """The visual tokenizer is never trained with the LM (Slot-MLLM, SeTok stage II, DDT-LLaMA)."""
        for module in self.modules():
            if isinstance(module, VTokMLLMModel) and module.visual_tokenizer is not None:
                module.visual_tokenizer.requires_grad_(False)
                module.visual_tokenizer.eval()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        from .parts import load_mllm_parts, references_mllm_parts

        if args and isinstance(args[0], (str, os.PathLike)):
            folder = Path(os.fspath(args[0]), kwargs.get("subfolder") or "")
            if references_mllm_parts(folder):  # adapter + references to the LM and tokenizer (mllm/parts.py)
                dtype = kwargs.get("dtype") if isinstance(kwargs.get("dtype"), torch.dtype) else None
                model = load_mllm_parts(folder, VTokMLLMForConditionalGeneration, dtype=dtype)
                return model if isinstance(model, cls) else model.model
        loaded = super().from_pretrained(*args, **kwargs)
        # loading replaces the parameters, so the freeze set in __init__ must be applied again
        (loaded[0] if isinstance(loaded, tuple) else loaded).freeze_visual_tokenizer()
        return loaded


class VTokMLLMModel(VTokMLLMPreTrainedModel):
    """Language model backbone + frozen visual tokenizer (+ projector for continuous tokens)."""

    def __init__(self, config: VTokMLLMConfig):
        super().__init__(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.visual_tokenizer = None
        self.projector = None
        if config.has_visual_tokenizer:
            self.visual_tokenizer = AutoModel.from_config(config.visual_tokenizer_config)
            self.visual_tokenizer.requires_grad_(False)
            if not config.is_discrete:
                self.projector = VTokMLLMProjector(
                    config.visual_tokenizer_config.token_embedding_dim,
                    config.text_config.hidden_size,
                    config.projector_num_layers,
                    config.projector_hidden_act,
                )
        self.post_init()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.visual_tokenizer is not None:
            self.freeze_visual_tokenizer()  # frozen: no gradients, no dropout, no EMA codebook updates
        return self

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    # ------------------------------------------------------------------ images
    def _require_visual_tokenizer(self, argument: str):
        if self.visual_tokenizer is None:
            raise ValueError(
                f"`{argument}` needs a visual tokenizer, but this model was built without one "
                "(`config.visual_tokenizer_config` is None)."
            )
        if not self.config.visual_vocab_ready:
            raise ValueError(
                f"`{argument}` needs the visual vocabulary: run `hf_vtok.mllm.add_visual_tokens(tokenizer, model, "
                "visual_tokenizer)` first (config.image_token_id / boi_token_id / eoi_token_id are unset)."
            )
        return self.visual_tokenizer

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> VisualTokens:
        """``pixel_values`` `[I, C, H, W]` → the frozen tokenizer's :class:`VisualTokens`."""
        tokenizer = self._require_visual_tokenizer("pixel_values")
        check_tensor("pixel_values", pixel_values, ndim=4, floating=True)
        parameter = next(tokenizer.parameters())
        dtype = parameter.dtype if parameter.is_floating_point() else torch.float32
        return tokenizer.encode(pixel_values.to(device=parameter.device, dtype=dtype))

    def _check_placeholders(self, image_mask: torch.Tensor, counts: torch.LongTensor) -> None:
        runs = placeholder_runs(image_mask).to(counts.device)
        if runs.numel() != counts.numel() or not torch.equal(runs, counts):
            raise ValueError(
                f"`input_ids` hold {runs.numel()} image placeholder run(s) of lengths {runs.tolist()} but `pixel_values` "
                f"encode to {counts.numel()} image(s) of {counts.tolist()} tokens; use the VTokMLLMProcessor (one "
                "<image> marker per image) and do not truncate images."
            )

    def merge_images(
        self,
        input_ids: torch.LongTensor | None,
        pixel_values: torch.Tensor | None = None,
        visual_tokens: VisualTokens | None = None,
        num_image_tokens: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.LongTensor | None, torch.BoolTensor, torch.Tensor | None]:
        """Fill the placeholders: returns ``(inputs_embeds, merged_input_ids, image_mask, visual_embeddings)``.

        The placeholders are the ``image_token_id`` positions of ``input_ids`` or, given ``inputs_embeds`` alone, the
        rows equal to the ``<image>`` embedding (as LLaVA-style models in transformers find them)."""
        self._require_visual_tokenizer("pixel_values")
        tokens = visual_tokens if visual_tokens is not None else self.encode_images(pixel_values)
        embed = self.get_input_embeddings()
        if inputs_embeds is None:
            inputs_embeds = embed(input_ids)
        if input_ids is not None:
            image_mask = input_ids == self.config.image_token_id
        else:
            image_row = embed(torch.tensor(self.config.image_token_id, device=inputs_embeds.device))
            image_mask = (inputs_embeds == image_row.to(inputs_embeds.dtype)).all(-1)
        device = inputs_embeds.device
        if self.config.is_discrete:
            if tokens.ids is None:
                raise ValueError("The visual tokenizer returned no ids although its config declares a codebook.")
            ids = tokens.ids.to(device)
            counts = torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long, device=device)
            self._check_placeholders(image_mask, counts)
            visual_ids = ids.flatten() + self.config.visual_token_offset
            placeholders = input_ids if input_ids is not None else torch.full_like(image_mask, self.config.image_token_id, dtype=torch.long)
            merged = placeholders.masked_scatter(image_mask, visual_ids)
            inputs_embeds = inputs_embeds.masked_scatter(image_mask[..., None], embed(visual_ids).to(inputs_embeds.dtype))
            return inputs_embeds, merged, image_mask, None
        embeddings = tokens.embeddings
        valid = tokens.attention_mask.bool() if tokens.attention_mask is not None else torch.ones(embeddings.shape[:2], dtype=torch.bool, device=embeddings.device)
        counts = valid.sum(-1).to(device)
        if num_image_tokens is not None:
            given = torch.as_tensor(num_image_tokens, device=counts.device).flatten().long()
            if not torch.equal(given, counts):
                raise ValueError(
                    f"`num_image_tokens` ({given.tolist()}) differ from the token counts the visual tokenizer produced "
                    f"for `pixel_values` ({counts.tolist()}); compute them with `model.count_image_tokens(pixel_values)`."
                )
        self._check_placeholders(image_mask, counts)
        visual = embeddings[valid]  # [sum n_i, D] in image order
        projected = self.projector(visual.to(dtype=inputs_embeds.dtype, device=inputs_embeds.device))
        inputs_embeds = inputs_embeds.masked_scatter(image_mask[..., None], projected)
        return inputs_embeds, None, image_mask, visual

    def _check_input_ids(self, input_ids: torch.LongTensor) -> None:
        check_tensor("input_ids", input_ids, ndim=2, integer=True, non_empty=False)
        embedding = self.get_input_embeddings()
        vocabulary = getattr(embedding, "num_embeddings", None) or embedding.weight.shape[0]
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocabulary):
            raise ValueError(
                f"`input_ids` must be token ids in [0, {vocabulary}) (the language model's vocabulary, text and visual "
                f"tokens), got values in [{int(input_ids.min())}, {int(input_ids.max())}]; encode text with this "
                "model's processor."
            )

    def _check_positions(self, position_ids, length: int, past_key_values) -> None:
        limit = getattr(self.config.text_config, "max_position_embeddings", None)
        if limit is None or length == 0:
            return
        if position_ids is not None:
            last = int(position_ids.max())
        else:
            last = (past_key_values.get_seq_length() if past_key_values is not None else 0) + length - 1
        if last >= limit:
            raise ValueError(
                f"`input_ids` reach position {last} (counting the key/value cache), but the language model has "
                f"`max_position_embeddings` = {limit}: shorten the text, use fewer images, or truncate with the "
                "processor (`truncation=True, max_length=...`)."
            )

    # ------------------------------------------------------------------ forward
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        num_image_tokens: torch.Tensor | None = None,
        visual_tokens: VisualTokens | None = None,
        cache=None,
        **kwargs,
    ) -> VTokMLLMModelOutputWithPast:
        past_key_values = _resolve_cache(cache, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        if input_ids is not None:
            self._check_input_ids(input_ids)
        merged, image_mask, visual = None, None, None
        if pixel_values is not None or visual_tokens is not None:
            inputs_embeds, merged, image_mask, visual = self.merge_images(
                input_ids,
                pixel_values=pixel_values,
                visual_tokens=visual_tokens,
                num_image_tokens=num_image_tokens,
                inputs_embeds=inputs_embeds,
            )
            input_ids = None
        elif input_ids is not None and self.config.image_token_id is not None:
            prefill = past_key_values is None or past_key_values.get_seq_length() == 0
            if prefill and bool((input_ids == self.config.image_token_id).any()):
                raise ValueError(
                    f"`input_ids` hold {int((input_ids == self.config.image_token_id).sum())} image placeholders but no "
                    "`pixel_values` were passed."
                )
        if position_ids is None and attention_mask is not None and attention_mask.ndim == 2:
            # Left padding: count the real tokens, as `generate` does (transformers' unconditional branch of
            # classifier-free guidance passes no positions).
            length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
        self._check_positions(position_ids, (input_ids if input_ids is not None else inputs_embeds).shape[1], past_key_values)
        if use_cache is None and self.training:
            # A cache is useless in training and, once created, makes transformers skip the packed-sequence mask
            # that it builds from restarting position_ids: TRL-packed examples would attend to each other.
            use_cache = False
        outputs = self.language_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **{CACHE_NAME: past_key_values},
            **kwargs,
        )
        return VTokMLLMModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            merged_input_ids=merged,
            image_token_mask=image_mask,
            visual_embeddings=visual,
        )


def _embedding_name(module: nn.Module) -> str:
    embedding = module.get_input_embeddings()
    for name, child in module.named_modules():
        if child is embedding:
            return name
    raise ValueError(f"Could not locate the input embeddings of {type(module).__name__}.")


class VTokMLLMForConditionalGeneration(VTokMLLMPreTrainedModel, GenerationMixin):
    """Causal LM over text + visual tokens; see the module docstring for the layout.

    Batch keys for training (``Trainer`` / ``SFTTrainer``): ``input_ids``, ``attention_mask``, ``labels`` and,
    when the batch holds images, ``pixel_values`` (plus ``num_image_tokens`` for continuous tokenizers) — exactly
    what :class:`VTokMLLMProcessor` returns.

    Build one from an existing LM and visual tokenizer with :meth:`from_text_model_and_tokenizer`.
    """

    _tp_plan: ClassVar[dict[str, str]] = {"lm_head": "colwise_gather_output"}
    output_modalities = ("image", "text")

    def __init__(self, config: VTokMLLMConfig):
        super().__init__(config)
        self._head_rows = None  # (start, end) row ranges scored inside `visual_rows_head`
        self.model = VTokMLLMModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.regression_head = None
        if config.has_visual_tokenizer and not config.is_discrete:
            self.regression_head = nn.Linear(
                config.text_config.hidden_size, config.visual_tokenizer_config.token_embedding_dim
            )
        # the embedding's name depends on the LM family (embed_tokens, wte, ...)
        self._tied_weights_keys = {"lm_head.weight": f"model.language_model.{_embedding_name(self.model.language_model)}.weight"}
        self.post_init()

    # ------------------------------------------------------------------ accessors
    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    def get_decoder(self):
        return self.model.language_model

    @property
    def visual_tokenizer(self):
        return self.model.visual_tokenizer

    @property
    def num_visual_tokens(self) -> int | None:
        return self.config.num_visual_tokens

    # ------------------------------------------------------------------ construction from parts
    @classmethod
    def from_text_model_and_tokenizer(
        cls,
        language_model,
        visual_tokenizer,
        text_tokenizer=None,
        *,
        pad_to_multiple_of: int | None = None,
        **config_kwargs,
    ) -> VTokMLLMForConditionalGeneration:
        """Wrap a causal LM and a visual tokenizer (modules or paths) without copying their weights.

        Args:
            language_model: a causal LM (``XForCausalLM`` / ``GPT2LMHeadModel``) or a path for
                ``AutoModelForCausalLM``. Its backbone and LM head become ``model.language_model`` / ``lm_head``.
            visual_tokenizer: a ``VisualTokenizerMixin`` model or a path for ``AutoModel`` (after
                ``import hf_vtok``); it is frozen.
            text_tokenizer: when given, :func:`add_visual_tokens` runs on it and on the new model (otherwise run
                it yourself before or after; the layout recorded on the LM's config is picked up).
            pad_to_multiple_of: forwarded to ``add_visual_tokens``.
            **config_kwargs: other :class:`VTokMLLMConfig` fields (``projector_num_layers``, ...).
        """
        if isinstance(language_model, (str, os.PathLike)):
            language_model = AutoModelForCausalLM.from_pretrained(language_model)
        if isinstance(visual_tokenizer, (str, os.PathLike)):
            visual_tokenizer = AutoModel.from_pretrained(visual_tokenizer)
        if not isinstance(language_model, PreTrainedModel) or language_model.get_output_embeddings() is None:
            raise TypeError(
                f"`language_model` must be a causal LM PreTrainedModel with an LM head, got {describe(language_model)}."
            )
        if not isinstance(visual_tokenizer, PreTrainedModel) or not hasattr(visual_tokenizer, "encode"):
            raise TypeError(
                f"`visual_tokenizer` must be a VisualTokenizerMixin PreTrainedModel, got {describe(visual_tokenizer)}."
            )
        text_config = copy.deepcopy(language_model.config)
        layout = {}
        for key in ("visual_token_offset", "visual_vocab_size", "boi_token_id", "eoi_token_id", "image_token_id"):
            value = getattr(language_model.config, key, None)
            if value is not None:
                layout[key] = value
        if getattr(visual_tokenizer.config, "codebook_size", None) is None:
            layout.pop("visual_vocab_size", None)
        layout.update(config_kwargs)
        config = VTokMLLMConfig(
            text_config=text_config, visual_tokenizer_config=copy.deepcopy(visual_tokenizer.config), **layout
        )
        with torch.device("meta"):
            model = cls(config)
        model.model.language_model = language_model.base_model
        model.lm_head = language_model.get_output_embeddings()
        visual_tokenizer.requires_grad_(False)
        visual_tokenizer.eval()
        model.model.visual_tokenizer = visual_tokenizer
        reference = language_model.get_input_embeddings().weight
        for module in model.modules():
            own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
            if any(t.is_meta for t in own):
                module.to_empty(device=reference.device, recurse=False)
                model._init_weights(module)
                module.to(reference.dtype)
        model.generation_config = copy.deepcopy(language_model.generation_config)
        model.tie_weights()
        if text_tokenizer is not None:
            from .vocabulary import add_visual_tokens

            add_visual_tokens(text_tokenizer, model, visual_tokenizer, pad_to_multiple_of=pad_to_multiple_of)
        return model

    # ------------------------------------------------------------------ logits
    @property
    def visual_window(self) -> tuple[int, int]:
        """``(start, end)`` of the visual ids in the vocabulary (discrete tokenizers)."""
        if not self.config.is_discrete or not self.config.visual_vocab_ready:
            raise ValueError("The visual window is only defined for a discrete tokenizer after `add_visual_tokens`.")
        start = self.config.visual_token_offset
        return start, start + self.config.visual_vocab_size

    def _softcap(self, logits: torch.Tensor) -> torch.Tensor:
        cap = getattr(self.config.text_config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    @contextlib.contextmanager
    def visual_rows_head(self, enabled: bool = True):
        """Within the block the LM head scores only the rows image generation can emit: the visual window and
        ``<eoi>`` (discrete tokenizers), or ``<image>`` and ``<eoi>`` (continuous ones: one more token, or stop).

        Every forward honours it (``generate`` and the unconditional branch of its classifier-free guidance
        included), so image steps skip the text rows of the head: most of its cost for large text vocabularies.
        The logits keep the vocabulary's width, so ids stay vocabulary ids; the rows not scored hold the dtype's
        minimum (never sampled, and finite so that guidance, which subtracts log-probabilities, stays NaN-free).
        """
        config = self.config
        eoi = config.eoi_token_id
        if config.is_discrete:
            start, end = self.visual_window
            rows = [(start, end + 1)] if eoi == end else [(start, end), (eoi, eoi + 1)]
        elif config.visual_vocab_ready:
            rows = [(config.image_token_id, config.image_token_id + 1), (eoi, eoi + 1)]
        else:
            raise ValueError("`visual_rows_head` needs the visual vocabulary: run `add_visual_tokens` first.")
        previous, self._head_rows = self._head_rows, rows if enabled else None
        try:
            yield self
        finally:
            self._head_rows = previous

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """LM-head logits over the vocabulary (only the rows of :meth:`visual_rows_head` inside that block)."""
        if self._head_rows is None:
            return self._softcap(self.lm_head(hidden_states))
        weight, bias = self.lm_head.weight, self.lm_head.bias
        logits = hidden_states.new_full((*hidden_states.shape[:-1], weight.shape[0]), torch.finfo(hidden_states.dtype).min)
        for start, end in self._head_rows:
            rows_bias = None if bias is None else bias[start:end]
            logits[..., start:end] = self._softcap(F.linear(hidden_states, weight[start:end], rows_bias))
        return logits

    def count_image_tokens(self, pixel_values: torch.Tensor) -> list[int]:
        """Visual tokens per image (what ``VTokMLLMProcessor(num_image_tokens=...)`` needs for variable counts)."""
        tokens = self.model.encode_images(pixel_values)
        if tokens.attention_mask is None:
            return [self.config.num_visual_tokens] * pixel_values.shape[0]
        return tokens.attention_mask.sum(-1).long().tolist()

    @torch.no_grad()
    def tokenize_images(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """Discrete tokenizers: ``pixel_values`` → visual ids `[I, N]` in ``[0, codebook_size)`` (for pre-tokenising
        generation data once with ``datasets.map``; turn them into text with ``processor.ids_to_text``)."""
        if not self.config.is_discrete:
            raise TypeError("`tokenize_images` needs a discrete visual tokenizer; SeTok tokens are continuous embeddings.")
        return self.model.encode_images(pixel_values).ids

    # ------------------------------------------------------------------ forward
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_image_tokens: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | None = None,
        cache=None,
        **kwargs,
    ) -> VTokMLLMCausalLMOutputWithPast:
        """Causal LM forward; with ``labels`` returns ``loss`` (see the class and module docstrings)."""
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=_resolve_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            num_image_tokens=num_image_tokens,
            return_dict=True,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep  # 0 keeps all
        logits = self.compute_logits(hidden[:, keep])

        loss = text_loss = regression_loss = None
        if labels is not None:
            check_tensor("labels", labels, ndim=2, integer=True)
            if labels.shape != hidden.shape[:2]:
                raise ValueError(f"`labels` must have shape {tuple(hidden.shape[:2])}, got {tuple(labels.shape)}.")
            labels = labels.to(logits.device)
            image_id = self.config.image_token_id
            targets = labels == image_id if image_id is not None else torch.zeros_like(labels, dtype=torch.bool)
            if bool(targets.any()):
                mask = outputs.image_token_mask
                if mask is None or not bool(mask[targets].all()):
                    raise ValueError(
                        "`labels` hold image placeholders (generation targets) at positions that are not filled image "
                        "placeholders of the input: pass the images as `pixel_values` and build labels with the processor."
                    )
            if self.config.is_discrete and bool(targets.any()):
                labels = torch.where(targets, outputs.merged_input_ids.to(labels.device), labels)
            text_loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=logits.shape[-1], num_items_in_batch=num_items_in_batch
            )
            loss = text_loss
            if self.regression_head is not None and bool(targets.any()):
                regression_loss = self._regression_loss(hidden, targets, outputs)
                loss = loss + self.config.regression_loss_weight * regression_loss
        return VTokMLLMCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            text_loss=text_loss,
            regression_loss=regression_loss,
        )

    def _regression_loss(self, hidden: torch.Tensor, targets: torch.BoolTensor, outputs) -> torch.Tensor:
        """MSE of ``regression_head(h_{t-1})`` against the tokenizer embedding placed at target position t."""
        full = hidden.new_zeros(*hidden.shape[:2], outputs.visual_embeddings.shape[-1], dtype=torch.float32)
        full[outputs.image_token_mask] = outputs.visual_embeddings.float().to(full.device)
        select = targets[:, 1:]
        prediction = self.regression_head(hidden[:, :-1][select])
        return F.mse_loss(prediction.float(), full[:, 1:][select])

    # ------------------------------------------------------------------ image generation
    def generate_images(self, prompt, processor, **kwargs):
        """Text (and optional source images) → visual tokens, then pixels when ``decoder`` is given.

        See :func:`hf_vtok.mllm.generation.generate_images` for the arguments.
        """

        return generate_images(self, processor, prompt, **kwargs)


__all__ = [
    "VTokMLLMCausalLMOutputWithPast",
    "VTokMLLMForConditionalGeneration",
    "VTokMLLMModel",
    "VTokMLLMModelOutputWithPast",
    "VTokMLLMPreTrainedModel",
    "placeholder_runs",
]
