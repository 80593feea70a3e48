#!/usr/bin/env python
"""Train one MLLM stage (a causal LM reading and writing images through a frozen hf_vtok tokenizer) with TRL + PEFT.

    python training/train_mllm.py --recipe slot_mllm_pretrain_tiny --output_dir runs/slot_mllm_pretrain \
        --visual_tokenizer runs/slot_qformer_stage2
    hf-vtok pretokenize --tokenizer runs/ddt --dataset imagefolder:/data/laion --out data/laion_ddt --num-proc 16
    accelerate launch --config_file training/accelerate/deepspeed_zero3.yaml training/train_mllm.py \
        --recipe ddt_llama_pretrain_paper --dataset data/laion_ddt --visual_tokenizer runs/ddt --output_dir runs/ddt_llama

--recipe is a recipe in training/recipes/mllm/ or a YAML/JSON path (TRL's --config works too); every MLLMArguments,
SFTConfig and ModelConfig field is a flag that overrides it (--help lists them). The result is OUTPUT_DIR/
{model_index.json, mllm/, processor/, decoder/, adapter/, recipe.json}: `DiffusionPipeline.from_pretrained(OUTPUT_DIR)`
gives the text-to-image pipeline, `AutoModelForImageTextToText.from_pretrained(OUTPUT_DIR/mllm)` the model.
"""

from hf_vtok.trainer.arguments import parse_mllm_arguments
from hf_vtok.trainer.mllm_trainer import loss_fell, train_mllm

if __name__ == "__main__":
    script_args, training_args, model_args = parse_mllm_arguments()
    _, trainer, summary = train_mllm(script_args, training_args, model_args)
    if trainer.is_world_process_zero() and summary["first_loss"] is not None:
        print(f"loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f} "
              f"({'fell' if loss_fell(summary) else 'did not fall clearly'}); saved under {training_args.output_dir}")
