"""The `hf-vtok` subcommands that run the shipped checkpoints end to end: tokenize, reconstruct, visualize, generate,
describe (and convert-dinov2's error path), in-process through ``hf_vtok.commands.cli.main``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hf_vtok.commands.cli import build_parser, main
from hf_vtok.data import generate_shapes_dataset
from hf_vtok.data.shapes import COLORS
from hf_vtok.evaluation.metrics import psnr

NEW_COMMANDS = ("tokenize", "reconstruct", "visualize", "generate", "describe", "convert-dinov2")
STEPS = "6"  # decoder steps: enough for the tiny DDT decoder to follow its tokens, cheap on CPU


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two flat 64 px scenes of the shapes world as PNG files."""
    folder = tmp_path_factory.mktemp("scenes")
    dataset = generate_shapes_dataset(2, image_size=64, style="flat", seed=11, progress=False)
    paths = []
    for index, image in enumerate(dataset["image"]):
        paths.append(str(folder / f"scene{index}.png"))
        image.convert("RGB").save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def ddt_ids(scenes, tmp_path_factory):
    path = tmp_path_factory.mktemp("ids") / "ids.json"
    assert main(["tokenize", *scenes, "--tokenizer", "shipped:ddt", "--out", str(path)]) == 0
    return path


def _pixels(path, size=None) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    if size is not None and image.size != tuple(size):
        image = image.resize(tuple(size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float64) / 255.0


def _mean_psnr(out_dir, scenes) -> float:
    summary = json.loads((out_dir / "reconstruct.json").read_text())
    values = [psnr(_pixels(source, entry["output_size"]), _pixels(out_dir / entry["file"]))
              for source, entry in zip(scenes, summary["images"])]
    return float(np.mean(values))


def test_help_lists_every_subcommand_with_examples(capsys):
    choices = build_parser()._subparsers._group_actions[0].choices
    assert set(NEW_COMMANDS) <= set(choices)
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in choices)
    for name in NEW_COMMANDS:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        examples = capsys.readouterr().out.partition("\nExamples:\n")[2]
        assert f"  hf-vtok {name} " in examples, name


def test_tokenize_then_reconstruct_follows_the_ids(scenes, ddt_ids, tmp_path):
    document = json.loads(ddt_ids.read_text())
    assert document["tokenizer"]["source"] == "shipped:ddt" and document["tokenizer"]["token_order"] == "recursive"
    assert [record["size"] for record in document["images"]] == [[64, 64], [64, 64]]
    assert all(record["num_tokens"] == len(record["ids"]) == 16 for record in document["images"])
    assert document["images"][0]["ids"] != document["images"][1]["ids"]

    # the same ids in the other formats read back identically
    for suffix in (".npy", ".safetensors"):
        other = tmp_path / f"ids{suffix}"
        assert main(["tokenize", *scenes, "--out", str(other)]) == 0
        assert main(["reconstruct", str(other), "--decoder", "shipped:ddt", "--steps", "1", "--out", str(tmp_path / suffix)]) == 0
    assert json.loads((tmp_path / ".npy" / "reconstruct.json").read_text())["images"][0]["output_size"] == [64, 64]

    assert main(["reconstruct", str(ddt_ids), "--steps", STEPS, "--seed", "5", "--out", str(tmp_path / "real")]) == 0
    summary = json.loads((tmp_path / "real" / "reconstruct.json").read_text())
    assert summary["decoder"] == "shipped:ddt" and summary["num_inference_steps"] == 6
    assert [entry["seed"] for entry in summary["images"]] == [5, 6]
    assert [entry["input_size"] for entry in summary["images"]] == [[64, 64], [64, 64]]

    # random ids of the same shape: the decoder must draw something further from the inputs
    rng = np.random.default_rng(0)
    for record in document["images"]:
        record["ids"] = rng.integers(0, document["tokenizer"]["codebook_size"], len(record["ids"])).tolist()
    random_ids = tmp_path / "random.json"
    random_ids.write_text(json.dumps(document))
    assert main(["reconstruct", str(random_ids), "--steps", STEPS, "--seed", "5", "--out", str(tmp_path / "random")]) == 0
    assert _mean_psnr(tmp_path / "real", scenes) > _mean_psnr(tmp_path / "random", scenes) + 1.0


def test_tokenizer_found_in_every_checkpoint_layout(scenes, ddt_ids, tmp_path):
    """A run folder without the duplicate tokenizer/ (only decoder/tokenizer/) and a bare tokenizer folder give the
    shipped DDT's ids."""
    import shutil

    from hf_vtok.data.pretokenize import SHIPPED_CHECKPOINTS_DIR

    shutil.copytree(SHIPPED_CHECKPOINTS_DIR / "ddt" / "decoder", tmp_path / "run" / "decoder")
    expected = [record["ids"] for record in json.loads(ddt_ids.read_text())["images"]]
    for source in (tmp_path / "run", tmp_path / "run" / "decoder" / "tokenizer"):
        out = tmp_path / f"{source.name}.json"
        assert main(["tokenize", *scenes, "--tokenizer", str(source), "--out", str(out)]) == 0
        assert [record["ids"] for record in json.loads(out.read_text())["images"]] == expected
    assert main(["reconstruct", str(tmp_path / "run.json"), "--steps", "1", "--out", str(tmp_path / "out")]) == 0


def test_setok_embeddings_round_trip_through_safetensors(scenes, tmp_path):
    from hf_vtok.commands.tokenize import read_tokens

    for suffix in (".json", ".safetensors"):
        assert main(["tokenize", *scenes, "--tokenizer", "shipped:setok", "--out", str(tmp_path / f"tokens{suffix}")]) == 0
    as_json, as_safetensors = (read_tokens(str(tmp_path / f"tokens{suffix}")) for suffix in (".json", ".safetensors"))
    for a, b in zip(as_json["images"], as_safetensors["images"]):
        assert a["num_tokens"] == len(b["embeddings"]) > 1
        np.testing.assert_allclose(a["embeddings"], b["embeddings"], rtol=1e-6)
    assert main(["reconstruct", str(tmp_path / "tokens.safetensors"), "--steps", "1", "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "reconstruct.json").read_text())
    assert summary["decoder"] == "shipped:setok" and len(summary["images"]) == 2
    assert summary["guidance_scale"] == 3.0  # what the decoder drew with: SeTok's default, not None


def test_visualize_overlays_the_slot_maps(scenes, tmp_path):
    assert main(["visualize", *scenes, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "visualize.json").read_text())
    assert summary["model_type"] == "slot_qformer" and summary["kind"] == "token_maps"
    for source, entry in zip(scenes, summary["images"]):
        assert entry["num_groups"] >= 2
        overlay, plain = _pixels(tmp_path / entry["file"]), _pixels(source)
        changed = np.abs(overlay - plain).max(axis=-1) > 0.05
        assert changed.mean() > 0.3
    assert Image.open(tmp_path / summary["grid"]).size[0] > 2 * 64


def test_generate_writes_the_requested_images(tmp_path):
    prompt = "a small red circle left of a blue square"
    assert main(["generate", prompt, "--num-images", "2", "--steps", "2", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "generate.json").read_text())
    assert summary["prompts"] == [prompt] and prompt in summary["phrased_prompts"][0]
    assert [entry["prompt"] for entry in summary["images"]] == [prompt, prompt]
    images = [_pixels(tmp_path / entry["file"]) for entry in summary["images"]]
    assert len(images) == 2 and images[0].shape == (64, 64, 3)
    assert summary["images"][0]["token_ids"] != summary["images"][1]["token_ids"]  # two seeds, two samples


def test_describe_names_colours_of_the_scene(scenes, tmp_path, capsys):
    out = tmp_path / "captions.json"
    assert main(["describe", *scenes, "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["task"] == "captioning"
    texts = [result["text"] for result in summary["results"]]
    assert all(any(color in text.split() or f"{color}." in text for color in COLORS) for text in texts), texts
    assert f"{scenes[0]}: {texts[0]}" in capsys.readouterr().out
    assert main(["describe", scenes[0], "--question", "how many objects are there?", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["task"] == "qa" and "how many objects are there?" in summary["prompt"] and summary["results"][0]["text"]


@pytest.fixture(scope="module")
def setok_tokens(scenes, tmp_path_factory):
    path = tmp_path_factory.mktemp("setok") / "tokens.json"
    assert main(["tokenize", scenes[0], "--tokenizer", "shipped:setok", "--out", str(path)]) == 0
    return path


def _bad_inputs(scenes, ddt_ids, setok_tokens, tmp_path):
    out_of_range = json.loads(ddt_ids.read_text())
    out_of_range["images"][0]["ids"][3] = out_of_range["tokenizer"]["codebook_size"]
    (tmp_path / "out_of_range.json").write_text(json.dumps(out_of_range))
    (tmp_path / "junk.png").write_text("not an image")
    (tmp_path / "no_ids.json").write_text(json.dumps({"format": "hf_vtok.tokens/1", "images": [{"ids": [1]}, {"size": [64, 64]}]}))
    missing, out = str(tmp_path / "missing.png"), str(tmp_path / "out")
    return [
        (["tokenize", missing], "not a file"),
        (["tokenize", str(tmp_path / "junk.png")], "not a readable image"),
        (["tokenize", scenes[0], "--tokenizer", "shipped:vqgan"], "shipped: ['ddt'"),
        (["tokenize", scenes[0], "--out", str(tmp_path / "ids.txt")], "`--out` must end in .json"),
        (["reconstruct", str(setok_tokens), "--decoder", "shipped:ddt", "--out", out], "holds setok tokens"),
        (["reconstruct", str(tmp_path / "out_of_range.json"), "--out", out], "outside the codebook [0, 512)"),
        (["reconstruct", str(ddt_ids), "--max-tokens", "17", "--out", out], "at most the tokenizer's 16 tokens"),
        (["reconstruct", scenes[0], "--out", out], "written by `hf-vtok tokenize`"),
        (["reconstruct", str(tmp_path / "no_ids.json"), "--out", out], "image 1 has no ids list"),
        (["visualize", missing], "not a file"),
        (["visualize", scenes[0], "--tokenizer", "shipped:nothing"], "no checkpoint of that name"),
        (["generate", " ", "--out", out], "`PROMPT` must be non-empty"),
        (["describe", missing], "not a file"),
        (["describe", scenes[0], "--mllm", str(tmp_path / "nowhere")], "not a folder"),
        (["convert-dinov2", "--onnx", str(tmp_path / "missing.onnx"), "--output-dir", out], "missing.onnx"),
    ]


def test_bad_inputs_give_one_line_and_exit_status_2(scenes, ddt_ids, setok_tokens, tmp_path, capsys):
    capsys.readouterr()
    for argv, expected in _bad_inputs(scenes, ddt_ids, setok_tokens, tmp_path):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{argv[0]}: error:" if argv[0] == "convert-dinov2" else f"hf-vtok {argv[0]}: error:"), (argv, err)
        assert expected in lines[0], (argv, err)
    for argv in (["generate", "a red circle", "--num-images", "0"], ["reconstruct", "--steps", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"hf-vtok {argv[0]}: error: argument")
