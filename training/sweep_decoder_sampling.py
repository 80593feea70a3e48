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

import torch

from hf_vtok.evaluation.quality import _Scores, decoy_tokens, load_scenes
from hf_vtok.evaluation.tokenizers import decode_tokens, encode_images, load_tokenizer_folder, token_inputs

DEFAULT_SETTINGS = ["1,10", "1.5,10", "2,10", "3,10", "1,25"]


def parse_setting(text: str) -> tuple[float, int]:
    try:
        guidance, steps = text.split(",")
        return float(guidance), int(steps)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a setting is guidance,steps (e.g. 2,10), got {text!r}") from None


@torch.no_grad()
def measure(loaded, scenes, guidance: float, steps: int, batch_size: int, seed: int = 0, prefixes=()) -> dict:
    model = loaded.model
    codebook_size = model.codebook_size if model.is_discrete else None
    batches = scenes.batches(batch_size)
    encoded = [encode_images(loaded, scenes.pil[batch])[0] for batch in batches]
    every_image = [] if model.is_discrete else [t.embeddings[i, t.attention_mask[i].bool()] for t in encoded for i in range(len(t.embeddings))]
    generator, scores = torch.Generator().manual_seed(seed), _Scores()
    for batch, tokens in zip(batches, encoded):  # as measure_tokenizer: every variant of a batch from the same noise
        targets, masks, noise_seed = scenes.images[batch], scenes.masks[batch], seed + batch.start
        decoded = decode_tokens(loaded, token_inputs(tokens), steps, noise_seed, guidance_scale=guidance)
        scores.add_reconstruction("", targets, decoded, masks)
        decoy = decoy_tokens(tokens, every_image, generator, batch, codebook_size)["random"]
        scores.add_reconstruction("random_", targets, decode_tokens(loaded, decoy, steps, noise_seed, guidance_scale=guidance), masks)
        for n in prefixes:  # DDT: the decoder sees only the first n tokens (the prefix gate: PSNR rises with n)
            prefix = decode_tokens(loaded, token_inputs(tokens), steps, noise_seed, guidance_scale=guidance, max_tokens=n)
            scores.add_reconstruction(f"prefix_{n}_", targets, prefix, masks)
    summary = scores.summary()
    return {key: summary[key] for key in ("psnr", "colour_fidelity", "random_psnr", "random_colour_fidelity")} | {
        "random_gap_db": round(summary["psnr"] - summary["random_psnr"], 4)} | {
        f"psnr_prefix_{n}": summary[f"prefix_{n}_psnr"] for n in prefixes}


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
