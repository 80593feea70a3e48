"""`hf-vtok push`: upload a tokenizer / MLLM folder to the Hub with a model card."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ..trainer.hub import push_folder

    plan = push_folder(
        args.folder, args.repo_id, private=args.private, dry_run=args.dry_run, staging_dir=args.staging_dir,
        include_training_model=not args.no_training_model, license=args.license,
    )  # fmt: skip
    print(f"{'would upload' if args.dry_run else 'uploaded'} {len(plan.files)} files ({plan.kind}) to {plan.repo_id}:")
    for name in plan.files:
        print(f"  {name}")
    if plan.skipped:
        print(f"kept local: {len(plan.skipped)} files (checkpoints, pre-tokenised data, pickles)")
    if args.dry_run:
        print(f"staged folder (exactly what would be uploaded): {plan.staging_dir}")
    return 0


def register(commands) -> None:
    """Add the subcommand to the ``hf-vtok`` parser's subparsers."""
    push = commands.add_parser(
        "push",
        help="upload a tokenizer / MLLM folder to the Hub with a model card",
        description="Stage a train-tokenizer or train-mllm output (safetensors and configs only; no checkpoints or "
        "pickles), write README.md from the hf_vtok/model_cards/ templates, and upload it. --dry-run stops after staging.",
    )
    push.add_argument("folder")
    push.add_argument("--repo-id", required=True, help="ORG/NAME")
    push.add_argument("--private", action="store_true")
    push.add_argument("--dry-run", action="store_true", help="stage only and print what would be uploaded")
    push.add_argument("--staging-dir", default=None, help="where to stage (default: a temporary folder)")
    push.add_argument("--no-training-model", action="store_true", help="leave training_model/ out")
    push.add_argument("--license", default="apache-2.0")
    push.set_defaults(handler=run)
