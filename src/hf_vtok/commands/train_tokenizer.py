"""`hf-vtok train-tokenizer`: one training stage of a tokenizer family with ``transformers.Trainer``."""

from __future__ import annotations

import argparse

from .arguments import non_negative_int, positive_int


def run(args: argparse.Namespace) -> int:
    from ..trainer.tokenizer_trainer import TokenizerTrainingRecipe, loss_dropped, train_tokenizer

    overrides = dict(
        family=args.family,
        stage=args.stage,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        init_from=args.init_from,
        num_train_images=args.num_train_images,
        eval_steps=args.eval_steps,
    )
    if args.recipe:
        recipe = TokenizerTrainingRecipe.from_name(args.recipe, **overrides)
    else:
        defaults = {key: value for key, value in overrides.items() if value is not None}
        recipe = TokenizerTrainingRecipe(**defaults).validate()
    _, trainer = train_tokenizer(recipe, args.output_dir, resume_from_checkpoint=args.resume or None)
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    if losses:
        print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} ({'fell' if loss_dropped(history) else 'did not fall clearly'})")
    print(f"saved tokenizer/, decoder/ and training_model/ under {args.output_dir}")
    return 0


def register(commands) -> None:
    """Add the subcommand to the ``hf-vtok`` parser's subparsers."""
    train = commands.add_parser(
        "train-tokenizer",
        help="train one stage of a tokenizer with transformers.Trainer",
        description="Train a tokenizer family (one stage) with transformers.Trainer on the shapes world, from a "
        "recipe (a name from hf_vtok/recipes/ or a JSON file) or from the options below. Launch it with `accelerate launch "
        "-m hf_vtok.commands.cli train-tokenizer ...` for several devices.",
    )
    train.add_argument("family", choices=("slot_qformer", "setok", "ddt"))
    train.add_argument("--recipe", help="recipe name (hf_vtok/recipes/*.json) or JSON path; the options below override its fields")
    train.add_argument("--stage", type=positive_int, default=None, help="training stage (SlotQFormer: 1 or 2)")
    train.add_argument("--output-dir", required=True)
    train.add_argument("--max-steps", type=positive_int, default=None)
    train.add_argument("--batch-size", type=positive_int, default=None)
    train.add_argument("--learning-rate", type=float, default=None)
    train.add_argument("--num-train-images", type=positive_int, default=None)
    train.add_argument("--seed", type=non_negative_int, default=None)
    train.add_argument("--init-from", default=None, help="output folder of the previous stage")
    train.add_argument(
        "--eval-steps", type=non_negative_int, default=None,
        help="log FG-ARI / mIoU / tokens per image of the token maps on 64 held-out scenes every N steps (0: never)",
    )
    train.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output-dir")
    train.set_defaults(handler=run)
