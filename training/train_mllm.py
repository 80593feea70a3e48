#!/usr/bin/env python
"""Train one MLLM stage (a causal LM reading and writing images through a frozen hf_vtok tokenizer) with TRL + PEFT.

Single process (tiny recipes run on a CPU in minutes):
    python training/train_mllm.py --recipe slot_mllm_pretrain_tiny --output-dir runs/slot_mllm_pretrain \
        --visual-tokenizer runs/slot_qformer_stage2
    python training/train_mllm.py --recipe slot_mllm_instruct_tiny --output-dir runs/slot_mllm_instruct \
        --init-from runs/slot_mllm_pretrain
Several GPUs (DDP, or DeepSpeed ZeRO-3 for full fine-tuning of 8B models):
    hf-vtok pretokenize --tokenizer runs/ddt --dataset imagefolder:/data/laion --out data/laion_ddt --num-proc 16
    accelerate launch --config_file training/accelerate/deepspeed_zero3.yaml training/train_mllm.py \
        --recipe ddt_llama_pretrain_paper --dataset data/laion_ddt --visual-tokenizer runs/ddt --output-dir runs/ddt_llama

--recipe takes a shipped recipe name (hf_vtok/recipes/*.json with "recipe_type": "mllm") or a JSON path; the other
options override its fields. --dataset takes `shapes`, a folder written by `hf-vtok pretokenize`, or a raw image
dataset source (imagefolder:DIR, parquet:GLOB, webdataset:GLOB, arrow:DIR, a Hub name), which is pre-tokenised
once into OUTPUT_DIR/pretokenized (resumable). The result is OUTPUT_DIR/{model_index.json, mllm/, processor/,
decoder/, adapter/, recipe.json}: `DiffusionPipeline.from_pretrained(OUTPUT_DIR)` gives the text-to-image pipeline
and `AutoModelForImageTextToText.from_pretrained(OUTPUT_DIR/mllm)` the model, after `import hf_vtok`.
"""

from __future__ import annotations

import argparse

from hf_vtok.trainer.mllm_trainer import MLLMTrainingRecipe, list_recipes, loss_fell, train_mllm


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", required=True, help=f"one of {list_recipes('mllm')} or a JSON path")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--visual-tokenizer", default=None, help="tokenizer folder (train-tokenizer output) or random:<family>")
    parser.add_argument("--decoder", default=None, help="decoder pipeline folder (default: beside the tokenizer)")
    parser.add_argument("--base-model", default=None, help="causal LM folder or Hub id; tiny-llama for a random tiny Llama")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--init-from", default=None, help="output folder of the previous MLLM stage")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--save-steps", type=int, default=None)
    parser.add_argument("--report-to", default=None, help="tensorboard, wandb, none, ...")
    parser.add_argument("--push-to-hub", default=None, metavar="ORG/NAME")
    parser.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output-dir")
    args = parser.parse_args(argv)

    recipe = MLLMTrainingRecipe.from_name(
        args.recipe,
        visual_tokenizer=args.visual_tokenizer, decoder=args.decoder, base_model=args.base_model, dataset=args.dataset,
        init_from=args.init_from, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, save_steps=args.save_steps, report_to=args.report_to,
        push_to_hub=True if args.push_to_hub else None, hub_model_id=args.push_to_hub,
    )  # fmt: skip
    _, trainer, summary = train_mllm(recipe, args.output_dir, resume_from_checkpoint=args.resume or None)
    if trainer.is_world_process_zero() and summary["first_loss"] is not None:
        print(f"loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f} "
              f"({'fell' if loss_fell(summary) else 'did not fall clearly'}); saved under {args.output_dir}")


if __name__ == "__main__":
    main()
