#!/usr/bin/env python
"""Share a trained tokenizer or MLLM on the Hub with a filled model card (use --dry-run to see what would go up).

    python examples/push_to_hub.py runs/ddt --repo-id my-org/ddt-tokenizer --dry-run
    python examples/push_to_hub.py runs/ddt --repo-id my-org/ddt-tokenizer            # needs `huggingface-cli login`
    python examples/push_to_hub.py --repo-id me/ddt --dry-run                          # the shipped DDT checkpoint
    python examples/push_to_hub.py --random --repo-id me/tiny-ddt --dry-run            # an untrained tiny tokenizer

The staged folder holds safetensors and configs only (no checkpoints, optimizer states or pickles) plus README.md.
This example also loads the staged folder back the way a user of the Hub repository would.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path


def tiny_folder(family: str) -> Path:
    """A tokenizer folder as `hf-vtok train-tokenizer` writes it, from a random tiny model."""
    from hf_vtok.trainer.mllm_trainer import build_visual_tokenizer

    tokenizer, image_processor, decoder = build_visual_tokenizer(f"random:{family}")
    folder = Path(tempfile.mkdtemp(prefix="hf_vtok_tiny_"))
    tokenizer.save_pretrained(folder / "tokenizer")
    image_processor.save_pretrained(folder / "tokenizer")
    decoder.save_pretrained(folder / "decoder")
    return folder


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", default=None, help="train-tokenizer / train-mllm output (default: shipped:FAMILY)")
    parser.add_argument("--repo-id", required=True)
    parser.add_argument("--random", action="store_true", help="an untrained tiny tokenizer folder of --family (noise)")
    parser.add_argument("--family", default="ddt", choices=("ddt", "slot_qformer", "setok"))
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--staging-dir", default=None)
    args = parser.parse_args(argv)

    from diffusers import DiffusionPipeline
    from huggingface_hub import ModelCard
    from transformers import AutoModel

    import hf_vtok  # noqa: F401
    from hf_vtok.trainer.hub import push_folder

    if args.random:
        warnings.warn("--random: an untrained tiny tokenizer; do not share it as a model.", stacklevel=2)
        folder = tiny_folder(args.family)
    else:
        from hf_vtok.data.pretokenize import resolve_tokenizer_source

        folder = Path(resolve_tokenizer_source(args.folder or f"shipped:{args.family}"))
    plan = push_folder(folder, args.repo_id, private=args.private, dry_run=args.dry_run, staging_dir=args.staging_dir)
    print(f"{'would upload' if args.dry_run else 'uploaded'} to {plan.repo_id}: {', '.join(plan.files)}")
    card = ModelCard.load(plan.staging_dir / "README.md")
    print(f"model card metadata: {card.data.to_dict()}")
    from hf_vtok.data.pretokenize import tokenizer_subfolder

    if args.dry_run and tokenizer_subfolder(plan.staging_dir) is not None:
        AutoModel.from_pretrained(tokenizer_subfolder(plan.staging_dir))  # what a user of the repository does
        DiffusionPipeline.from_pretrained(plan.staging_dir / "decoder")
        print("the staged folder loads with AutoModel and DiffusionPipeline (no trust_remote_code)")
    return {"plan": plan, "card": card}


if __name__ == "__main__":
    main()
