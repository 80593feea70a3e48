"""A small word-level text tokenizer for the shapes world.

The demo and the tests need a text tokenizer without the model hub: this one is trained with the
``tokenizers`` library on the shapes world's own captions, questions, answers and edit instructions,
and wrapped in a ``PreTrainedTokenizerFast`` so that it saves, reloads and plugs into transformers,
TRL and the MLLM processor like any Hub tokenizer. Words are lower-cased; punctuation is its own token.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..utils.validation import check_int

SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
# Words every shapes-world text may use even if a small corpus missed them.
CHAT_WORDS = ("user", "assistant", ":", "describe", "the", "image", "draw", "edit", "generate", "an", "of")

# "USER: ... ASSISTANT: ..." as in the papers; each turn ends with the end-of-sequence token.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + message['content'] + eos_token + ' ' }}"
    "{% else %}{{ message['content'] + ' ' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def shapes_corpus(num_scenes: int = 500, seed: int = 0) -> list[str]:
    """Every caption, question, answer and edit instruction of ``num_scenes`` flat shapes scenes."""
    from .shapes import COLORS, SHAPES, SIZES, ShapesWorldConfig, _iter_scenes

    check_int("num_scenes", num_scenes, minimum=1)
    config = ShapesWorldConfig(num_scenes, 64, 1, 4, "flat", seed, SHAPES, tuple(COLORS))
    texts = [" ".join(COLORS), " ".join(SHAPES), " ".join(SIZES), " ".join(CHAT_WORDS), " ".join(map(str, range(10)))]
    for scene in _iter_scenes(config, with_edits=True, progress=False, description=""):
        texts.append(scene.caption)
        for qa in scene.questions:
            texts.extend([qa["question"], qa["answer"]])
        if scene.edit is not None:
            texts.append(scene.edit.instruction)
    return texts


def build_text_tokenizer(texts: Iterable[str] | None = None, *, model_max_length: int = 256):
    """Train a word-level ``PreTrainedTokenizerFast`` on ``texts`` (the shapes corpus by default)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = shapes_corpus() if texts is None else list(texts)
    if not texts or not all(isinstance(text, str) for text in texts):
        raise ValueError("`texts` must be a non-empty iterable of strings.")
    check_int("model_max_length", model_max_length, minimum=8)
    tokenizer = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    # Special tokens first, in a fixed order, so their ids are stable (pad=0, unk=1, bos=2, eos=3).
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS.values()), min_frequency=1)
    tokenizer.train_from_iterator(sorted(set(texts)), trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]  # no EOS appended: captions end where the completion ends
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    # Word-level tokens are joined back with spaces when decoding.
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=model_max_length,
        chat_template=DEFAULT_CHAT_TEMPLATE,
        padding_side="right",
        **SPECIAL_TOKENS,
    )
