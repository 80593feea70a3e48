"""Share trained tokenizers, decoders and MLLMs on the Hugging Face Hub, with a filled model card.

``push_folder(folder, repo_id)`` (``hf-vtok push FOLDER --repo-id ORG/NAME [--private] [--dry-run]``) takes the output
of ``hf-vtok train-tokenizer`` (``tokenizer/``, ``decoder/``, ``recipe.json``), of ``hf-vtok train-mllm`` (``mllm/``,
``processor/``, ``decoder/``, ``model_index.json``, ``adapter/``, ``recipe.json``) or a single ``save_pretrained``
folder, stages exactly what will be uploaded and writes ``README.md`` from the templates in ``hf_vtok/model_cards/``
(license, the paper's BibTeX, training data and recipe, the metrics of the run, intended use and limits, how to load).

Only safetensors weights and JSON / text files are staged: pickled files (``*.bin``, ``*.pt``, ``*.pth``, ``*.pkl``),
Trainer checkpoints (optimizer states, RNG states) and the pre-tokenised data stay local. ``dry_run=True`` stops after
staging and returns the staged folder, so what would be uploaded can be inspected (and loaded) without network.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..mllm.base_models import SMOLLM2
from ..mllm.parts import MLLM_PARTS_KEY
from ..utils.autoencoder_taef2 import BUNDLED_WEIGHTS_KEY
from ..utils.validation import describe
from .arguments import FAMILY_MODEL_TYPES

# Package data (not the repository root) so that `hf-vtok push` works from an installed wheel too.
MODEL_CARDS_DIR = Path(__file__).resolve().parents[1] / "model_cards"

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
NEVER_UPLOADED = ("checkpoints", "pretokenized", ".cache", "runs", "__pycache__")

PAPERS = {
    "slot_qformer": {
        "title": "Slot-MLLM: Object-Centric Visual Tokenization for Multimodal LLM",
        "family_title": "SlotQFormer (Slot Q-Former)",
        "arxiv": "2505.17726",
        "bibtex": (
            "@article{chi2025slotmllm,\n"
            "  title   = {Slot-MLLM: Object-Centric Visual Tokenization for Multimodal LLM},\n"
            "  author  = {Chi, Donghwan and Kim, Hyomin and Oh, Yoonjin and Kim, Yongjin and Lee, Donghoon and Jo, Daejin\n"
            "             and Kim, Jongmin and Baek, Junyeob and Ahn, Sungjin and Kim, Sungwoong},\n"
            "  journal = {arXiv preprint arXiv:2505.17726},\n"
            "  year    = {2025}\n"
            "}"
        ),
    },
    "setok": {
        "title": "Towards Semantic Equivalence of Tokenization in Multimodal LLM",
        "family_title": "SeTok",
        "arxiv": "2406.05127",
        "bibtex": (
            "@article{wu2024setok,\n"
            "  title   = {Towards Semantic Equivalence of Tokenization in Multimodal LLM},\n"
            "  author  = {Wu, Shengqiong and Fei, Hao and Li, Xiangtai and Ji, Jiayi and Zhang, Hanwang and Chua, Tat-Seng\n"
            "             and Yan, Shuicheng},\n"
            "  journal = {arXiv preprint arXiv:2406.05127},\n"
            "  year    = {2024}\n"
            "}"
        ),
    },
    "ddt": {
        "title": "Generative Multimodal Pretraining with Discrete Diffusion Timestep Tokens",
        "family_title": "DDTTokenizer (Discrete Diffusion Timestep tokens)",
        "arxiv": "2504.14666",
        "bibtex": (
            "@article{pan2025ddt,\n"
            "  title   = {Generative Multimodal Pretraining with Discrete Diffusion Timestep Tokens},\n"
            "  author  = {Pan, Kaihang and Lin, Wang and Yue, Zhongqi and Ao, Tenglong and Jia, Liyu and Zhao, Wei\n"
            "             and Li, Juncheng and Tang, Siliang and Zhang, Hanwang},\n"
            "  journal = {arXiv preprint arXiv:2504.14666},\n"
            "  year    = {2025}\n"
            "}"
        ),
    },
}
FAMILY_OF_MODEL_TYPE = {model_type: family for family, model_type in FAMILY_MODEL_TYPES.items()}

# Without `import hf_vtok`, transformers does not know hf_vtok's classes: a tokenizer folder fails with "model type not
# recognised ... pip install --upgrade transformers" (upgrading does not help), and AutoProcessor silently falls back
# to a plain text tokenizer that drops the images of an MLLM folder. An `auto_map` to a stub module (staged next to
# each tokenizer and MLLM config) makes such a load stop instead: transformers refuses the remote code, or, with
# `trust_remote_code=True`, names the missing hf_vtok package. After `import hf_vtok` the registered classes win and
# the stub is never read (transformers runs `auto_map` code only when no local class is registered, or one from
# transformers itself).
REMOTE_CODE_MODULE = "hf_vtok_classes"
REMOTE_CODE_DOCSTRING = '"""The classes of this repository live in the hf_vtok library: `pip install hf_vtok`, then `import hf_vtok`."""'
MLLM_AUTO_MAP = {
    "config.json": {"AutoConfig": "VTokMLLMConfig", "AutoModel": "VTokMLLMModel",
                    "AutoModelForCausalLM": "VTokMLLMForConditionalGeneration",
                    "AutoModelForImageTextToText": "VTokMLLMForConditionalGeneration"},
    "processor_config.json": {"AutoProcessor": "VTokMLLMProcessor"},
    "preprocessor_config.json": {"AutoProcessor": "VTokMLLMProcessor"},
}  # fmt: skip
# Base-model names that `resolve_base_model` understands → the Hub repository they come from (model card metadata).
BASE_MODEL_HUB_IDS = {SMOLLM2: "HuggingFaceTB/SmolLM2-135M-Instruct"}


@dataclass
class UploadPlan:
    """What :func:`push_folder` uploads (or, with ``dry_run``, would upload)."""

    repo_id: str
    kind: str  # "tokenizer" or "mllm"
    staging_dir: Path
    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    uploaded: bool = False
    url: str | None = None


# ------------------------------------------------------------------------------------------- inspection
def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def describe_folder(folder: str | os.PathLike) -> dict:
    """What a folder holds: ``kind`` ("tokenizer" / "mllm"), ``family``, ``config`` (the tokenizer's), ``recipe``
    (``recipe.json``), ``metrics`` (``metrics.json``), and which optional parts exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"`folder` must be an existing folder, got {str(folder)!r}.")
    recipe = _read_json(folder / "recipe.json")
    metrics = _read_json(folder / "metrics.json")
    info = {"folder": folder, "recipe": recipe, "metrics": metrics}
    mllm_config = None
    for candidate in (folder / "mllm" / "config.json", folder / "config.json"):
        data = _read_json(candidate)
        if data.get("model_type") == "vtok_mllm":
            mllm_config = data
            break
    if mllm_config is not None:
        visual = mllm_config.get("visual_tokenizer_config") or {}
        info.update(kind="mllm", config=visual, mllm_config=mllm_config,
                    has_decoder=(folder / "decoder" / "model_index.json").is_file(),
                    has_adapter=(folder / "adapter" / "adapter_config.json").is_file(),
                    # a parts folder (hf_vtok.mllm.parts): adapter + references to the base LM and the visual tokenizer
                    parts=mllm_config.get(MLLM_PARTS_KEY))
    else:
        from ..data.pretokenize import tokenizer_subfolder

        tokenizer_dir = tokenizer_subfolder(folder) or folder
        config = _read_json(tokenizer_dir / "config.json")
        if config.get("model_type") not in FAMILY_OF_MODEL_TYPE:
            raise ValueError(
                f"`folder` {str(folder)!r} holds neither a hf_vtok tokenizer (tokenizer/config.json with model_type in "
                f"{sorted(FAMILY_OF_MODEL_TYPE)}) nor an MLLM (mllm/config.json with model_type 'vtok_mllm')."
            )
        info.update(kind="tokenizer", config=config,
                    has_decoder=(folder / "decoder" / "model_index.json").is_file(),
                    has_text_tokenizer=(folder / "text_tokenizer").is_dir(),
                    has_training_model=(folder / "training_model" / "config.json").is_file())
    info["family"] = FAMILY_OF_MODEL_TYPE.get(info["config"].get("model_type"))
    # the TAEF2 autoencoder is MIT-licensed: its notice goes into the card of any folder that re-ships it
    vae = _read_json(folder / "decoder" / "model_index.json").get("vae") or [None, None]
    info["has_taef2"] = vae[-1] == "AutoencoderTAEF2"
    # a shipped folder references the weights bundled with hf_vtok instead of carrying them (reference_bundled_taef2)
    info["taef2_bundled"] = BUNDLED_WEIGHTS_KEY in _read_json(folder / "decoder" / "vae" / "config.json")
    return info


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value)
        return text if len(text) < 120 else text[:117] + "..."
    return str(value)


def _table_cell(value) -> str:
    """A value as the cell of a markdown table (its pipes escaped)."""
    return _format_value(value).replace("|", "\\|")


def _recipe_rows(recipe: dict) -> list[tuple[str, str]]:
    fields = recipe.get("recipe", recipe)
    skip = {"prompt_templates", "description"}
    return [(key, _table_cell(value)) for key, value in fields.items() if key not in skip and value is not None]


def _decoded_image_size(folder: Path) -> int | None:
    """The side of the images a folder's decoder draws, when its config does not say: the UNet's sample side times the
    autoencoder's downsampling, if any (a SeTok encoder may read the scenes at another size, e.g. 126 px for DINOv2's 14 px
    patches)."""
    unet = _read_json(folder / "decoder" / "unet" / "config.json")
    if not unet.get("sample_size"):
        return None
    vae = _read_json(folder / "decoder" / "vae" / "config.json")
    blocks = vae.get("num_encoder_blocks") or vae.get("down_block_types") or [None]  # no autoencoder: pixel space
    return int(unet["sample_size"]) * 2 ** (len(blocks) - 1)


def _previous_stage_lines(recipe: dict) -> list[str]:
    """One line per stage the run continued (``previous_stages`` of a shipped ``recipe.json``), first stage first."""
    lines = []
    for stage in recipe.get("previous_stages") or []:
        fields = stage.get("recipe", {})
        parts = [f"{key} `{_table_cell(fields[key])}`" for key in ("family", "stage", "max_steps", "learning_rate", "seed",
                                                                    "num_train_images", "init_from", "warm_start_from")
                 if fields.get(key) is not None]
        if stage.get("wall_seconds") is not None:
            parts.append(f"{_format_value(stage['wall_seconds'])} s of training")
        overrides = fields.get("config_overrides")
        if overrides:
            parts.append(f"config overrides `{_table_cell(overrides)}`")
        lines.append(", ".join(parts))
    return lines


def _metric_rows(recipe: dict, metrics: dict) -> list[tuple[str, str]]:
    # `provenance`: how a run was carried out where its command alone does not say (a lent machine, a carried dataset)
    rows = [(f"provenance: {key}", _table_cell(value)) for key, value in (recipe.get("provenance") or {}).items()]
    names = {"first_loss": "training loss, first logged", "last_loss": "training loss, last logged",
             "train_loss": "training loss, mean over the run", "global_step": "optimizer steps",
             "wall_seconds": "training time (s), summed over resumed segments",
             "train_seconds": "time of the last segment (s), set-up included", "trainable_parameters": "trainable parameters",
             "total_parameters": "parameters"}
    for key, label in names.items():
        if recipe.get(key) is not None:
            rows.append((label, _format_value(recipe[key])))
    earlier = [stage.get("wall_seconds") for stage in recipe.get("previous_stages") or []]
    if earlier and recipe.get("wall_seconds") is not None and all(seconds is not None for seconds in earlier):
        rows.append(("training time (s) of this stage and the earlier ones", _format_value(sum(earlier) + recipe["wall_seconds"])))
    for key, value in sorted(metrics.items()):
        if isinstance(value, (int, float, str)):
            rows.append((key, _format_value(value)))
    return rows


def _lora_rank(folder: Path, fields: dict):
    """The LoRA rank a recipe records, else the one its saved adapter holds (TRL's default rank is not recorded)."""
    rank = fields.get("lora_r", fields.get("lora_rank"))
    for adapter in (folder / "adapter", folder / "mllm" / "adapter"):
        if rank is None and (adapter / "adapter_config.json").is_file():
            rank = json.loads((adapter / "adapter_config.json").read_text()).get("r")
    return rank


def build_model_card(folder: str | os.PathLike, repo_id: str, *, license: str = "apache-2.0", template_dir=None):
    """The filled ``huggingface_hub.ModelCard`` of a tokenizer or MLLM folder."""
    from huggingface_hub import ModelCard, ModelCardData

    info = describe_folder(folder)
    family = info["family"]
    paper = PAPERS.get(family, {"title": "", "family_title": str(family), "arxiv": "", "bibtex": ""})
    config = info["config"]
    recipe = info["recipe"]
    fields = recipe.get("recipe", {})
    template_dir = Path(template_dir) if template_dir else MODEL_CARDS_DIR
    template = template_dir / ("mllm.md" if info["kind"] == "mllm" else "tokenizer.md")
    if not template.is_file():
        raise ValueError(f"Model card template {str(template)!r} not found (set `template_dir`).")
    name = repo_id.split("/")[-1]
    is_tiny = fields.get("preset") == "tiny" or fields.get("model_name_or_path", fields.get("base_model")) == "tiny-llama" or int(config.get("image_size") or 0) <= 64
    tags = ["hf_vtok", "visual-tokenizer", family or "visual-tokenizer"]
    if info["kind"] == "mllm":
        base = fields.get("model_name_or_path") or fields.get("base_model") or info["mllm_config"].get("text_config", {}).get("_name_or_path") or "unknown"
        base = BASE_MODEL_HUB_IDS.get(str(base).lower(), base)
        card_data = ModelCardData(
            license=license, library_name="transformers", pipeline_tag="image-text-to-text", tags=tags + ["multimodal-llm", "text-to-image"],
            base_model=None if base in ("tiny-llama", "unknown", "") or os.path.isdir(str(base)) else base, model_name=name,
        )
        summary = (f"Stage `{fields.get('stage', '?')}` of the MLLM recipe, {fields.get('finetuning', '?')} fine-tuning"
                   f"{' (LoRA rank ' + str(_lora_rank(Path(folder), fields)) + ')' if fields.get('finetuning') == 'lora' else ''}.")
        data = fields.get("dataset", "?")
        size = config.get("image_size", "?")
        source = (recipe.get("pretokenized_from") or {}).get("source")
        # a pre-tokenised folder's path is local; its source says what it holds
        described = f"`{source}`, pre-tokenised once with `hf-vtok pretokenize`" if source else f"`{data}`"
        shapes = data == "shapes" or str(source or "").startswith("shapes:")
        training_data = (f"Dataset: {described}" + (f" (the built-in synthetic shapes world: {size} px scenes of coloured shapes with "
                         "captions, questions and edit pairs)" if shapes else "") +
                         f"; task mix {json.dumps(fields.get('task_mix', {}))}; {recipe.get('num_examples', '?')} examples.")
        kwargs = {"base_model": base, "has_decoder": info["has_decoder"], "has_adapter": info["has_adapter"],
                  "finetuning": fields.get("finetuning", "?"), "parts": info.get("parts")}
    else:
        card_data = ModelCardData(
            license=license, library_name="transformers", pipeline_tag="image-feature-extraction", tags=tags + ["diffusers"],
            model_name=name,
        )
        summary = f"{paper['family_title']} tokenizer, training stage {fields.get('stage', '?')} ({fields.get('preset', 'custom')} preset)."
        scene_size = config.get("image_size") or _decoded_image_size(Path(folder)) or "?"
        training_data = (
            f"The built-in synthetic shapes world ({scene_size} px scenes of coloured shapes, generated by "
            f"`hf_vtok.data.generate_shapes_dataset`, {fields.get('num_train_images', '?')} images, style "
            f"`{fields.get('dataset_style', '?')}`, seed {fields.get('dataset_seed', '?')})."
            if fields else "Not recorded (no recipe.json in the uploaded folder)."
        )
        kwargs = {"has_text_tokenizer": info["has_text_tokenizer"], "has_training_model": info["has_training_model"],
                  "has_decoder": info["has_decoder"]}
    model_class, pretraining_class = _registered_class_names(config.get("model_type"))
    decoder_index = _read_json(Path(folder) / "decoder" / "model_index.json")
    pipeline_class = decoder_index.get("_class_name", "?")
    discrete = config.get("codebook_size") is not None
    decode_argument = "token_ids=tokens.ids" if discrete else "token_embeddings=tokens.embeddings, attention_mask=tokens.attention_mask"
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_name=name,
        repo_id=repo_id,
        summary=summary,
        family_title=paper["family_title"],
        paper_title=paper["title"],
        arxiv_id=paper["arxiv"],
        citation=paper["bibtex"],
        license=license,
        model_class=model_class,
        pipeline_class=pipeline_class,
        pretraining_class=pretraining_class,
        decode_argument=decode_argument,
        num_visual_tokens=_num_visual_tokens(config),
        codebook_size=config.get("codebook_size"),
        # SeTok has no id order: its tokens come in the order the clusters were found (highest score first)
        token_order=config.get("token_order") or ("cluster discovery" if config.get("max_clusters") else "?"),
        token_embedding_dim=config.get("token_embedding_dim") or config.get("hidden_size", "?"),
        image_size=(config.get("image_size") or config.get("input_image_size")  # SeTok may read its encoder at another size
                    or (config.get("vision_config") or {}).get("image_size", "?")),
        training_data=training_data,
        recipe_rows=_recipe_rows(recipe),
        previous_stages=_previous_stage_lines(recipe),
        metric_rows=_metric_rows(recipe, info["metrics"]),
        is_tiny=is_tiny,
        has_taef2=info["has_taef2"],
        taef2_bundled=info["taef2_bundled"],
        decoder_guidance_scale=decoder_index.get("guidance_scale"),  # the checkpoint's own, chosen after training
        # a frozen encoder left out of the folder and rebuilt from an installed package (hf_vtok.utils.external_weights)
        external_vision=_external_vision_note(config.get("external_vision_weights")),
        **kwargs,
    )


def _external_vision_note(external: dict | None) -> dict | None:
    """What the card says of a vision encoder the folder leaves out: its source and what to install."""
    from ..utils.external_weights import EXTERNAL_VISION_SOURCES

    if not external:
        return None
    return {"source": external["source"], "install": EXTERNAL_VISION_SOURCES[external["source"]].install,
            "sha256": external["sha256"]}


def _registered_class_names(model_type: str | None) -> tuple[str, str]:
    """Names of the classes ``AutoModel`` and ``AutoModelForPreTraining`` load for ``model_type``."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_PRETRAINING_MAPPING, MODEL_MAPPING

    if model_type not in CONFIG_MAPPING:
        return "?", "?"
    config_class = CONFIG_MAPPING[model_type]
    return MODEL_MAPPING[config_class].__name__, MODEL_FOR_PRETRAINING_MAPPING[config_class].__name__


def _num_visual_tokens(config: dict):
    if config.get("num_visual_tokens"):
        return config["num_visual_tokens"]
    if config.get("num_slots") and config.get("rvq_depths"):
        return config["num_slots"] * config["rvq_depths"]
    if config.get("max_clusters"):
        return f"up to {config['max_clusters']}"
    return "?"


# ------------------------------------------------------------------------------------------- staging / upload
def stage_folder(folder: str | os.PathLike, staging_dir: str | os.PathLike, *, include_training_model: bool = True) -> tuple[list[str], list[tuple[str, str]]]:
    """Copy what may be uploaded from ``folder`` to ``staging_dir``; returns ``(files, skipped)`` (relative paths)."""
    folder, staging_dir = Path(folder), Path(staging_dir)
    files, skipped = [], []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(folder)
        top = relative.parts[0]
        reason = None
        if top in NEVER_UPLOADED or any(part.startswith(".") for part in relative.parts):
            reason = "training-only (checkpoints, pre-tokenised data, caches)"
        elif path.suffix in PICKLE_SUFFIXES:
            reason = "pickle file (only safetensors are uploaded)"
        elif top == "training_model" and not include_training_model:
            reason = "training model excluded"
        elif relative.name == "README.md" and len(relative.parts) == 1:
            reason = "replaced by the generated model card"
        if reason:
            skipped.append((str(relative), reason))
            continue
        target = staging_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        files.append(str(relative))
    files += _add_auto_maps(staging_dir)
    return files, skipped


def _is_mllm_file(path: Path) -> bool:
    data = _read_json(path)
    return data.get("model_type") == "vtok_mllm" or data.get("processor_class") == "VTokMLLMProcessor"


def _tokenizer_auto_map(model_type: str) -> dict[str, dict[str, str]]:
    """The classes ``import hf_vtok`` registers for a tokenizer family's ``model_type``, per config file."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_PRETRAINING_MAPPING, MODEL_MAPPING

    config_class = CONFIG_MAPPING[model_type]
    return {
        "config.json": {"AutoConfig": config_class.__name__, "AutoModel": MODEL_MAPPING[config_class].__name__,
                        "AutoModelForPreTraining": MODEL_FOR_PRETRAINING_MAPPING[config_class].__name__},
        # the PIL backend: what Auto picks without torchvision (see HF_NOTES)
        "preprocessor_config.json": {"AutoImageProcessor": IMAGE_PROCESSOR_MAPPING[config_class]["pil"].__name__},
    }  # fmt: skip


def _auto_maps_of(folder: Path) -> dict[str, dict[str, str]]:
    """``{config file: {Auto class: hf_vtok class}}`` for the files of ``folder`` that an hf_vtok class loads."""
    auto_maps = {name: classes for name, classes in MLLM_AUTO_MAP.items() if _is_mllm_file(folder / name)}
    model_type = _read_json(folder / "config.json").get("model_type")
    if model_type in FAMILY_OF_MODEL_TYPE:  # a tokenizer (or its training model) with its image processor
        auto_maps.update(
            {name: classes for name, classes in _tokenizer_auto_map(model_type).items() if (folder / name).is_file()}
        )
    return auto_maps


def _add_auto_maps(staging_dir: Path) -> list[str]:
    """Point the tokenizer and MLLM configs of each staged folder at :data:`REMOTE_CODE_MODULE` (written beside them,
    as transformers looks for it, importing exactly the classes named); returns the written modules."""
    written = []
    for folder in sorted({path.parent for path in staging_dir.rglob("*.json")}):
        auto_maps = _auto_maps_of(folder)
        if not auto_maps:
            continue
        for name, classes in auto_maps.items():
            data = _read_json(folder / name)
            data["auto_map"] = {auto: f"{REMOTE_CODE_MODULE}.{cls}" for auto, cls in classes.items()}
            (folder / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        names = sorted({cls for classes in auto_maps.values() for cls in classes.values()})
        (folder / f"{REMOTE_CODE_MODULE}.py").write_text(f"{REMOTE_CODE_DOCSTRING}\nfrom hf_vtok import {', '.join(names)}\n")
        written.append(str((folder / f"{REMOTE_CODE_MODULE}.py").relative_to(staging_dir)))
    return written


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    staging_dir: str | os.PathLike | None = None,
    license: str = "apache-2.0",
    include_training_model: bool = True,
    commit_message: str | None = None,
) -> UploadPlan:
    """Stage ``folder`` with a model card and upload it to ``repo_id`` (a model repository).

    Args:
        folder: a ``train-tokenizer`` / ``train-mllm`` output or a single tokenizer / MLLM ``save_pretrained`` folder.
        repo_id: ``ORG/NAME`` (or ``NAME`` under your account).
        private: create the repository as private.
        dry_run: stage only (no network); the returned plan's ``staging_dir`` is exactly what would be uploaded.
        token: a Hub token (default: the logged-in one).
        staging_dir: where to stage, kept (default: a temporary folder, removed after a real upload, also a failed one;
            a dry run keeps it).
        include_training_model: also upload ``training_model/`` (to continue training elsewhere).
    """
    if not isinstance(repo_id, str) or not repo_id or repo_id.count("/") > 1 or " " in repo_id:
        raise ValueError(f"`repo_id` must look like 'ORG/NAME' or 'NAME', got {describe(repo_id)}.")
    info = describe_folder(folder)
    temporary = staging_dir is None
    staging = Path(staging_dir) if staging_dir else Path(tempfile.mkdtemp(prefix="hf_vtok_push_"))
    if staging.exists() and any(staging.iterdir()):
        raise ValueError(f"`staging_dir` {str(staging)!r} must be empty.")
    staging.mkdir(parents=True, exist_ok=True)
    keep_staging = not temporary
    try:
        files, skipped = stage_folder(folder, staging, include_training_model=include_training_model)
        card = build_model_card(folder, repo_id, license=license)
        card.save(staging / "README.md")
        files.append("README.md")
        plan = UploadPlan(repo_id=repo_id, kind=info["kind"], staging_dir=staging, files=sorted(files), skipped=skipped)
        if dry_run:
            keep_staging = True  # the staged folder is what a dry run shows
            return plan
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=str(staging), repo_id=repo_id, repo_type="model",
            commit_message=commit_message or f"Upload {info['kind']} trained with hf_vtok",
        )  # fmt: skip
        plan.uploaded, plan.url = True, str(url)
        return plan
    finally:
        # a temporary staging folder never outlives a real push, whether the upload worked or failed
        if not keep_staging:
            shutil.rmtree(staging, ignore_errors=True)


__all__ = ["PAPERS", "UploadPlan", "build_model_card", "describe_folder", "push_folder", "stage_folder"]
