"""The demo runs end to end on the shipped checkpoints and writes its pictures and metrics."""

import json

import pytest
import yaml

from hf_vtok.commands.demo import DEMO_MLLM_RECIPES, DEMO_RECIPES, run_demo
from hf_vtok.data.pretokenize import SHIPPED_CHECKPOINTS_DIR


def test_every_family_ships_a_checkpoint_with_its_card():
    for family in DEMO_RECIPES:
        folder = SHIPPED_CHECKPOINTS_DIR / family
        assert (folder / "decoder" / "model_index.json").is_file(), family
        assert (folder / "tokenizer" / "config.json").is_file(), family
        recipe = json.loads((folder / "recipe.json").read_text())["recipe"]
        assert recipe["family"] == family and "seed" in recipe
        assert "psnr" in json.loads((folder / "metrics.json").read_text())
        assert (folder / "README.md").is_file()
        # a few MB each, safetensors only
        assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
        assert sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) < 16 * 2**20


def test_shipped_tokenizer_cards_fill_every_token_field():
    from hf_vtok.trainer.hub import build_model_card

    for family in DEMO_RECIPES:
        card = str(build_model_card(SHIPPED_CHECKPOINTS_DIR / family, f"hf-vtok/{family}-tiny-shapes"))
        token_line = next(line for line in card.splitlines() if line.startswith("* Tokens per image:"))
        input_line = next(line for line in card.splitlines() if line.startswith("* Input:"))
        assert "?" not in token_line and "?" not in input_line, (family, token_line, input_line)
        assert "64 × 64" in input_line


def test_the_demo_mllm_ships_with_its_recipe_metrics_and_card():
    folder = SHIPPED_CHECKPOINTS_DIR / "mllm"
    for required in ("model_index.json", "mllm/config.json", "mllm/processor_config.json", "decoder/model_index.json", "README.md"):
        assert (folder / required).is_file(), required
    recipe = json.loads((folder / "recipe.json").read_text())["recipe"]
    shipped_recipe = yaml.safe_load((SHIPPED_CHECKPOINTS_DIR.parent / "recipes" / "mllm" / f"{DEMO_MLLM_RECIPES[-1]}.yaml").read_text())
    assert recipe["max_steps"] == shipped_recipe["max_steps"] and recipe["seed"] == shipped_recipe["seed"]
    assert recipe["visual_tokenizer"].endswith(DEMO_MLLM_RECIPES[0])  # the flat DDT tokenizer trained first
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in ("caption_pair_recall", "qa_accuracy", "t2i_color_accuracy", "t2i_shape_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    # the processor asks in the words the model was trained with
    processor = json.loads((folder / "mllm" / "processor_config.json").read_text())
    assert processor["task_prompts"]["text_to_image"] == "{caption} generate an image"
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
    assert sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) < 16 * 2**20


def test_demo_writes_pictures_and_metrics(tmp_path):
    metrics = run_demo(tmp_path, num_images=2, seed=7)
    assert (tmp_path / "shapes_world.png").is_file()
    for family in DEMO_RECIPES:
        assert (tmp_path / f"{family}_reconstructions.png").is_file()
        assert metrics[family]["psnr"] > 0
    assert (tmp_path / "ddt_prefix_strip.png").is_file() and (tmp_path / "ddt_counterfactual.png").is_file()
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
