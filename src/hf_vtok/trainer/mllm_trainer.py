"""Training the MLLM (any causal LM + a frozen hf_vtok visual tokenizer) with TRL, PEFT and ``accelerate``.

One code path serves ``training/train_mllm.py``, ``hf-vtok train-mllm`` and the examples:

* :class:`MLLMTrainingRecipe` — a JSON recipe (``hf_vtok/recipes/*_mllm_*.json``, ``ddt_llama_*.json``): the base LM
  (``"tiny-llama"``: a random 2-layer Llama over the shapes-world word-level tokenizer; or any local causal-LM
  folder / Hub id), the visual tokenizer folder (or ``"random:<family>"``: a random tiny tokenizer built on the
  fly), the fine-tuning mode (``lora`` with rank/alpha/targets, ``full``, or ``partial``: only the new rows and
  the projector), the task mix (captioning, QA, text-to-image, editing), the caption dropout used by
  classifier-free guidance, and the ``SFTConfig`` fields (optimiser, schedule, batch, precision, packing).
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
  adapter alone) and ``recipe.json`` (recipe, losses, runtime).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..utils.validation import check_choice, check_float, check_int, describe
from .tokenizer_trainer import FAMILIES, RECIPES_DIR, accelerator_available

FINETUNING_MODES = ("lora", "full", "partial")
TASKS = ("captioning", "qa", "text_to_image", "editing")
STAGES = ("pretraining", "instruction")
TINY_LM = "tiny-llama"

# The papers' prompt templates (Slot-MLLM appendix A.2 / DDT-LLaMA appendix B.1, "USER: … ASSISTANT: …" added by
# the chat template). {image} / {target} are images, the rest come from the dataset columns.
PAPER_PROMPTS = {
    "captioning": ["{image} Please provide an accurate and concise description of the given image.", "{caption}"],
    "qa": ["{image} {question} Please provide an accurate answer consisting of only one word or phrase.", "{answer}"],
    "text_to_image": ["{caption} Please generate an image.", "{image}"],
    "editing": ["{image} {instruction} Please generate an image.", "{target}"],
}
# Pre-training sequences (no chat template): modality order randomised for captioning / generation.
PRETRAINING_FORMATS = {"captioning": "{image} {caption}", "text_to_image": "{caption} {image}"}


def default_lora_targets() -> list[str]:
    """Every linear projection of a Llama-style block (the papers do not list LoRA targets)."""
    return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class MLLMTrainingRecipe:
    """Everything that defines one MLLM training stage (saved with the run and in its model card)."""

    recipe_type: str = "mllm"
    stage: str = "instruction"  # "pretraining" (text rows, loss on everything) or "instruction" (prompt/completion)
    # ---- models
    base_model: str = TINY_LM  # "tiny-llama", a local causal-LM folder or a Hub id (loaded with AutoModelForCausalLM)
    base_model_overrides: dict = field(default_factory=dict)  # LlamaConfig fields of the tiny preset
    text_tokenizer: str | None = None  # default: the base model's own tokenizer (the shapes tokenizer for tiny-llama)
    visual_tokenizer: str = "random:ddt"  # tokenizer folder / train-tokenizer output, "random:<family>" or "shipped:<family>"
    decoder: str | None = None  # decoder pipeline folder; default: `decoder/` beside the visual tokenizer
    init_from: str | None = None  # output folder of the previous MLLM stage (its merged mllm/ is loaded)
    pad_to_multiple_of: int | None = None
    # ---- what trains
    finetuning: str = "lora"  # "lora" | "full" | "partial" (new rows + projector/regression head only)
    lora_rank: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    lora_target_modules: list = field(default_factory=default_lora_targets)
    train_visual_rows: bool = True  # the new embedding/head rows (visual codes, <boi>, <eoi>, <image>) train
    # ---- data
    dataset: str = "shapes"  # "shapes" (built-in world), a pre-tokenised folder, or a load_image_dataset source
    num_train_images: int = 2000  # shapes world size
    dataset_style: str = "flat"
    dataset_seed: int = 0
    num_examples: int | None = None  # examples drawn from the task mix (default: one per row)
    task_mix: dict = field(default_factory=lambda: {"captioning": 1.0, "qa": 1.0, "text_to_image": 1.0, "editing": 1.0})
    prompt_templates: dict = field(default_factory=lambda: copy.deepcopy(PAPER_PROMPTS))
    prompt_dropout_prob: float = 0.0  # generation examples lose their caption (classifier-free guidance)
    randomize_modality_order: bool = True  # pre-training: captioning and generation orders both appear
    chat_template: str = "user_assistant"
    pretokenize_batch_size: int = 32
    pretokenize_num_proc: int = 1
    # ---- SFTConfig / TrainingArguments
    max_steps: int = 1000  # -1: train num_train_epochs
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    lr_scheduler_type: str = "cosine"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    max_length: int = 2048
    packing: bool = True
    seed: int = 0
    logging_steps: int = 10
    save_steps: int = 0  # 0: no intermediate checkpoints
    save_total_limit: int | None = 2
    dataloader_num_workers: int = 0
    report_to: str = "none"
    # ---- sharing
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private_repo: bool = False

    # ------------------------------------------------------------------ validation / loading
    def validate(self) -> MLLMTrainingRecipe:
        check_choice("recipe_type", self.recipe_type, ("mllm",))
        check_choice("stage", self.stage, STAGES)
        check_choice("finetuning", self.finetuning, FINETUNING_MODES)
        for name in ("base_model", "visual_tokenizer", "dataset"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise TypeError(f"`{name}` must be a non-empty string, got {describe(value)}.")
        if self.visual_tokenizer.startswith("random:"):
            check_choice("visual_tokenizer", self.visual_tokenizer.split(":", 1)[1], FAMILIES)
        check_int("lora_rank", self.lora_rank, minimum=1)
        check_int("lora_alpha", self.lora_alpha, minimum=1)
        check_float("lora_dropout", self.lora_dropout, minimum=0.0, maximum=1.0)
        if not isinstance(self.lora_target_modules, list) or not all(isinstance(m, str) for m in self.lora_target_modules):
            raise TypeError(f"`lora_target_modules` must be a list of module names, got {describe(self.lora_target_modules)}.")
        if self.max_steps != -1:
            check_int("max_steps", self.max_steps, minimum=1)
        check_float("num_train_epochs", self.num_train_epochs, minimum=0.0, strict_minimum=True)
        check_int("per_device_train_batch_size", self.per_device_train_batch_size, minimum=1)
        check_int("gradient_accumulation_steps", self.gradient_accumulation_steps, minimum=1)
        check_float("learning_rate", self.learning_rate, minimum=0.0, strict_minimum=True)
        check_float("weight_decay", self.weight_decay, minimum=0.0)
        check_float("warmup_ratio", self.warmup_ratio, minimum=0.0, maximum=0.999)
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        check_float("prompt_dropout_prob", self.prompt_dropout_prob, minimum=0.0, maximum=1.0)
        check_int("max_length", self.max_length, minimum=8)
        check_int("num_train_images", self.num_train_images, minimum=1)
        if self.num_examples is not None:
            check_int("num_examples", self.num_examples, minimum=1)
        if not isinstance(self.task_mix, dict) or not self.task_mix:
            raise TypeError(f"`task_mix` must be a non-empty dict of task weights, got {describe(self.task_mix)}.")
        for task, weight in self.task_mix.items():
            check_choice("task_mix key", task, TASKS)
            check_float(f"task_mix[{task!r}]", weight, minimum=0.0)
        if sum(self.task_mix.values()) <= 0:
            raise ValueError(f"`task_mix` must give at least one task a positive weight, got {self.task_mix}.")
        if self.stage == "pretraining":
            extra = [task for task, weight in self.task_mix.items() if weight > 0 and task not in PRETRAINING_FORMATS]
            if extra:
                raise ValueError(
                    f"`task_mix` of a pre-training stage may only hold {sorted(PRETRAINING_FORMATS)} (image-text pairs), "
                    f"got {extra}."
                )
        for task, template in self.prompt_templates.items():
            check_choice("prompt_templates key", task, TASKS)
            if not (isinstance(template, (list, tuple)) and len(template) == 2 and all(isinstance(t, str) for t in template)):
                raise TypeError(f"`prompt_templates[{task!r}]` must be [prompt, completion] strings, got {describe(template)}.")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("`hub_model_id` (ORG/NAME) is required when `push_to_hub` is true.")
        return self

    def task_prompts(self) -> dict[str, str] | None:
        """The prompt halves of the instruction templates, recorded in the processor (``task_prompts``) so that
        generation and evaluation ask the trained model in its own phrasing; None for pre-training."""
        if self.stage != "instruction":
            return None
        return {task: prompt for task, (prompt, _) in {**PAPER_PROMPTS, **self.prompt_templates}.items()}

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> MLLMTrainingRecipe:
        """Read a JSON recipe; keyword arguments (not None) override its fields."""
        data = json.loads(Path(path).read_text())
        if data.get("recipe_type") != "mllm":
            raise ValueError(
                f"Recipe {str(path)!r} is not an MLLM recipe (recipe_type={data.get('recipe_type')!r}); tokenizer "
                "recipes are read by hf_vtok.trainer.tokenizer_trainer.TokenizerTrainingRecipe."
            )
        unknown = set(data) - set(cls.__dataclass_fields__) - {"description", "paper"}
        if unknown:
            raise ValueError(f"Recipe {str(path)!r} has unknown fields {sorted(unknown)}.")
        data = {key: value for key, value in data.items() if key in cls.__dataclass_fields__}
        data.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**data).validate()

    @classmethod
    def from_name(cls, name: str, **overrides) -> MLLMTrainingRecipe:
        """A recipe shipped in ``hf_vtok/recipes/`` by name (e.g. ``"slot_mllm_pretrain_tiny"``) or a JSON path."""
        if str(name).endswith(".json"):
            return cls.from_file(name, **overrides)
        path = RECIPES_DIR / f"{name}.json"
        if not path.is_file():
            raise ValueError(f"`name` must be a shipped MLLM recipe, one of {list_recipes('mllm')}, got {name!r}.")
        return cls.from_file(path, **overrides)


def list_recipes(kind: str | None = None) -> list[str]:
    """Names of the shipped recipes (``kind``: ``"mllm"``, ``"tokenizer"`` or None for both)."""
    names = []
    for path in sorted(RECIPES_DIR.glob("*.json")):
        is_mllm = json.loads(path.read_text()).get("recipe_type") == "mllm"
        if kind is None or (kind == "mllm") == is_mllm:
            names.append(path.stem)
    return names


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


def build_language_model(recipe: MLLMTrainingRecipe):
    """``(causal LM, text tokenizer)`` of the recipe."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if recipe.base_model == TINY_LM:
        from ..data.text_tokenizer import build_text_tokenizer

        tokenizer = AutoTokenizer.from_pretrained(recipe.text_tokenizer) if recipe.text_tokenizer else build_text_tokenizer()
        return tiny_language_model(tokenizer, recipe.seed, **recipe.base_model_overrides), tokenizer
    # frozen base weights may sit in bf16 (LoRA / partial); a fully trained LM stays float32 so that AdamW updates
    # float32 master weights (AMP / DeepSpeed cast the compute to bf16)
    dtype = torch.bfloat16 if recipe.bf16 and recipe.finetuning != "full" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(recipe.base_model, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(recipe.text_tokenizer or recipe.base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def build_visual_tokenizer(recipe: MLLMTrainingRecipe):
    """``(visual tokenizer, image processor, decoder pipeline or None)``.

    ``"shipped:<family>"`` is the checkpoint shipped with the package (the demo's). ``"random:<family>"`` builds the family's tiny ``ForPreTraining`` with the recipe seed and returns its tokenizer and
    its decoder pipeline (random, but the whole pipeline runs); a folder is loaded with the Auto classes, and the
    decoder from ``recipe.decoder`` or the sibling ``decoder/`` folder of a ``train-tokenizer`` output.
    """
    from ..data.pretokenize import load_visual_tokenizer, resolve_tokenizer_source
    from ..mllm.pipeline_mllm import load_decoder_pipeline
    from ..mllm.processing_mllm import image_processor_for
    from .tokenizer_trainer import family_classes

    source = resolve_tokenizer_source(recipe.visual_tokenizer)
    if source.startswith("random:"):
        classes = family_classes(source.split(":", 1)[1])
        torch.manual_seed(recipe.seed)
        pretraining = classes["pretraining"](classes["config"].tiny()).eval()
        tokenizer = pretraining.tokenizer
        return tokenizer, image_processor_for(tokenizer.config), pretraining.get_decoder_pipeline()
    model, image_processor = load_visual_tokenizer(source)
    decoder = None
    candidates = [Path(recipe.decoder)] if recipe.decoder else [Path(source) / "decoder", Path(source).parent / "decoder"]
    for candidate in candidates:
        if (candidate / "model_index.json").is_file():
            decoder = load_decoder_pipeline(candidate)
            break
    if recipe.decoder and decoder is None:
        raise ValueError(f"`decoder` must be a decoder pipeline folder (model_index.json), got {recipe.decoder!r}.")
    return model, image_processor, decoder


def build_mllm(recipe: MLLMTrainingRecipe):
    """``(VTokMLLMForConditionalGeneration, VTokMLLMProcessor, decoder or None)`` for the recipe.

    With ``init_from`` the previous stage's merged ``mllm/`` folder and its ``decoder/`` are loaded instead.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..mllm import VTokMLLMForConditionalGeneration, VTokMLLMProcessor
    from ..mllm.pipeline_mllm import load_decoder_pipeline
    from ..mllm.processing_mllm import check_task_prompts

    if recipe.init_from:
        folder = Path(recipe.init_from)
        mllm_dir = folder / "mllm" if (folder / "mllm" / "config.json").is_file() else folder
        if not (mllm_dir / "config.json").is_file():
            raise ValueError(f"`init_from` must be a train-mllm output (with mllm/) or an MLLM folder, got {recipe.init_from!r}.")
        model = AutoModelForImageTextToText.from_pretrained(mllm_dir)
        processor = AutoProcessor.from_pretrained(mllm_dir)
        processor.task_prompts = check_task_prompts(recipe.task_prompts()) or processor.task_prompts
        decoder = load_decoder_pipeline(folder / "decoder") if (folder / "decoder" / "model_index.json").is_file() else None
        return model, processor, decoder
    language_model, text_tokenizer = build_language_model(recipe)
    visual, image_processor, decoder = build_visual_tokenizer(recipe)
    model = VTokMLLMForConditionalGeneration.from_text_model_and_tokenizer(
        language_model, visual, text_tokenizer, pad_to_multiple_of=recipe.pad_to_multiple_of
    )
    processor = VTokMLLMProcessor.from_visual_tokenizer(
        text_tokenizer, visual, image_processor=image_processor, chat_template=recipe.chat_template,
        task_prompts=recipe.task_prompts(),
    )
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


def apply_finetuning(model, processor, recipe: MLLMTrainingRecipe):
    """Wrap ``model`` for the recipe's fine-tuning mode; returns the model to train (a ``PeftModel`` for lora/partial).

    * ``lora``: LoRA adapters on ``lora_target_modules`` plus, with ``train_visual_rows``, only the new rows of the
      input embedding and of an untied LM head (``trainable_token_indices``); continuous tokenizers also train the
      projector and the regression head (``modules_to_save``).
    * ``partial``: no adapters — the new rows (PEFT ``TrainableTokens``) and, for continuous tokenizers, the projector
      and regression head; the LM itself stays frozen (SeTok stage II).
    * ``full``: every LM parameter trains (DDT-LLaMA); the visual tokenizer stays frozen.
    """
    from peft import LoraConfig, TrainableTokensConfig, get_peft_model

    rows = new_token_rows(model, processor)
    embedding = _embedding_module_name(model)
    token_targets = {embedding: rows} if _heads_tied(model) else {embedding: rows, "lm_head": rows}
    continuous = not model.config.is_discrete
    extra_modules = ["projector", "regression_head"] if continuous else []
    if recipe.finetuning == "full":
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(".visual_tokenizer." not in f".{name}")
        model.freeze_visual_tokenizer()
        return model
    if recipe.finetuning == "lora":
        config = LoraConfig(
            r=recipe.lora_rank,
            lora_alpha=recipe.lora_alpha,
            lora_dropout=recipe.lora_dropout,
            target_modules=list(recipe.lora_target_modules),
            trainable_token_indices=token_targets if recipe.train_visual_rows else None,
            modules_to_save=extra_modules or None,
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config)
    if not recipe.train_visual_rows and not continuous:
        raise ValueError("`finetuning='partial'` with `train_visual_rows=False` leaves nothing to train.")
    config = TrainableTokensConfig(target_modules=list(token_targets), token_indices=rows)
    peft_model = get_peft_model(model, config)
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


def _question(row: dict, rng: random.Random) -> tuple[str, str] | None:
    if row.get("question") is not None and row.get("answer") is not None:
        return str(row["question"]), str(row["answer"])
    questions = row.get("questions") or []
    if not questions:
        return None
    item = rng.choice(questions)
    return str(item["question"]), str(item["answer"])


def build_task_dataset(recipe: MLLMTrainingRecipe, pretokenized, processor):
    """Pre-tokenised rows → training examples of the recipe's task mix (a ``datasets.Dataset``).

    Rows need ``image_ids`` (or ``image_embeddings``) and ``caption``; QA uses ``questions`` (list of
    ``{"question", "answer"}``) or ``question``/``answer``; editing uses ``edit_instruction`` and ``edit_image_ids``
    (``edit_image_embeddings``). Pre-training rows are ``{"text"}``; instruction rows ``{"prompt", "completion"}``,
    with the chat template applied to the prompt. Continuous tokenizers add ``embeddings`` (one list per
    ``<image>`` marker, in order). Example ``i`` draws its task and row from a generator seeded by the recipe, so the
    dataset is the same on every process.
    """
    from datasets import Dataset

    rng = random.Random(recipe.seed)
    tasks = [task for task in TASKS if recipe.task_mix.get(task, 0) > 0]
    weights = [float(recipe.task_mix[task]) for task in tasks]
    num_rows = len(pretokenized)
    if num_rows == 0:
        raise ValueError("`pretokenized` holds no rows.")
    editable = [i for i in range(num_rows) if pretokenized[i].get("edit_instruction") and (
        pretokenized[i].get("edit_image_ids") is not None or pretokenized[i].get("edit_image_embeddings") is not None)]
    count = recipe.num_examples or num_rows
    examples: dict[str, list] = {"text": []} if recipe.stage == "pretraining" else {"prompt": [], "completion": []}
    if not processor.is_discrete:
        examples["embeddings"] = []
    examples["task"] = []
    templates = {**PAPER_PROMPTS, **recipe.prompt_templates}
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
            qa = _question(row, rng)
            if qa is None:
                skipped += 1
                continue
            values["question"], values["answer"] = qa
        if task == "editing":
            target = _image_text(processor, row, "edit_image")
            values["instruction"], values["target"] = str(row["edit_instruction"]), target[0]
            embeddings.append(target[1])
        dropped = task in ("text_to_image", "editing") and rng.random() < recipe.prompt_dropout_prob
        if recipe.stage == "pretraining":
            order = task
            if recipe.randomize_modality_order and rng.random() < 0.5:
                order = "text_to_image" if task == "captioning" else "captioning"
            if dropped or (order == "text_to_image" and rng.random() < recipe.prompt_dropout_prob):
                text = values["image"]  # caption dropped: the unconditional sequence of guidance
            else:
                text = PRETRAINING_FORMATS[order].format(**values)
            examples["text"].append(text)
        else:
            prompt, completion = templates[task]
            if dropped:  # keep input images (editing), drop the words: the unconditional prompt
                prompt = " ".join(["{image}"] * prompt.count("{image}"))
            examples["prompt"].append(processor.format_prompt(prompt.format(**values)))
            examples["completion"].append(" " + completion.format(**values))
        if "embeddings" in examples:
            examples["embeddings"].append([e for e in embeddings if e is not None])
        examples["task"].append(task)
    if not examples["task"]:
        raise ValueError(
            f"No example could be built from `pretokenized` for task_mix {recipe.task_mix} ({skipped} skipped): check "
            "its columns (image_ids / image_embeddings, caption, questions, edit_instruction, edit_image_ids)."
        )
    return Dataset.from_dict(examples)


def prepare_pretokenized(recipe: MLLMTrainingRecipe, visual_tokenizer, image_processor, output_dir: Path, train_dataset=None):
    """The pre-tokenised dataset the recipe trains on (written once under ``output_dir/pretokenized`` if needed)."""
    from ..data.pretokenize import dataset_from_source, load_pretokenized, pretokenize_dataset, read_manifest

    if train_dataset is None and Path(recipe.dataset).is_dir() and (Path(recipe.dataset) / "pretokenize.json").is_file():
        manifest = read_manifest(recipe.dataset)
        expected = getattr(visual_tokenizer.config, "codebook_size", None)
        if manifest.get("codebook_size") != expected or manifest.get("num_visual_tokens") != visual_tokenizer.config.num_visual_tokens:
            raise ValueError(
                f"`dataset` {recipe.dataset!r} was pre-tokenised with another tokenizer (codebook "
                f"{manifest.get('codebook_size')}, {manifest.get('num_visual_tokens')} tokens) than this recipe's "
                f"(codebook {expected}, {visual_tokenizer.config.num_visual_tokens} tokens)."
            )
        return load_pretokenized(recipe.dataset)
    if train_dataset is None:
        if recipe.dataset == "shapes":
            source = f"shapes:{recipe.num_train_images}:{recipe.dataset_style}:{recipe.dataset_seed}"
        else:
            source = recipe.dataset
        train_dataset = dataset_from_source(source)
    folder = output_dir / "pretokenized"
    pretokenize_dataset(
        visual_tokenizer, train_dataset, folder, image_processor=image_processor,
        batch_size=recipe.pretokenize_batch_size, num_proc=recipe.pretokenize_num_proc, progress=True,
    )  # fmt: skip
    return load_pretokenized(folder)


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


def _sft_trainer_class():
    from transformers import Trainer
    from trl import SFTTrainer

    class VTokSFTTrainer(SFTTrainer):
        """``SFTTrainer`` whose loss is the MLLM's own ``forward(labels=...)``.

        TRL 1.x scores through a fused LM head that multiplies by ``lm_head.weight`` directly; with PEFT's
        ``trainable_token_indices`` on an untied head that weight is the frozen base matrix (the trainable visual rows
        live in a wrapper), so the new head rows would never be used nor trained. The model's own loss goes through
        the wrapper (and through the MLLM's image-target handling).
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    return VTokSFTTrainer


def _continuous_trainer_class():
    from transformers import Trainer

    from ..utils.modeling_utils import VisualTokens

    class ContinuousMLLMTrainer(Trainer):
        """``Trainer`` that hands pre-tokenised continuous embeddings to the MLLM as ``visual_tokens``."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)
            embeddings = inputs.pop("visual_embeddings", None)
            mask = inputs.pop("visual_attention_mask", None)
            if embeddings is not None:
                inputs["visual_tokens"] = VisualTokens(embeddings=embeddings, attention_mask=mask)
            outputs = model(**inputs)
            return (outputs.loss, outputs) if return_outputs else outputs.loss

    return ContinuousMLLMTrainer


# ---------------------------------------------------------------------------------------------------- training
def training_arguments(recipe: MLLMTrainingRecipe, output_dir: Path, sft: bool):
    """``SFTConfig`` (discrete tokenizers) or ``TrainingArguments`` (continuous) from the recipe."""
    from transformers import TrainingArguments
    from trl import SFTConfig

    warmup = recipe.warmup_steps if recipe.warmup_steps else recipe.warmup_ratio
    common = {
        "output_dir": str(output_dir / "checkpoints"),
        "max_steps": recipe.max_steps,
        "num_train_epochs": recipe.num_train_epochs,
        "per_device_train_batch_size": recipe.per_device_train_batch_size,
        "gradient_accumulation_steps": recipe.gradient_accumulation_steps,
        "learning_rate": recipe.learning_rate,
        "weight_decay": recipe.weight_decay,
        "warmup_steps": warmup,
        "lr_scheduler_type": recipe.lr_scheduler_type,
        "adam_beta1": recipe.adam_beta1,
        "adam_beta2": recipe.adam_beta2,
        "adam_epsilon": recipe.adam_epsilon,
        "max_grad_norm": recipe.max_grad_norm,
        "bf16": recipe.bf16,
        "activation_checkpointing": recipe.gradient_checkpointing,
        "seed": recipe.seed,
        "data_seed": recipe.seed,
        "logging_steps": recipe.logging_steps,
        "save_strategy": "steps" if recipe.save_steps else "no",
        "save_steps": recipe.save_steps or 500,
        "save_total_limit": recipe.save_total_limit,
        "dataloader_num_workers": recipe.dataloader_num_workers,
        "report_to": recipe.report_to,
        "remove_unused_columns": sft,  # the continuous collator reads the raw prompt/completion/embeddings columns
        "disable_tqdm": False,
        "use_cpu": not accelerator_available(),
    }  # fmt: skip
    if not sft:
        return TrainingArguments(**common)
    return SFTConfig(
        **common,
        max_length=recipe.max_length,
        packing=recipe.packing,
        completion_only_loss=True if recipe.stage == "instruction" else None,
        dataset_num_proc=None,
    )


def train_mllm(
    recipe: MLLMTrainingRecipe,
    output_dir: str | os.PathLike,
    *,
    train_dataset=None,
    resume_from_checkpoint: str | bool | None = None,
):
    """Train one MLLM stage and export it (see the module docstring for the output layout).

    Args:
        recipe: what to train (:class:`MLLMTrainingRecipe`).
        output_dir: where ``checkpoints/``, ``pretokenized/``, the pipeline folder, ``adapter/`` and ``recipe.json`` go.
        train_dataset: a raw image dataset to pre-tokenise (overrides ``recipe.dataset``), or a dataset already
            pre-tokenised (it has ``image_ids`` / ``image_embeddings`` columns).
        resume_from_checkpoint: passed to ``Trainer.train`` (True: the last checkpoint under ``output_dir``).

    Returns:
        ``(trained model, trainer, summary dict)``.
    """
    from transformers import set_seed

    recipe = recipe.validate()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    set_seed(recipe.seed)
    model, processor, decoder = build_mllm(recipe)
    visual = model.visual_tokenizer
    if train_dataset is not None and any(name.startswith("image_") for name in train_dataset.column_names):
        pretokenized = train_dataset
    else:
        from accelerate import PartialState

        # under `accelerate launch` the main process tokenises (and caches) once; the others then read its shards
        with PartialState().main_process_first():
            pretokenized = prepare_pretokenized(recipe, visual, processor.image_processor, output_dir, train_dataset)
    examples = build_task_dataset(recipe, pretokenized, processor)
    trainable_model = apply_finetuning(model, processor, recipe)
    trainable, total = trainable_parameter_count(trainable_model)
    print(f"[train-mllm] {len(examples)} examples, {trainable:,} trainable of {total:,} parameters ({recipe.finetuning})")
    discrete = processor.is_discrete
    args = training_arguments(recipe, output_dir, sft=discrete)
    if discrete:
        columns = ["text"] if recipe.stage == "pretraining" else ["prompt", "completion"]
        trainer = _sft_trainer_class()(
            model=trainable_model, args=args, train_dataset=examples.select_columns(columns),
            processing_class=processor.tokenizer,
        )  # fmt: skip
    else:
        trainer_class = _continuous_trainer_class()
        trainer = trainer_class(
            model=trainable_model, args=args, train_dataset=examples,
            data_collator=ContinuousMLLMCollator(processor, max_length=recipe.max_length),
        )  # fmt: skip
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = {
        "recipe": asdict(recipe),
        "num_examples": len(examples),
        "task_counts": {task: examples["task"].count(task) for task in TASKS if task in examples["task"]},
        "trainable_parameters": trainable,
        "total_parameters": total,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "train_loss": result.training_loss,
        "global_step": trainer.state.global_step,
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    if trainer.is_world_process_zero():
        export_mllm(trainable_model, processor, decoder, output_dir, summary)
        if recipe.push_to_hub:
            from .hub import push_folder

            push_folder(output_dir, recipe.hub_model_id, private=recipe.hub_private_repo)
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


def remove_checkpoints(output_dir: str | os.PathLike) -> None:
    """Delete ``output_dir/checkpoints`` (optimizer states are large; the exported folders are what you keep)."""
    shutil.rmtree(Path(output_dir) / "checkpoints", ignore_errors=True)


__all__ = [
    "FINETUNING_MODES",
    "PAPER_PROMPTS",
    "TASKS",
    "ContinuousMLLMCollator",
    "MLLMTrainingRecipe",
    "apply_finetuning",
    "build_language_model",
    "build_mllm",
    "build_task_dataset",
    "build_visual_tokenizer",
    "export_mllm",
    "list_recipes",
    "new_token_rows",
    "prepare_pretokenized",
    "tiny_language_model",
    "train_mllm",
    "trainable_parameter_count",
]
