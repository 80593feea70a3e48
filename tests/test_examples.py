"""Every script in examples/ runs end to end on the small checkpoints shipped with hf_vtok (the default) and does what
it says; ``--random`` (an untrained tiny model) says that its output is noise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def run_example(name: str, argv: list[str]) -> dict:
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_tokenize_and_reconstruct_uses_the_shipped_checkpoint(tmp_path):
    out = run_example("tokenize_and_reconstruct", ["--family", "ddt", "--steps", "2", "--out", str(tmp_path / "r.png")])
    assert out["tokens"].ids.shape == (1, 16) and Image.open(out["out"]).size == (128, 64)
    out = run_example("tokenize_and_reconstruct", ["--family", "setok", "--steps", "2", "--out", str(tmp_path / "s.png")])
    assert out["tokens"].ids is None and out["tokens"].embeddings.shape[1] >= 1


def test_random_models_only_on_request_and_then_say_it_is_noise(tmp_path):
    with pytest.warns(UserWarning, match="noise"):
        out = run_example("tokenize_and_reconstruct", ["--random", "--family", "ddt", "--steps", "1", "--out", str(tmp_path / "r.png")])
    assert out["tokens"].ids.shape == (1, 16)
    with pytest.warns(UserWarning, match="noise"):
        run_example("render_ids", ["--random", "--family", "slot_qformer", "--steps", "1", "--out", str(tmp_path / "i.png")])


def test_render_ids(tmp_path):
    out = run_example("render_ids", ["--family", "slot_qformer", "--steps", "2", "--out", str(tmp_path / "r.png")])
    assert out["ids"].shape[0] == 1 and Image.open(out["out"]).size == out["image"].size
    out = run_example("render_ids", ["--ids", ",".join(["3"] * 16), "--steps", "1", "--out", str(tmp_path / "s.png")])
    assert out["ids"].tolist() == [[3] * 16]


def test_render_ids_refuses_a_continuous_tokenizer(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_example("render_ids", ["--family", "setok", "--steps", "1", "--out", str(tmp_path / "r.png")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "continuous tokens" in err and "cannot render ids" in err and "Traceback" not in err
    assert not (tmp_path / "r.png").exists()


def test_text_to_image_and_edit_uses_the_shipped_mllm(tmp_path):
    out = run_example("text_to_image_and_edit", ["--steps", "1", "--out", str(tmp_path / "t.png")])
    assert out["generated"].token_ids.shape == out["edited"].token_ids.shape == (1, 16)
    assert Image.open(out["out"]).size == (128, 64)


@pytest.mark.slow
def test_finetune_lora_then_generate_and_push(tmp_path):
    run = tmp_path / "run"
    out = run_example("finetune_lora", ["--tiny", "--max-steps", "3", "--output-dir", str(run), "--neftune_noise_alpha", "5"])
    summary = out["summary"]
    assert out["trainer"].args.neftune_noise_alpha == 5 == summary["recipe"]["neftune_noise_alpha"]  # any SFTConfig flag
    assert summary["recipe"]["visual_tokenizer"] == "shipped:ddt"
    assert summary["global_step"] == 3 and summary["trainable_parameters"] < summary["total_parameters"] / 3
    assert 0 < summary["wall_seconds"] <= summary["train_seconds"]  # training time, without the set-up
    # the fine-tuned folder feeds the other examples
    generated = run_example("text_to_image_and_edit", ["--mllm", str(run), "--steps", "1", "--out", str(tmp_path / "t.png")])
    assert generated["generated"].token_ids.shape == (1, 16)
    pushed = run_example("push_to_hub", [str(run), "--repo-id", "me/tiny-mllm", "--dry-run", "--staging-dir", str(tmp_path / "s")])
    assert "mllm/model.safetensors" in pushed["plan"].files and pushed["card"].data.license == "apache-2.0"


def test_push_to_hub_dry_run_on_the_shipped_tokenizer(tmp_path):
    out = run_example("push_to_hub", ["--repo-id", "me/ddt", "--dry-run", "--staging-dir", str(tmp_path / "s")])
    assert "decoder/tokenizer/model.safetensors" in out["plan"].files and "decoder/model_index.json" in out["plan"].files
    with pytest.raises(SystemExit):
        run_example("push_to_hub", ["--dry-run"])  # --repo-id is required
