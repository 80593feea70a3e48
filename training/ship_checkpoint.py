#!/usr/bin/env python
"""Copy a trained tokenizer run into the package as a shipped demo checkpoint, with metrics and a model card.

    python training/ship_checkpoint.py RUN_DIR FAMILY [--num-images 64]

Keeps `tokenizer/`, `decoder/` and `recipe.json` of RUN_DIR (the output of `hf-vtok train-tokenizer`),
measures the checkpoint on held-out shapes scenes (seed 999, not seen in training) with the same
evaluation as `hf-vtok eval`, writes `metrics.json` and a filled `README.md` model card.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from hf_vtok.data import generate_shapes_dataset
from hf_vtok.evaluation.tokenizers import evaluate_tokenizer, load_tokenizer_folder
from hf_vtok.hub import build_model_card

PACKAGE_CHECKPOINTS = Path(__file__).resolve().parents[1] / "src" / "hf_vtok" / "checkpoints"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("family", choices=("slot_qformer", "setok", "ddt"))
    parser.add_argument("--num-images", type=int, default=64)
    args = parser.parse_args()
    target = PACKAGE_CHECKPOINTS / args.family
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in ("tokenizer", "decoder"):
        shutil.copytree(Path(args.run_dir) / name, target / name)
    shutil.copy(Path(args.run_dir) / "recipe.json", target / "recipe.json")
    dataset = generate_shapes_dataset(args.num_images, seed=999, with_edits=False, progress=False)
    summary = evaluate_tokenizer(load_tokenizer_folder(target), dataset, num_inference_steps=25).summary()
    summary["evaluation"] = f"{args.num_images} held-out textured shapes scenes (seed 999), 25 sampling steps"
    (target / "metrics.json").write_text(json.dumps(summary, indent=2))
    build_model_card(target, f"hf-vtok/{args.family}-tiny-shapes").save(target / "README.md")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
