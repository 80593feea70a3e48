#!/usr/bin/env python
"""Text-to-image and instruction-based editing with a trained MLLM.

    python examples/text_to_image_and_edit.py                 # the small MLLM shipped with hf_vtok (shapes world)
    python examples/text_to_image_and_edit.py --mllm runs/slot_mllm_instruct --prompt "a red circle" \
        --edit "make the circle blue" --out t2i.png
    python examples/text_to_image_and_edit.py --random        # untrained tiny MLLM + decoder: noise, for plumbing

--mllm is a `hf-vtok train-mllm` output folder (model_index.json, mllm/, processor/, decoder/; default: the shipped
one), which loads with the generic `DiffusionPipeline.from_pretrained` after `import hf_vtok`.
"""

from __future__ import annotations

import argparse
import warnings

from PIL import Image


def load(args):
    from diffusers import DiffusionPipeline

    import hf_vtok  # noqa: F401

    if args.random:
        from hf_vtok.mllm import VTokTextToImagePipeline
        from hf_vtok.trainer.arguments import MLLMArguments
        from hf_vtok.trainer.mllm_trainer import build_mllm

        warnings.warn("--random: an untrained tiny MLLM and decoder; their pictures are noise.", stacklevel=2)
        model, processor, decoder = build_mllm(MLLMArguments(visual_tokenizer=f"random:{args.family}"), seed=args.seed)
        return VTokTextToImagePipeline(mllm=model.eval(), processor=processor, decoder=decoder)
    from hf_vtok.data.pretokenize import SHIPPED_CHECKPOINTS_DIR

    return DiffusionPipeline.from_pretrained(args.mllm or SHIPPED_CHECKPOINTS_DIR / "mllm")  # VTokTextToImagePipeline


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mllm", default=None, help="train-mllm output folder (default: the shipped MLLM)")
    parser.add_argument("--random", action="store_true", help="an untrained tiny MLLM of --family (output is noise)")
    parser.add_argument("--family", default="ddt", choices=("ddt", "slot_qformer", "setok"), help="with --random")
    parser.add_argument("--prompt", default="a red circle left of a blue square")
    parser.add_argument("--edit", default="make the circle blue")
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=25, help="decoder sampling steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="t2i_edit.png")
    args = parser.parse_args(argv)

    from hf_vtok.mllm import VTokImageEditingPipeline

    text_to_image = load(args)
    generated = text_to_image(args.prompt, seed=args.seed, guidance_scale=args.guidance_scale, num_inference_steps=args.steps)
    editor = VTokImageEditingPipeline(**text_to_image.components)  # same modules, no copy
    edited = editor(image=generated.images[0], prompt=args.edit, seed=args.seed, guidance_scale=args.guidance_scale,
                    num_inference_steps=args.steps)
    first, second = generated.images[0], edited.images[0]
    canvas = Image.new("RGB", (first.size[0] + second.size[0], first.size[1]))
    canvas.paste(first, (0, 0))
    canvas.paste(second, (first.size[0], 0))
    canvas.save(args.out)
    print(f"'{args.prompt}' | '{args.edit}' -> {args.out}")
    return {"generated": generated, "edited": edited, "out": args.out}


if __name__ == "__main__":
    main()
