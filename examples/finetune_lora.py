#!/usr/bin/env python
"""Fine-tune an MLLM with TRL + LoRA: adapters on the LM, and only the new visual rows of the vocabulary train.

    python examples/finetune_lora.py --recipe slot_mllm_instruct_tiny --visual_tokenizer runs/slot_qformer_stage2 \
        --output_dir runs/my_mllm
    python examples/finetune_lora.py --tiny --max_steps 4 --output_dir /tmp/my_mllm     # seconds on a CPU (shipped DDT)
    python examples/finetune_lora.py --tiny --neftune_noise_alpha 5 --lora_r 8          # any SFTConfig / ModelConfig flag

The same as `hf-vtok train-mllm`: images are pre-tokenised once, every task (captioning, QA, text-to-image,
editing) becomes plain text that TRL packs, and the result is a text-to-image pipeline folder plus the adapter.
"""

from __future__ import annotations

import sys

# --tiny: the small DDT tokenizer shipped with hf_vtok and 24 shapes scenes
TINY = ["--visual_tokenizer", "shipped:ddt", "--num_train_images", "24", "--per_device_train_batch_size", "4",
        "--max_length", "256", "--logging_steps", "1", "--learning_rate", "3e-3"]  # fmt: skip


def main(argv=None) -> dict:
    from hf_vtok.trainer.arguments import parse_mllm_arguments
    from hf_vtok.trainer.mllm_trainer import train_mllm

    argv = list(sys.argv[1:] if argv is None else argv)
    tiny = TINY if "--tiny" in argv else []
    argv = ["--recipe", "slot_mllm_instruct_tiny", "--output_dir", "finetuned_mllm", *tiny, *(a for a in argv if a != "--tiny")]
    script_args, training_args, model_args = parse_mllm_arguments(argv, prog="finetune_lora.py")
    model, trainer, summary = train_mllm(script_args, training_args, model_args)
    print(f"LoRA rank {model_args.lora_r}: {summary['trainable_parameters']:,} of {summary['total_parameters']:,} parameters "
          f"trained; loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f}")
    print(f"text-to-image pipeline folder: {training_args.output_dir} (DiffusionPipeline.from_pretrained), "
          f"adapter: {training_args.output_dir}/adapter")
    return {"summary": summary, "model": model, "trainer": trainer}


if __name__ == "__main__":
    main()
