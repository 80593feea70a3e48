#!/usr/bin/env python
"""Decoder sampling settings of a tokenizer folder, compared on *validation* scenes (seed 998 by default, never the
held-out seed 999 that `hf-vtok eval` reports), so that a setting is chosen without looking at the test set.

    python training/sweep_decoder_sampling.py src/hf_vtok/checkpoints/ddt_latent_128 --out sweep_out
        [--num-images 64] [--seed 998] [--setting 1,10 --setting 2,10 ...]

A setting is `guidance,steps` (guidance against the decoder's null condition; 1 turns it off). Per setting and style it
prints one JSON line with what `hf-vtok eval` measures of a reconstruction (PSNR, object colour fidelity) for the real
tokens and for random ones (the gap the random-ids gate reads), with `--prefix N` the PSNR from the first N tokens
(DDT's prefix gate: PSNR must rise up to all tokens), and writes `sweep.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hf_vtok.evaluation.quality import load_scenes, measure_tokenizer
from hf_vtok.evaluation.tokenizers import load_tokenizer_folder

DEFAULT_SETTINGS = ["1,10", "1.5,10", "2,10", "3,10", "1,25"]


def parse_setting(text: str) -> tuple[float, int]:
    try:
        guidance, steps = text.split(",")
        return float(guidance), int(steps)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a setting is guidance,steps (e.g. 2,10), got {text!r}") from None


def measure(loaded, scenes, guidance: float, steps: int, batch_size: int, seed: int = 0, prefixes=()) -> dict:
    """What `hf-vtok eval` measures of the real tokens and the random decoys (same draws, same noise), at one
    sampling setting; the shuffled decoys and the pictures are left out."""
    metrics = measure_tokenizer(loaded, scenes, num_inference_steps=steps, seed=seed, batch_size=batch_size, keep_images=0,
                                guidance_scale=guidance, prefix_lengths=list(prefixes), decoys=("random",))  # fmt: skip
    by_prefix = metrics.get("psnr_by_prefix") or {}
    return {key: metrics[key] for key in ("psnr", "colour_fidelity", "random_psnr", "random_colour_fidelity")} | {
        "random_gap_db": round(metrics["psnr"] - metrics["random_psnr"], 4)} | {
        f"psnr_prefix_{n}": by_prefix[str(n)] for n in prefixes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tokenizer_folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--seed", type=int, default=998, help="scene seed (998: validation; 999 is the held-out test)")
    parser.add_argument("--styles", default="flat,textured")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--setting", type=parse_setting, action="append", help="guidance,steps (repeatable)")
    parser.add_argument("--prefix", type=int, action="append", default=[],
                        help="also decode from the first N tokens only (DDT; repeatable), e.g. 128 beside all 192")
    args = parser.parse_args()
    settings = args.setting or [parse_setting(text) for text in DEFAULT_SETTINGS]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_tokenizer_folder(args.tokenizer_folder)
    loaded.pipeline.set_progress_bar_config(disable=True)
    results = []
    for style in args.styles.split(","):
        scenes = load_scenes(style, args.num_images, loaded.image_size, args.seed)
        for guidance, steps in settings:
            start = time.perf_counter()
            row = {"style": style, "guidance": guidance, "steps": steps, **measure(loaded, scenes, guidance, steps, args.batch_size, prefixes=args.prefix),
                   "num_images": args.num_images, "scene_seed": args.seed, "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
            results.append(row)
            print(json.dumps(row), flush=True)
    (out / "sweep.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
