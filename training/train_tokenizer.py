#!/usr/bin/env python
"""Train one stage of a visual tokenizer with transformers.Trainer (any number of devices via accelerate).

Single process:
    python training/train_tokenizer.py --recipe ddt_tiny --output-dir runs/ddt
Several GPUs (DDP; see training/accelerate/ for FSDP and DeepSpeed):
    accelerate launch --config_file training/accelerate/multi_gpu.yaml training/train_tokenizer.py \
        --recipe slot_qformer_stage1_paper --output-dir runs/slot1 --dataset imagefolder:/data/images

--recipe takes a shipped recipe name (hf_vtok/recipes/*.json) or a path to a JSON file. --dataset takes
`shapes` (default, the built-in shapes world), `imagefolder:DIR`, `parquet:GLOB`, `webdataset:GLOB`
or a Hub dataset name (add --streaming to stream it). The dataset needs an `image` column, plus `caption`
for families with a text branch (SlotQFormer stage 1) and `mask` for SeTok's mask decoder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_vtok.data.pretokenize import load_image_dataset
from hf_vtok.trainer.tokenizer_trainer import TokenizerTrainingRecipe, train_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", required=True, help="recipe name in hf_vtok/recipes or a JSON path")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--split", default="train")
    parser.add_argument("--streaming", action="store_true")
    parser.add_argument("--init-from", default=None, help="output folder of the previous stage")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output-dir")
    args = parser.parse_args()

    overrides = {"init_from": args.init_from, "max_steps": args.max_steps}
    if Path(args.recipe).suffix == ".json":
        recipe = TokenizerTrainingRecipe.from_file(args.recipe, **overrides)
    else:
        recipe = TokenizerTrainingRecipe.from_name(args.recipe, **overrides)
    dataset = None if args.dataset == "shapes" else load_image_dataset(args.dataset, split=args.split, streaming=args.streaming)
    train_tokenizer(recipe, args.output_dir, train_dataset=dataset, resume_from_checkpoint=args.resume or None)


if __name__ == "__main__":
    main()
