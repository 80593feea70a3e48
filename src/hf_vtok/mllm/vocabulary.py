"""Grow a text tokenizer and a causal LM by a visual vocabulary: ``add_visual_tokens``.

Layout (Slot-MLLM's released code, "ids = code + text vocabulary size"; DDT-LLaMA appends its 65,536 codes
the same way)::

    [0, offset)                      the text vocabulary (unchanged)
    [offset, offset + K)             <v_00000> ... <v_{K-1}>: one token per codebook entry (discrete tokenizers)
    offset + K, +1, +2               <boi>, <eoi>, <image> (registered as named special tokens)

``K`` is the codebook size (0 for continuous tokenizers such as SeTok, whose embeddings enter the LM through
a projector instead). The embedding matrix (and an untied LM head) grows with ``mean_resizing`` so that the
new rows start at the mean of the text rows and do not perturb the LM's text distribution.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch
from tokenizers import AddedToken
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from ..utils.validation import check_int, describe

IMAGE_TOKEN = "<image>"
BOI_TOKEN = "<boi>"
EOI_TOKEN = "<eoi>"


def code_token_width(codebook_size: int) -> int:
    """Digits of the zero-padded code tokens: 5 (``<v_00042>``) unless the codebook needs more."""
    return max(5, len(str(max(codebook_size - 1, 0))))


def code_token(index: int, codebook_size: int) -> str:
    """The string token of codebook entry ``index``: ``<v_00042>``."""
    return f"<v_{index:0{code_token_width(codebook_size)}d}>"


@functools.lru_cache(maxsize=8)
def code_tokens(codebook_size: int) -> tuple[str, ...]:
    """Every code token of a codebook, in index order (a table: writing an image as text looks up 192+ of them)."""
    return tuple(code_token(index, codebook_size) for index in range(codebook_size))


@dataclass(frozen=True)
class VisualVocabulary:
    """Where the visual vocabulary sits in the LM vocabulary (what ``add_visual_tokens`` returns)."""

    visual_token_offset: int
    visual_vocab_size: int
    boi_token_id: int
    eoi_token_id: int
    image_token_id: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _visual_tokenizer_attributes(visual_tokenizer) -> tuple[int | None, int]:
    """``(codebook_size, num_visual_tokens)`` of a VisualTokenizerMixin model or of its config."""
    num_tokens = getattr(visual_tokenizer, "num_visual_tokens", None)
    if not isinstance(num_tokens, int) or isinstance(num_tokens, bool) or num_tokens < 1:
        raise TypeError(
            "`visual_tokenizer` must be a VisualTokenizerMixin model (or its config) with a positive integer "
            f"`num_visual_tokens`, got {describe(visual_tokenizer)}."
        )
    codebook_size = getattr(visual_tokenizer, "codebook_size", None)
    if codebook_size is not None:
        codebook_size = check_int("visual_tokenizer.codebook_size", codebook_size, minimum=1)
    return codebook_size, num_tokens


def _register_special_token(tokenizer, name: str, token: str) -> int:
    """Make ``token`` a named special token (``tokenizer.<name>``, saved in tokenizer_config.json)."""
    if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id) or token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
    if getattr(tokenizer, name, None) != token:
        # The public route is ``extra_special_tokens={name: token}`` at load time; for a live tokenizer this
        # is the same registration transformers performs in ``__init__``.
        tokenizer._set_model_specific_special_tokens({name: token})
    return tokenizer.convert_tokens_to_ids(token)


def add_visual_tokens(
    tokenizer: PreTrainedTokenizerBase,
    model: PreTrainedModel,
    visual_tokenizer,
    *,
    pad_to_multiple_of: int | None = None,
    mean_resizing: bool = True,
    image_token: str = IMAGE_TOKEN,
    boi_token: str = BOI_TOKEN,
    eoi_token: str = EOI_TOKEN,
) -> VisualVocabulary:
    """Add ``<boi>``/``<eoi>``/``<image>`` and the codebook tokens to ``tokenizer`` and resize ``model``.

    Args:
        tokenizer: the LM's text tokenizer (modified in place; save it afterwards).
        model: a causal LM (``LlamaForCausalLM``, ``GPT2LMHeadModel``, ...) or a
            :class:`VTokMLLMForConditionalGeneration`; its embeddings (and untied LM head) are resized in place.
        visual_tokenizer: a ``VisualTokenizerMixin`` model or its config (``codebook_size`` and
            ``num_visual_tokens`` are read from it).
        pad_to_multiple_of: pad the embedding matrix to a multiple of this (tensor-core friendly). Rows past
            ``len(tokenizer)`` then exist: mask visual ids by the recorded id range, never by vocab size.
        mean_resizing: initialise new rows from the distribution of the existing rows (transformers' default).

    Returns:
        :class:`VisualVocabulary`; the same values are written to ``model.config`` (``visual_token_offset``,
        ``visual_vocab_size``, ``boi_token_id``, ``eoi_token_id``, ``image_token_id``). Calling it again with
        the same tokenizer is a no-op that returns the existing layout.
    """
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise TypeError(f"`tokenizer` must be a transformers tokenizer, got {describe(tokenizer)}.")
    if not isinstance(model, PreTrainedModel) or model.get_input_embeddings() is None:
        raise TypeError(f"`model` must be a transformers PreTrainedModel with input embeddings, got {describe(model)}.")
    codebook_size, _ = _visual_tokenizer_attributes(visual_tokenizer)
    own = getattr(model.config, "visual_tokenizer_config", None)  # a VTokMLLMForConditionalGeneration
    if own is not None and getattr(own, "codebook_size", None) != codebook_size:
        raise ValueError(
            f"`visual_tokenizer` has codebook_size={codebook_size} but `model` was built for a visual tokenizer with "
            f"codebook_size={getattr(own, 'codebook_size', None)}."
        )
    if pad_to_multiple_of is not None:
        check_int("pad_to_multiple_of", pad_to_multiple_of, minimum=1)
    for name, token in (("image_token", image_token), ("boi_token", boi_token), ("eoi_token", eoi_token)):
        if not isinstance(token, str) or not token:
            raise TypeError(f"`{name}` must be a non-empty string, got {describe(token)}.")
    if len({image_token, boi_token, eoi_token}) != 3:
        raise ValueError(f"`image_token`, `boi_token` and `eoi_token` must differ, got {image_token!r}, {boi_token!r}, {eoi_token!r}.")

    vocab = tokenizer.get_vocab()
    size = codebook_size or 0
    if size:
        first = code_token(0, size)
        if first in vocab:  # already added: check the window is intact
            offset = vocab[first]
        else:
            offset = len(tokenizer)
            tokenizer.add_tokens(
                [AddedToken(code_token(i, size), special=False, normalized=False) for i in range(size)]
            )
            vocab = tokenizer.get_vocab()
        expected = list(range(offset, offset + size))
        got = [vocab.get(code_token(i, size), -1) for i in range(size)]
        if got != expected:
            bad = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
            raise ValueError(
                f"`tokenizer` already holds code tokens that break the contiguous visual window: "
                f"{code_token(bad, size)!r} has id {got[bad]}, expected {expected[bad]}."
            )
    else:
        offset = vocab.get(boi_token, len(tokenizer))

    boi_id = _register_special_token(tokenizer, "boi_token", boi_token)
    eoi_id = _register_special_token(tokenizer, "eoi_token", eoi_token)
    image_id = _register_special_token(tokenizer, "image_token", image_token)

    embeddings = model.get_input_embeddings()
    old_rows = embeddings.weight.shape[0]
    needed = len(tokenizer)
    if needed > old_rows or (pad_to_multiple_of and old_rows % pad_to_multiple_of):
        model.resize_token_embeddings(max(needed, old_rows), pad_to_multiple_of=pad_to_multiple_of, mean_resizing=mean_resizing)
    # Ids that fell inside rows the model already had (LMs whose matrix is padded past len(tokenizer), e.g.
    # Qwen2): those rows were never trained, start them at the mean text row like the resized ones.
    stale = [i for i in list(range(offset, offset + size)) + [boi_id, eoi_id, image_id] if i < old_rows and i >= offset]
    if stale and offset > 0:
        index = torch.tensor(sorted(set(stale)), dtype=torch.long)
        with torch.no_grad():
            for matrix in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}.values():
                weight = matrix.weight
                if weight.device.type == "meta":
                    continue
                weight[index.to(weight.device)] = weight[:offset].float().mean(0).to(weight.dtype)

    layout = VisualVocabulary(offset, size, boi_id, eoi_id, image_id)
    config = model.config
    for key, value in layout.to_dict().items():
        setattr(config, key, value)
    return layout


def init_visual_rows_from_codebook(model: PreTrainedModel, visual_tokenizer, *, seed: int = 0) -> torch.Tensor:
    """Start every code's embedding row from its codebook vector instead of the mean of the text rows.

    A departure, off by default (the papers grow the vocabulary with transformers' mean-initialised rows): after
    ``add_visual_tokens`` the 1,000-odd new rows are near copies of one vector, so the LM first sees every image as
    the same few hundred tokens and must pull the rows apart by gradient before it can read anything. Here row
    ``visual_token_offset + i`` becomes ``mean + std * (standardised codebook vector i) @ R``: ``R`` is a fixed
    random orthonormal projection (``seed``) from the code width to the LM width, scaled so that every new row has
    the text rows' per-dimension mean and spread. Codes that are close in the codebook (similar colours, similar
    layouts) start close in the LM; an untied LM head gets the same rows. Returns the rows written.

    Needs a tokenizer whose ``embed_ids`` gives one vector per id (DDT); raises ``ValueError`` otherwise.
    """
    offset = getattr(model.config, "visual_token_offset", None)
    size = getattr(model.config, "visual_vocab_size", 0)
    if offset is None or not size:
        raise ValueError("`model` has no visual vocabulary yet: run `add_visual_tokens` first.")
    num_tokens = getattr(visual_tokenizer.config, "num_visual_tokens", None)
    if not hasattr(visual_tokenizer, "embed_ids") or not isinstance(num_tokens, int):
        raise TypeError(f"`visual_tokenizer` must be a discrete VisualTokenizerMixin model, got {describe(visual_tokenizer)}.")
    ids = torch.arange(size)
    padded = torch.cat([ids, ids[: (-size) % num_tokens]]).reshape(-1, num_tokens)  # embed_ids takes whole images
    with torch.no_grad():
        codes = visual_tokenizer.embed_ids(padded)
    if codes.dim() != 3 or codes.shape[:2] != padded.shape:
        raise ValueError(
            f"`visual_tokenizer` {type(visual_tokenizer).__name__}.embed_ids gives {tuple(codes.shape)} for ids "
            f"{tuple(padded.shape)}, not one vector per id: its codes cannot initialise the rows one by one."
        )
    codes = codes.reshape(-1, codes.shape[-1])[:size].float()
    embeddings = model.get_input_embeddings().weight
    text = embeddings[:offset].detach().float()
    mean, std = text.mean(0), text.std(0)
    standardised = (codes - codes.mean(0)) / codes.std(0).clamp_min(1e-6)
    generator = torch.Generator().manual_seed(seed)
    width, hidden = codes.shape[1], text.shape[1]
    q, _ = torch.linalg.qr(torch.randn(hidden, width, generator=generator))  # orthonormal columns
    projected = standardised @ q.T * (hidden / width) ** 0.5  # unit variance per LM dimension
    rows = (mean + std * projected).to(embeddings.dtype)
    with torch.no_grad():
        embeddings[offset : offset + size] = rows
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != embeddings.data_ptr():
            head.weight[offset : offset + size] = rows.to(head.weight.dtype)
    return rows


__all__ = ["VisualVocabulary", "add_visual_tokens", "code_token", "code_token_width", "code_tokens", "init_visual_rows_from_codebook"]
