"""Training the tokenizers with ``transformers.Trainer`` (and so with ``accelerate`` on any number of devices).

One code path serves the CLI (``hf-vtok train-tokenizer``), the script ``training/train_tokenizer.py`` and the demo's
``--train``, all parsing :class:`~hf_vtok.trainer.arguments.TokenizerArguments` + ``TrainingArguments``:

* :class:`TokenizerTrainingCollator` turns dataset rows (an ``image`` column, plus ``caption``, an
  instance ``mask`` and cached ``latents`` when present) into the batch keys the family's
  ``XForPreTraining.forward`` takes: ``pixel_values`` always, ``input_ids``/``attention_mask`` (text),
  ``instance_mask`` and ``latents`` only when the forward signature asks for them.
* A decoder that works in an autoencoder's latent space (``config.decoder_latent_shape`` is not None: DDT with
  ``vae_scale_factor > 1``, SlotQFormer / SeTok with ``decoder_config.vae = "taef2"``) trains on the latents of
  the training images, computed ONCE by :func:`~hf_vtok.utils.latent_cache.cache_latents` (a ``datasets`` cache
  keyed by the data and the autoencoder): no training step encodes an image. The autoencoder (``vae``, the shipped
  TAEF2 by default) becomes the ``vae`` component of the exported decoder pipeline.
* :func:`train_tokenizer` builds the family's training model (``AutoModelForPreTraining``) from a preset (``tiny`` or
  ``paper``) or a saved checkpoint, trains it for one stage with ``Trainer``, and exports the inference tokenizer
  (``tokenizer/``: config, safetensors, image processor), the decoder pipeline (``decoder/``, with its ``vae`` when it
  decodes latents), the text tokenizer when there is one, and ``recipe.json`` with the arguments and losses.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import Trainer, TrainerCallback

from ..utils.image_processing_utils import images_to_list
from ..utils.validation import check_choice, check_int
from .arguments import FAMILY_MODEL_TYPES, TokenizerArguments, TokenizerTrainingArguments, recorded_arguments
from .callbacks import run_callbacks, time_budget_stop, train_or_load_finished, wall_seconds


class TokenizerTrainingCollator:
    """Rows → the batch keys of a family's ``ForPreTraining.forward``.

    Args:
        image_processor: the family's image processor (resizing, normalisation).
        forward_parameters: names the model's forward accepts; decides which keys are produced.
        text_tokenizer: needed when the model takes ``input_ids`` (SlotQFormer's text branch).
        max_text_length: captions are padded/truncated to this many tokens.
        image_column, caption_column, mask_column, latents_column: dataset column names.

    With a ``latents_column`` (cached by :func:`~hf_vtok.utils.latent_cache.cache_latents`, which stretches every image
    to a square), each image is stretched the same way before the image processor, so that ``pixel_values`` and
    ``latents`` show the same pixels.
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
        latents_column: str = "latents",
    ):
        self.image_processor = image_processor
        self.forward_parameters = set(forward_parameters)
        self.text_tokenizer = text_tokenizer
        self.max_text_length = check_int("max_text_length", max_text_length, minimum=2)
        self.image_column, self.caption_column, self.mask_column = image_column, caption_column, mask_column
        self.latents_column = latents_column
        if "input_ids" in self.forward_parameters and text_tokenizer is None:
            raise ValueError("`text_tokenizer` is required: this model's forward takes `input_ids`.")

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("`rows` must contain at least one example, got an empty batch.")
        missing = [key for key in (self.image_column,) if key not in rows[0]]
        if missing:
            raise ValueError(f"Each row must have an `{self.image_column}` column, got columns {sorted(rows[0])}.")
        images = images_to_list([row[self.image_column] for row in rows], name=self.image_column)
        with_latents = "latents" in self.forward_parameters and self.latents_column in rows[0]
        if with_latents:
            crop = self.image_processor.crop_size
            images = [image.resize((crop["width"], crop["height"]), Image.BICUBIC) for image in images]
        batch = {"pixel_values": self.image_processor(images, return_tensors="pt").pixel_values}
        if with_latents:
            batch["latents"] = torch.stack([torch.as_tensor(row[self.latents_column], dtype=torch.float32) for row in rows])
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


def build_training_model(script_args: TokenizerArguments):
    """The family's ``ForPreTraining`` model (fresh from the preset, or continued from ``init_from``) at its stage."""
    from transformers import CONFIG_MAPPING, AutoModel, AutoModelForPreTraining

    model_type = FAMILY_MODEL_TYPES[script_args.family]
    if script_args.init_from:
        # a continued stage may change top-level training fields (loss weights, ...); the architecture is the saved one
        nested = sorted(key for key, value in script_args.config_overrides.items() if isinstance(value, dict))
        if nested:
            raise ValueError(f"`config_overrides` with `init_from` may only set top-level fields such as loss weights, "
                             f"got sub-config(s) {nested}.")  # fmt: skip
        if (Path(script_args.init_from) / "training_model").is_dir():
            model = AutoModelForPreTraining.from_pretrained(Path(script_args.init_from) / "training_model",
                                                            **script_args.config_overrides)  # fmt: skip
        else:  # a shipped or Hub folder keeps only the inference parts: reassemble the training model from decoder/
            model = training_model_from_decoder(Path(script_args.init_from) / "decoder", **script_args.config_overrides)
        model.config.validate()
        if model.config.model_type != model_type:
            raise ValueError(f"`init_from` {script_args.init_from!r} holds a {model.config.model_type!r} model, not "
                             f"{model_type!r} (family {script_args.family!r}).")  # fmt: skip
    else:
        config_class = CONFIG_MAPPING[model_type]
        preset = config_class.tiny if script_args.preset == "tiny" else config_class
        overrides = dict(script_args.config_overrides)
        vision_path = overrides.get("vision_model_name_or_path")
        if vision_path:  # a pretrained (frozen) vision encoder: its config replaces the preset's, its weights load below
            vision = AutoModel.from_pretrained(vision_path)
            overrides["vision_config"] = vision.config.to_dict()
        model = AutoModelForPreTraining.from_config(preset(**overrides))
        if vision_path:
            model.tokenizer.vision_model.load_state_dict(vision.state_dict())
        if script_args.warm_start_from:
            copied, fresh = warm_start(model, script_args.warm_start_from)
            print(f"warm start from {script_args.warm_start_from}: {len(copied)} tensors copied, {len(fresh)} left at "
                  f"their initialisation: {', '.join(fresh) or 'none'}")  # fmt: skip
    if hasattr(model, "set_stage"):
        model.set_stage(script_args.stage)
    return model


def warm_start(model, run_dir) -> tuple[list[str], list[str]]:
    """Copy into ``model`` every tensor of the run's ``training_model/`` whose name and shape match (an architecture
    changed in a part, e.g. a new layout head, keeps the rest of a long training); returns the (copied, fresh) names.
    A run of another model type, or one that shares no tensor, is an error: nothing starts from scratch unnoticed."""
    from transformers import AutoModelForPreTraining

    source = Path(run_dir) / "training_model"
    if not any(source.glob("*.safetensors")):
        raise ValueError(f"`warm_start_from` must be a train-tokenizer run folder holding training_model/*.safetensors, "
                         f"got {str(run_dir)!r}.")  # fmt: skip
    saved_type = json.loads((source / "config.json").read_text()).get("model_type")
    if saved_type != model.config.model_type:
        raise ValueError(f"`warm_start_from` {str(run_dir)!r} holds a {saved_type!r} model, not "
                         f"{model.config.model_type!r}.")  # fmt: skip
    # loaded as a model, not as raw files: from_pretrained maps the saved names onto the modules' (transformers
    # renames some submodules' weights on saving)
    saved = AutoModelForPreTraining.from_pretrained(source).state_dict()
    own = model.state_dict()
    matched = {name: tensor for name, tensor in saved.items() if name in own and own[name].shape == tensor.shape}
    if not matched:
        raise ValueError(f"`warm_start_from` {str(run_dir)!r} shares no tensor (name and shape) with the new model.")
    model.load_state_dict(matched, strict=False)
    return sorted(matched), sorted(name for name in own if name not in matched)


def training_model_from_decoder(decoder_dir, **config_overrides):
    """The ``ForPreTraining`` model of an exported ``decoder/`` pipeline folder (what a shipped checkpoint or a Hub
    repo keeps; the ``training_model/`` of a run is left out to halve its size). The training model is built from
    the pipeline's tokenizer config and every one of its submodules takes the weights of the pipeline component of
    the same name (DDT: tokenizer, conditioner, transformer); a submodule without such a component is an error, so
    nothing starts from random weights unnoticed."""
    from diffusers import DiffusionPipeline
    from transformers import AutoModelForPreTraining

    decoder_dir = Path(decoder_dir)
    if not (decoder_dir / "model_index.json").is_file():
        raise ValueError(f"`init_from` must be a run or exported tokenizer folder with training_model/ or decoder/, but "
                         f"{str(decoder_dir.parent)!r} has neither (no {decoder_dir / 'model_index.json'}).")  # fmt: skip
    pipeline = DiffusionPipeline.from_pretrained(decoder_dir)
    config = copy.deepcopy(pipeline.tokenizer.config)
    for name, value in config_overrides.items():
        if not hasattr(config, name):
            raise ValueError(f"`config_overrides` names {name!r}, which is not a field of {type(config).__name__}.")
        setattr(config, name, value)
    model = AutoModelForPreTraining.from_config(config)
    components = pipeline.components
    missing = [name for name, _ in model.named_children() if not isinstance(components.get(name), torch.nn.Module)]
    if missing:
        raise ValueError(f"`init_from` {str(decoder_dir.parent)!r}: the decoder pipeline has no component for the "
                         f"training model's {missing}; continue from the run folder (with training_model/) instead.")  # fmt: skip
    for name, module in model.named_children():
        module.load_state_dict(components[name].state_dict())
    return model


def generate_training_scenes(num_images: int, image_size: int, style: str, seed: int, progress: bool = True):
    """The shapes world without edits; ``style="mixed"``: the first half flat (``seed``), the rest textured
    (``seed + 1``)."""
    from datasets import concatenate_datasets

    from ..data.shapes import STYLES, generate_shapes_dataset

    check_choice("style", style, (*STYLES, "mixed"))
    parts = [("flat", num_images // 2, seed), ("textured", num_images - num_images // 2, seed + 1)] if style == "mixed" else [(style, num_images, seed)]
    return concatenate_datasets([
        generate_shapes_dataset(count, image_size=image_size, style=part_style, seed=part_seed, with_edits=False, progress=progress)
        for part_style, count, part_seed in parts if count > 0
    ])  # fmt: skip


def load_autoencoder(name: str):
    """A frozen autoencoder for a latent-space decoder: ``"taef2"`` (shipped with the package, MIT) or the folder of
    a saved ``AutoencoderTAEF2`` (e.g. the ``vae/`` of an exported decoder)."""
    from ..utils.autoencoder_taef2 import AutoencoderTAEF2, load_taef2

    if name == "taef2":
        vae = load_taef2()
    elif (Path(name) / "config.json").is_file():
        vae = AutoencoderTAEF2.from_pretrained(name).eval()
    else:
        raise ValueError(f"`vae` must be 'taef2' or the folder of a saved AutoencoderTAEF2 (with config.json), got {name!r}.")
    return vae.requires_grad_(False)


def decoder_autoencoder(model, vae: str | None):
    """The autoencoder whose latents ``model``'s decoder works in (None when ``config.decoder_latent_shape`` is None:
    a pixel-space decoder, or one with its own VAE), checked against that latent shape."""
    shape = model.config.decoder_latent_shape
    if shape is None:
        return None
    if vae is None:
        raise ValueError(f"`vae` is None, but the decoder works in latent space (latents of shape {list(shape)}): "
                         "name its autoencoder, e.g. 'taef2'.")  # fmt: skip
    autoencoder = load_autoencoder(vae)
    found = (autoencoder.config.latent_channels, autoencoder.spatial_compression_ratio)
    # a decoder config that states its compression (DDT's vae_scale_factor) must agree with the autoencoder's
    expected = (shape[0], getattr(model.config.decoder_config, "vae_scale_factor", found[1]))
    if found != expected:
        raise ValueError(f"`vae` {vae!r} makes {found[0]}-channel latents at 1/{found[1]} resolution, but the decoder "
                         f"denoises latents of shape {list(shape)} (in_channels = {expected[0]}) at 1/{expected[1]}.")  # fmt: skip
    return autoencoder


def decoder_image_size(model, autoencoder) -> int:
    """The resolution whose ``autoencoder`` latents the decoder denoises (``decoder_latent_shape`` x compression)."""
    return model.config.decoder_latent_shape[-1] * autoencoder.spatial_compression_ratio


def cache_training_latents(dataset, autoencoder, image_size: int):
    """``dataset`` with a ``latents`` column (torch-formatted; the other columns as they were), encoded once: the
    ``datasets`` cache returns the same latents on later runs without running the encoder. Under ``accelerate
    launch`` the main process encodes and the others read its cache file."""
    import datasets
    from accelerate import PartialState

    from ..utils.latent_cache import cache_latents

    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(f"A latent-space decoder trains on cached latents: the training data must be a map-style "
                         f"datasets.Dataset, got {type(dataset).__name__} (set `streaming` false).")  # fmt: skip
    with PartialState().main_process_first():
        dataset = cache_latents(dataset, autoencoder, image_size=image_size)
    return dataset.with_format("torch", columns=["latents"], output_all_columns=True)


def train_tokenizer(
    script_args: TokenizerArguments, training_args: TokenizerTrainingArguments, *, train_dataset=None, text_tokenizer=None
):
    """Train one stage of a tokenizer with ``transformers.Trainer`` and export it to ``training_args.output_dir``.

    Args:
        script_args: the family, stage, preset or previous stage, and data (:class:`TokenizerArguments`).
        training_args: any ``TrainingArguments``; ``output_dir`` receives ``checkpoints/``, ``tokenizer/``,
            ``decoder/``, ``training_model/`` and ``recipe.json``. ``eval_steps`` scores held-out token maps.
        train_dataset: any ``datasets`` dataset with an ``image`` column (plus ``caption`` / ``mask`` when the
            family trains on them); by default ``script_args.dataset`` (the shapes world).
        text_tokenizer: a text tokenizer for families with a text branch; the shapes-world word-level
            tokenizer by default.

    A latent-space decoder trains on ``script_args.vae``'s latents of ``train_dataset``, cached once (see
    :func:`cache_training_latents`); that autoencoder is the ``vae`` of the exported ``decoder/``.

    Returns:
        ``(model, trainer)``.
    """
    from transformers import set_seed

    from ..mllm.processing_mllm import image_processor_for

    set_seed(training_args.seed)
    model = build_training_model(script_args)
    parameters = list(inspect.signature(model.forward).parameters)
    vae = decoder_autoencoder(model, script_args.vae)
    latent_image_size = decoder_image_size(model, vae) if vae is not None else 0
    if vae is not None:  # the latents are encoded on the training device (seconds on a GPU, minutes on a CPU)
        vae.to(training_args.device)
    if vae is not None and getattr(model.config, "pixel_loss_weight", 0) > 0:
        model.attach_vae(vae)  # the pixel loss decodes the predicted latents; the targets stay the cached ones
    if train_dataset is None and script_args.dataset == "shapes":  # scenes at the larger of the two resolutions
        train_dataset = generate_training_scenes(script_args.num_train_images, max(model.config.image_size, latent_image_size),
                                                 script_args.dataset_style, script_args.dataset_seed)  # fmt: skip
    elif train_dataset is None:
        from ..data.pretokenize import load_image_dataset

        train_dataset = load_image_dataset(script_args.dataset, split=script_args.dataset_split, streaming=script_args.streaming)
    if "input_ids" in parameters and text_tokenizer is None:
        from ..data.text_tokenizer import build_text_tokenizer

        text_tokenizer = build_text_tokenizer()
    if vae is not None:
        train_dataset = cache_training_latents(train_dataset, vae, latent_image_size)
    image_processor = image_processor_for(model.config)
    collator = TokenizerTrainingCollator(image_processor, parameters, text_tokenizer=text_tokenizer)
    callbacks = run_callbacks(training_args)
    if training_args.eval_steps:
        callbacks.append(HeldOutTokenMapsCallback(image_processor, model.config.image_size, int(training_args.eval_steps),
                                                  script_args.eval_num_images, script_args.dataset_style))  # fmt: skip
    trainer = TokenizerTrainer(model=model, args=training_args.for_trainer(), train_dataset=train_dataset,
                               data_collator=collator, callbacks=callbacks)  # fmt: skip
    train_or_load_finished(trainer, training_args)
    if trainer.is_world_process_zero():
        recipe = recorded_arguments(script_args, training_args)
        export_tokenizer(model, image_processor, training_args.output_dir, recipe, text_tokenizer, trainer.state.log_history,
                         vae=vae, global_step=trainer.state.global_step, stopped_by_time_budget_at=time_budget_stop(trainer))  # fmt: skip
        if training_args.push_to_hub:
            from .hub import push_folder

            push_folder(training_args.output_dir, training_args.hub_model_id or Path(training_args.output_dir).name,
                        private=bool(training_args.hub_private_repo), token=training_args.hub_token)
    return model, trainer


class TokenizerTrainer(Trainer):
    """``transformers.Trainer`` that also logs the parts of a tokenizer's loss: every scalar of the training model's
    output besides ``loss`` (``diffusion_loss``, ``pixel_loss``, ``commitment_loss``, ``perplexity``, ...), averaged
    over the steps since the last log (of this process's batches), beside the ``loss`` the Trainer logs. A weighted
    sum alone cannot say which of its terms moved."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loss_parts: dict[str, list[torch.Tensor]] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:
            for key, value in outputs.items():
                if key != "loss" and isinstance(value, torch.Tensor) and value.ndim == 0 and value.is_floating_point():
                    self._loss_parts.setdefault(key, []).append(value.detach())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._loss_parts:
            for key, values in self._loss_parts.items():
                logs.setdefault(key, round(torch.stack(values).float().mean().item(), 4))
            self._loss_parts = {}
        super().log(logs, start_time)


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
            "style": check_choice("style", style, (*STYLES, "mixed")),
            "seed": seed,
        }

    @cached_property
    def dataset(self):
        """The held-out scenes, generated on first use so that only the main process builds them."""
        return generate_training_scenes(progress=False, **self._scenes)

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


def export_tokenizer(model, image_processor, output_dir, recipe: dict, text_tokenizer=None, log_history=(), vae=None,
                     global_step: int | None = None, stopped_by_time_budget_at: int | None = None):
    """Write ``training_model/``, ``tokenizer/`` (+ image processor), ``decoder/`` (with ``vae``, the autoencoder of a
    latent-space decoder, and its licence) and ``recipe.json`` (``recipe``: the run's arguments, see
    :func:`~hf_vtok.trainer.arguments.recorded_arguments`; the step reached, and where ``--max_train_seconds`` stopped
    the run before ``max_steps``)."""
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir / "training_model")
    model.tokenizer.save_pretrained(output_dir / "tokenizer")
    image_processor.save_pretrained(output_dir / "tokenizer")
    if text_tokenizer is not None:
        text_tokenizer.save_pretrained(output_dir / "text_tokenizer")
    if hasattr(model, "get_decoder_pipeline"):
        model.get_decoder_pipeline(vae=vae).save_pretrained(output_dir / "decoder")
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    summary = {"recipe": recipe, "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}
    summary["wall_seconds"] = wall_seconds(log_history)  # training time summed over resumed segments
    summary["global_step"], summary["stopped_by_time_budget_at"] = global_step, stopped_by_time_budget_at
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

