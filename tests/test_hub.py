"""Sharing on the Hub without network: the exact staged folder, its model card, and loading it back.

Properties checked: a tokenizer run and an MLLM run stage only safetensors + configs (no Trainer checkpoints, no
pickles, no pre-tokenised data) plus a README whose metadata parses with ``huggingface_hub.ModelCard`` and whose
text carries the license, the paper's BibTeX, the recipe and the run's metrics; the staged folders load with the
Auto classes and the generic ``DiffusionPipeline.from_pretrained`` after ``import hf_vtok`` (no
``trust_remote_code``) and give identical outputs; a real push calls ``create_repo`` / ``upload_folder`` on the staged
folder; diffusers registration is idempotent and never shadows a diffusers class; bad arguments name themselves.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import hf_vtok
from hf_vtok.trainer.arguments import MLLMArguments, MLLMModelConfig, recorded_arguments
from hf_vtok.trainer.hub import PAPERS, describe_folder, push_folder
from hf_vtok.trainer.mllm_trainer import build_mllm, export_mllm

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory):
    """A folder laid out like `hf-vtok train-tokenizer` writes it, plus the clutter a run leaves behind."""
    from hf_vtok.mllm.processing_mllm import image_processor_for
    from hf_vtok.models.ddt import DDTTokenizerConfig, DDTTokenizerForPreTraining
    from hf_vtok.trainer.arguments import parse_tokenizer_arguments
    from hf_vtok.trainer.tokenizer_trainer import export_tokenizer

    torch.manual_seed(0)
    model = DDTTokenizerForPreTraining(DDTTokenizerConfig.tiny()).eval()
    folder = tmp_path_factory.mktemp("tokenizer_run")
    recipe = recorded_arguments(*parse_tokenizer_arguments(["--recipe", "ddt_tiny", "--max_steps", "3", "--output_dir", str(folder)]))
    history = [{"loss": 1.5, "step": 1}, {"loss": 1.2, "step": 3}]
    export_tokenizer(model, image_processor_for(model.config), folder, recipe, log_history=history)
    (folder / "metrics.json").write_text(json.dumps({"psnr": 21.5, "ssim": 0.61}))
    (folder / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint-2" / "optimizer.pt").write_bytes(b"pickle")
    (folder / "stray_weights.bin").write_bytes(b"pickle")
    return folder, model


def test_the_seed_and_the_step_budget_are_recorded_even_at_their_defaults():
    from hf_vtok.trainer.arguments import TokenizerTrainingArguments, parse_tokenizer_arguments

    default = recorded_arguments(*parse_tokenizer_arguments(["--recipe", "ddt_latent_128_pixel", "--output_dir", "x"]))
    assert default["seed"] == 0 and "adam_beta1" not in default  # other training arguments only when they differ
    stage2 = recorded_arguments(*parse_tokenizer_arguments(["--recipe", "slot_qformer_latent_128_layout_stage2", "--output_dir", "x"]))
    assert stage2["max_steps"] == TokenizerTrainingArguments.max_steps == 500  # the recipe's value is the default
    assert recorded_arguments(*parse_tokenizer_arguments(["--recipe", "ddt_tiny", "--seed", "3", "--output_dir", "x"]))["seed"] == 3


def test_tokenizer_folder_is_staged_with_a_card_and_loads_back(tokenizer_run, tmp_path):
    from diffusers import DiffusionPipeline
    from huggingface_hub import ModelCard
    from transformers import AutoImageProcessor, AutoModel

    folder, model = tokenizer_run
    plan = push_folder(folder, "me/ddt-tiny", dry_run=True, staging_dir=tmp_path / "staged")
    staged = plan.staging_dir
    assert plan.kind == "tokenizer" and not plan.uploaded
    assert {"README.md", "recipe.json", "metrics.json", "tokenizer/config.json", "tokenizer/model.safetensors",
            "tokenizer/preprocessor_config.json", "decoder/model_index.json", "training_model/model.safetensors"} <= set(plan.files)
    assert not any(name.endswith((".bin", ".pt", ".pth")) or name.startswith("checkpoints") for name in plan.files)
    assert {name for name, _ in plan.skipped} == {"checkpoints/checkpoint-2/optimizer.pt", "stray_weights.bin"}
    assert sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file()) == plan.files

    card = ModelCard.load(staged / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "transformers" and "ddt" in meta["tags"]
    text = card.text
    assert PAPERS["ddt"]["bibtex"] in text and "arXiv:2504.14666" in text
    assert "| `max_steps` | 3 |" in text and "| psnr | 21.5 |" in text and "training loss, last logged | 1.2" in text
    assert "tiny demonstration model" in text and "## Intended use and limits" in text and "snapshot_download" in text

    # what a user of the repository does: Auto classes and the generic pipeline loader, no remote code
    tokenizer = AutoModel.from_pretrained(staged / "tokenizer")
    processor = AutoImageProcessor.from_pretrained(staged / "tokenizer")
    pixel_values = processor([np.full((64, 64, 3), 200, np.uint8)], return_tensors="pt").pixel_values
    assert torch.equal(tokenizer.encode(pixel_values).ids, model.tokenizer.encode(pixel_values).ids)
    pipe = DiffusionPipeline.from_pretrained(staged / "decoder")
    ids = model.tokenizer.encode(pixel_values).ids
    call = {"token_ids": ids, "num_inference_steps": 2, "output_type": "np"}
    reference = model.get_decoder_pipeline()(generator=torch.Generator().manual_seed(0), **call).images
    assert type(pipe).__name__ == "DDTDecoderPipeline"
    assert np.array_equal(pipe(generator=torch.Generator().manual_seed(0), **call).images, reference)


@pytest.fixture(scope="module")
def mllm_run(tmp_path_factory):
    """A `hf-vtok train-mllm` output (plus pre-tokenised data) staged by a dry-run push."""
    tmp_path = tmp_path_factory.mktemp("mllm_run")
    script_args, model_args = MLLMArguments(visual_tokenizer="random:slot_qformer"), MLLMModelConfig(use_peft=True)
    model, processor, decoder = build_mllm(script_args, model_args)
    recipe = {**recorded_arguments(script_args, model_args), "finetuning": "lora"}
    summary = {"recipe": recipe, "first_loss": 5.0, "last_loss": 4.0, "num_examples": 12}
    export_mllm(model.eval(), processor, decoder, tmp_path / "run", summary)
    (tmp_path / "run" / "pretokenized").mkdir()
    (tmp_path / "run" / "pretokenized" / "shard-00000.parquet").write_bytes(b"data")
    plan = push_folder(tmp_path / "run", "me/slot-mllm-tiny", dry_run=True, staging_dir=tmp_path / "staged")
    return plan, model, processor, decoder


def test_mllm_folder_is_staged_and_loads_as_pipeline_and_auto_model(mllm_run):
    from diffusers import DiffusionPipeline
    from huggingface_hub import ModelCard
    from transformers import AutoModelForImageTextToText, AutoProcessor

    plan, model, processor, decoder = mllm_run
    assert plan.kind == "mllm" and "model_index.json" in plan.files and "mllm/model.safetensors" in plan.files
    assert "processor/processor_config.json" in plan.files and not any(n.startswith("pretokenized") for n in plan.files)
    card = ModelCard.load(plan.staging_dir / "README.md")
    assert card.data.pipeline_tag == "image-text-to-text" and PAPERS["slot_qformer"]["bibtex"] in card.text
    assert "AutoModelForImageTextToText" in card.text and "| `finetuning` | lora |" in card.text

    staged = plan.staging_dir
    loaded = AutoModelForImageTextToText.from_pretrained(staged / "mllm")
    assert type(AutoProcessor.from_pretrained(staged / "mllm")).__name__ == "VTokMLLMProcessor"
    batch = processor(text=["a red circle"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, model(**batch).logits, atol=1e-5)
    pipe = DiffusionPipeline.from_pretrained(staged)
    assert type(pipe).__name__ == "VTokTextToImagePipeline"
    first = pipe("a red circle", seed=0, num_inference_steps=1, output_type="np")
    from hf_vtok.mllm import VTokTextToImagePipeline

    second = VTokTextToImagePipeline(mllm=model, processor=processor, decoder=decoder)("a red circle", seed=0, num_inference_steps=1, output_type="np")
    # ids are identical; pixels agree to float rounding (a reloaded UNet's kernels may round differently,
    # which the clipped-DDIM step of the pixel-space SlotQFormer decoder passes through at ~1e-7)
    assert torch.equal(first.token_ids, second.token_ids) and np.allclose(first.images, second.images, atol=1e-6)


LOAD_STAGED = """
import sys
import transformers
folder, loaders, mode = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
if mode == "hf_vtok missing":  # as in an environment without the package
    class NoHfVtok:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] == "hf_vtok":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, NoHfVtok())
elif mode == "imported":
    import hf_vtok
trust = {"trust_remote_code": True} if "trusted" in sys.argv else {}
for loader in map(getattr, [transformers] * len(loaders), loaders):
    try:
        loaded = loader.from_pretrained(folder, **trust)
        print(loader.__name__, "->", type(loaded).__name__, type(loaded).__module__)
    except Exception as error:
        print(loader.__name__, "!!", type(error).__name__, " ".join(str(error).split()))
print("remote code ran:", any("hf_vtok_classes" in name for name in sys.modules))
"""


def load_staged(folder, loaders, *mode: str, modules_cache) -> str:
    """What each Auto class in ``loaders`` gives for ``folder`` in a fresh interpreter (stdin closed: a prompt fails),
    with hf_vtok imported or not, missing, and with ``trust_remote_code`` ("trusted" in ``mode``)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_MODULES_CACHE": str(modules_cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", LOAD_STAGED, str(folder), ",".join(loaders), *mode], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


MISSING_HF_VTOK = "requires the following packages that were not found in your environment: hf_vtok"


@pytest.mark.slow  # four fresh interpreters
def test_a_staged_mllm_folder_stops_loudly_without_hf_vtok(mllm_run, tmp_path):
    """Without `import hf_vtok`, AutoProcessor used to return a plain text tokenizer that dropped images; the staged
    configs' `auto_map` now stops the load, while after `import hf_vtok` the registered classes load and the remote
    stub is never run, with or without `trust_remote_code` (each case in a fresh interpreter, stdin closed)."""
    import os

    staged = mllm_run[0].staging_dir
    assert (staged / "mllm" / "hf_vtok_classes.py").is_file() and (staged / "processor" / "hf_vtok_classes.py").is_file()
    assert "hf_vtok_classes.py" not in os.listdir(staged / "decoder")
    for name, auto_class in (("config.json", "AutoConfig"), ("processor_config.json", "AutoProcessor")):
        auto_map = json.loads((staged / "mllm" / name).read_text())["auto_map"]
        assert auto_map[auto_class].startswith("hf_vtok_classes.VTokMLLM")
    # the decoder's tokenizer component is a tokenizer folder: its own auto_map (see the tokenizer test below)
    assert json.loads((staged / "decoder" / "tokenizer" / "config.json").read_text())["auto_map"]["AutoModel"] == (
        "hf_vtok_classes.SlotQFormerModel"
    )
    loaders = ("AutoProcessor", "AutoConfig", "AutoModelForImageTextToText")

    def load(*mode: str) -> str:
        return load_staged(staged / "mllm", loaders, *mode, modules_cache=tmp_path / "modules")

    for mode in (("imported",), ("imported", "trusted")):
        printed = load(*mode)
        assert "AutoProcessor -> VTokMLLMProcessor" in printed and "AutoConfig -> VTokMLLMConfig" in printed, printed
        assert "AutoModelForImageTextToText -> VTokMLLMForConditionalGeneration" in printed, printed
        assert "remote code ran: False" in printed, printed
    printed = load("not imported")
    for auto_class in ("AutoProcessor", "AutoConfig", "AutoModelForImageTextToText"):
        assert f"{auto_class} !! ValueError" in printed and "trust_remote_code=True" in printed, printed
    assert "remote code ran: False" in printed and "->" not in printed, printed
    printed = load("hf_vtok missing", "trusted")
    assert printed.count(MISSING_HF_VTOK) == 3 and "->" not in printed, printed


@pytest.mark.slow  # four fresh interpreters
def test_a_staged_tokenizer_folder_stops_loudly_without_hf_vtok(tokenizer_run, tmp_path):
    """Without `import hf_vtok`, a pushed tokenizer folder used to answer "model type not recognised ... pip install
    --upgrade transformers"; the staged config.json / preprocessor_config.json now carry an `auto_map` to a stub that
    only imports hf_vtok's classes, so the load stops and says what is missing, while after `import hf_vtok` the
    installed classes load, without a prompt and without running the stub (each case a fresh interpreter, stdin
    closed)."""
    plan = push_folder(tokenizer_run[0], "me/ddt-tiny", dry_run=True, staging_dir=tmp_path / "staged")
    classes = {"AutoConfig": "DDTTokenizerConfig", "AutoModel": "DDTTokenizerModel",
               "AutoImageProcessor": "DDTImageProcessorPil"}  # fmt: skip
    for folder in ("tokenizer", "decoder/tokenizer"):
        assert f"{folder}/hf_vtok_classes.py" in plan.files
        assert "from hf_vtok import" in (plan.staging_dir / folder / "hf_vtok_classes.py").read_text()
    training_config = json.loads((plan.staging_dir / "training_model" / "config.json").read_text())
    assert training_config["auto_map"]["AutoModelForPreTraining"] == "hf_vtok_classes.DDTTokenizerForPreTraining"

    def load(*mode: str) -> str:
        return load_staged(plan.staging_dir / "tokenizer", classes, *mode, modules_cache=tmp_path / "modules")

    for mode in (("imported",), ("imported", "trusted")):
        printed = load(*mode)
        for auto_class, expected in classes.items():
            assert f"{auto_class} -> {expected} hf_vtok.models.ddt." in printed, printed
        assert "remote code ran: False" in printed, printed
    printed = load("not imported")
    assert printed.count("!! ValueError") == printed.count("Please pass the argument `trust_remote_code=True`") == 3, printed
    assert "pip install --upgrade transformers" not in printed and "->" not in printed, printed
    assert "remote code ran: False" in printed, printed
    printed = load("hf_vtok missing", "trusted")
    assert printed.count(MISSING_HF_VTOK) == 3 and "->" not in printed, printed


def test_real_push_uploads_the_staged_folder(tokenizer_run, monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private, exist_ok, repo_type):
            calls["create"] = (repo_id, private, exist_ok, repo_type)
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, repo_type, commit_message):
            from pathlib import Path

            calls["files"] = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
            calls["upload"] = (repo_id, repo_type)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    plan = push_folder(tokenizer_run[0], "org/ddt-tiny", private=True, token="hf_x")
    assert calls["create"] == ("org/ddt-tiny", True, True, "model") and calls["upload"] == ("org/ddt-tiny", "model")
    assert calls["files"] == plan.files and plan.uploaded and not plan.staging_dir.exists()


def test_diffusers_registration_and_bad_arguments(tokenizer_run, tmp_path, monkeypatch):
    import diffusers

    hf_vtok.register_pipelines_with_diffusers()
    hf_vtok.register_pipelines_with_diffusers()  # idempotent
    assert diffusers.SeTokDecoderPipeline is hf_vtok.SeTokDecoderPipeline
    monkeypatch.setattr(diffusers, "DDTDecoderPipeline", diffusers.StableDiffusionPipeline, raising=False)
    with pytest.raises(ValueError, match="shadow"):
        hf_vtok.register_pipelines_with_diffusers()
    monkeypatch.undo()

    with pytest.raises(ValueError, match="repo_id"):
        push_folder(tokenizer_run[0], "a/b/c", dry_run=True)
    with pytest.raises(ValueError, match="folder"):
        push_folder(tmp_path, "me/x", dry_run=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="staging_dir"):
        push_folder(tokenizer_run[0], "me/x", dry_run=True, staging_dir=tmp_path / "full")
    assert describe_folder(tokenizer_run[0])["family"] == "ddt"
