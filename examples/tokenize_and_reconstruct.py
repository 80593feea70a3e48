#!/usr/bin/env python
"""Tokenize an image and reconstruct it with the tokenizer's diffusion decoder.

    python examples/tokenize_and_reconstruct.py --family setok                # the small checkpoint shipped with hf_vtok
    python examples/tokenize_and_reconstruct.py --checkpoint runs/ddt --image photo.jpg --out reconstruction.png
    python examples/tokenize_and_reconstruct.py --random --family ddt         # untrained tiny model: noise, for plumbing

--checkpoint is a `hf-vtok train-tokenizer` output (tokenizer/ + decoder/) or `shipped:<family>` (the default). Without
--image a shapes-world scene is used. Prints the tokens and writes input | reconstruction side by side.
"""

from __future__ import annotations

import argparse
import warnings

import torch
from PIL import Image


def load(args):
    """(tokenizer, image processor, decoder pipeline) from a checkpoint folder, or random tiny ones with --random."""
    if args.random:
        from hf_vtok.trainer.mllm_trainer import build_visual_tokenizer

        warnings.warn("--random: an untrained tiny model; its reconstruction is noise.", stacklevel=2)
        return build_visual_tokenizer(f"random:{args.family}", seed=args.seed)
    from hf_vtok.data.pretokenize import resolve_tokenizer_source
    from hf_vtok.evaluation.tokenizers import load_tokenizer_folder

    loaded = load_tokenizer_folder(resolve_tokenizer_source(args.checkpoint or f"shipped:{args.family}"))
    return loaded.model, loaded.image_processor, loaded.pipeline


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="train-tokenizer output folder (default: shipped:FAMILY)")
    parser.add_argument("--family", default="ddt", choices=("ddt", "slot_qformer", "setok"))
    parser.add_argument("--random", action="store_true", help="an untrained tiny tokenizer of --family (output is noise)")
    parser.add_argument("--image", default=None, help="image file (default: a shapes-world scene)")
    parser.add_argument("--steps", type=int, default=25, help="decoder sampling steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="reconstruction.png")
    args = parser.parse_args(argv)

    import hf_vtok  # noqa: F401  (registers the Auto classes and pipelines)
    from hf_vtok.data import generate_shapes_dataset

    tokenizer, image_processor, decoder = load(args)
    image = Image.open(args.image).convert("RGB") if args.image else generate_shapes_dataset(1, progress=False)[0]["image"]
    pixel_values = image_processor(image, return_tensors="pt").pixel_values
    tokens = tokenizer.encode(pixel_values)  # VisualTokens
    if tokens.ids is not None:
        print(f"{tokens.ids.shape[1]} ids ({tokenizer.config.token_order} order): {tokens.ids[0].tolist()}")
        reconstruction = decoder(token_ids=tokens.ids, num_inference_steps=args.steps,
                                 generator=torch.Generator().manual_seed(args.seed)).images[0]
    else:
        count = int(tokens.attention_mask.sum())
        print(f"{count} continuous tokens of width {tokens.embeddings.shape[-1]}")
        reconstruction = decoder(token_embeddings=tokens.embeddings, attention_mask=tokens.attention_mask,
                                 num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed)).images[0]
    side = reconstruction.size[0]
    canvas = Image.new("RGB", (2 * side, side))
    canvas.paste(image.resize((side, side)), (0, 0))
    canvas.paste(reconstruction, (side, 0))
    canvas.save(args.out)
    print(f"input | reconstruction -> {args.out}")
    return {"tokens": tokens, "reconstruction": reconstruction, "out": args.out}


if __name__ == "__main__":
    main()
