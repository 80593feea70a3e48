"""A tiny MLLM around a given visual tokenizer (1-layer random Llama + the shapes-world word tokenizer), for tests."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_vtok.data.text_tokenizer import build_text_tokenizer
from hf_vtok.mllm import VTokMLLMForConditionalGeneration, VTokMLLMProcessor


def build_tiny_mllm(visual_tokenizer):
    """``(model in eval mode, processor)``; seeded, so two calls build the same weights."""
    torch.manual_seed(0)
    text_tokenizer = build_text_tokenizer()
    special = {"pad_token_id": text_tokenizer.pad_token_id, "bos_token_id": text_tokenizer.bos_token_id,
               "eos_token_id": text_tokenizer.eos_token_id}
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(text_tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, **special))
    model = VTokMLLMForConditionalGeneration.from_text_model_and_tokenizer(lm, visual_tokenizer, text_tokenizer)
    return model.eval(), VTokMLLMProcessor.from_visual_tokenizer(text_tokenizer, visual_tokenizer)
