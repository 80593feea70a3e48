"""Training the tokenizers with ``transformers.Trainer`` (and so with ``accelerate`` on any number of devices).

One code path serves the CLI (``hf-vtok train-tokenizer``), the script ``training/train_tokenizer.py``
and the demo's ``--train``:

* :class:`TokenizerTrainingCollator` turns dataset rows (an ``image`` column, plus ``caption`` and an
  instance ``mask`` when present) into the batch keys the family's ``XForPreTraining.forward`` takes:
  ``pixel_values`` always, ``input_ids``/``attention_mask`` (text) and ``instance_mask`` only when the
  forward signature asks for them.
* :func:`train_tokenizer` builds the family's training model from a preset (``tiny`` or ``paper``) or
  a saved checkpoint, trains it for one stage with ``Trainer``, and exports the inference tokenizer
  (``tokenizer/``: config, safetensors, image processor), the decoder pipeline (``decoder/``), the
  text tokenizer when there is one, and a model card with the recipe and seed.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from ..utils.image_processing_utils import images_to_list
from ..utils.validation import check_choice, check_float, check_int, describe

FAMILIES = ("slot_qformer", "setok", "ddt")
RECIPES_DIR = Path(__file__).parents[1] / "recipes"


def accelerator_available() -> bool:
    """Whether torch sees a GPU-like device. Without one, training arguments set ``use_cpu=True``: transformers
    runs data-parallel CPU processes (a GPU-less ``accelerate launch``) only then."""
    return torch.cuda.is_available() or torch.backends.mps.is_available() or (
        hasattr(torch, "xpu") and torch.xpu.is_available()
    )


def family_classes(family: str) -> dict[str, Any]:
    """Config, training-model, inference-model and image-processor classes of a family."""
    check_choice("family", family, FAMILIES)
    if family == "slot_qformer":
        from ..models import slot_qformer as module

        prefix, tokenizer_name = "SlotQFormer", "SlotQFormer"
    elif family == "setok":
        from ..models import setok as module

        prefix, tokenizer_name = "SeTok", "SeTok"
    else:
        from ..models import ddt as module

        prefix, tokenizer_name = "DDT", "DDTTokenizer"
    return {
        "config": getattr(module, f"{tokenizer_name}Config"),
        "pretraining": getattr(module, f"{tokenizer_name}ForPreTraining"),
        "model": getattr(module, f"{tokenizer_name}Model"),
        "image_processor": getattr(module, f"{prefix}ImageProcessorPil"),
    }


def image_processor_for(config, processor_class):
    """The family's PIL image processor sized for ``config.image_size``."""
    size = config.image_size
    return processor_class(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


class TokenizerTrainingCollator:
    """Rows → the batch keys of a family's ``ForPreTraining.forward``.

    Args:
        image_processor: the family's image processor (resizing, normalisation).
        forward_parameters: names the model's forward accepts; decides which keys are produced.
        text_tokenizer: needed when the model takes ``input_ids`` (SlotQFormer's text branch).
        max_text_length: captions are padded/truncated to this many tokens.
        image_column, caption_column, mask_column: dataset column names.
    """

    def __init__(
        self,
        image_processor,
        forward_parameters,
        text_tokenizer=None,
        max_text_length: int = 32,
        image_column: str = "image",
        caption_column: str = "caption",
        mask_column: str = "mask",
    ):
        self.image_processor = image_processor
        self.forward_parameters = set(forward_parameters)
        self.text_tokenizer = text_tokenizer
        self.max_text_length = check_int("max_text_length", max_text_length, minimum=2)
        self.image_column, self.caption_column, self.mask_column = image_column, caption_column, mask_column
        if "input_ids" in self.forward_parameters and text_tokenizer is None:
            raise ValueError("`text_tokenizer` is required: this model's forward takes `input_ids`.")

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("`rows` must contain at least one example, got an empty batch.")
        missing = [key for key in (self.image_column,) if key not in rows[0]]
        if missing:
            raise ValueError(f"Each row must have an `{self.image_column}` column, got columns {sorted(rows[0])}.")
        images = images_to_list([row[self.image_column] for row in rows], name=self.image_column)
        batch = {"pixel_values": self.image_processor(images, return_tensors="pt").pixel_values}
        if "input_ids" in self.forward_parameters:
            if self.caption_column not in rows[0]:
                raise ValueError(f"This model trains on text: rows need a `{self.caption_column}` column.")
            text = self.text_tokenizer(
                [row[self.caption_column] for row in rows],
                padding="max_length",
                truncation=True,
                max_length=self.max_text_length,
                return_tensors="pt",
            )
            batch["input_ids"], batch["attention_mask"] = text.input_ids, text.attention_mask
        if "instance_mask" in self.forward_parameters and self.mask_column in rows[0]:
            size = batch["pixel_values"].shape[-1]
            masks = []
            for row in rows:
                mask = row[self.mask_column]
                mask = mask.resize((size, size), resample=0) if hasattr(mask, "resize") else mask
                masks.append(torch.as_tensor(np.array(mask), dtype=torch.long))  # a copy: PIL arrays are read-only
            batch["instance_mask"] = torch.stack(masks)
        return batch


@dataclass
class TokenizerTrainingRecipe:
    """Everything that defines a tokenizer training run (saved with the checkpoint and in its card)."""

    family: str = "ddt"
    stage: int = 1
    preset: str = "tiny"  # "tiny" or "paper"; ignored when `init_from` is given
    config_overrides: dict = field(default_factory=dict)
    init_from: str | None = None  # a previous stage's output folder (its `training_model/`)
    num_train_images: int = 2000
    dataset_style: str = "textured"
    dataset_seed: int = 0
    max_steps: int = 500
    per_device_train_batch_size: int = 32
    learning_rate: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 20
    lr_scheduler_type: str = "cosine"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    seed: int = 0
    bf16: bool = False
    logging_steps: int = 25
    # every eval_steps optimizer steps: token maps of eval_num_images held-out shapes scenes (seed 998, the
    # recipe's style) against their true masks — FG-ARI, mIoU, tokens per image — in the log; 0: never
    eval_steps: int = 0
    eval_num_images: int = 64
    save_steps: int = 0  # 0: only at the end
    dataloader_num_workers: int = 0
    report_to: str = "none"

    def validate(self) -> TokenizerTrainingRecipe:
        check_choice("family", self.family, FAMILIES)
        check_choice("preset", self.preset, ("tiny", "paper"))
        check_int("stage", self.stage, minimum=1, maximum=3)
        check_int("max_steps", self.max_steps, minimum=1)
        check_int("num_train_images", self.num_train_images, minimum=1)
        check_int("per_device_train_batch_size", self.per_device_train_batch_size, minimum=1)
        check_float("learning_rate", self.learning_rate, minimum=0.0, strict_minimum=True)
        check_choice("dataset_style", self.dataset_style, ("textured", "flat"))
        check_int("eval_steps", self.eval_steps, minimum=0)
        check_int("eval_num_images", self.eval_num_images, minimum=1)
        if not isinstance(self.config_overrides, dict):
            raise TypeError(f"`config_overrides` must be a dict, got {describe(self.config_overrides)}.")
        return self

    @classmethod
    def from_name(cls, name: str, **overrides) -> TokenizerTrainingRecipe:
        """A recipe shipped in ``hf_vtok/recipes/`` by name (e.g. ``"ddt_tiny"``) or a JSON path."""
        if str(name).endswith(".json"):
            return cls.from_file(name, **overrides)
        path = RECIPES_DIR / f"{name}.json"
        if not path.is_file():
            available = sorted(p.stem for p in RECIPES_DIR.glob("*.json"))
            raise ValueError(f"`name` must be a shipped recipe, one of {available}, got {name!r}.")
        return cls.from_file(path, **overrides)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> TokenizerTrainingRecipe:
        """Read a JSON recipe (see ``hf_vtok/recipes/``); keyword arguments override its fields."""
        data = json.loads(Path(path).read_text())
        unknown = set(data) - set(cls.__dataclass_fields__) - {"description", "paper"}
        if unknown:
            raise ValueError(f"Recipe {str(path)!r} has unknown fields {sorted(unknown)}.")
        data = {key: value for key, value in data.items() if key in cls.__dataclass_fields__}
        data.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**data).validate()


def build_training_model(recipe: TokenizerTrainingRecipe):
    """The family's ``ForPreTraining`` model for the recipe (fresh, or continued from ``init_from``)."""
    classes = family_classes(recipe.family)
    if recipe.init_from:
        model = classes["pretraining"].from_pretrained(Path(recipe.init_from) / "training_model")
    else:
        config_class = classes["config"]
        config = config_class.tiny(**recipe.config_overrides) if recipe.preset == "tiny" else config_class(**recipe.config_overrides)
        model = classes["pretraining"](config)
    if hasattr(model, "set_stage"):
        model.set_stage(recipe.stage)
    return model


def _forward_parameters(model) -> list[str]:
    return list(inspect.signature(model.forward).parameters)


def train_tokenizer(
    recipe: TokenizerTrainingRecipe,
    output_dir: str | os.PathLike,
    *,
    train_dataset=None,
    text_tokenizer=None,
    resume_from_checkpoint: str | bool | None = None,
):
    """Train one stage of a tokenizer with ``transformers.Trainer`` and export it.

    Args:
        recipe: what to train (see :class:`TokenizerTrainingRecipe`).
        output_dir: where checkpoints, ``tokenizer/``, ``decoder/``, ``training_model/`` and the model
            card go.
        train_dataset: any ``datasets`` dataset with an ``image`` column (plus ``caption`` / ``mask``
            when the family trains on them); the shapes world by default.
        text_tokenizer: a text tokenizer for families with a text branch; the shapes-world word-level
            tokenizer by default.
        resume_from_checkpoint: passed to ``Trainer.train`` (True: the last checkpoint in output_dir).

    Returns:
        ``(model, trainer)``.
    """
    from transformers import Trainer, TrainingArguments, set_seed

    recipe = recipe.validate()
    output_dir = Path(output_dir)
    set_seed(recipe.seed)
    model = build_training_model(recipe)
    parameters = _forward_parameters(model)
    if train_dataset is None:
        from ..data.shapes import generate_shapes_dataset

        train_dataset = generate_shapes_dataset(
            recipe.num_train_images, image_size=model.config.image_size, style=recipe.dataset_style,
            seed=recipe.dataset_seed, with_edits=False,
        )
    if "input_ids" in parameters and text_tokenizer is None:
        from ..data.text_tokenizer import build_text_tokenizer

        text_tokenizer = build_text_tokenizer()
    classes = family_classes(recipe.family)
    image_processor = image_processor_for(model.config, classes["image_processor"])
    collator = TokenizerTrainingCollator(image_processor, parameters, text_tokenizer=text_tokenizer)
    args = TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        max_steps=recipe.max_steps,
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        warmup_steps=recipe.warmup_steps,
        lr_scheduler_type=recipe.lr_scheduler_type,
        adam_beta1=recipe.adam_beta1,
        adam_beta2=recipe.adam_beta2,
        adam_epsilon=recipe.adam_epsilon,
        max_grad_norm=recipe.max_grad_norm,
        seed=recipe.seed,
        data_seed=recipe.seed,
        bf16=recipe.bf16,
        logging_steps=recipe.logging_steps,
        save_strategy="steps" if recipe.save_steps else "no",
        save_steps=recipe.save_steps or 500,
        dataloader_num_workers=recipe.dataloader_num_workers,
        remove_unused_columns=False,
        report_to=recipe.report_to,
        disable_tqdm=False,
        use_cpu=not accelerator_available(),
    )
    callbacks = []
    if recipe.eval_steps:
        callbacks.append(HeldOutTokenMapsCallback(image_processor, model.config.image_size, recipe.eval_steps,
                                                  recipe.eval_num_images, recipe.dataset_style))
    trainer = Trainer(model=model, args=args, train_dataset=train_dataset, data_collator=collator, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    if trainer.is_world_process_zero():
        export_tokenizer(model, image_processor, output_dir, recipe, text_tokenizer, trainer.state.log_history)
    return model, trainer


class HeldOutTokenMapsCallback(TrainerCallback):
    """Every ``eval_steps`` steps, encode held-out shapes scenes with the tokenizer being trained and log how its
    token maps match the true object masks (FG-ARI, mIoU) and how many tokens an image gets — the numbers that
    show object-centric learning while it happens (or slots collapsing onto one or two groups). No decoding, so
    it costs one encode of ``num_images`` images. Runs on the main process; the scenes use seed 998 (the shipped
    checkpoints are measured on seed 999)."""

    def __init__(self, image_processor, image_size: int, eval_steps: int, num_images: int = 64, style: str = "textured",
                 seed: int = 998):
        self.image_processor = image_processor
        self.eval_steps = check_int("eval_steps", eval_steps, minimum=1)
        from ..data.shapes import STYLES

        self._scenes = {
            "num_images": check_int("num_images", num_images, minimum=1),
            "image_size": check_int("image_size", image_size, minimum=8),
            "style": check_choice("style", style, STYLES),
            "seed": seed,
        }

    @cached_property
    def dataset(self):
        """The held-out scenes, generated on first use so that only the main process builds them."""
        from ..data.shapes import generate_shapes_dataset

        return generate_shapes_dataset(with_edits=False, progress=False, **self._scenes)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is None or not state.is_world_process_zero:
            return
        if state.global_step % self.eval_steps and state.global_step != state.max_steps:
            return
        from ..evaluation.tokenizers import LoadedTokenizer, evaluate_tokenizer

        tokenizer = getattr(model, "module", model).tokenizer
        was_training = tokenizer.training
        tokenizer.eval()
        try:
            summary = evaluate_tokenizer(LoadedTokenizer(tokenizer, self.image_processor, None), self.dataset, reconstruct=False, keep_images=0).summary()
        finally:
            tokenizer.train(was_training)
        entry = {f"eval_{key}": value for key, value in summary.items()}
        entry["step"] = state.global_step
        state.log_history.append(entry)
        print(f"[held-out, step {state.global_step}] " + ", ".join(f"{key[5:]} {value}" for key, value in entry.items() if key != "step"))


def export_tokenizer(model, image_processor, output_dir, recipe, text_tokenizer=None, log_history=()):
    """Write ``training_model/``, ``tokenizer/`` (+ image processor), ``decoder/`` and ``recipe.json``."""
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir / "training_model")
    model.tokenizer.save_pretrained(output_dir / "tokenizer")
    image_processor.save_pretrained(output_dir / "tokenizer")
    if text_tokenizer is not None:
        text_tokenizer.save_pretrained(output_dir / "text_tokenizer")
    if hasattr(model, "get_decoder_pipeline"):
        model.get_decoder_pipeline().save_pretrained(output_dir / "decoder")
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    summary = {"recipe": asdict(recipe), "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}
    held_out = [entry for entry in log_history if any(key.startswith("eval_") for key in entry)]
    if held_out:
        summary["held_out"] = held_out
    (output_dir / "recipe.json").write_text(json.dumps(summary, indent=2, default=str))
    return output_dir


def loss_dropped(log_history, ratio: float = 0.9) -> bool:
    """Whether the mean logged loss of the last quarter is below ``ratio`` × that of the first quarter."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry and math.isfinite(entry["loss"])]
    if len(losses) < 4:
        return False
    quarter = max(1, len(losses) // 4)
    return sum(losses[-quarter:]) / quarter < ratio * sum(losses[:quarter]) / quarter

