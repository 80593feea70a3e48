#!/usr/bin/env python
"""Train one stage of a visual tokenizer with transformers.Trainer (any number of devices via accelerate).

    python training/train_tokenizer.py --recipe ddt_tiny --output_dir runs/ddt
    accelerate launch --config_file training/accelerate/multi_gpu.yaml training/train_tokenizer.py \
        --recipe slot_qformer_stage1_paper --output_dir runs/slot1 --dataset imagefolder:/data/images

--recipe is a recipe in training/recipes/tokenizer/ or a YAML/JSON path; every TokenizerArguments / TrainingArguments
field is a flag that overrides it (--help lists them). --dataset takes `shapes` (the built-in shapes world),
`imagefolder:DIR`, `parquet:GLOB`, `webdataset:GLOB` or a Hub dataset name (--streaming to stream it).
"""

from hf_vtok.trainer.arguments import parse_tokenizer_arguments
from hf_vtok.trainer.tokenizer_trainer import train_tokenizer

if __name__ == "__main__":
    script_args, training_args = parse_tokenizer_arguments()
    train_tokenizer(script_args, training_args)
