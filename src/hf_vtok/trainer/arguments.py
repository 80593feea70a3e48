"""Training arguments: the project's own fields plus the real ``TrainingArguments`` / ``SFTConfig`` / TRL ``ModelConfig``.

A recipe is a YAML (or JSON) file of field values read straight into these dataclasses by TRL's parser, so every
``TrainingArguments``, ``SFTConfig`` and ``ModelConfig`` field works in a recipe and on the command line, where it
overrides the recipe (``--recipe NAME`` for a file shipped in ``training/recipes/<kind>/``, or a path):

    script_args, training_args = parse_tokenizer_arguments(["--recipe", "ddt_tiny", "--output_dir", "runs/ddt"])
    script_args, training_args, model_args = parse_mllm_arguments(["--recipe", "slot_mllm_instruct_tiny", ...])
"""

from __future__ import annotations

import copy
import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Literal

import torch
from transformers import TrainingArguments
from trl import ModelConfig, SFTConfig, TrlParser

from ..utils.validation import check_choice, check_float, check_int, describe

RECIPES_DIR = Path(__file__).parents[1] / "recipes"  # a link to training/recipes, so that the wheel ships them
FAMILIES = ("slot_qformer", "setok", "ddt")
# The one place where a family's command-line name differs from its config's `model_type`.
FAMILY_MODEL_TYPES = {"slot_qformer": "slot_qformer", "setok": "setok", "ddt": "ddt_tokenizer"}
TASKS = ("captioning", "qa", "text_to_image", "editing")
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


def accelerator_available() -> bool:
    """Whether torch sees a GPU-like device. Without one ``use_cpu`` is set: transformers then runs data-parallel CPU
    processes (a GPU-less ``accelerate launch``)."""
    return torch.cuda.is_available() or torch.backends.mps.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def _json_field(value, name: str) -> dict:
    """A dict field given as a dict (recipe) or a JSON string (command line)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"`{name}` must be a JSON object, got {value!r} ({error}).") from None
    if not isinstance(value, dict):
        raise TypeError(f"`{name}` must be a mapping, got {describe(value)}.")
    return value


# ------------------------------------------------------------------------------------------------ training arguments
@dataclass
class RunArguments(TrainingArguments):
    """``TrainingArguments`` with this project's defaults (TRL's configs override defaults the same way).

    ``output_dir`` is the run folder: checkpoints go to ``output_dir/checkpoints``, the exported model beside them.
    Training is counted in ``max_steps``; ``max_steps <= 0`` (train whole epochs) needs an explicit
    ``num_train_epochs``, so that a stray ``--max_steps -1`` is an error instead of an epoch of training.
    """

    output_dir: str | None = field(default=None, metadata={"required": True, "help": "run folder (checkpoints/ and the exported model)"})
    num_train_epochs: float | None = field(default=None, metadata={"help": "train this many epochs (with max_steps <= 0)"})
    per_device_train_batch_size: int = field(default=8, metadata={"aliases": ["--batch-size", "--batch_size"]})
    lr_scheduler_type: str = "cosine"
    save_strategy: str = field(default="no", metadata={"help": "'steps' to keep checkpoints every save_steps (for resuming)"})
    seed: int = 0
    bf16: bool = False
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"aliases": ["--resume"], "nargs": "?", "const": "last", "help": "a checkpoint folder; `--resume` alone: the last one"},
    )
    max_train_seconds: float | None = field(
        default=None,
        metadata={"help": "stop after this many seconds of training (this segment), save a checkpoint and export; "
                          "--resume goes on towards max_steps"},
    )  # fmt: skip

    def __post_init__(self):
        if self.max_steps <= 0 and self.num_train_epochs is None:
            raise ValueError(f"`max_steps` must be a positive number of optimizer steps, got {self.max_steps} (to train whole "
                             "epochs, set `num_train_epochs`).")  # fmt: skip
        self.num_train_epochs = 1.0 if self.num_train_epochs is None else self.num_train_epochs
        if self.max_train_seconds is not None:
            check_float("max_train_seconds", self.max_train_seconds, minimum=0.0, strict_minimum=True)
        if self.eval_steps is not None and self.eval_steps < 0:
            raise ValueError(f"`eval_steps` must be >= 0 (0: never), got {self.eval_steps}.")
        self.use_cpu = self.use_cpu or not accelerator_available()
        super().__post_init__()

    def for_trainer(self, **changes) -> RunArguments:
        """A copy for ``Trainer``: checkpoints under ``output_dir/checkpoints``, and no push from the Trainer itself (the
        exported folder is pushed afterwards, with its model card)."""
        args = copy.copy(self)
        args.output_dir, args.push_to_hub = str(Path(self.output_dir) / "checkpoints"), False
        for name, value in changes.items():
            setattr(args, name, value)
        return args

    @property
    def resume(self) -> str | bool | None:
        """What ``Trainer.train(resume_from_checkpoint=...)`` takes."""
        return True if self.resume_from_checkpoint in ("last", "true", "True") else self.resume_from_checkpoint


@dataclass
class TokenizerTrainingArguments(RunArguments):
    max_steps: int = 500
    per_device_train_batch_size: int = field(default=32, metadata={"aliases": ["--batch-size", "--batch_size"]})
    learning_rate: float = 3e-4
    warmup_steps: float = 20
    logging_steps: float = 25
    remove_unused_columns: bool = False  # the collator reads the raw image / caption / mask columns
    eval_steps: float | None = field(
        default=None,
        metadata={"help": "every N steps: FG-ARI, mIoU and tokens per image of held-out scenes' token maps (0/None: never)"},
    )


@dataclass
class MLLMTrainingArguments(RunArguments, SFTConfig):
    max_steps: int = 1000
    learning_rate: float = 1e-4
    logging_steps: float = 10
    activation_checkpointing: bool | None = False
    gradient_checkpointing: bool | None = None  # deprecated alias of activation_checkpointing (TRL defaults it to True)
    max_length: int | None = 2048
    packing: bool = True
    save_total_limit: int | None = 2


@dataclass
class MLLMModelConfig(ModelConfig):
    model_name_or_path: str | None = field(
        default=TINY_LM, metadata={"help": "causal LM folder or Hub id; tiny-llama: a random 2-layer Llama (CPU tests)"}
    )
    # every linear projection of a Llama-style block (the papers do not list LoRA targets; PEFT has no default for the MLLM)
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


# ------------------------------------------------------------------------------------------------ script arguments
@dataclass
class TokenizerArguments:
    """What to train: a tokenizer family and stage, from a preset or a previous stage, on which data."""

    family: Literal["slot_qformer", "setok", "ddt"] | None = field(default=None, metadata={"help": "tokenizer family"})
    stage: int = field(default=1, metadata={"help": "training stage (SlotQFormer and SeTok: 1 or 2)"})
    preset: Literal["tiny", "paper"] = field(default="tiny", metadata={"help": "config preset (ignored with init_from)"})
    config_overrides: dict | str | None = field(default_factory=dict, metadata={"help": "config fields over the preset (JSON)"})
    init_from: str | None = field(default=None, metadata={"help": "output folder of the previous stage, or an exported tokenizer folder (decoder/)"})
    warm_start_from: str | None = field(
        default=None, metadata={"help": "a run folder (training_model/) whose weights start a model built fresh from preset + "
                                        "config_overrides, where name and shape match (an architecture change; not with init_from)"},
    )  # fmt: skip
    dataset: str = field(default="shapes", metadata={"help": "shapes, imagefolder:DIR, parquet:GLOB, webdataset:GLOB or a Hub name"})
    dataset_split: str = "train"
    streaming: bool = False
    num_train_images: int = field(default=2000, metadata={"help": "size of the shapes world"})
    dataset_style: Literal["textured", "flat", "mixed"] = field(
        default="textured", metadata={"help": "shapes style; mixed: half flat (dataset_seed), half textured (dataset_seed + 1)"}
    )
    dataset_seed: int = 0
    eval_num_images: int = field(default=64, metadata={"help": "held-out scenes (seed 998) scored every eval_steps"})
    vae: str | None = field(
        default="taef2",
        metadata={"help": "autoencoder of a latent-space decoder: taef2 (shipped, MIT) or an AutoencoderTAEF2 folder; "
                          "its latents of the training images are computed once and cached. Unused by pixel-space decoders"},
    )  # fmt: skip

    def __post_init__(self):
        if self.family is None:
            raise ValueError("`family` is required: one of " + ", ".join(FAMILIES) + ".")
        check_int("stage", self.stage, minimum=1, maximum=3)
        check_int("num_train_images", self.num_train_images, minimum=1)
        check_int("eval_num_images", self.eval_num_images, minimum=1)
        self.config_overrides = _json_field(self.config_overrides or {}, "config_overrides")
        if self.init_from and self.warm_start_from:
            raise ValueError(f"`init_from` ({self.init_from!r}) continues a saved model and `warm_start_from` "
                             f"({self.warm_start_from!r}) starts a new one from its weights: give one, not both.")  # fmt: skip
        if self.vae in ("null", "None", ""):  # the command line spells None as a string
            self.vae = None


@dataclass
class MLLMArguments:
    """What an MLLM stage trains on: the visual tokenizer, the data and its task mix, the prompts.

    Fine-tuning: LoRA with TRL's ``--use_peft`` (and ``--lora_r``, ``--lora_alpha``, ...), plus only the new visual rows;
    without it the whole LM trains, or, with ``freeze_language_model``, only the new rows (and SeTok's projector and
    regression head).
    """

    stage: Literal["pretraining", "instruction"] = field(
        default="instruction", metadata={"help": "pretraining: text rows, loss on everything; instruction: prompt/completion"}
    )
    visual_tokenizer: str = field(default="random:ddt", metadata={"help": "tokenizer folder, random:<family> or shipped:<family>"})
    decoder: str | None = field(default=None, metadata={"help": "decoder pipeline folder (default: beside the tokenizer)"})
    init_from: str | None = field(default=None, metadata={"help": "output folder of the previous MLLM stage"})
    text_tokenizer: str | None = field(default=None, metadata={"help": "default: the base model's (the shapes tokenizer for tiny-llama)"})
    base_model_overrides: dict | str | None = field(default_factory=dict, metadata={"help": "LlamaConfig fields of tiny-llama (JSON)"})
    vocab_pad_to_multiple_of: int | None = None
    freeze_language_model: bool = False
    train_visual_rows: bool = field(default=True, metadata={"help": "the new embedding/head rows (codes, <boi>, <eoi>, <image>) train"})
    visual_rows_init: Literal["mean", "codebook"] = field(
        default="mean", metadata={"help": "new code rows start at the text rows' mean (the papers) or from their codebook vectors"}
    )
    visual_rows_learning_rate: float | None = field(
        default=None, metadata={"help": "learning rate of the new rows (LoRA / freeze_language_model; default: learning_rate)"}
    )
    loss_normalization: Literal["token", "example"] = field(
        default="token",
        metadata={"help": "token: every target token weighs the same (the papers); example: each example's targets share one weight"},
    )
    dataset: str = field(default="shapes", metadata={"help": "shapes, a pre-tokenised folder, or an image dataset source"})
    num_train_images: int = 2000
    dataset_style: Literal["textured", "flat"] = "flat"
    dataset_seed: int = 0
    num_examples: int | None = field(default=None, metadata={"help": "examples drawn from the task mix (default: one per row)"})
    task_mix: dict | str | None = field(default_factory=lambda: dict.fromkeys(TASKS, 1.0), metadata={"help": "task weights (JSON)"})
    prompt_templates: dict | str | None = field(
        default_factory=lambda: copy.deepcopy(PAPER_PROMPTS), metadata={"help": "task: [prompt, completion] (JSON)"}
    )
    question_type_weights: dict | str | None = field(
        default=None,
        metadata={"help": "QA examples pick a row's question by its type's weight (JSON, e.g. {\"position\": 4}; "
                  "unnamed types weigh 1; default: every question alike)"},
    )
    prompt_dropout_prob: float = field(default=0.0, metadata={"help": "generation examples lose their caption (guidance)"})
    randomize_modality_order: bool = True
    chat_template: str = "user_assistant"
    pretokenize_batch_size: int = 32
    pretokenize_num_proc: int = 1

    def __post_init__(self):
        if self.visual_tokenizer.startswith("random:"):
            check_choice("visual_tokenizer", self.visual_tokenizer.split(":", 1)[1], FAMILIES)
        check_float("prompt_dropout_prob", self.prompt_dropout_prob, minimum=0.0, maximum=1.0)
        check_int("num_train_images", self.num_train_images, minimum=1)
        if self.visual_rows_learning_rate is not None:
            check_float("visual_rows_learning_rate", self.visual_rows_learning_rate, minimum=0.0)
            if self.visual_rows_learning_rate == 0:
                raise ValueError("`visual_rows_learning_rate` must be > 0 (to freeze the rows, set `train_visual_rows` false), got 0.")
        if self.num_examples is not None:
            check_int("num_examples", self.num_examples, minimum=1)
        self.base_model_overrides = _json_field(self.base_model_overrides or {}, "base_model_overrides")
        self.task_mix = _json_field(self.task_mix, "task_mix")
        for task, weight in self.task_mix.items():
            check_choice("task_mix key", task, TASKS)
            check_float(f"task_mix[{task!r}]", weight, minimum=0.0)
        if sum(self.task_mix.values()) <= 0:
            raise ValueError(f"`task_mix` must give at least one task a positive weight, got {self.task_mix}.")
        extra = [task for task, weight in self.task_mix.items() if weight > 0 and task not in PRETRAINING_FORMATS]
        if self.stage == "pretraining" and extra:
            raise ValueError(f"`task_mix` of a pre-training stage may only hold {sorted(PRETRAINING_FORMATS)} (image-text "
                             f"pairs), got {extra}.")  # fmt: skip
        if self.question_type_weights is not None:
            from ..data.shapes import QUESTION_TYPES

            self.question_type_weights = _json_field(self.question_type_weights, "question_type_weights")
            for kind, weight in self.question_type_weights.items():
                check_choice("question_type_weights key", kind, QUESTION_TYPES)
                check_float(f"question_type_weights[{kind!r}]", weight, minimum=0.0)
            if not any(self.question_type_weights.get(kind, 1.0) > 0 for kind in QUESTION_TYPES):
                raise ValueError(f"`question_type_weights` must leave one question type a positive weight, got "
                                 f"{self.question_type_weights}.")
        self.prompt_templates = _json_field(self.prompt_templates, "prompt_templates")
        for task, template in self.prompt_templates.items():
            check_choice("prompt_templates key", task, TASKS)
            if not (isinstance(template, (list, tuple)) and len(template) == 2 and all(isinstance(t, str) for t in template)):
                raise TypeError(f"`prompt_templates[{task!r}]` must be [prompt, completion] strings, got {describe(template)}.")

    def task_prompts(self) -> dict[str, str] | None:
        """The prompt halves of the instruction templates, recorded in the processor (``task_prompts``) so that
        generation and evaluation ask the trained model in its own phrasing; None for pre-training."""
        if self.stage != "instruction":
            return None
        return {task: prompt for task, (prompt, _) in {**PAPER_PROMPTS, **self.prompt_templates}.items()}


def finetuning_mode(model_args: ModelConfig, script_args: MLLMArguments) -> str:
    """``"lora"``, ``"partial"`` (only the new rows, projector and regression head) or ``"full"``."""
    if model_args.use_peft and script_args.freeze_language_model:
        raise ValueError("`use_peft` and `freeze_language_model` exclude each other: LoRA already freezes the LM.")
    return "lora" if model_args.use_peft else "partial" if script_args.freeze_language_model else "full"


# ------------------------------------------------------------------------------------------------ recipes and parsing
def list_recipes(kind: str) -> list[str]:
    """Names of the shipped recipes of ``kind`` (``"tokenizer"`` or ``"mllm"``)."""
    return sorted(path.stem for path in (RECIPES_DIR / check_choice("kind", kind, ("tokenizer", "mllm"))).glob("*.yaml"))


def find_recipe(recipe: str, kind: str) -> Path:
    """A shipped recipe's file (``"ddt_tiny"``) or the path itself (any ``.yaml`` / ``.yml`` / ``.json`` file)."""
    if Path(recipe).suffix in (".yaml", ".yml", ".json"):
        if not Path(recipe).is_file():
            raise ValueError(f"`recipe` {recipe!r} is not a file.")
        return Path(recipe)
    path = RECIPES_DIR / kind / f"{recipe}.yaml"
    if not path.is_file():
        raise ValueError(f"`recipe` must be a path or a shipped {kind} recipe, one of {list_recipes(kind)}, got {recipe!r}.")
    return path


def read_recipe(path: Path, dataclass_types) -> dict:
    """The recipe's field values, checked: a mapping whose every key is a field of ``dataclass_types``."""
    import yaml

    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"Recipe {str(path)!r} is not valid YAML/JSON: {error}".replace("\n", " ")) from None
    if not isinstance(values, dict):
        raise TypeError(f"Recipe {str(path)!r} must be a mapping of field names to values, got {describe(values)}.")
    known = {f.name for dataclass_type in dataclass_types for f in fields(dataclass_type)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Recipe {str(path)!r} has unknown fields {unknown} (not an argument of this trainer).")
    return values


ARGUMENT_TYPES = {
    "tokenizer": (TokenizerArguments, TokenizerTrainingArguments),
    "mllm": (MLLMArguments, MLLMTrainingArguments, MLLMModelConfig),
}


def build_parser(kind: str, *, family_argument: bool = False, **parser_kwargs) -> TrlParser:
    """TRL's parser over the argument dataclasses of ``kind`` (``"tokenizer"`` / ``"mllm"``), plus ``--recipe``.

    ``family_argument`` adds the positional FAMILY of ``hf-vtok train-tokenizer``.
    """
    parser = TrlParser(ARGUMENT_TYPES[check_choice("kind", kind, tuple(ARGUMENT_TYPES))], **parser_kwargs)
    parser.add_argument("--recipe", "--config", help=f"a shipped recipe ({', '.join(list_recipes(kind))}) or a YAML/JSON path")
    if family_argument:
        parser.add_argument("family_argument", metavar="FAMILY", choices=FAMILIES)
    return parser


def parse_arguments(kind: str, argv=None, *, family_argument: bool = False, **parser_kwargs):
    """Parse ``argv`` (``sys.argv`` by default) into the dataclasses of ``kind``: ``--recipe``'s values first, then the
    flags. With ``family_argument`` a recipe for another family than FAMILY is refused."""
    parser = build_parser(kind, family_argument=family_argument, **parser_kwargs)
    dataclass_types = ARGUMENT_TYPES[kind]
    namespace = parser.parse_known_args(argv)[0]
    values = {}
    if namespace.recipe:
        path = find_recipe(namespace.recipe, kind)
        values = read_recipe(path, dataclass_types)
        if family_argument and values.get("family", namespace.family_argument) != namespace.family_argument:
            raise ValueError(f"Recipe {str(path)!r} has `family` {values['family']!r}, but FAMILY is {namespace.family_argument!r}.")
    if family_argument:
        values["family"] = namespace.family_argument
    parser.set_defaults_with_config(**values)
    return parser.parse_args_into_dataclasses(argv)[: len(dataclass_types)]


def parse_tokenizer_arguments(argv=None, **kwargs) -> tuple[TokenizerArguments, TokenizerTrainingArguments]:
    return parse_arguments("tokenizer", argv, **kwargs)


def parse_mllm_arguments(argv=None, **kwargs) -> tuple[MLLMArguments, MLLMTrainingArguments, MLLMModelConfig]:
    return parse_arguments("mllm", argv, **kwargs)


# A record says how long the run was meant to train even when the default set it.
ALWAYS_RECORDED = ("seed", "max_steps")
# Set by the machine or by `__post_init__`, or secret: never recorded.
NOT_RECORDED = {"output_dir", "resume_from_checkpoint", "max_train_seconds", "use_cpu", "accelerator_config", "dataloader_pin_memory", "debug",
                "report_to", "disable_tqdm", "gradient_checkpointing", "hub_token"}


def recorded_arguments(*arguments) -> dict:
    """What a run records in ``recipe.json`` and its model card: every script argument, the seed and the step budget,
    and the training / model arguments that differ from their defaults."""
    recorded = {}
    for args in arguments:
        defaults = {f.name: f.default if f.default_factory is MISSING else f.default_factory() for f in fields(args) if f.init}
        is_script = not isinstance(args, (TrainingArguments, ModelConfig))
        for name, value in vars(args).items():
            value = getattr(value, "value", value)  # enums
            differs = value != getattr(defaults[name], "value", defaults[name]) if name in defaults else False
            if name in defaults and name not in NOT_RECORDED and (is_script or name in ALWAYS_RECORDED or differs):
                recorded[name] = value
    return recorded
