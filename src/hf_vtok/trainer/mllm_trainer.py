"""Training the MLLM (any causal LM + a frozen hf_vtok visual tokenizer) with TRL, PEFT and ``accelerate``.

One code path serves ``training/train_mllm.py``, ``hf-vtok train-mllm`` and the examples, all parsing
:class:`~hf_vtok.trainer.arguments.MLLMArguments` + ``SFTConfig`` + TRL's ``ModelConfig`` (``--recipe`` files in
``training/recipes/mllm/``):

* The models: the base LM (``model_name_or_path``; ``"tiny-llama"``: a random 2-layer Llama over the shapes-world
  word-level tokenizer), the visual tokenizer folder (or ``"random:<family>"``: a random tiny tokenizer built on the
  fly), fine-tuned with LoRA (``use_peft``, ``lora_r``, ...), in full, or only in its new rows
  (``freeze_language_model``).
* :func:`build_task_dataset` — rows of a *pre-tokenised* dataset (:mod:`hf_vtok.data.pretokenize`) → plain-text
  examples. Discrete tokenizers write images as ``"<boi><v_00012>…<eoi>"`` text (the LM reads an image through
  its embedding rows exactly as if ``pixel_values`` had been passed), so every task — understanding and
  generation — is ordinary text and TRL packs it. Pre-training data are ``text`` rows (next-token loss on
  everything, randomised modality order); instruction data are ``prompt``/``completion`` rows ("USER: …
  ASSISTANT:"; loss on the completion only).
* :func:`train_mllm` — TRL ``SFTTrainer`` for discrete tokenizers; for continuous ones (SeTok) a ``Trainer`` whose
  collator feeds the pre-tokenised embeddings as ``visual_tokens`` so that the regression loss is trained (TRL
  scores through a fused LM head and never calls the model's own loss). LoRA trains the adapters plus only the new
  visual rows of the embedding and LM head (``trainable_token_indices``).
* Export: ``out/`` is a complete ``VTokTextToImagePipeline`` folder (``model_index.json``, ``mllm/`` = merged
  model + processor, ``processor/``, ``decoder/`` = the tokenizer's decoder pipeline), plus ``adapter/`` (the PEFT
  adapter alone) and ``recipe.json`` (arguments, losses, runtime).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer
from trl import SFTTrainer

from ..utils.modeling_utils import VisualTokens
from .arguments import (
    FAMILY_MODEL_TYPES,
    PAPER_PROMPTS,
    PRETRAINING_FORMATS,
    TASKS,
    TINY_LM,
    MLLMArguments,
    MLLMModelConfig,
    MLLMTrainingArguments,
    finetuning_mode,
    recorded_arguments,
)
from .callbacks import run_callbacks, time_budget_stop, train_or_load_finished, wall_seconds


# ---------------------------------------------------------------------------------------------------- models
def tiny_language_model(text_tokenizer, seed: int = 0, **overrides):
    """A random Llama small enough for CPU tests, with the special ids of ``text_tokenizer``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    values = {
        "vocab_size": len(text_tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096, "tie_word_embeddings": False,
        "pad_token_id": text_tokenizer.pad_token_id, "bos_token_id": text_tokenizer.bos_token_id,
        "eos_token_id": text_tokenizer.eos_token_id,
    }  # fmt: skip
    values.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**values))


def build_language_model(script_args: MLLMArguments, model_args: MLLMModelConfig, seed: int = 0):
    """``(causal LM, text tokenizer)`` of ``model_args.model_name_or_path``: ``"tiny-llama"``, a base-model name of
    :func:`~hf_vtok.mllm.base_models.resolve_base_model` (``"smollm2"``) or a folder / Hub id, loaded in
    ``model_args.dtype`` (``"auto"`` for SmolLM2: its float32 folder). Weights that train stay float32 (TRL's
    default dtype) so that AdamW updates float32 values, PEFT's trainable visual rows included; ``bf16: true``
    autocasts the compute, not the weights."""
    from transformers import AutoTokenizer

    from ..mllm.base_models import SMOLLM2, resolve_base_model

    name = model_args.model_name_or_path
    if name == TINY_LM:
        from ..data.text_tokenizer import build_text_tokenizer

        tokenizer = AutoTokenizer.from_pretrained(script_args.text_tokenizer) if script_args.text_tokenizer else build_text_tokenizer()
        return tiny_language_model(tokenizer, seed, **script_args.base_model_overrides), tokenizer
    dtype = model_args.dtype or "float32"
    if str(name).lower() == SMOLLM2:
        model, tokenizer = resolve_base_model(name, dtype=torch.float32 if dtype == "auto" else getattr(torch, dtype))
    else:
        model, tokenizer = resolve_base_model(
            name, dtype=dtype, revision=model_args.model_revision, attn_implementation=model_args.attn_implementation,
            trust_remote_code=model_args.trust_remote_code,
        )  # fmt: skip
    if script_args.text_tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(script_args.text_tokenizer)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return model, tokenizer


def build_visual_tokenizer(source: str, *, decoder: str | None = None, seed: int = 0):
    """``(visual tokenizer, image processor, decoder pipeline or None)``.

    ``"shipped:<family>"`` is the checkpoint shipped with the package (the demo's). ``"random:<family>"`` builds the
    family's tiny training model (``AutoModelForPreTraining``) with ``seed`` and returns its tokenizer and its decoder
    pipeline (random, but the whole pipeline runs); a folder is loaded with the Auto classes, and the decoder from
    ``decoder`` or the sibling ``decoder/`` folder of a ``train-tokenizer`` output.
    """
    from transformers import CONFIG_MAPPING, AutoModelForPreTraining

    from ..data.pretokenize import load_visual_tokenizer, resolve_tokenizer_source
    from ..mllm.pipeline_mllm import load_decoder_pipeline
    from ..mllm.processing_mllm import image_processor_for

    source = resolve_tokenizer_source(source)
    if source.startswith("random:"):
        torch.manual_seed(seed)
        config = CONFIG_MAPPING[FAMILY_MODEL_TYPES[source.split(":", 1)[1]]].tiny()
        pretraining = AutoModelForPreTraining.from_config(config).eval()
        return pretraining.tokenizer, image_processor_for(config), pretraining.get_decoder_pipeline()
    model, image_processor = load_visual_tokenizer(source)
    candidates = [Path(decoder)] if decoder else [Path(source) / "decoder", Path(source).parent / "decoder"]
    folder = next((candidate for candidate in candidates if (candidate / "model_index.json").is_file()), None)
    if decoder and folder is None:
        raise ValueError(f"`decoder` must be a decoder pipeline folder (model_index.json), got {decoder!r}.")
    return model, image_processor, load_decoder_pipeline(folder) if folder else None


def build_mllm(script_args: MLLMArguments, model_args: MLLMModelConfig | None = None, seed: int = 0):
    """``(VTokMLLMForConditionalGeneration, VTokMLLMProcessor, decoder or None)`` (``model_args`` None: tiny-llama).

    With ``init_from`` the previous stage's merged ``mllm/`` folder and its ``decoder/`` are loaded instead; a parts
    folder (:mod:`hf_vtok.mllm.parts`, e.g. a shipped SmolLM2 MLLM) comes back as a ``PeftModel`` whose adapter keeps
    training (LoRA only), so a run can go on from a checkpoint that ships instead of from a local ``--resume``.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..mllm import VTokMLLMForConditionalGeneration, VTokMLLMProcessor
    from ..mllm.parts import load_mllm_parts, parts_decoder_folder, references_mllm_parts
    from ..mllm.pipeline_mllm import load_decoder_pipeline
    from ..mllm.processing_mllm import check_task_prompts

    if script_args.init_from:
        folder = Path(script_args.init_from)
        mllm_dir = folder / "mllm" if (folder / "mllm" / "config.json").is_file() else folder
        if not (mllm_dir / "config.json").is_file():
            raise ValueError(f"`init_from` must be a train-mllm output (with mllm/) or an MLLM folder, got {script_args.init_from!r}.")
        if references_mllm_parts(mllm_dir):
            model = load_mllm_parts(mllm_dir, VTokMLLMForConditionalGeneration, trainable=True)
            decoder_dir = parts_decoder_folder(mllm_dir)
        else:
            model = AutoModelForImageTextToText.from_pretrained(mllm_dir)
            decoder_dir = folder / "decoder"
        processor_dir = folder / "processor" if (folder / "processor" / "processor_config.json").is_file() else mllm_dir
        processor = AutoProcessor.from_pretrained(processor_dir)
        processor.task_prompts = check_task_prompts(script_args.task_prompts()) or processor.task_prompts
        decoder = load_decoder_pipeline(decoder_dir) if decoder_dir and (decoder_dir / "model_index.json").is_file() else None
        return model, processor, decoder
    language_model, text_tokenizer = build_language_model(script_args, model_args or MLLMModelConfig(), seed)
    visual, image_processor, decoder = build_visual_tokenizer(script_args.visual_tokenizer, decoder=script_args.decoder, seed=seed)
    model = VTokMLLMForConditionalGeneration.from_text_model_and_tokenizer(
        language_model, visual, text_tokenizer, pad_to_multiple_of=script_args.vocab_pad_to_multiple_of
    )
    if script_args.visual_rows_init == "codebook":  # departure: rows start from the codes, not the text mean
        from ..mllm.vocabulary import init_visual_rows_from_codebook

        init_visual_rows_from_codebook(model, visual, seed=seed)
    if script_args.prompt_dropout_prob == 0 and any(script_args.task_mix.get(task, 0) > 0 for task in ("text_to_image", "editing")):
        # guidance contrasts the prompt with an empty one; without caption dropout that branch never trains and
        # guidance extrapolates from it (docs/mllm.md: guidance 3 turned SmolLM2's scenes into colour fields)
        model.config.image_guidance_scale = 1.0
        print("[train-mllm] prompt_dropout_prob is 0 (no unconditional examples): the model draws without guidance "
              "(image_guidance_scale 1)")
    processor = VTokMLLMProcessor.from_visual_tokenizer(
        text_tokenizer, visual, image_processor=image_processor, chat_template=script_args.chat_template,
        task_prompts=script_args.task_prompts(),
    )  # fmt: skip
    return model, processor, decoder


def new_token_rows(model, processor) -> list[int]:
    """Ids the visual vocabulary added: the codes (discrete tokenizers) and ``<boi>``, ``<eoi>``, ``<image>``."""
    start = model.config.visual_token_offset
    return list(range(start, len(processor.tokenizer)))


def _embedding_module_name(model) -> str:
    embedding = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is embedding:
            return name.rsplit(".", 1)[-1]
    raise ValueError("The model's input embedding module was not found.")


def _heads_tied(model) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def apply_finetuning(model, processor, script_args: MLLMArguments, model_args: MLLMModelConfig):
    """Wrap ``model`` for the fine-tuning mode; returns the model to train (a ``PeftModel`` for lora/partial).

    * LoRA (``use_peft``): TRL's ``get_peft_config(model_args)`` adapters plus, with ``train_visual_rows``, only the new
      rows of the input embedding and of an untied LM head (``trainable_token_indices``); continuous tokenizers also
      train the projector and the regression head (``modules_to_save``).
    * ``freeze_language_model`` (partial): no adapters — the new rows (PEFT ``TrainableTokens``) and, for continuous
      tokenizers, the projector and regression head; the LM itself stays frozen (SeTok stage II).
    * otherwise every LM parameter trains (DDT-LLaMA); the visual tokenizer stays frozen.
    """
    import dataclasses

    from peft import PeftModel, TrainableTokensConfig, get_peft_model
    from trl import get_peft_config

    mode = finetuning_mode(model_args, script_args)
    if isinstance(model, PeftModel):  # build_mllm continued a parts folder's adapter: it is already in place
        if mode != "lora":
            raise ValueError(f"`init_from` a parts folder continues its LoRA adapter: set `use_peft` (this run is {mode}).")
        return model
    rows = new_token_rows(model, processor)
    embedding = _embedding_module_name(model)
    token_targets = {embedding: rows} if _heads_tied(model) else {embedding: rows, "lm_head": rows}
    continuous = not model.config.is_discrete
    extra_modules = ["projector", "regression_head"] if continuous else []
    if mode == "full":
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(".visual_tokenizer." not in f".{name}")
        model.freeze_visual_tokenizer()
        return model
    if mode == "lora":
        config = get_peft_config(model_args)
        config = dataclasses.replace(
            config, trainable_token_indices=token_targets if script_args.train_visual_rows else None,
            modules_to_save=(config.modules_to_save or []) + extra_modules or None,
        )  # fmt: skip
        return get_peft_model(model, config)
    if not script_args.train_visual_rows and not continuous:
        raise ValueError("`freeze_language_model` with `train_visual_rows=False` leaves nothing to train.")
    peft_model = get_peft_model(model, TrainableTokensConfig(target_modules=list(token_targets), token_indices=rows))
    for name, module in peft_model.named_modules():  # the projector and regression head train in full
        if name.rsplit(".", 1)[-1] in extra_modules:
            module.requires_grad_(True)
    return peft_model


def trainable_parameter_count(model) -> tuple[int, int]:
    """``(trainable, total)`` parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------- data
def _image_text(processor, row: dict, column: str):
    """A pre-tokenised image as LM text (discrete) or ``("<image>", embeddings)`` (continuous); None if absent."""
    if processor.is_discrete:
        ids = row.get(f"{column}_ids")
        return None if ids is None else (processor.ids_to_text(torch.tensor(ids, dtype=torch.long)), None)
    embeddings = row.get(f"{column}_embeddings")
    return None if embeddings is None else (processor.image_token, embeddings)


def _question(row: dict, rng: random.Random, type_weights: dict | None = None) -> tuple[str, str] | None:
    """A question of the row: uniformly, or by ``type_weights`` of its ``type`` (unnamed types weigh 1); None when
    the row has none (or only types of weight 0)."""
    if row.get("question") is not None and row.get("answer") is not None:
        return str(row["question"]), str(row["answer"])
    questions = row.get("questions") or []
    if type_weights is not None:
        weights = [float(type_weights.get(item.get("type"), 1.0)) for item in questions]
        if sum(weights) <= 0:
            return None
        item = rng.choices(questions, weights)[0]
    elif not questions:
        return None
    else:
        item = rng.choice(questions)  # the draw of runs without weights stays what it was
    return str(item["question"]), str(item["answer"])


def build_task_dataset(script_args: MLLMArguments, pretokenized, processor, seed: int = 0):
    """Pre-tokenised rows → training examples of the task mix (a ``datasets.Dataset``).

    Rows need ``image_ids`` (or ``image_embeddings``) and ``caption``; QA uses ``questions`` (list of
    ``{"question", "answer"}``) or ``question``/``answer``; editing uses ``edit_instruction`` and ``edit_image_ids``
    (``edit_image_embeddings``). Pre-training rows are ``{"text"}``; instruction rows ``{"prompt", "completion"}``,
    with the chat template applied to the prompt. Continuous tokenizers add ``embeddings`` (one list per
    ``<image>`` marker, in order). Example ``i`` draws its task and row from a generator seeded with ``seed``, so the
    dataset is the same on every process.
    """
    from datasets import Dataset

    rng = random.Random(seed)
    tasks = [task for task in TASKS if script_args.task_mix.get(task, 0) > 0]
    weights = [float(script_args.task_mix[task]) for task in tasks]
    num_rows = len(pretokenized)
    if num_rows == 0:
        raise ValueError("`pretokenized` holds no rows.")
    editable = [i for i in range(num_rows) if pretokenized[i].get("edit_instruction") and (
        pretokenized[i].get("edit_image_ids") is not None or pretokenized[i].get("edit_image_embeddings") is not None)]
    count = script_args.num_examples or num_rows
    examples: dict[str, list] = {"text": []} if script_args.stage == "pretraining" else {"prompt": [], "completion": []}
    if not processor.is_discrete:
        examples["embeddings"] = []
    examples["task"] = []
    templates = {**PAPER_PROMPTS, **script_args.prompt_templates}
    skipped = 0
    for index in range(count):
        task = rng.choices(tasks, weights)[0]
        if task == "editing":
            if not editable:
                skipped += 1
                continue
            row = pretokenized[editable[rng.randrange(len(editable))]]
        else:
            row = pretokenized[index % num_rows]
        image = _image_text(processor, row, "image")
        if image is None:
            skipped += 1
            continue
        embeddings = [image[1]]
        values = {"image": image[0], "caption": str(row.get("caption") or "")}
        if task == "qa":
            qa = _question(row, rng, script_args.question_type_weights)
            if qa is None:
                skipped += 1
                continue
            values["question"], values["answer"] = qa
        if task == "editing":
            target = _image_text(processor, row, "edit_image")
            values["instruction"], values["target"] = str(row["edit_instruction"]), target[0]
            embeddings.append(target[1])
        dropped = task in ("text_to_image", "editing") and rng.random() < script_args.prompt_dropout_prob
        if script_args.stage == "pretraining":
            order = task
            if script_args.randomize_modality_order and rng.random() < 0.5:
                order = "text_to_image" if task == "captioning" else "captioning"
            if dropped or (order == "text_to_image" and rng.random() < script_args.prompt_dropout_prob):
                text = values["image"]  # caption dropped: the unconditional sequence of guidance
            else:
                text = PRETRAINING_FORMATS[order].format(**values)
            examples["text"].append(text)
        else:
            prompt, completion = templates[task]
            if dropped:  # keep input images (editing), drop the words: the unconditional prompt
                prompt = " ".join(["{image}"] * prompt.count("{image}"))
            prompt = processor.format_prompt(prompt.format(**values))
            examples["prompt"].append(prompt)
            examples["completion"].append(processor.join_completion(prompt, completion.format(**values)))
        if "embeddings" in examples:
            examples["embeddings"].append([e for e in embeddings if e is not None])
        examples["task"].append(task)
    if not examples["task"]:
        raise ValueError(
            f"No example could be built from `pretokenized` for task_mix {script_args.task_mix} ({skipped} skipped): check "
            "its columns (image_ids / image_embeddings, caption, questions, edit_instruction, edit_image_ids)."
        )
    return Dataset.from_dict(examples)


def prepare_pretokenized(script_args: MLLMArguments, visual_tokenizer, image_processor, output_dir: Path, train_dataset=None):
    """The pre-tokenised dataset ``script_args.dataset`` trains on (written once under ``output_dir/pretokenized`` if needed)."""
    from ..data.pretokenize import dataset_from_source, load_pretokenized, pretokenize_dataset, read_manifest

    if train_dataset is None and Path(script_args.dataset).is_dir() and (Path(script_args.dataset) / "pretokenize.json").is_file():
        manifest = read_manifest(script_args.dataset)
        expected = getattr(visual_tokenizer.config, "codebook_size", None)
        if manifest.get("codebook_size") != expected or manifest.get("num_visual_tokens") != visual_tokenizer.config.num_visual_tokens:
            raise ValueError(
                f"`dataset` {script_args.dataset!r} was pre-tokenised with another tokenizer (codebook "
                f"{manifest.get('codebook_size')}, {manifest.get('num_visual_tokens')} tokens) than this run's "
                f"(codebook {expected}, {visual_tokenizer.config.num_visual_tokens} tokens)."
            )
        return load_pretokenized(script_args.dataset)
    if train_dataset is None:
        if script_args.dataset == "shapes":
            source = f"shapes:{script_args.num_train_images}:{script_args.dataset_style}:{script_args.dataset_seed}"
        else:
            source = script_args.dataset
        train_dataset = dataset_from_source(source, image_size=visual_tokenizer.config.image_size)
    folder = output_dir / "pretokenized"
    pretokenize_dataset(
        visual_tokenizer, train_dataset, folder, image_processor=image_processor,
        batch_size=script_args.pretokenize_batch_size, num_proc=script_args.pretokenize_num_proc, progress=True,
    )  # fmt: skip
    return load_pretokenized(folder)


def pretokenized_provenance(pretokenized) -> dict | None:
    """Where a pre-tokenised training set came from (its manifest's source, tokenizer fingerprint and size), for
    ``recipe.json``: a run given a folder records more than the folder's path, which means nothing on another machine."""
    try:
        manifest = json.loads(pretokenized.info.description or "")
    except (AttributeError, ValueError):
        return None
    if not isinstance(manifest, dict) or "tokenizer_fingerprint" not in manifest:
        return None
    return {key: manifest.get(key) for key in ("source", "tokenizer_fingerprint", "num_rows")}


# ------------------------------------------------------------------------------------ continuous tokenizers
class ContinuousMLLMCollator:
    """Prompt/completion rows with ``<image>`` markers plus their pre-tokenised ``embeddings`` → a batch whose
    images enter as ``visual_embeddings`` / ``visual_attention_mask`` (the model gets them as ``visual_tokens``)."""

    def __init__(self, processor, max_length: int | None = None, text_column: str | None = None):
        self.processor = processor
        self.max_length = max_length
        self.text_column = text_column

    def _expand(self, text: str, counts: list[int]) -> str:
        pieces = text.split(self.processor.image_token)
        if len(pieces) - 1 != len(counts):
            raise ValueError(f"An example holds {len(pieces) - 1} image markers but {len(counts)} embedding lists.")
        out = pieces[0]
        for count, piece in zip(counts, pieces[1:]):
            out += self.processor.boi_token + self.processor.image_token * count + self.processor.eoi_token + piece
        return out

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        tokenizer = self.processor.tokenizer
        eos = tokenizer.eos_token or ""
        input_rows, label_rows, images = [], [], []
        for row in rows:
            embeddings = [np.asarray(e, dtype=np.float32) for e in row.get("embeddings") or []]
            counts = [int(e.shape[0]) for e in embeddings]
            if "text" in row:
                prompt_counts, completion_counts = counts, []
                prompt, completion = row["text"], None
            else:
                split = row["prompt"].count(self.processor.image_token)
                prompt_counts, completion_counts = counts[:split], counts[split:]
                prompt, completion = row["prompt"], row["completion"]
            ids = tokenizer(self._expand(prompt, prompt_counts))["input_ids"]
            if completion is None:
                ids = ids + tokenizer(eos, add_special_tokens=False)["input_ids"]
                labels = list(ids)
            else:
                target = tokenizer(self._expand(completion, completion_counts) + eos, add_special_tokens=False)["input_ids"]
                labels = [-100] * len(ids) + list(target)
                ids = ids + target
            if self.max_length is not None and len(ids) > self.max_length:
                raise ValueError(
                    f"An example of {len(ids)} tokens exceeds `max_length` ({self.max_length}); truncating would cut an image."
                )
            input_rows.append(ids)
            label_rows.append(labels)
            images.extend(embeddings)
        length = max(len(r) for r in input_rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        batch = {
            "input_ids": torch.tensor([r + [pad] * (length - len(r)) for r in input_rows], dtype=torch.long),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in input_rows], dtype=torch.long),
            "labels": torch.tensor([r + [-100] * (length - len(r)) for r in label_rows], dtype=torch.long),
        }
        if images:
            longest = max(e.shape[0] for e in images)
            width = images[0].shape[1]
            values = torch.zeros(len(images), longest, width)
            mask = torch.zeros(len(images), longest, dtype=torch.long)
            for index, embedding in enumerate(images):
                values[index, : embedding.shape[0]] = torch.from_numpy(embedding)
                mask[index, : embedding.shape[0]] = 1
            batch["visual_embeddings"], batch["visual_attention_mask"] = values, mask
        return batch


VISUAL_ROWS_GROUP = "visual_rows"


def split_visual_rows_group(optimizer, model, learning_rate: float) -> int:
    """Move the new visual rows (PEFT's trainable-token deltas) of ``optimizer`` into their own parameter group with
    ``learning_rate``; returns how many tensors moved. Run before the scheduler is built, which scales each group's
    own initial rate. Idempotent."""
    if any(group.get("name") == VISUAL_ROWS_GROUP for group in optimizer.param_groups):
        return 0
    rows = {id(p) for name, p in model.named_parameters() if p.requires_grad and "trainable_tokens_delta" in name}
    if not rows:
        raise ValueError("`visual_rows_learning_rate` needs the new rows as separate trainable tensors (LoRA with "
                         "`train_visual_rows`, or `freeze_language_model`); this model has none.")  # fmt: skip
    moved_groups = []
    for group in optimizer.param_groups:
        moved = [p for p in group["params"] if id(p) in rows]
        if moved:
            group["params"] = [p for p in group["params"] if id(p) not in rows]
            settings = {key: value for key, value in group.items() if key != "params"}
            moved_groups.append({**settings, "params": moved, "lr": learning_rate, "name": VISUAL_ROWS_GROUP})
    optimizer.param_groups = [group for group in optimizer.param_groups if group["params"]]
    for group in moved_groups:
        optimizer.add_param_group(group)
    return sum(len(group["params"]) for group in moved_groups)


class VisualRowsLearningRateMixin:
    """Trainer mixin: the new visual rows learn at ``visual_rows_learning_rate`` (None: the run's learning rate).

    Departure (the papers use one rate): Adam moves every element by about the learning rate per step, and the new
    rows start where the LM has never looked, so at LoRA's rate they barely move in a run of a few hundred steps.
    """

    def __init__(self, *args, visual_rows_learning_rate: float | None = None, **kwargs):
        self.visual_rows_learning_rate = visual_rows_learning_rate
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.visual_rows_learning_rate is not None:
            split_visual_rows_group(optimizer, self.model if model is None else model, self.visual_rows_learning_rate)
        return optimizer


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy in which every example's target tokens share one unit of weight (the mean over
    examples of each example's mean token loss). Examples are the rows of ``labels`` and, in TRL's padding-free packed
    rows, the runs between restarts of ``position_ids``; positions labelled -100 are not targets."""
    targets = labels[:, 1:]
    example = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels) * labels.shape[1]
    if position_ids is not None:  # a restart at 0 opens the next packed example of the row
        example = example + (position_ids == 0).long().cumsum(-1)
    valid = targets != -100
    if not bool(valid.any()):
        return logits.sum() * 0.0
    token_loss = torch.nn.functional.cross_entropy(logits[:, :-1][valid].float(), targets[valid], reduction="none")
    _, inverse, counts = torch.unique(example[:, 1:][valid], return_inverse=True, return_counts=True)
    return (token_loss / counts[inverse]).sum() / counts.numel()


class VTokSFTTrainer(VisualRowsLearningRateMixin, SFTTrainer):
    """``SFTTrainer`` whose loss is the MLLM's own ``forward(labels=...)``.

    TRL 1.x scores through a fused LM head that multiplies by ``lm_head.weight`` directly; with PEFT's
    ``trainable_token_indices`` on an untied head that weight is the frozen base matrix (the trainable visual rows
    live in a wrapper), so the new head rows would never be used nor trained. The model's own loss goes through
    the wrapper (and through the MLLM's image-target handling).

    ``loss_normalization="example"`` (departure; the papers average over tokens): with a token mean a 194-token
    image completion outweighs a one-word answer about 100 to 1, so in a 1 : 3 : 1 captioning / QA / text-to-image
    mix the answers carry a few per cent of the gradient; :func:`per_example_loss` gives every example the same
    weight. Each micro-batch then returns its own mean, which the Trainer divides by the accumulation steps.
    """

    def __init__(self, *args, loss_normalization: str = "token", **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_normalization = loss_normalization
        if loss_normalization == "example":
            self.loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.loss_normalization == "token":
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")  # pre-tokenised targets: visual ids already, nothing for forward to swap
        outputs = model(**inputs)
        loss = per_example_loss(outputs.logits, labels, inputs.get("position_ids"))
        return (loss, outputs) if return_outputs else loss


class ContinuousMLLMTrainer(VisualRowsLearningRateMixin, Trainer):
    """``Trainer`` that hands pre-tokenised continuous embeddings to the MLLM as ``visual_tokens``."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        embeddings, mask = inputs.pop("visual_embeddings", None), inputs.pop("visual_attention_mask", None)
        if embeddings is not None:
            inputs["visual_tokens"] = VisualTokens(embeddings=embeddings, attention_mask=mask)
        outputs = model(**inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss


# ---------------------------------------------------------------------------------------------------- training
def train_mllm(
    script_args: MLLMArguments,
    training_args: MLLMTrainingArguments,
    model_args: MLLMModelConfig,
    *,
    train_dataset=None,
):
    """Train one MLLM stage and export it to ``training_args.output_dir`` (layout: see the module docstring).

    Args:
        script_args: the visual tokenizer, data, task mix and prompts (:class:`MLLMArguments`).
        training_args: any ``SFTConfig`` field (``neftune_noise_alpha``, ``max_length``, ``packing``, ...); the
            continuous (SeTok) path hands the same arguments to a plain ``Trainer``.
        model_args: TRL's ``ModelConfig``: the base LM and the LoRA settings.
        train_dataset: a raw image dataset to pre-tokenise (overrides ``script_args.dataset``), or a dataset already
            pre-tokenised (it has ``image_ids`` / ``image_embeddings`` columns).

    Returns:
        ``(trained model, trainer, summary dict)``.
    """
    from transformers import set_seed

    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    set_seed(training_args.seed)
    model, processor, decoder = build_mllm(script_args, model_args, training_args.seed)
    if train_dataset is not None and any(name.startswith("image_") for name in train_dataset.column_names):
        pretokenized = train_dataset
    else:
        from accelerate import PartialState

        # under `accelerate launch` the main process tokenises (and caches) once; the others then read its shards
        with PartialState().main_process_first():
            pretokenized = prepare_pretokenized(script_args, model.visual_tokenizer, processor.image_processor, output_dir, train_dataset)
    examples = build_task_dataset(script_args, pretokenized, processor, training_args.seed)
    trainable_model = apply_finetuning(model, processor, script_args, model_args)
    trainable, total = trainable_parameter_count(trainable_model)
    mode = finetuning_mode(model_args, script_args)
    if script_args.visual_rows_learning_rate is not None and (mode == "full" or not script_args.train_visual_rows):
        raise ValueError(f"`visual_rows_learning_rate` needs trainable new rows apart from the LM (LoRA or freeze_language_model, "
                         f"with train_visual_rows); this run is {mode} with train_visual_rows={script_args.train_visual_rows}.")
    print(f"[train-mllm] {len(examples)} examples, {trainable:,} trainable of {total:,} parameters ({mode})")
    if processor.is_discrete:
        columns = ["text"] if script_args.stage == "pretraining" else ["prompt", "completion"]
        trainer = VTokSFTTrainer(
            model=trainable_model, args=training_args.for_trainer(), train_dataset=examples.select_columns(columns),
            processing_class=processor.tokenizer, callbacks=run_callbacks(training_args),
            visual_rows_learning_rate=script_args.visual_rows_learning_rate, loss_normalization=script_args.loss_normalization,
        )  # fmt: skip
    else:  # the continuous collator reads the raw prompt/completion/embeddings columns
        if script_args.loss_normalization != "token":
            raise ValueError("`loss_normalization='example'` is implemented for discrete tokenizers; SeTok's regression loss "
                             "is a mean over image tokens (use 'token').")  # fmt: skip
        trainer = ContinuousMLLMTrainer(
            model=trainable_model, args=training_args.for_trainer(remove_unused_columns=False), train_dataset=examples,
            data_collator=ContinuousMLLMCollator(processor, max_length=training_args.max_length),
            callbacks=run_callbacks(training_args), visual_rows_learning_rate=script_args.visual_rows_learning_rate,
        )  # fmt: skip
    result = train_or_load_finished(trainer, training_args)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = {
        "recipe": {**recorded_arguments(script_args, training_args, model_args), "finetuning": mode},
        "pretokenized_from": pretokenized_provenance(pretokenized),
        "num_examples": len(examples),
        "task_counts": {task: examples["task"].count(task) for task in TASKS if task in examples["task"]},
        "trainable_parameters": trainable,
        "total_parameters": total,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "train_loss": result.training_loss if result is not None else None,
        "global_step": trainer.state.global_step,
        "stopped_by_time_budget_at": time_budget_stop(trainer),  # --max_train_seconds ended this segment before max_steps
        "train_seconds": round(time.perf_counter() - started, 1),  # this segment, set-up included
        "wall_seconds": wall_seconds(trainer.state.log_history),  # training time summed over resumed segments
    }
    if trainer.is_world_process_zero():
        export_mllm(trainable_model, processor, decoder, output_dir, summary)
        if training_args.push_to_hub:
            from .hub import push_folder

            push_folder(output_dir, training_args.hub_model_id or output_dir.name, private=bool(training_args.hub_private_repo),
                        token=training_args.hub_token)  # fmt: skip
    return trainable_model, trainer, summary


def export_mllm(model, processor, decoder, output_dir: str | os.PathLike, summary: dict | None = None) -> Path:
    """Write the trained MLLM: ``adapter/`` (PEFT models), the merged model as a ``VTokTextToImagePipeline`` folder
    (``model_index.json``, ``mllm/``, ``processor/``, ``decoder/``; just ``mllm/`` without a decoder) and ``recipe.json``."""
    from peft import PeftModel

    from ..mllm import VTokTextToImagePipeline

    output_dir = Path(output_dir)
    merged = model
    if isinstance(model, PeftModel):
        model.save_pretrained(output_dir / "adapter")
        processor.save_pretrained(output_dir / "adapter")
        merged = copy.deepcopy(model).merge_and_unload()
    merged.eval()
    if decoder is not None:
        VTokTextToImagePipeline(mllm=merged, processor=processor, decoder=decoder).save_pretrained(output_dir)
    else:
        merged.save_pretrained(output_dir / "mllm")
        processor.save_pretrained(output_dir / "mllm")
    if summary is not None:
        (output_dir / "recipe.json").write_text(json.dumps(summary, indent=2, default=str))
    return output_dir


def loss_fell(summary: dict, ratio: float = 0.9) -> bool:
    first, last = summary.get("first_loss"), summary.get("last_loss")
    return first is not None and last is not None and math.isfinite(last) and last < ratio * first


__all__ = [
    "ContinuousMLLMCollator",
    "apply_finetuning",
    "build_language_model",
    "build_mllm",
    "build_task_dataset",
    "build_visual_tokenizer",
    "export_mllm",
    "new_token_rows",
    "prepare_pretokenized",
    "tiny_language_model",
    "train_mllm",
    "trainable_parameter_count",
]
