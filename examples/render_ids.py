#!/usr/bin/env python
"""Render visual ids (from an MLLM, a file, or typed by hand) to an image with a decoder pipeline.

    python examples/render_ids.py --family slot_qformer --out render.png    # random ids, the shipped decoder
    python examples/render_ids.py --decoder runs/ddt/decoder --ids 12,7,301,... --out render.png
    python examples/render_ids.py --random --out render.png                 # untrained tiny decoder: noise, for plumbing

Any discrete tokenizer's decoder works (DDT, SlotQFormer; SeTok's tokens are continuous embeddings, not ids); ids
must be in the codebook and there must be `num_visual_tokens` of them (DDT accepts a shorter prefix).
"""

from __future__ import annotations

import argparse
import warnings

import torch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decoder", default=None, help="decoder pipeline folder (default: the shipped one of --family)")
    parser.add_argument("--family", default="ddt", choices=("ddt", "slot_qformer", "setok"))
    parser.add_argument("--random", action="store_true", help="an untrained tiny decoder of --family (output is noise)")
    parser.add_argument("--ids", default=None, help="comma-separated ids (default: random ids)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="render.png")
    args = parser.parse_args(argv)

    from diffusers import DiffusionPipeline

    import hf_vtok  # noqa: F401

    if args.random:
        from hf_vtok.trainer.mllm_trainer import build_visual_tokenizer

        warnings.warn("--random: an untrained tiny decoder; its pictures are noise.", stacklevel=2)
        _, _, pipe = build_visual_tokenizer(f"random:{args.family}", seed=args.seed)
    else:
        from hf_vtok.data.pretokenize import resolve_tokenizer_source

        folder = args.decoder or f"{resolve_tokenizer_source(f'shipped:{args.family}')}/decoder"
        pipe = DiffusionPipeline.from_pretrained(folder)  # no trust_remote_code after `import hf_vtok`
    config = pipe.tokenizer.config
    if not config.codebook_size:
        parser.error(f"{type(pipe.tokenizer).__name__} makes continuous tokens (embeddings), not ids: its decoder "
                     "cannot render ids; use tokenize_and_reconstruct.py or pipe(token_embeddings=...).")
    if args.ids:
        ids = torch.tensor([[int(value) for value in args.ids.split(",")]])
    else:  # --random, or nothing given: random ids
        ids = torch.randint(0, config.codebook_size, (1, config.num_visual_tokens), generator=torch.Generator().manual_seed(args.seed))
    image = pipe(token_ids=ids, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed)).images[0]
    image.save(args.out)
    print(f"{ids.shape[1]} ids of a {config.codebook_size}-code book -> {args.out}")
    return {"ids": ids, "image": image, "out": args.out}


if __name__ == "__main__":
    main()
