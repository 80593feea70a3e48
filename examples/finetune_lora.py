#!/usr/bin/env python
"""Fine-tune an MLLM with TRL + LoRA: adapters on the LM, and only the new visual rows of the vocabulary train.

    python examples/finetune_lora.py --recipe slot_mllm_instruct_tiny --visual-tokenizer runs/slot_qformer_stage2 \
        --output-dir runs/my_mllm
    python examples/finetune_lora.py --tiny --max-steps 4 --output-dir /tmp/my_mllm     # seconds on a CPU

The same as `hf-vtok train-mllm`: images are pre-tokenised once, every task (captioning, QA, text-to-image,
editing) becomes plain text that TRL packs, and the result is a text-to-image pipeline folder plus the adapter.
"""

from __future__ import annotations

import argparse


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="slot_mllm_instruct_tiny")
    parser.add_argument("--visual-tokenizer", default=None, help="tokenizer folder; default: the recipe's")
    parser.add_argument("--tiny", action="store_true", help="random tiny tokenizer, 24 shapes scenes")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--output-dir", default="finetuned_mllm")
    args = parser.parse_args(argv)

    import torch

    from hf_vtok.trainer.mllm_trainer import MLLMTrainingRecipe, train_mllm

    overrides = {"visual_tokenizer": args.visual_tokenizer, "max_steps": args.max_steps}
    if args.tiny:
        overrides.update(num_train_images=24, per_device_train_batch_size=4, max_length=256, logging_steps=1,
                         learning_rate=3e-3, visual_tokenizer=args.visual_tokenizer or "random:ddt")
    recipe = MLLMTrainingRecipe.from_name(args.recipe, **overrides)
    model, trainer, summary = train_mllm(recipe, args.output_dir)
    print(f"LoRA rank {recipe.lora_rank}: {summary['trainable_parameters']:,} of {summary['total_parameters']:,} parameters "
          f"trained; loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f}")
    print(f"text-to-image pipeline folder: {args.output_dir} (DiffusionPipeline.from_pretrained), adapter: {args.output_dir}/adapter")
    return {"summary": summary, "model": model, "trainer": trainer, "torch": torch.__version__}


if __name__ == "__main__":
    main()
