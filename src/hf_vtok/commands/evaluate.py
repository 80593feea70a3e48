"""`hf-vtok eval`: the quality table of trained tokenizer folders, with pictures."""

from __future__ import annotations

import argparse

from .arguments import non_negative_int, positive_int


def run(args: argparse.Namespace) -> int:
    from ..evaluation.report import run_eval

    run_eval(
        args.tokenizer,
        out_dir=args.out,
        num_images=args.num_images,
        num_inference_steps=args.steps,
        seed=args.seed,
        perceptual_backbone=args.perceptual_backbone,
        clip_path=args.clip,
        num_photos=args.num_photos,
    )
    return 0


def register(commands) -> None:
    """Add the subcommand to the ``hf-vtok`` parser's subparsers."""
    evaluate = commands.add_parser(
        "eval",
        help="quality table of trained tokenizer folders, with pictures",
        description="Reconstruction (PSNR, SSIM; LPIPS-style and CLIP scores with local weights), object discovery "
        "(FG-ARI, mIoU), token counts, random-code replacement and prefix decoding of each tokenizer folder "
        "(tokenizer/ + decoder/) on the shapes world and on natural photos; writes PNGs and eval.json to --out. "
        "See docs/evaluation.md.",
    )
    evaluate.add_argument(
        "--tokenizer", nargs="+", default=None, metavar="DIR",
        help="tokenizer folder(s) with tokenizer/ and decoder/ (default: every checkpoint shipped under hf_vtok/checkpoints)",
    )
    evaluate.add_argument("--num-images", type=positive_int, default=16, help="shapes-world scenes (default: 16)")
    evaluate.add_argument("--out", default="eval_out", help="output folder for PNGs and eval.json (default: eval_out)")
    evaluate.add_argument("--steps", type=positive_int, default=25, help="decoder sampling steps (default: 25)")
    evaluate.add_argument("--seed", type=non_negative_int, default=0)
    evaluate.add_argument(
        "--perceptual-backbone", default=None, metavar="DIR",
        help="local transformers vision model folder (Dinov2, CLIP, ...) for the LPIPS-style distance",
    )
    evaluate.add_argument("--clip", default=None, metavar="DIR", help="local CLIP folder (model + tokenizer) for CLIP-I/CLIP-T")
    evaluate.add_argument("--num-photos", type=positive_int, default=None, help="natural photos to use (default: all bundled)")
    evaluate.set_defaults(handler=run)
