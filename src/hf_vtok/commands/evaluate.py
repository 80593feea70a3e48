"""`hf-vtok eval`: every quality figure of trained tokenizer folders beside its baselines, with gate verdicts."""

from __future__ import annotations

import argparse

from .arguments import non_negative_int, positive_int


def run(args: argparse.Namespace) -> int:
    from ..evaluation.report import run_eval

    if args.mllm:
        from ..evaluation.mllm import run_mllm_eval

        if args.tokenizer:
            raise ValueError("`--mllm` and `--tokenizer` are separate evaluations: pass one of them.")
        run_mllm_eval(args.mllm, out_dir=args.out, num_images=args.num_images, style=args.styles[0], seed=args.seed,
                      num_inference_steps=args.steps, batch_size=args.batch_size)  # fmt: skip
        return 0
    run_eval(
        args.tokenizer,
        out_dir=args.out,
        num_images=args.num_images,
        styles=args.styles,
        image_size=args.image_size,
        num_inference_steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        perceptual_backbone=args.perceptual_backbone,
        clip_path=args.clip,
        num_photos=args.num_photos,
    )
    return 0


def register(commands) -> None:
    """Add the subcommand to the ``hf-vtok`` parser's subparsers."""
    evaluate = commands.add_parser(
        "eval",
        help="quality of trained tokenizer folders beside baselines from the same run, with gate verdicts and pictures",
        description="On held-out shapes scenes of each style: PSNR, SSIM, object colour fidelity, FG-ARI/mIoU, token "
        "counts, random/shuffled-token and prefix decoding of each tokenizer folder (tokenizer/ + decoder/), printed "
        "beside the mean-colour image, thumbnails (one with the same bits as the tokens), the TAEF2 round trip, colour "
        "k-means and a fixed grid, with issue #16's gate verdicts; plus natural photos. Writes PNGs and eval.json "
        "(seed, scene count, commit) to --out. See docs/evaluation.md.",
    )
    evaluate.add_argument(
        "--tokenizer", nargs="+", default=None, metavar="DIR",
        help="tokenizer folder(s) with tokenizer/ and decoder/ (default: every checkpoint shipped under hf_vtok/checkpoints)",
    )
    evaluate.add_argument(
        "--mllm", nargs="+", default=None, metavar="DIR",
        help="MLLM folder(s) to evaluate instead (captioning, QA, text-to-image beside chance, majority and the "
        "tokenizer's own redraw; issue #16's MLLM gates) on the first of --styles; writes eval_mllm.json",
    )
    evaluate.add_argument("--num-images", type=positive_int, default=256,
                          help="held-out scenes per style (default: 256, the least for a README figure)")
    # the styles of data.shapes.STYLES, written out: importing the shapes world would load torch for --help
    evaluate.add_argument(
        "--styles", nargs="+", choices=("flat", "textured"), default=["flat", "textured"], help="scene styles (default: both)"
    )
    evaluate.add_argument("--image-size", type=positive_int, default=None,
                          help="scene size in pixels, a multiple of 8 (default: the size the decoders draw; the gates are set at 128)")
    evaluate.add_argument("--seed", type=non_negative_int, default=999,
                          help="scene seed, recorded in eval.json (default: 999; the shipped checkpoints train on seed 0)")
    evaluate.add_argument("--steps", type=positive_int, default=10, help="decoder sampling steps (default: 10)")
    evaluate.add_argument("--batch-size", type=positive_int, default=32, help="scenes per encode/decode batch (default: 32)")
    evaluate.add_argument("--out", default="eval_out", help="output folder for PNGs and eval.json (default: eval_out)")
    evaluate.add_argument(
        "--perceptual-backbone", default=None, metavar="DIR",
        help="local transformers vision model folder (Dinov2, CLIP, ...) for the LPIPS-style distance on photos",
    )
    evaluate.add_argument("--clip", default=None, metavar="DIR", help="local CLIP folder (model + tokenizer) for CLIP-I/CLIP-T on photos")
    evaluate.add_argument("--num-photos", type=positive_int, default=None, help="natural photos to use (default: all bundled)")
    evaluate.set_defaults(handler=run)
