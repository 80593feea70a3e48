"""``hf-vtok generate``: prompt → images with an MLLM's text-to-image pipeline (the LM writes visual tokens, the
tokenizer's decoder draws them). PNGs plus ``generate.json`` (prompts as the model was asked, seeds, visual ids)."""

from __future__ import annotations

import argparse
import json

from .arguments import non_negative_int, positive_int

EXAMPLES = """\
Examples:
  hf-vtok generate "a small red circle left of a blue square" --out drawn/
  hf-vtok generate "a large green star" "a blue triangle above a yellow circle" --num-images 4 --seed 7 --out drawn/
  hf-vtok generate "a purple diamond" --mllm runs/my_mllm --guidance-scale 3 --steps 50 --out drawn/

Prompts are captions of the shapes world (colours, shapes, sizes, positions); they are phrased the way the model was
trained (its processor's `text_to_image` task prompt) before generation.
"""


def run(args: argparse.Namespace) -> int:
    from ..mllm.generation import image_sampling_settings
    from ..mllm.pipeline_mllm import VTokTextToImagePipeline
    from ..utils.validation import check_float
    from .checkpoints import load_mllm, map_with_estimate, output_folder

    empty = [prompt for prompt in args.prompts if not prompt.strip()]
    if empty:
        raise ValueError("`PROMPT` must be non-empty text, got an empty prompt.")
    if args.guidance_scale is not None:
        check_float("--guidance-scale", args.guidance_scale, minimum=0.0)
    loaded = load_mllm(args.mllm)
    if loaded.decoder is None:
        raise ValueError(f"`--mllm` {args.mllm!r} has no decoder/ folder to draw images with.")
    guidance_scale, temperature = image_sampling_settings(loaded.model.config, args.guidance_scale)
    pipe = VTokTextToImagePipeline(mllm=loaded.model, processor=loaded.processor, decoder=loaded.decoder)
    pipe.set_progress_bar_config(disable=True)
    processor = loaded.processor
    prompts = [prompt for prompt in args.prompts for _ in range(args.num_images)]
    jobs = [(prompt, args.seed + index) for index, prompt in enumerate(prompts)]
    out = output_folder(args.out)

    def draw(job):
        prompt, seed = job
        return pipe(prompt, seed=seed, guidance_scale=guidance_scale, num_inference_steps=args.steps)

    results = map_with_estimate(draw, jobs, f"generating with {args.mllm} ({args.steps} decoder steps)")
    entries = []
    for index, ((prompt, seed), result) in enumerate(zip(jobs, results)):
        image = result.images[0]
        path = out / f"{index:03d}.png"
        image.save(path)
        ids = None if result.token_ids is None else result.token_ids[0].tolist()
        entries.append({"file": path.name, "prompt": prompt, "seed": seed, "size": list(image.size), "token_ids": ids})
        print(f"{prompt!r} (seed {seed}) -> {path}")
    summary = {
        "mllm": args.mllm,
        "prompts": args.prompts,
        "phrased_prompts": [processor.task_prompt("text_to_image", caption=prompt) for prompt in args.prompts],
        "num_images_per_prompt": args.num_images,
        "guidance_scale": guidance_scale,
        "temperature": temperature,
        "num_inference_steps": args.steps,
        "seed": args.seed,
        "images": entries,
    }
    (out / "generate.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {len(entries)} image(s) and generate.json to {out}")
    return 0


def register(commands) -> None:
    """Add the subcommand to the ``hf-vtok`` parser's subparsers."""
    from .checkpoints import add_command

    parser = add_command(
        commands,
        "generate",
        help="prompt → images with an MLLM (text-to-image)",
        description="Sample visual tokens from an MLLM for each prompt (classifier-free guidance on the LM logits) and "
        "draw them with its tokenizer's decoder. Writes one PNG per image and generate.json.",
        examples=EXAMPLES,
    )
    parser.add_argument("prompts", nargs="+", metavar="PROMPT", help="what to draw")
    parser.add_argument("--mllm", default="shipped:mllm", help="shipped:mllm or an MLLM / text-to-image pipeline folder (default: shipped:mllm)")
    parser.add_argument("--out", default="generated", help="output folder (default: generated)")
    parser.add_argument("--num-images", type=positive_int, default=1, help="images per prompt (default: 1)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="image i is drawn with seed SEED + i (default: 0)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance on the LM logits; 1 disables it (default: the MLLM's image_guidance_scale)")
    parser.add_argument("--steps", type=positive_int, default=25, help="decoder denoising steps (default: 25)")
    parser.set_defaults(handler=run)
