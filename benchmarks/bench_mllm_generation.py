"""Image generation speed of the MLLM: logits for the visual rows only vs the full LM head.

During image generation every step only needs the scores of the K visual ids (and ``<eoi>``), so inside
``VTokMLLMForConditionalGeneration.visual_rows_head()`` the LM head multiplies the last hidden state by those rows
of ``lm_head.weight`` instead of the whole ``[V, H]`` head (text + visual + special rows). Both paths run the same
``model.generate`` call (``image_generation_config`` + ``VisualWindowLogitsProcessor``, transformers' classifier-free
guidance with a negative prompt) from the same seed; the ids are compared below.

Two vocabulary layouts from the papers, with a small random LM body (the head dominates, as it does for
real LMs whose hidden size grows with the vocabulary):

* ``slot_mllm``: Vicuna's 32,000 text tokens + 8,192 codes, 128 visual tokens per image (32 slots x 4 depths).
* ``ddt_llama``: LLaMA-3's 128,256 text tokens + 65,536 codes, 480 visual tokens per image.

Each case: one run per path, same model, same prompts, classifier-free guidance on (a second, unconditional
forward per step), tokens/s = images x visual tokens / seconds.

    python benchmarks/bench_mllm_generation.py [--threads N] [--hidden 512] [--layers 2] [--batch 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

CASES = {
    "slot_mllm": {"text_vocab": 32000, "codebook_size": 8192, "num_visual_tokens": 128},
    "ddt_llama": {"text_vocab": 128256, "codebook_size": 65536, "num_visual_tokens": 480},
}


def build(case: dict, hidden: int, layers: int, seed: int = 0):
    from transformers import LlamaConfig

    from hf_vtok.mllm import VTokMLLMConfig, VTokMLLMForConditionalGeneration
    from hf_vtok.models.ddt import DDTTokenizerConfig

    torch.manual_seed(seed)
    offset, size = case["text_vocab"], case["codebook_size"]
    text_config = LlamaConfig(
        vocab_size=offset + size + 3,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=4096,
    )
    visual = DDTTokenizerConfig.tiny(codebook_size=size, num_visual_tokens=case["num_visual_tokens"])
    config = VTokMLLMConfig(
        text_config=text_config,
        visual_tokenizer_config=visual,
        visual_token_offset=offset,
        visual_vocab_size=size,
        boi_token_id=offset + size,
        eoi_token_id=offset + size + 1,
        image_token_id=offset + size + 2,
    )
    return VTokMLLMForConditionalGeneration(config).eval()


def prompts(model, batch: int, length: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.visual_token_offset, (batch, length), generator=generator)
    ids[:, -1] = model.config.boi_token_id
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def run(model, batch: int, visual_rows_only: bool, guidance_scale: float):
    from transformers import LogitsProcessorList

    from hf_vtok.mllm import VisualWindowLogitsProcessor, image_generation_config

    cond, uncond = prompts(model, batch, seed=0), prompts(model, batch, seed=1)
    config = image_generation_config(model.config, guidance_scale=guidance_scale, top_k=4096, top_p=0.9, pad_token_id=0)
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.no_grad(), model.visual_rows_head(visual_rows_only):
        sequences = model.generate(
            **cond,
            negative_prompt_ids=uncond["input_ids"],
            negative_prompt_attention_mask=uncond["attention_mask"],
            generation_config=config,
            logits_processor=LogitsProcessorList([VisualWindowLogitsProcessor.from_config(model.config)]),
        )
    return sequences[:, cond["input_ids"].shape[1] :], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--guidance-scale", type=float, default=8.0)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    for name in args.cases:
        case = CASES[name]
        model = build(case, args.hidden, args.layers)
        timings = {}
        ids = {}
        for fast in (True, False):
            ids[fast], seconds = run(model, args.batch, fast, args.guidance_scale)
            timings[fast] = seconds
        tokens = args.batch * case["num_visual_tokens"]
        results[name] = {
            "vocab": model.config.text_config.vocab_size,
            "visual_rows": case["codebook_size"],
            "tokens_per_image": case["num_visual_tokens"],
            "full_head_tokens_per_s": round(tokens / timings[False], 1),
            "visual_rows_tokens_per_s": round(tokens / timings[True], 1),
            "speed_up": round(timings[False] / timings[True], 2),
            "same_ids": bool(torch.equal(ids[True], ids[False])),
        }
        del model
    print(json.dumps({"machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "hidden": args.hidden, "layers": args.layers, "batch": args.batch,
                      "guidance_scale": args.guidance_scale, "results": results}, indent=2))


if __name__ == "__main__":
    main()
