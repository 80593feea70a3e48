"""The demo runs end to end on the shipped checkpoints and writes its pictures and metrics."""

import json

import pytest

from hf_vtok.demo import CHECKPOINTS_DIR, DEMO_RECIPES, run_demo


def test_every_family_ships_a_checkpoint_with_its_card():
    for family in DEMO_RECIPES:
        folder = CHECKPOINTS_DIR / family
        assert (folder / "decoder" / "model_index.json").is_file(), family
        assert (folder / "tokenizer" / "config.json").is_file(), family
        recipe = json.loads((folder / "recipe.json").read_text())["recipe"]
        assert recipe["family"] == family and "seed" in recipe
        assert "psnr" in json.loads((folder / "metrics.json").read_text())
        assert (folder / "README.md").is_file()
        # a few MB each, safetensors only
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
    assert json.loads((tmp_path / "metrics.json").read_text())["ddt"]["mean_tokens"] == 16


def test_demo_rejects_unknown_families(tmp_path):
    with pytest.raises(ValueError, match="families"):
        run_demo(tmp_path, families=["vqgan"])
