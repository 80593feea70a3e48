"""Configuration of :class:`VTokMLLMForConditionalGeneration`: a causal LM plus a frozen visual tokenizer.

The MLLM config nests two sub-configs, each resolved through ``AutoConfig``:

* ``text_config``: any causal LM (Llama, Qwen2, Gemma, GPT-2, ...). Its vocabulary already contains the
  visual vocabulary once :func:`~hf_vtok.mllm.add_visual_tokens` has run.
* ``visual_tokenizer_config``: any tokenizer implementing ``hf_vtok.VisualTokenizerMixin``
  (SlotQFormer, SeTok, DDT, ...). The MLLM never branches on the family, only on discrete vs continuous.

The vocabulary layout (``visual_token_offset``, ``visual_vocab_size``, ``boi_token_id``, ``eoi_token_id``,
``image_token_id``) is written by :func:`~hf_vtok.mllm.add_visual_tokens`. For discrete tokenizers the
codebook occupies the contiguous window ``[visual_token_offset, visual_token_offset + visual_vocab_size)``
right after the text vocabulary (Slot-MLLM: "ids = code + text vocabulary size"; DDT-LLaMA: 65,536 codes
appended to LLaMA-3), followed by ``<boi>``, ``<eoi>`` and the ``<image>`` placeholder.
"""

from __future__ import annotations

from typing import ClassVar

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..utils.validation import check_choice, check_float, check_int, describe

PROJECTOR_ACTIVATIONS = ("gelu", "silu", "relu")


class VTokMLLMConfig(PreTrainedConfig):
    r"""Configuration of [`VTokMLLMForConditionalGeneration`].

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*): the causal LM's config (default: Llama).
        visual_tokenizer_config (`dict` or `PreTrainedConfig`, *optional*): the visual tokenizer's config.
            ``None`` builds a text-only model that refuses ``pixel_values``.
        visual_token_offset (`int`, *optional*): id of the first code token ``<v_00000>`` (discrete
            tokenizers) or where it would be (continuous ones); set by ``add_visual_tokens``.
        visual_vocab_size (`int`, defaults to 0): number of code tokens (= the codebook size; 0 for
            continuous tokenizers such as SeTok).
        boi_token_id / eoi_token_id / image_token_id (`int`, *optional*): ids of ``<boi>``, ``<eoi>`` and of
            the ``<image>`` placeholder that the processor repeats once per visual token.
        projector_hidden_act (`str`, defaults to `"gelu"`): continuous tokenizers only: activation of the
            2-layer MLP projector from the visual token width to the LM width (LLaVA-1.5 style; SeTok's
            paper does not describe its projector).
        projector_num_layers (`int`, defaults to 2): linear layers of that projector.
        regression_loss_weight (`float`, defaults to 1.0): continuous tokenizers only: weight of the MSE
            between the regression head's output and the tokenizer's embeddings at the generated visual
            positions (SeTok stage II, "embedding regression loss"). The text cross-entropy has weight 1.
        tie_word_embeddings (`bool`, defaults to `False`): follows ``text_config.tie_word_embeddings`` when
            that is set (GPT-2 and Gemma tie, Llama and Qwen2 do not).
        image_guidance_scale (`float`, defaults to 8.0): classifier-free guidance on the LM logits when drawing
            (DDT-LLaMA: 8.0); 1 disables it. Guidance extrapolates from the unconditional branch that caption
            dropout trains, so a model trained without it (``prompt_dropout_prob`` 0) draws best at 1.
        image_temperature (`float`, defaults to 1.0): temperature of the sampled visual ids; 0 is greedy.
            Both are what :func:`~hf_vtok.mllm.generation.generate_images`, the pipelines and ``hf-vtok eval
            --mllm`` use when no value is passed: a model's sampling settings travel with it.
    """

    model_type = "vtok_mllm"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        "visual_tokenizer_config": SubConfigSpec(config_class=AutoConfig, model_type="ddt_tokenizer", optional=True),
    }

    text_config: dict | PreTrainedConfig | None = None
    visual_tokenizer_config: dict | PreTrainedConfig | None = None
    visual_token_offset: int | None = None
    visual_vocab_size: int = 0
    boi_token_id: int | None = None
    eoi_token_id: int | None = None
    image_token_id: int | None = None
    projector_hidden_act: str = "gelu"
    projector_num_layers: int = 2
    regression_loss_weight: float = 1.0
    tie_word_embeddings: bool = False
    image_guidance_scale: float = 8.0
    image_temperature: float = 1.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        self._validate()

    def _validate(self) -> None:
        for name in ("hidden_size", "vocab_size"):
            if not isinstance(getattr(self.text_config, name, None), int):
                raise ValueError(  # noqa: TRY004  (a config field holding the wrong kind of config)
                    f"`text_config` must describe a causal LM with an integer `{name}`, got "
                    f"{type(self.text_config).__name__} with {name}={getattr(self.text_config, name, None)!r}."
                )
        check_int("visual_vocab_size", self.visual_vocab_size, minimum=0)
        for name in ("visual_token_offset", "boi_token_id", "eoi_token_id", "image_token_id"):
            value = getattr(self, name)
            if value is not None:
                check_int(name, value, minimum=0)
        check_choice("projector_hidden_act", self.projector_hidden_act, PROJECTOR_ACTIVATIONS)
        check_int("projector_num_layers", self.projector_num_layers, minimum=1)
        check_float("regression_loss_weight", self.regression_loss_weight, minimum=0.0)
        check_float("image_guidance_scale", self.image_guidance_scale, minimum=0.0)
        check_float("image_temperature", self.image_temperature, minimum=0.0)
        vt = self.visual_tokenizer_config
        if vt is not None:
            for name in ("num_visual_tokens", "token_embedding_dim"):
                if not isinstance(getattr(vt, name, None), int):
                    raise ValueError(  # noqa: TRY004
                        f"`visual_tokenizer_config` must be the config of a VisualTokenizerMixin model with an "
                        f"integer `{name}`, got {describe(vt)}."
                    )
            codebook = getattr(vt, "codebook_size", None)
            if self.visual_vocab_size and codebook is not None and self.visual_vocab_size != codebook:
                raise ValueError(
                    f"`visual_vocab_size` ({self.visual_vocab_size}) must equal the visual tokenizer's "
                    f"`codebook_size` ({codebook})."
                )
            if self.visual_vocab_size and codebook is None:
                raise ValueError(
                    f"`visual_vocab_size` must be 0 for a continuous visual tokenizer (codebook_size=None), got "
                    f"{self.visual_vocab_size}."
                )
        if self.visual_vocab_size and self.visual_token_offset is not None:
            end = self.visual_token_offset + self.visual_vocab_size
            if end > self.text_config.vocab_size:
                raise ValueError(
                    f"The visual window [visual_token_offset, visual_token_offset + visual_vocab_size) = "
                    f"[{self.visual_token_offset}, {end}) exceeds `text_config.vocab_size` "
                    f"({self.text_config.vocab_size}); run `add_visual_tokens` to resize the embeddings."
                )

    # ------------------------------------------------------------------ derived attributes
    @property
    def has_visual_tokenizer(self) -> bool:
        return self.visual_tokenizer_config is not None

    @property
    def is_discrete(self) -> bool:
        """True when the visual tokenizer emits codebook ids (the LM reads and writes them as tokens)."""
        return self.has_visual_tokenizer and getattr(self.visual_tokenizer_config, "codebook_size", None) is not None

    @property
    def num_visual_tokens(self) -> int | None:
        """Tokens per image (the maximum for variable-length tokenizers)."""
        return None if self.visual_tokenizer_config is None else self.visual_tokenizer_config.num_visual_tokens

    @property
    def visual_vocab_ready(self) -> bool:
        """Whether ``add_visual_tokens`` has recorded the vocabulary layout."""
        needed = (self.boi_token_id, self.eoi_token_id, self.image_token_id, self.visual_token_offset)
        return all(value is not None for value in needed) and (not self.is_discrete or self.visual_vocab_size > 0)


__all__ = ["VTokMLLMConfig"]
