"""`hf-vtok train-mllm`: one MLLM training stage with TRL and PEFT."""

from __future__ import annotations

import argparse

from .arguments import non_negative_int, positive_int


def run(args: argparse.Namespace) -> int:
    from ..trainer.mllm_trainer import MLLMTrainingRecipe, loss_fell, train_mllm

    recipe = MLLMTrainingRecipe.from_name(
        args.recipe,
        visual_tokenizer=args.visual_tokenizer, decoder=args.decoder, base_model=args.base_model, dataset=args.dataset,
        init_from=args.init_from, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, seed=args.seed, report_to=args.report_to, save_steps=args.save_steps,
        push_to_hub=True if args.push_to_hub else None, hub_model_id=args.push_to_hub,
    )  # fmt: skip
    _, _, summary = train_mllm(recipe, args.output_dir, resume_from_checkpoint=args.resume or None)
    if summary["first_loss"] is not None:
        trend = "fell" if loss_fell(summary) else "did not fall clearly"
        print(f"loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f} ({trend})")
    print(f"saved the MLLM pipeline (mllm/, processor/, decoder/), adapter/ and recipe.json under {args.output_dir}")
    return 0


def register(commands) -> None:
    """Add the subcommand to the ``hf-vtok`` parser's subparsers."""
    train_mllm = commands.add_parser(
        "train-mllm",
        help="train an MLLM stage (any causal LM + a frozen visual tokenizer) with TRL / PEFT",
        description="Train one MLLM stage from a recipe (hf_vtok/recipes/*mllm*.json, ddt_llama_*.json, or a JSON path): "
        "images are pre-tokenised once, tasks become plain text (packed), LoRA trains the adapters and only the new "
        "visual rows. Launch with `accelerate launch -m hf_vtok.commands.cli train-mllm ...` for several devices. See "
        "docs/training.md.",
    )
    train_mllm.add_argument("--recipe", required=True, help="recipe name or JSON path; the options below override it")
    train_mllm.add_argument("--output-dir", required=True)
    train_mllm.add_argument("--visual-tokenizer", default=None, help="tokenizer folder (a train-tokenizer output) or random:<family>")
    train_mllm.add_argument("--decoder", default=None, help="decoder pipeline folder (default: the tokenizer's sibling decoder/)")
    train_mllm.add_argument("--base-model", default=None, help="causal LM folder or Hub id (tiny-llama: a random tiny Llama)")
    train_mllm.add_argument("--dataset", default=None, help="shapes, a pre-tokenised folder, or an image dataset source")
    train_mllm.add_argument("--init-from", default=None, help="output folder of the previous MLLM stage")
    train_mllm.add_argument("--max-steps", type=int, default=None)
    train_mllm.add_argument("--batch-size", type=positive_int, default=None)
    train_mllm.add_argument("--learning-rate", type=float, default=None)
    train_mllm.add_argument("--seed", type=non_negative_int, default=None)
    train_mllm.add_argument("--save-steps", type=non_negative_int, default=None)
    train_mllm.add_argument("--report-to", default=None, help="tensorboard, wandb, none, ... (Trainer's report_to)")
    train_mllm.add_argument("--push-to-hub", default=None, metavar="ORG/NAME", help="upload the result with a model card")
    train_mllm.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output-dir")
    train_mllm.set_defaults(handler=run)
