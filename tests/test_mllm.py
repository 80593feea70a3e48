"""The MLLM side (hf_vtok.mllm) on tiny random LMs and the three real tiny tokenizers.

Properties checked: the visual vocabulary layout (contiguous window after the text vocabulary, for Llama-,
Qwen2-, Gemma- and GPT-2-style LMs), placeholder expansion and label masking, save/load through the Auto
classes with identical outputs, constrained image generation (exactly N valid ids for any sampling setting),
classifier-free guidance, visual-rows-only logits, online vs pre-tokenised generation targets, TRL / PEFT
steps, the diffusers and transformers pipelines, SeTok's continuous path, and bad inputs.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    DynamicCache,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessorList,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import hf_vtok  # noqa: F401  (registers everything)
from hf_vtok.data import generate_shapes_dataset
from hf_vtok.data.text_tokenizer import build_text_tokenizer
from hf_vtok.mllm import (
    VisualWindowLogitsProcessor,
    VTokImageEditingPipeline,
    VTokMLLMConfig,
    VTokMLLMDataCollator,
    VTokMLLMForConditionalGeneration,
    VTokMLLMModel,
    VTokMLLMProcessor,
    VTokTextToImagePipeline,
    add_visual_tokens,
    code_token,
    image_generation_config,
)
from hf_vtok.mllm.generation import build_generation_inputs
from hf_vtok.models.ddt import DDTTokenizerConfig, DDTTokenizerForPreTraining
from hf_vtok.models.setok import SeTokConfig, SeTokForPreTraining
from hf_vtok.models.slot_qformer import SlotQFormerConfig, SlotQFormerModel

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------------------- helpers
def tiny_lm(kind: str, tokenizer, vocab_size: int | None = None):
    """A 2-layer random causal LM whose special ids match the shapes-world text tokenizer."""
    vocab = vocab_size or len(tokenizer)
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, **ids)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common))
    if kind == "gemma":
        return GemmaForCausalLM(GemmaConfig(head_dim=16, **common))
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=512, **ids))
    raise ValueError(kind)


def build_mllm(visual_tokenizer, lm_kind: str = "llama", seed: int = 0, **config_kwargs):
    torch.manual_seed(seed)
    tokenizer = build_text_tokenizer()
    lm = tiny_lm(lm_kind, tokenizer)
    model = VTokMLLMForConditionalGeneration.from_text_model_and_tokenizer(lm, visual_tokenizer, tokenizer, **config_kwargs)
    processor = VTokMLLMProcessor.from_visual_tokenizer(tokenizer, visual_tokenizer)
    return model.eval(), processor


@pytest.fixture(scope="module")
def shapes():
    return generate_shapes_dataset(4, image_size=64, style="flat", seed=0)


@pytest.fixture(scope="module")
def ddt_parts():
    """A real tiny DDT tokenizer (discrete, 16 ids per image, codebook 512) and its decoder pipeline."""
    torch.manual_seed(0)
    pretraining = DDTTokenizerForPreTraining(DDTTokenizerConfig.tiny()).eval()
    return pretraining.tokenizer, pretraining.get_decoder_pipeline()


@pytest.fixture(scope="module")
def ddt_mllm(ddt_parts):
    model, processor = build_mllm(ddt_parts[0])
    return model, processor


def _fresh(ddt_parts, **kwargs):
    """A private copy of the tokenizer (the tests that train must not touch the shared one)."""
    return build_mllm(copy.deepcopy(ddt_parts[0]), **kwargs)


# ------------------------------------------------------------------------------------------------ visual vocabulary
@pytest.mark.parametrize("lm_kind", ["llama", "qwen2", "gemma", "gpt2"])
def test_add_visual_tokens_layout_for_four_lm_families(ddt_parts, lm_kind, tmp_path):
    visual = ddt_parts[0]
    torch.manual_seed(0)
    tokenizer = build_text_tokenizer()
    text_size = len(tokenizer)
    # Qwen2-style: the matrix is padded past the tokenizer (rows that exist but were never used)
    lm = tiny_lm(lm_kind, tokenizer, vocab_size=text_size + 5 if lm_kind == "qwen2" else None)
    text_rows = lm.get_input_embeddings().weight[:text_size].detach().clone()
    layout = add_visual_tokens(tokenizer, lm, visual, pad_to_multiple_of=8)

    K = visual.codebook_size
    assert layout.visual_token_offset == text_size and layout.visual_vocab_size == K
    vocab = tokenizer.get_vocab()
    assert [vocab[code_token(i, K)] for i in range(K)] == list(range(text_size, text_size + K))
    assert (layout.boi_token_id, layout.eoi_token_id, layout.image_token_id) == (text_size + K, text_size + K + 1, text_size + K + 2)
    assert (tokenizer.boi_token, tokenizer.eoi_token, tokenizer.image_token) == ("<boi>", "<eoi>", "<image>")
    rows = lm.get_input_embeddings().weight
    assert rows.shape[0] >= len(tokenizer) and rows.shape[0] % 8 == 0
    assert torch.equal(rows[:text_size], text_rows)  # the text vocabulary is untouched
    for key, value in layout.to_dict().items():
        assert getattr(lm.config, key) == value
    if lm_kind in ("gemma", "gpt2"):  # tied heads stay tied
        assert lm.get_output_embeddings().weight.data_ptr() == rows.data_ptr()
    # idempotent
    assert add_visual_tokens(tokenizer, lm, visual) == layout and len(tokenizer.get_vocab()) == len(vocab)

    # the named special tokens survive a tokenizer round trip
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.image_token == "<image>" and reloaded.image_token_id == layout.image_token_id

    # the MLLM wrapper picks the layout up from the LM config, and reads an image through the LM's rows
    model = VTokMLLMForConditionalGeneration.from_text_model_and_tokenizer(lm, visual).eval()
    assert model.config.visual_token_offset == layout.visual_token_offset
    processor = VTokMLLMProcessor.from_visual_tokenizer(tokenizer, visual)
    batch = processor(images=[np.zeros((64, 64, 3), np.uint8)], text=["<image> describe"], completion=[" a red circle"], use_chat_template=True)
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.logits.shape[-1] == rows.shape[0]


# ---------------------------------------------------------------------------------------------------------- processor
def test_processor_expands_placeholders_and_masks_labels(ddt_mllm, shapes):
    model, processor = ddt_mllm
    N, image_id = processor.num_visual_tokens, processor.image_token_id
    images = [shapes[0]["image"], shapes[1]["image"], shapes[2]["image"]]
    # understanding: two images in the first prompt, one in the second
    batch = processor(
        images=[[images[0], images[1]], [images[2]]],
        text=["<image> and <image> : which is larger?", "<image> what colour is the circle?"],
        completion=[" the first", " blue"],
        use_chat_template=True,
    )
    ids, labels = batch["input_ids"], batch["labels"]
    assert batch["pixel_values"].shape == (3, 3, 64, 64)
    assert [(row == image_id).sum().item() for row in ids] == [2 * N, N]
    assert [(row == processor.boi_token_id).sum().item() for row in ids] == [2, 1]
    for row, label in zip(ids, labels):
        target = label != -100
        assert not bool(((row == image_id) & target).any())  # image placeholders never targets
        first = int(target.nonzero()[0])  # the prompt is masked, the completion (+ </s>) is the target
        assert bool((label[:first] == -100).all())
        real = batch["attention_mask"][0].bool() if row is ids[0] else batch["attention_mask"][1].bool()
        assert torch.equal(label[first:][real[first:]], row[first:][real[first:]])
        assert label[target][-1] == processor.tokenizer.eos_token_id
    decoded = processor.tokenizer.decode(ids[1][batch["attention_mask"][1].bool()])
    assert decoded.startswith("<s> user : <boi>") and "assistant" in decoded

    # generation data: the visual ids are the targets (pre-tokenised as text) and the prompt is masked
    visual_ids = model.tokenize_images(processor.image_processor(images[0], return_tensors="pt")["pixel_values"])
    text = processor.ids_to_text(visual_ids[0])
    generation = processor(text=["a blue circle"], completion=[text], use_chat_template=True)
    label = generation["labels"][0]
    targets = label[label != -100]
    start = processor.visual_token_offset
    assert targets[0] == processor.boi_token_id and targets[N + 1] == processor.eoi_token_id
    assert torch.equal(targets[1 : N + 1] - start, visual_ids[0])
    assert torch.equal(processor.text_to_ids(text)[0], visual_ids[0])
    # a language-modeling example with `mask_image_labels` masks every image span
    lm_batch = processor(images=[images[0]], text=["<image> a blue circle"], return_labels=True, mask_image_labels=True)
    masked = lm_batch["input_ids"][0][lm_batch["labels"][0] == -100]
    assert {processor.boi_token_id, processor.eoi_token_id, image_id} <= set(masked.tolist())


def test_online_generation_targets_match_pretokenised_ids(ddt_parts, shapes):
    """An image in the completion (label = <image>) trains exactly like its pre-tokenised ids."""
    model, processor = _fresh(ddt_parts)
    image = shapes[0]["image"]
    online = processor(images=[image], text=["draw a blue circle"], completion=["<image>"], use_chat_template=True)
    assert int((online["labels"] == processor.image_token_id).sum()) == processor.num_visual_tokens
    ids = model.tokenize_images(online["pixel_values"])
    offline = processor(text=["draw a blue circle"], completion=[processor.ids_to_text(ids[0])], use_chat_template=True)
    loss_online, loss_offline = model(**online).loss, model(**offline).loss
    torch.testing.assert_close(loss_online, loss_offline)


def test_processor_chat_templates_and_round_trip(ddt_mllm, shapes, tmp_path):
    _, processor = ddt_mllm
    assert processor.format_prompt("draw a red circle") == "USER: draw a red circle ASSISTANT:"
    messages = [{"role": "user", "content": [{"type": "image", "image": shapes[0]["image"]}, {"type": "text", "text": "what is it?"}]}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == "USER: <image> what is it? ASSISTANT:"
    encoded = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    assert int((encoded["input_ids"] == processor.image_token_id).sum()) == processor.num_visual_tokens
    chatml = VTokMLLMProcessor.from_visual_tokenizer(processor.tokenizer, DDTTokenizerConfig.tiny(), chat_template="chatml")
    assert chatml.format_prompt("hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"

    processor.save_pretrained(tmp_path)
    assert os.path.isfile(tmp_path / "processor_config.json")
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is VTokMLLMProcessor and reloaded.num_visual_tokens == processor.num_visual_tokens
    kwargs = {"images": [shapes[1]["image"]], "text": ["<image> what colour?"], "completion": [" red"], "use_chat_template": True}
    first, second = processor(**kwargs), reloaded(**kwargs)
    for key in ("input_ids", "attention_mask", "labels", "pixel_values"):
        assert torch.equal(first[key], second[key])


def test_trained_task_prompts_are_saved_and_used_by_generation_and_evaluation(ddt_parts, shapes, tmp_path):
    """A model is asked the way it was trained: the processor records the recipe's prompt phrasing."""
    from hf_vtok.evaluation.mllm import LoadedMLLM, _task_prompt
    from hf_vtok.trainer.arguments import parse_mllm_arguments

    model, plain = build_mllm(ddt_parts[0])
    recipe = parse_mllm_arguments(["--recipe", "ddt_llama_sft_tiny", "--output_dir", "unused"])[0]
    prompts = recipe.task_prompts()
    assert prompts["text_to_image"] == "{caption} generate an image" and prompts["qa"] == "{image} {question}"
    assert parse_mllm_arguments(["--recipe", "ddt_llama_pretrain_tiny", "--output_dir", "unused"])[0].task_prompts() is None
    processor = VTokMLLMProcessor.from_visual_tokenizer(plain.tokenizer, ddt_parts[0], task_prompts=prompts)
    assert processor.task_prompt("captioning") == "<image> describe the image"
    assert processor.task_prompt("qa", question="what colour?") == "<image> what colour?"
    assert plain.task_prompt("text_to_image", caption="a red circle") == "a red circle"  # no phrasing: as given
    processor.save_pretrained(tmp_path)
    assert AutoProcessor.from_pretrained(tmp_path).task_prompts == prompts

    # generation wraps captions in the trained phrasing: same ids as spelling it out by hand
    kwargs = {"seed": 3, "temperature": 0.0, "guidance_scale": 3.0, "progress": False}
    wrapped = model.generate_images("a red circle", processor, **kwargs)
    by_hand = model.generate_images("a red circle generate an image", plain, **kwargs)
    raw = model.generate_images("a red circle", processor, use_task_prompts=False, **kwargs)
    assert torch.equal(wrapped.ids, by_hand.ids)
    assert torch.equal(raw.ids, model.generate_images("a red circle", plain, **kwargs).ids)
    # the evaluation asks the trained captioning / QA phrasing unless told otherwise
    loaded = LoadedMLLM(model=model, processor=processor)
    assert _task_prompt(loaded, "captioning", None, "<image> Describe the image.") == "<image> describe the image"
    assert _task_prompt(loaded, "qa", None, "<image> {question}") == "<image> {question}"
    assert _task_prompt(LoadedMLLM(model=model, processor=plain), "captioning", None, "<image> Describe the image.") == "<image> Describe the image."
    with pytest.raises(ValueError, match="task_prompts.*caption"):
        VTokMLLMProcessor.from_visual_tokenizer(plain.tokenizer, ddt_parts[0], task_prompts={"text_to_image": "draw"})
    with pytest.raises(ValueError, match="task_prompts.*keys"):
        VTokMLLMProcessor.from_visual_tokenizer(plain.tokenizer, ddt_parts[0], task_prompts={"poetry": "{image}"})
    with pytest.raises(ValueError, match="task"):
        processor.task_prompt("poetry")


# ------------------------------------------------------------------------------------------------- model round trip
def test_model_and_config_round_trip_through_auto_classes(ddt_mllm, shapes, tmp_path):
    model, processor = ddt_mllm
    batch = processor(images=[shapes[0]["image"]], text=["<image> what colour is the circle?"], completion=[" blue"], use_chat_template=True)
    with torch.no_grad():
        expected = model(**batch)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, VTokMLLMConfig) and config.visual_token_offset == model.config.visual_token_offset
    assert config.is_discrete and config.num_visual_tokens == 16
    for auto in (AutoModelForCausalLM, AutoModelForImageTextToText):
        reloaded = auto.from_pretrained(tmp_path).eval()
        assert type(reloaded) is VTokMLLMForConditionalGeneration
        assert not any(p.requires_grad for p in reloaded.visual_tokenizer.parameters())
        with torch.no_grad():
            out = reloaded(**AutoProcessor.from_pretrained(tmp_path)(images=[shapes[0]["image"]], text=["<image> what colour is the circle?"], completion=[" blue"], use_chat_template=True))
        torch.testing.assert_close(out.logits, expected.logits, rtol=0, atol=0)
        torch.testing.assert_close(out.loss, expected.loss, rtol=0, atol=0)
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is VTokMLLMModel


# ----------------------------------------------------------------------------------------------------- generation
def test_the_key_value_cache_reaches_the_language_model(ddt_mllm, shapes):
    """Incremental decoding through the cache (``generate`` and a prefill + one step by hand) gives the logits
    of a full forward pass; the cache name changed in transformers 5.24 (``past_key_values`` -> ``cache``)."""
    model, processor = ddt_mllm
    model.eval()
    batch = processor(images=[shapes[0]["image"]], text=["<image> what colour is the circle?"])
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=4, do_sample=False)
        full = model(input_ids=generated, pixel_values=batch["pixel_values"], attention_mask=torch.ones_like(generated))
        prompt_length = batch["input_ids"].shape[1]
        assert torch.equal(generated[0, prompt_length:], full.logits[0, prompt_length - 1 : -1].argmax(-1))
        cache = DynamicCache()
        model.model(**batch, cache=cache, use_cache=True)
        assert cache.get_seq_length() == prompt_length
        next_id = generated[:, prompt_length : prompt_length + 1]
        mask = torch.ones(1, prompt_length + 1, dtype=torch.long)
        stepped = model.model(input_ids=next_id, attention_mask=mask, cache=cache, use_cache=True).last_hidden_state[:, -1]
        assert cache.get_seq_length() == prompt_length + 1
        torch.testing.assert_close(model.compute_logits(stepped), full.logits[:, prompt_length], rtol=1e-4, atol=1e-4)
        with pytest.raises(ValueError, match="not both"):
            model(input_ids=next_id, cache=cache, past_key_values=cache)


def test_image_generation_yields_exactly_n_valid_ids(ddt_mllm):
    model, processor = ddt_mllm
    N, K = processor.num_visual_tokens, processor.codebook_size
    settings = [
        {"guidance_scale": 1.0, "temperature": 1.0, "top_k": None, "top_p": None},
        {"guidance_scale": 8.0, "temperature": 1.0, "top_k": 4096, "top_p": 0.9},
        {"guidance_scale": 3.0, "temperature": 0.0},
        {"guidance_scale": 0.0, "temperature": 5.0, "top_k": 1},
        {"guidance_scale": 2.0, "temperature": 0.3, "top_p": 0.05},
    ]
    for index, setting in enumerate(settings):
        out = model.generate_images(["a red circle", "two blue squares"], processor, num_images_per_prompt=2, seed=index,
                                    batch_size=3, progress=False, **setting)
        assert out.ids.shape == (4, N)
        assert int(out.ids.min()) >= 0 and int(out.ids.max()) < K
    # same seed, same ids (every image draws from its own generator seeded from `seed`)
    a = model.generate_images("a red circle", processor, num_images_per_prompt=3, seed=7, progress=False)
    again = model.generate_images("a red circle", processor, num_images_per_prompt=3, seed=7, progress=False)
    assert torch.equal(a.ids, again.ids)

    # model.generate + VisualWindowLogitsProcessor: free sampling still closes a well-formed image
    prompt = build_generation_inputs(processor, ["a red circle"])
    sequences = model.generate(**prompt, do_sample=True, max_new_tokens=N + 3, top_k=0,
                               logits_processor=LogitsProcessorList([VisualWindowLogitsProcessor.from_config(model.config)]),
                               pad_token_id=processor.tokenizer.pad_token_id)
    images = processor.text_to_ids(sequences[0, prompt["input_ids"].shape[1] - 1 :].tolist())
    assert len(images) == 1 and images[0].shape == (N,)


@pytest.fixture(scope="module")
def memorised(ddt_parts):
    """A tiny MLLM trained until it draws three known id sequences: its greedy continuations are known."""
    model, processor = _fresh(ddt_parts, seed=4)
    generator = torch.Generator().manual_seed(0)
    drawings = {p: torch.randint(0, processor.codebook_size, (processor.num_visual_tokens,), generator=generator)
                for p in ("a red circle", "a blue square", "")}
    batch = processor(text=list(drawings), completion=[processor.ids_to_text(ids) for ids in drawings.values()],
                      use_chat_template=True, padding=True, return_tensors="pt")
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(300):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.02:
            break
    return model.eval(), processor, drawings


def _guided_by_hand(model, processor, prompt: str, negative: str, guidance_scale: float) -> torch.LongTensor:
    """Greedy classifier-free guidance from two full forward passes per step (no cache, no logits processor)."""
    cond, uncond = (build_generation_inputs(processor, [text])["input_ids"] for text in (prompt, negative))
    start, end = model.visual_window
    ids = []
    with torch.no_grad():
        for _ in range(processor.num_visual_tokens):
            c, u = (model(input_ids=x).logits[0, -1, start:end] for x in (cond, uncond))
            ids.append(int((u + guidance_scale * (c - u)).argmax()))
            cond, uncond = (torch.cat([x, torch.tensor([[ids[-1] + start]])], dim=1) for x in (cond, uncond))
    return torch.tensor(ids)


def test_generate_draws_the_known_ids_and_guidance_follows_its_formula(memorised):
    model, processor, drawings = memorised
    greedy = {"temperature": 0.0, "progress": False}
    for prompt, ids in drawings.items():  # a known continuation, with both LM heads
        for rows_only in (True, False):
            out = model.generate_images(prompt, processor, guidance_scale=1.0, visual_logits_only=rows_only, **greedy)
            assert torch.equal(out.ids[0], ids), prompt
    # guidance 0 is the unconditional (empty) prompt's drawing; guidance 3 follows uncond + 3 (cond - uncond) and
    # changes the ids; the visual-rows head and the full head pick the same ids under guidance
    assert torch.equal(model.generate_images("a red circle", processor, guidance_scale=0.0, **greedy).ids[0], drawings[""])
    guided = model.generate_images("a red circle", processor, guidance_scale=3.0, **greedy).ids[0]
    assert torch.equal(guided, _guided_by_hand(model, processor, "a red circle", "", 3.0))
    assert not torch.equal(guided, drawings["a red circle"])
    full_head = model.generate_images("a red circle", processor, guidance_scale=3.0, visual_logits_only=False, **greedy)
    assert torch.equal(full_head.ids[0], guided)
    other = model.generate_images("a red circle", processor, guidance_scale=3.0, negative_prompt="a blue square", **greedy)
    assert torch.equal(other.ids[0], _guided_by_hand(model, processor, "a red circle", "a blue square", 3.0))

    # sampling: guidance 1 ignores the negative prompt (plain sampling); a seed gives the same ids
    sampled = [model.generate_images("a red circle", processor, guidance_scale=1.0, seed=5, progress=False, top_k=None, top_p=None,
                                     negative_prompt=negative) for negative in (None, "a blue square")]
    assert torch.equal(sampled[0].ids, sampled[1].ids)


def test_drawing_defaults_to_the_sampling_settings_in_the_model_config(memorised):
    # a model's own settings travel with it: unset guidance / temperature are the config's image_* fields
    model, processor, drawings = memorised
    saved = (model.config.image_guidance_scale, model.config.image_temperature)
    assert saved == (8.0, 1.0)  # DDT-LLaMA's guidance; sampling at temperature 1
    try:
        model.config.image_guidance_scale, model.config.image_temperature = 1.0, 0.0
        assert torch.equal(model.generate_images("a red circle", processor, progress=False).ids[0], drawings["a red circle"])
        model.config.image_guidance_scale = 3.0  # guidance from the config, still greedy from the config
        guided = model.generate_images("a red circle", processor, progress=False).ids[0]
        assert torch.equal(guided, _guided_by_hand(model, processor, "a red circle", "", 3.0))
        # an explicit value wins over the config
        explicit = model.generate_images("a red circle", processor, guidance_scale=1.0, progress=False).ids[0]
        assert torch.equal(explicit, drawings["a red circle"])
    finally:
        model.config.image_guidance_scale, model.config.image_temperature = saved
    with pytest.raises(ValueError, match="image_temperature"):
        type(model.config)(**{**model.config.to_dict(), "image_temperature": -1.0})


def test_the_visual_window_holds_on_a_model_biased_toward_text(ddt_parts):
    model, processor = _fresh(ddt_parts, seed=5)
    config = model.config
    start, end = model.visual_window
    N, boi, eoi = config.num_visual_tokens, config.boi_token_id, config.eoi_token_id
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.fill_(30.0)
        head.bias[start:end] = 0.0  # every text and special token outscores every visual id
    model.lm_head = head
    prompt = build_generation_inputs(processor, ["a red circle"])
    length = prompt["input_ids"].shape[1]
    pad = processor.tokenizer.pad_token_id
    free = model.generate(**prompt, max_new_tokens=N + 1, do_sample=False, pad_token_id=pad)[0, length:]
    assert not bool(((free >= start) & (free < end)).any())  # unconstrained, the model writes no visual ids

    window = LogitsProcessorList([VisualWindowLogitsProcessor.from_config(config)])
    for rows_only in (True, False):
        with model.visual_rows_head(rows_only):
            drawn = model.generate(**prompt, generation_config=image_generation_config(config, temperature=0.0, guidance_scale=1.0,
                                                                                        pad_token_id=pad), logits_processor=window)[0, length:]
        assert drawn.shape == (N + 1,) and bool(((drawn[:N] >= start) & (drawn[:N] < end)).all()) and drawn[N] == eoi
    # free sampling past the image: one well-formed image, then text without visual ids
    sequences = model.generate(**prompt, do_sample=True, max_new_tokens=N + 4, top_k=0, logits_processor=window, pad_token_id=pad)
    tail = sequences[0, length - 1 :]
    assert tail[0] == boi and len(processor.text_to_ids(tail.tolist())) == 1
    assert not bool(((tail[N + 2 :] >= start) & (tail[N + 2 :] < end)).any())
    out = model.generate_images(["a red circle", "a blue square"], processor, seed=0, guidance_scale=2.0, progress=False)
    assert out.ids.shape == (2, N) and int(out.ids.min()) >= 0 and int(out.ids.max()) < config.visual_vocab_size


def test_visual_rows_head_and_the_window_processor(ddt_mllm):
    model, _ = ddt_mllm
    config = model.config
    start, end = model.visual_window
    hidden = torch.randn(3, 5, config.text_config.hidden_size)
    full = model.compute_logits(hidden)
    with model.visual_rows_head():  # the head scores the window and <eoi>; the other rows hold the dtype's minimum
        rows = model.compute_logits(hidden)
    assert rows.shape == full.shape
    torch.testing.assert_close(rows[..., start:end], full[..., start:end])
    torch.testing.assert_close(rows[..., config.eoi_token_id], full[..., config.eoi_token_id])
    assert bool((rows[..., :start] == torch.finfo(rows.dtype).min).all())
    assert model._head_rows is None  # restored after the block

    # the logits processor: window inside an image, <eoi> once N ids were written, no visual ids in text
    processor_ = VisualWindowLogitsProcessor.from_config(config)
    boi, eoi, N = config.boi_token_id, config.eoi_token_id, config.num_visual_tokens
    scores = processor_(torch.tensor([[5, boi] + [start + 1] * 3]), torch.zeros(1, config.text_config.vocab_size))
    assert torch.isfinite(scores[0, start:end]).all() and torch.isinf(scores[0, :start]).all()
    done = processor_(torch.tensor([[5, boi] + [start] * N]), torch.zeros(1, config.text_config.vocab_size))
    assert torch.isfinite(done[0]).sum() == 1 and torch.isfinite(done[0, eoi])
    text = processor_(torch.tensor([[5, 6, 7]]), torch.zeros(1, config.text_config.vocab_size))
    assert torch.isinf(text[0, start:end]).all() and torch.isfinite(text[0, :start]).all()


# ------------------------------------------------------------------------------------------------------- training
def test_loss_decreases_and_only_the_mllm_trains(ddt_parts, shapes):
    model, processor = _fresh(ddt_parts, seed=1)
    collator = VTokMLLMDataCollator(processor)
    examples = [{"prompt": shapes[i]["caption"].lower()[:60], "completion": "<image>", "image": shapes[i]["image"]} for i in range(2)]
    examples += [{"prompt": "<image> " + shapes[i]["questions"][1]["question"].lower(), "completion": shapes[i]["questions"][1]["answer"], "image": shapes[i]["image"]} for i in range(2)]
    batch = collator(examples)
    # the conversational form of the same examples collates to the same batch
    chats = [{"messages": [{"role": "user", "content": e["prompt"]}, {"role": "assistant", "content": e["completion"]}],
              "images": [e["image"]]} for e in examples]
    chat_batch = collator(chats)
    for key in ("input_ids", "labels", "attention_mask", "pixel_values"):
        assert torch.equal(batch[key], chat_batch[key])
    model.train()
    frozen = {k: v.clone() for k, v in model.visual_tokenizer.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(12):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(torch.equal(v, model.visual_tokenizer.state_dict()[k]) for k, v in frozen.items())


@pytest.mark.slow
def test_trl_sft_step_and_peft_lora_on_visual_rows(ddt_parts, shapes, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from trl import SFTConfig, SFTTrainer

    model, processor = _fresh(ddt_parts, seed=2)
    images = [shapes[i]["image"] for i in range(4)]
    dataset = Dataset.from_dict({
        "prompt": ["USER: <image> what colour is the circle? ASSISTANT:"] * 4,
        "completion": [" blue </s>"] * 4,
        "images": [[image] for image in images],
    })
    args = SFTConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, report_to=[], save_strategy="no",
                     use_cpu=True, learning_rate=1e-3, remove_unused_columns=False, logging_steps=1)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    batch = trainer.data_collator([dataset[0], dataset[1]])  # TRL's own vision collator (prompt-completion)
    assert not bool(((batch["input_ids"] == processor.image_token_id) & (batch["labels"] != -100)).any())
    head = model.lm_head.weight.detach().clone()
    result = trainer.train()
    assert np.isfinite(result.training_loss) and not torch.equal(head, model.lm_head.weight)

    # LoRA with trainable_token_indices: only the new (visual + special) rows of embeddings and head move
    model, processor = _fresh(ddt_parts, seed=3)
    new_rows = list(range(model.config.visual_token_offset, len(processor.tokenizer)))
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], trainable_token_indices={"embed_tokens": new_rows, "lm_head": new_rows})
    peft_model = get_peft_model(model, lora)
    ids = torch.arange(len(processor.tokenizer))[None]
    before = peft_model.get_input_embeddings()(ids).detach().clone()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    batch = processor(images=[images[0]], text=["draw a blue circle"], completion=["<image>"], use_chat_template=True)
    loss = peft_model(**batch).loss
    loss.backward()
    optimizer.step()
    after = peft_model.get_input_embeddings()(ids).detach()
    offset = model.config.visual_token_offset
    assert torch.equal(after[0, :offset], before[0, :offset])
    assert not torch.equal(after[0, offset:], before[0, offset:])


# ------------------------------------------------------------------------------------------------------- pipelines
def test_pipelines_round_trip_and_transformers_tasks(ddt_parts, ddt_mllm, shapes, tmp_path):
    from transformers import pipeline

    model, processor = ddt_mllm
    decoder = ddt_parts[1]
    pipe = VTokTextToImagePipeline(mllm=model, processor=processor, decoder=decoder)
    call = {"seed": 0, "num_inference_steps": 2, "guidance_scale": 2.0, "num_images_per_prompt": 2}
    first = pipe("a red circle left of a blue square", output_type="np", **call)
    assert first.images.shape == (2, 64, 64, 3) and first.token_ids.shape == (2, 16)
    pil = pipe("a red circle left of a blue square", **call).images
    assert isinstance(pil[0], Image.Image)

    pipe.save_pretrained(tmp_path)
    reloaded = VTokTextToImagePipeline.from_pretrained(tmp_path)
    second = reloaded("a red circle left of a blue square", output_type="np", **call)
    assert np.array_equal(first.images, second.images) and torch.equal(first.token_ids, second.token_ids)

    # transformers.pipeline("text-to-image") on the mllm/ folder finds the sibling decoder/
    t2i = pipeline("text-to-image", model=str(tmp_path / "mllm"))
    images = t2i("a red circle left of a blue square", output_type="np", **call)
    assert np.array_equal(np.stack(images), first.images)

    # editing: image + instruction -> image
    editor = VTokImageEditingPipeline(mllm=model, processor=processor, decoder=decoder)
    edited = editor(image=shapes[0]["image"], prompt="make the circle red", seed=0, num_inference_steps=2, guidance_scale=2.0)
    assert edited.images[0].size == (64, 64) and edited.token_ids.shape == (1, 16)

    # understanding through the built-in image-text-to-text task
    understand = pipeline("image-text-to-text", model=str(tmp_path / "mllm"))
    chat = [{"role": "user", "content": [{"type": "image", "image": shapes[0]["image"]}, {"type": "text", "text": "what colour is the circle?"}]}]
    answer = understand(chat, max_new_tokens=3)
    assert answer[0]["generated_text"][-1]["role"] == "assistant"


# ----------------------------------------------------------------------------------------- the other two tokenizers
def test_setok_continuous_path(shapes):
    """SeTok: projector in, MSE regression + <image>/<eoi> decision out, variable token counts."""
    torch.manual_seed(0)
    pretraining = SeTokForPreTraining(SeTokConfig.tiny()).eval()
    model, processor = build_mllm(pretraining.tokenizer)
    assert not processor.is_discrete and model.regression_head is not None and model.model.projector is not None
    images = [shapes[0]["image"], shapes[1]["image"]]
    pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    counts = model.count_image_tokens(pixel_values)
    assert all(1 <= n <= model.config.num_visual_tokens for n in counts)
    batch = processor(images=[[images[0]], [images[1]]], text=["<image> describe", "draw two shapes"],
                      completion=[" a blue circle", "<image>"], num_image_tokens=counts, use_chat_template=True)
    assert [(row == processor.image_token_id).sum().item() for row in batch["input_ids"]] == counts
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        out = model(**batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.regression_loss.item())
    assert out.text_loss is not None and losses[-1] < losses[0]
    model.eval()
    generated = model.generate_images(["a red circle", "a blue square"], processor, guidance_scale=2.0, progress=False,
                                      decoder=pretraining.get_decoder_pipeline(), decoder_kwargs={"num_inference_steps": 1})
    lengths = generated.attention_mask.sum(-1)
    assert generated.embeddings.shape[-1] == model.config.visual_tokenizer_config.token_embedding_dim
    assert bool(((lengths >= 1) & (lengths <= model.config.num_visual_tokens)).all()) and len(generated.images) == 2
    with pytest.raises(ValueError, match="num_image_tokens"):
        processor(images=[images[0]], text=["<image> describe"])
    with pytest.raises(TypeError, match="ids_to_text"):
        processor.ids_to_text(torch.zeros(1, 4, dtype=torch.long))


def test_slot_qformer_tokens_read_and_written(shapes):
    torch.manual_seed(0)
    visual = SlotQFormerModel(SlotQFormerConfig.tiny()).eval()
    model, processor = build_mllm(visual, lm_kind="gpt2")
    batch = processor(images=[shapes[2]["image"]], text=["draw it"], completion=["<image>"], use_chat_template=True)
    assert torch.isfinite(model(**batch).loss)
    out = model.generate_images("a red circle", processor, seed=0, progress=False)
    assert out.ids.shape == (1, visual.num_visual_tokens) and int(out.ids.max()) < visual.codebook_size


# ---------------------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_name_the_argument(ddt_mllm, shapes):
    model, processor = ddt_mllm
    image = shapes[0]["image"]
    with pytest.raises(ValueError, match="images"):
        processor(images=[image], text=["<image> and <image>"])  # more markers than images
    with pytest.raises(ValueError, match="images"):
        processor(images=[image, image], text=["<image> only one"])  # fewer markers
    with pytest.raises(ValueError, match="max_length"):
        processor(images=[image], text=["<image> describe"], truncation=True, max_length=8)
    with pytest.raises(ValueError, match="chat_template"):
        VTokMLLMProcessor.from_visual_tokenizer(processor.tokenizer, DDTTokenizerConfig.tiny(), chat_template="vicunaa")
    with pytest.raises(ValueError, match="sequence"):  # generated ids that break the visual window
        processor.text_to_ids([processor.boi_token_id] + [processor.visual_token_offset] * 3 + [processor.eoi_token_id])
    with pytest.raises(ValueError, match="sequence"):
        processor.text_to_ids([processor.boi_token_id, 5, processor.eoi_token_id])
    with pytest.raises(ValueError, match="ids"):
        processor.ids_to_text(torch.full((16,), processor.codebook_size))
    batch = processor(images=[image], text=["<image> describe"])
    with pytest.raises(ValueError, match="pixel_values"):  # placeholders without images
        model(input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="placeholder"):  # an image cut out of the text
        model(input_ids=batch["input_ids"][:, :10], pixel_values=batch["pixel_values"])
    for name, value in (("top_p", 1.5), ("temperature", -1.0), ("guidance_scale", -2.0), ("num_images_per_prompt", 0)):
        with pytest.raises(ValueError, match=name):
            model.generate_images("a circle", processor, progress=False, **{name: value})
    with pytest.raises(TypeError, match="prompt"):
        model.generate_images(3, processor, progress=False)

    # images without a visual tokenizer
    text_only = VTokMLLMForConditionalGeneration(VTokMLLMConfig(text_config=model.config.text_config.to_dict()))
    with pytest.raises(ValueError, match="pixel_values"):
        text_only(input_ids=torch.tensor([[2, 5]]), pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="visual_vocab_size"):
        VTokMLLMConfig(text_config=model.config.text_config.to_dict(), visual_tokenizer_config=DDTTokenizerConfig.tiny(),
                       visual_vocab_size=7)


def _byte_level_tokenizer():
    """A small byte-level BPE tokenizer (GPT-2/SmolLM2 style) in which a newline followed by a space merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = ["assistant\n ", "user\n draw a red circle", "assistant\n a blue square"] * 50
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")  # fmt: skip


def test_chatml_completion_keeps_the_generation_prompt_tokens_it_is_asked_with():
    """After ChatML's "assistant\\n" a completion starts with no space: " <boi>" would merge the newline and the space
    into one token, so training would see a context that generation never builds (TRL warns and drops the '\\n')."""
    from hf_vtok.mllm import add_visual_tokens
    from hf_vtok.mllm.generation import build_generation_inputs

    text_tokenizer = _byte_level_tokenizer()
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(text_tokenizer), hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2))  # fmt: skip
    add_visual_tokens(text_tokenizer, lm, DDTTokenizerConfig.tiny())
    chatml = VTokMLLMProcessor.from_visual_tokenizer(text_tokenizer, DDTTokenizerConfig.tiny(), chat_template="chatml")
    tokenizer = chatml.tokenizer
    prompt = chatml.format_prompt("draw a red circle")
    prompt_ids = tokenizer(prompt)["input_ids"]
    merged = tokenizer(prompt + " " + chatml.boi_token)["input_ids"]
    assert merged[: len(prompt_ids)] != prompt_ids  # the hazard is real in this tokenizer
    for completion in (chatml.boi_token, "a blue square"):
        joined = tokenizer(prompt + chatml.join_completion(prompt, completion))["input_ids"]
        assert joined[: len(prompt_ids)] == prompt_ids
    generation = build_generation_inputs(chatml, ["draw a red circle"], use_chat_template=True)["input_ids"][0].tolist()
    assert generation == tokenizer(prompt + chatml.join_completion(prompt, chatml.boi_token))["input_ids"]
    # "USER: ... ASSISTANT:" still gets its space before the answer.
    assert VTokMLLMProcessor.join_completion("USER: hi ASSISTANT:", "red") == " red"


def test_codebook_initialised_rows_keep_the_codebook_geometry_at_the_text_rows_scale(ddt_parts):
    from hf_vtok.mllm.vocabulary import init_visual_rows_from_codebook

    model, _ = _fresh(ddt_parts)
    visual = model.visual_tokenizer
    offset, size = model.config.visual_token_offset, model.config.visual_vocab_size
    before = model.get_input_embeddings().weight.detach().clone()
    spread_before = before[offset : offset + size].float().std(0).mean()
    rows = init_visual_rows_from_codebook(model, visual, seed=0)
    after = model.get_input_embeddings().weight.detach()
    assert torch.equal(after[:offset], before[:offset]) and torch.equal(after[offset + size :], before[offset + size :])
    assert torch.equal(after[offset : offset + size], rows)
    if model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        assert torch.equal(model.get_output_embeddings().weight[offset : offset + size], rows)
    # the text rows' scale per dimension ...
    text = before[:offset].float()
    torch.testing.assert_close(rows.float().mean(0), text.mean(0), atol=1e-4, rtol=0)
    torch.testing.assert_close(rows.float().std(0).mean(), text.std(0).mean(), atol=0.15 * float(text.std(0).mean()), rtol=0)
    # ... and the codebook's geometry: near codes stay near (mean-resizing had left the rows near copies)
    codes = visual.embed_ids(torch.arange(size - size % 16).reshape(-1, 16)).reshape(-1, visual.config.codebook_dim)[:256].float()
    code_distances = torch.cdist(codes, codes).flatten()
    row_distances = torch.cdist(rows[:256].float(), rows[:256].float()).flatten()
    assert torch.corrcoef(torch.stack([code_distances, row_distances]))[0, 1] > 0.9
    assert rows.float().std(0).mean() > 2 * spread_before
    with pytest.raises(ValueError, match="add_visual_tokens"):
        bare = copy.deepcopy(model)
        bare.config.visual_token_offset = None
        init_visual_rows_from_codebook(bare, visual)
