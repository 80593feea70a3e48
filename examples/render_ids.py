#!/usr/bin/env python
"""Render visual ids (from an MLLM, a file, or typed by hand) to an image with a decoder pipeline.

    python examples/render_ids.py --decoder runs/ddt/decoder --ids 12,7,301,... --out render.png
    python examples/render_ids.py --tiny --random --out render.png     # random ids, random tiny DDT decoder

Any discrete tokenizer's decoder works (DDT, SlotQFormer); ids must be in the codebook and there must be
`num_visual_tokens` of them (DDT accepts a shorter prefix: the first k tokens).
"""

from __future__ import annotations

import argparse

import torch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decoder", default=None, help="decoder pipeline folder (a train-tokenizer output's decoder/)")
    parser.add_argument("--tiny", action="store_true", help="random tiny decoder of --family (no checkpoint needed)")
    parser.add_argument("--family", default="ddt", choices=("ddt", "slot_qformer"))
    parser.add_argument("--ids", default=None, help="comma-separated ids")
    parser.add_argument("--random", action="store_true", help="draw random ids (the default without --ids)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="render.png")
    args = parser.parse_args(argv)

    from diffusers import DiffusionPipeline

    import hf_vtok  # noqa: F401

    if args.tiny or args.decoder is None:
        from hf_vtok.trainer.mllm_trainer import build_visual_tokenizer

        _, _, pipe = build_visual_tokenizer(f"random:{args.family}", seed=args.seed)
    else:
        pipe = DiffusionPipeline.from_pretrained(args.decoder)  # no trust_remote_code after `import hf_vtok`
    config = pipe.tokenizer.config
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
