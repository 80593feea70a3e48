"""Training at scale (issue 7): recipes, memory estimates, pre-tokenisation, MLLM training with TRL/PEFT, CLI.

Properties checked: every shipped recipe loads and carries the papers' optimiser/schedule/batch/precision values
(with a tiny twin per paper stage); ``estimate_memory`` equals a hand count on small configs and counts the paper
sizes; pre-tokenisation is batched, parallel (``num_proc``), identical to a direct ``encode``, resumable shard by
shard and refuses to mix runs; LoRA MLLM training packs text sequences, trains only the adapters and the new
visual rows (text rows bit-identical), and exports a folder that loads with the Auto classes and the generic
``DiffusionPipeline``; SeTok's continuous path trains its regression loss from pre-tokenised embeddings; the
``pretokenize`` / ``train-mllm`` CLI subcommands run the same code.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest
import torch

from hf_vtok.data.pretokenize import load_pretokenized, pretokenize_dataset
from hf_vtok.trainer.arguments import (
    PAPER_PROMPTS,
    RECIPES_DIR,
    MLLMArguments,
    MLLMModelConfig,
    MLLMTrainingArguments,
    finetuning_mode,
    list_recipes,
    parse_mllm_arguments,
    parse_tokenizer_arguments,
)
from hf_vtok.trainer.memory import estimate_memory
from hf_vtok.trainer.mllm_trainer import (
    ContinuousMLLMCollator,
    build_language_model,
    build_task_dataset,
    build_visual_tokenizer,
    train_mllm,
)

torch.set_num_threads(1)

TINY_PROMPTS = {
    "captioning": ["{image} describe the image", "{caption}"],
    "qa": ["{image} {question}", "{answer}"],
    "text_to_image": ["{caption} generate an image", "{image}"],
    "editing": ["{image} {instruction}", "{target}"],
}


@pytest.fixture(scope="module")
def shapes():
    from hf_vtok.data import generate_shapes_dataset

    return generate_shapes_dataset(10, image_size=64, style="flat", seed=0, progress=False)


@pytest.fixture(scope="module")
def ddt_folder(tmp_path_factory):
    """A tiny DDT tokenizer saved like `train-tokenizer` saves it (tokenizer/ with its image processor)."""
    tokenizer, image_processor, decoder = build_visual_tokenizer("random:ddt")
    folder = tmp_path_factory.mktemp("ddt_run")
    tokenizer.save_pretrained(folder / "tokenizer")
    image_processor.save_pretrained(folder / "tokenizer")
    decoder.save_pretrained(folder / "decoder")
    return folder, tokenizer, image_processor


# ------------------------------------------------------------------------------------------------ recipes
def test_every_recipe_loads_with_the_papers_values():
    for name in list_recipes("tokenizer"):
        parse_tokenizer_arguments(["--recipe", name, "--output_dir", "unused"])
    recipes = {name: parse_mllm_arguments(["--recipe", name, "--output_dir", "unused"]) for name in list_recipes("mllm")}
    mode = {name: finetuning_mode(model, script) for name, (script, _, model) in recipes.items()}
    # one tiny twin per paper stage, same stage and fine-tuning mode
    for name, (script, training, model) in recipes.items():
        if name.endswith("_paper"):
            twin_name = name.replace("_paper", "_tiny")
            twin_script, twin_training, twin_model = recipes[twin_name]
            assert (twin_script.stage, mode[twin_name]) == (script.stage, mode[name])
            assert twin_model.model_name_or_path == "tiny-llama" and twin_script.visual_tokenizer.startswith("random:")
            assert training.bf16 and not twin_training.bf16
    # Slot-MLLM appendix A.2, Table 6
    (_, pretrain, pretrain_model), (_, instruct, instruct_model) = recipes["slot_mllm_pretrain_paper"], recipes["slot_mllm_instruct_paper"]
    assert (mode["slot_mllm_pretrain_paper"], pretrain_model.lora_r, pretrain.learning_rate) == ("lora", 64, 3e-4)
    assert (pretrain.adam_beta1, pretrain.adam_beta2, pretrain.adam_epsilon, pretrain.weight_decay) == (0.9, 0.98, 1e-6, 0.05)
    assert (pretrain.warmup_steps, pretrain.max_steps, pretrain.gradient_accumulation_steps) == (0.03, 50000, 4)
    assert pretrain.per_device_train_batch_size == 20 + 20 + 5 and recipes["slot_mllm_pretrain_paper"][0].stage == "pretraining"
    assert (instruct_model.lora_r, instruct.learning_rate, instruct.adam_beta2, instruct.adam_epsilon) == (32, 1e-4, 0.95, 1e-5)
    assert (instruct.warmup_steps, instruct.max_steps, instruct.gradient_accumulation_steps) == (0.05, 50000, 1)
    # DDT-LLaMA Table 5: full fine-tuning, global batch 1280 / 256
    (_, ddt_pt, _), (_, ddt_ft, _) = recipes["ddt_llama_pretrain_paper"], recipes["ddt_llama_sft_paper"]
    assert mode["ddt_llama_pretrain_paper"] == mode["ddt_llama_sft_paper"] == "full"
    assert (ddt_pt.learning_rate, ddt_pt.warmup_steps, ddt_pt.max_steps) == (1e-4, 5000, 360000)
    assert recipes["ddt_llama_pretrain_paper"][0].prompt_dropout_prob == 0.1
    assert ddt_pt.per_device_train_batch_size * ddt_pt.gradient_accumulation_steps * 8 == 1280
    assert (ddt_ft.learning_rate, ddt_ft.warmup_steps, ddt_ft.max_steps) == (1e-5, 2000, 160000)
    assert ddt_ft.per_device_train_batch_size * ddt_ft.gradient_accumulation_steps * 8 == 256
    assert (ddt_pt.adam_beta2, ddt_pt.adam_epsilon, ddt_pt.weight_decay, ddt_pt.max_grad_norm) == (0.95, 1e-6, 0.05, 1.0)
    # SETOKIM Table 7
    (_, stage2, _), (_, stage3, _) = recipes["setok_mllm_stage2_paper"], recipes["setok_mllm_stage3_paper"]
    assert (stage2.learning_rate, stage2.weight_decay, stage2.warmup_steps, stage2.num_train_epochs, stage2.max_steps) == (4e-3, 1e-3, 0.1, 1.0, -1)
    assert (stage3.learning_rate, mode["setok_mllm_stage3_paper"], stage3.per_device_train_batch_size, stage3.max_length) == (5e-4, "lora", 32, 2048)
    assert mode["setok_mllm_stage2_paper"] == "partial"

    with pytest.raises(SystemExit):
        parse_mllm_arguments(["--recipe", "slot_mllm_instruct_tiny", "--output_dir", "x", "--use_peft", "qlora"])
    with pytest.raises(ValueError, match="use_peft"):
        finetuning_mode(MLLMModelConfig(use_peft=True), MLLMArguments(freeze_language_model=True))
    with pytest.raises(ValueError, match="task_mix"):
        MLLMArguments(stage="pretraining", task_mix={"qa": 1.0})
    with pytest.raises(ValueError, match="visual_tokenizer"):
        MLLMArguments(visual_tokenizer="random:vqgan")
    with pytest.raises(ValueError, match=r"ddt_tiny.yaml' has unknown fields \['config_overrides', 'family', 'preset'\]"):
        parse_mllm_arguments(["--recipe", str(RECIPES_DIR / "tokenizer" / "ddt_tiny.yaml"), "--output_dir", "x"])
    with pytest.raises(ValueError, match="recipe"):
        parse_mllm_arguments(["--recipe", "no_such_recipe", "--output_dir", "x"])


def test_invalid_recipes_and_flags_name_the_file_and_the_field(tmp_path, capsys):
    """One line on stderr and exit code 2: a missing file, invalid YAML, a list, an unknown field, another family's
    recipe, and `--max_steps -1` (which would otherwise train a whole epoch)."""
    from hf_vtok.commands.cli import main

    (tmp_path / "broken.yaml").write_text("max_steps: [1, 2\n")
    (tmp_path / "list.yaml").write_text("- max_steps: 3\n")
    (tmp_path / "unknown.yaml").write_text("family: ddt\nmax_stepz: 3\n")
    cases = {
        str(tmp_path / "missing.yaml"): "is not a file",
        str(tmp_path / "broken.yaml"): "broken.yaml' is not valid YAML/JSON",
        str(tmp_path / "list.yaml"): "list.yaml' must be a mapping of field names to values, got list",
        str(tmp_path / "unknown.yaml"): "unknown.yaml' has unknown fields ['max_stepz']",
        "setok_stage1_tiny": "setok_stage1_tiny.yaml' has `family` 'setok', but FAMILY is 'ddt'",
    }
    for recipe, message in cases.items():
        assert main(["train-tokenizer", "ddt", "--recipe", recipe, "--output-dir", str(tmp_path / "run")]) == 2
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1, error
    for flag in ("--max-steps", "--max_steps"):
        assert main(["train-mllm", "--recipe", "slot_mllm_instruct_tiny", "--output-dir", str(tmp_path / "run"), flag, "-1"]) == 2
        assert "`max_steps` must be a positive number of optimizer steps, got -1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------ memory
def test_estimate_memory_equals_a_hand_count():
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_vtok.trainer.memory import TransformerStack

    # one layer, 4 tokens, h = kv = 8, f = 32: per token 6h + 2kv + 2f = 128 (GELU) or + 4f = 192 (gated)
    assert TransformerStack("t", 1, 4, 8, 32).elements_per_layer() == 4 * 128
    assert TransformerStack("t", 1, 4, 8, 32, gated=True).elements_per_layer() == 4 * 192
    # cross-attention: + 4h per query token + 2 kv_ctx per context token
    assert TransformerStack("t", 1, 4, 8, 32, context_tokens=5).elements_per_layer() == 4 * 128 + 4 * 8 * 4 + 2 * 8 * 5

    config = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=False)
    per_layer = 16 * 16 + 16 * 8 + 16 * 8 + 16 * 16 + 3 * 16 * 32 + 2 * 16  # q k v o, gate up down, two RMSNorms
    parameters = 100 * 16 + 2 * per_layer + 16 + 100 * 16  # embeddings, layers, final norm, untied head
    buffers = sum(b.numel() * b.element_size() for b in LlamaForCausalLM(config).buffers())
    estimate = estimate_memory(config, batch_size=3, precision="bf16", sequence_length=10)
    assert estimate.parameters == estimate.trainable_parameters == parameters == 7888
    assert estimate.weights_bytes == 2 * parameters + buffers
    assert (estimate.gradients_bytes, estimate.optimizer_bytes) == (2 * parameters, 12 * parameters)
    per_token = 6 * 16 + 2 * 8 + 4 * 32  # SwiGLU
    activations = 3 * (2 * 10 * per_token * 2 + 10 * 100 * (2 + 4))  # layers in bf16 + logits (bf16 + fp32 copy)
    assert estimate.activations_bytes == activations
    assert estimate.total_bytes == estimate.weights_bytes + 14 * parameters + activations
    fp32 = estimate_memory(config, batch_size=3, precision="fp32", sequence_length=10)
    assert (fp32.weights_bytes - buffers, fp32.gradients_bytes, fp32.optimizer_bytes) == (4 * parameters, 4 * parameters, 8 * parameters)
    # LoRA rank 2 on q and v, plus 5 new rows of the embedding and the untied head
    lora = estimate_memory(config, 1, "bf16", sequence_length=10, finetuning="lora", lora_rank=2,
                           lora_target_modules=("q_proj", "v_proj"), new_token_rows=5)
    adapters = 2 * (2 * (16 + 16) + 2 * (16 + 8))
    assert lora.trainable_parameters == adapters + 5 * 16 * 2 and lora.parameters == parameters + adapters
    assert lora.optimizer_bytes == 12 * (adapters + 160)
    checkpointed = estimate_memory(config, 3, "bf16", sequence_length=10, activation_checkpointing=True)
    assert checkpointed.activations_bytes < estimate.activations_bytes
    with pytest.raises(ValueError, match="precision"):
        estimate_memory(config, 1, "int4")


def _saved_tensor_bytes(model, batch) -> int:
    """Bytes autograd keeps for backward (unique storages, parameters and buffers excluded)."""
    own = {t.data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    storages = {}

    def pack(tensor):
        if tensor.data_ptr() not in own:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**batch)
    return sum(storages.values())


def test_activation_estimate_matches_what_autograd_keeps(shapes):
    """The activation formula against the tensors autograd really saves (fp32, CPU): within -20 % / +50 %."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_vtok.mllm.processing_mllm import image_processor_for
    from hf_vtok.models.ddt import DDTTokenizerConfig, DDTTokenizerForPreTraining

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    ids = torch.randint(0, 1000, (2, 64))
    measured = _saved_tensor_bytes(LlamaForCausalLM(config), {"input_ids": ids, "labels": ids})
    ratio = measured / estimate_memory(config, 2, "fp32", sequence_length=64).activations_bytes
    assert 0.8 < ratio < 1.5, ratio
    ddt = DDTTokenizerConfig.tiny()
    model = DDTTokenizerForPreTraining(ddt).train()
    processor = image_processor_for(ddt)
    pixel_values = processor([shapes[i]["image"] for i in range(4)], return_tensors="pt").pixel_values
    measured = _saved_tensor_bytes(model, {"pixel_values": pixel_values})
    ratio = measured / estimate_memory(ddt, 4, "fp32").activations_bytes
    assert 0.8 < ratio < 1.5, ratio


def test_estimate_memory_at_paper_size():
    from hf_vtok.models.ddt import DDTTokenizerConfig
    from hf_vtok.models.setok import SeTokConfig
    from hf_vtok.models.slot_qformer import SlotQFormerConfig
    from hf_vtok.trainer.memory import paper_language_model_config

    ddt = estimate_memory(DDTTokenizerConfig(), 32, "bf16")
    assert ddt.parameters == 2_048_777_040  # docs/ddt.md
    assert ddt.trainable_parameters == ddt.parameters - 65536 * 16  # the EMA codebook takes no gradient
    assert set(ddt.activations_per_component) and ddt.activations_bytes > 0
    setok1, setok2 = estimate_memory(SeTokConfig(), 32, "bf16", stage=1), estimate_memory(SeTokConfig(), 32, "bf16", stage=2)
    assert setok1.parameters == 2_060_487_851 and setok2.trainable_parameters > setok1.trainable_parameters
    assert any("vision encoder" in name for name in setok2.activations_per_component)
    slot1 = estimate_memory(SlotQFormerConfig(), 128, "bf16", stage=1)
    slot2 = estimate_memory(SlotQFormerConfig(), 128, "bf16", stage=2)
    assert slot2.trainable_parameters < slot1.trainable_parameters < slot1.parameters
    llama = paper_language_model_config("llama-3-8b")
    llama.vocab_size = 128256 + 65539
    full = estimate_memory(llama, 20, "bf16", sequence_length=2048, activation_checkpointing=True)
    assert 8.5e9 < full.parameters < 8.6e9 and full.states_bytes == 16 * full.parameters + (full.weights_bytes - 2 * full.parameters)
    assert full.sharded(8, stage=3) < full.gib()


# ------------------------------------------------------------------------------------------------ pre-tokenisation
def test_pretokenize_is_batched_parallel_and_resumable(ddt_folder, shapes, tmp_path):
    folder, tokenizer, image_processor = ddt_folder
    out = tmp_path / "ids"
    result = pretokenize_dataset(folder, shapes, out, batch_size=3, shard_size=4, progress=False)
    assert (result.num_shards, result.shards_written, result.shards_skipped) == (3, [0, 1, 2], [])
    data = load_pretokenized(out)
    expected = tokenizer.encode(image_processor([shapes[i]["image"] for i in range(10)], return_tensors="pt").pixel_values).ids
    assert torch.equal(torch.tensor(data["image_ids"]), expected)
    assert "image" not in data.column_names and "mask" not in data.column_names and data[0]["caption"] == shapes[0]["caption"]
    assert len(data[0]["edit_image_ids"]) == 16 or data[0]["edit_image_ids"] is None

    # killed after shard 0: the rerun writes only the missing shards
    (out / "shard-00001.parquet").unlink()
    (out / "shard-00002.parquet").unlink()
    manifest = json.loads((out / "pretokenize.json").read_text())
    (out / "pretokenize.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(ValueError, match="unfinished"):
        load_pretokenized(out)
    again = pretokenize_dataset(folder, shapes, out, batch_size=3, shard_size=4, progress=False)
    assert (again.shards_written, again.shards_skipped) == ([1, 2], [0])
    assert load_pretokenized(out)["image_ids"] == data["image_ids"]

    # two worker processes give the same ids
    parallel = pretokenize_dataset(tokenizer, shapes.select(range(6)), tmp_path / "parallel", image_processor=image_processor,
                                   num_proc=2, batch_size=2, shard_size=6, progress=False)
    assert parallel.shards_written == [0]
    assert load_pretokenized(tmp_path / "parallel")["image_ids"] == data["image_ids"][:6]

    # another tokenizer's run in the same folder is refused
    other = type(tokenizer)(tokenizer.config)
    with pytest.raises(ValueError, match="out_dir"):
        pretokenize_dataset(other, shapes, out, image_processor=image_processor, shard_size=4, progress=False)
    with pytest.raises(ValueError, match="image_columns"):
        pretokenize_dataset(tokenizer, shapes, tmp_path / "bad", image_columns=["photo"], progress=False)
    with pytest.raises(TypeError, match="tokenizer"):
        pretokenize_dataset(42, shapes, tmp_path / "bad", progress=False)


def test_continuous_tokens_are_stored_as_embeddings(shapes, tmp_path):
    tokenizer, image_processor, _ = build_visual_tokenizer("random:setok")
    pretokenize_dataset(tokenizer, shapes.select(range(3)), tmp_path, image_processor=image_processor, image_columns=["image"],
                        progress=False)
    data = load_pretokenized(tmp_path)
    tokens = tokenizer.encode(image_processor([shapes[i]["image"] for i in range(3)], return_tensors="pt").pixel_values)
    assert data["image_num_tokens"] == tokens.attention_mask.sum(-1).tolist()
    first = torch.tensor(data[0]["image_embeddings"])
    assert torch.allclose(first, tokens.embeddings[0, : first.shape[0]], atol=1e-6)


# ------------------------------------------------------------------------------------------------ MLLM training
def _tiny_arguments(output_dir, **overrides):
    """``(MLLMArguments, MLLMTrainingArguments, MLLMModelConfig)`` of a tiny LoRA run; overrides go to their class."""
    values = {
        "stage": "instruction", "visual_tokenizer": "random:ddt", "num_train_images": 24, "max_steps": 8,
        "per_device_train_batch_size": 4, "learning_rate": 3e-3, "use_peft": True, "lora_r": 4, "lora_alpha": 8,
        "lora_dropout": 0.0, "logging_steps": 1, "max_length": 256, "prompt_templates": TINY_PROMPTS, "warmup_steps": 0,
        "output_dir": str(output_dir), **overrides,
    }  # fmt: skip
    classes = (MLLMArguments, MLLMTrainingArguments, MLLMModelConfig)
    names = [{f.name for f in dataclasses.fields(cls)} for cls in classes]
    return tuple(cls(**{k: v for k, v in values.items() if k in fields}) for cls, fields in zip(classes, names))


def test_lora_mllm_training_packs_text_and_trains_only_new_rows(tmp_path, shapes):
    from diffusers import DiffusionPipeline
    from transformers import AutoModelForImageTextToText, AutoProcessor

    script_args, training_args, model_args = _tiny_arguments(tmp_path)
    base, text_tokenizer = build_language_model(script_args, model_args, training_args.seed)  # the LM train_mllm starts from
    offset = len(text_tokenizer)
    _, trainer, summary = train_mllm(script_args, training_args, model_args)
    assert summary["last_loss"] < 0.95 * summary["first_loss"], summary
    assert set(summary["task_counts"]) == {"captioning", "qa", "text_to_image", "editing"}
    # packing: several short examples per row of max_length tokens
    assert len(trainer.train_dataset) < summary["num_examples"] and "seq_lengths" in trainer.train_dataset.column_names
    # ... and the packed examples do not see each other: TRL's padding-free batches restart position_ids and carry
    # no attention mask, and the model (in train mode, as the Trainer runs it) then masks attention per example
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert "position_ids" in batch and batch.get("attention_mask") is None
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) >= 2
    model = trainer.model.train()
    second = slice(starts[1], starts[2] if len(starts) > 2 else None)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0, second]
        alone = model(input_ids=batch["input_ids"][:, second]).logits[0]
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-4)
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and set(adapter["trainable_token_indices"]) == {"embed_tokens", "lm_head"}
    # the merged export: text rows bit-identical to the base LM, visual rows trained
    exported = AutoModelForImageTextToText.from_pretrained(tmp_path / "mllm")
    embeddings = exported.get_input_embeddings().weight
    assert torch.equal(embeddings[:offset], base.get_input_embeddings().weight)
    assert torch.equal(exported.lm_head.weight[:offset], base.lm_head.weight)
    processor = AutoProcessor.from_pretrained(tmp_path / "mllm")
    assert processor.visual_token_offset == offset
    recipe_json = json.loads((tmp_path / "recipe.json").read_text())
    assert recipe_json["recipe"]["lora_r"] == 4 and recipe_json["global_step"] == 8
    # the folder is a text-to-image pipeline for the generic loader (no remote code)
    pipe = DiffusionPipeline.from_pretrained(tmp_path)
    out = pipe("a red circle", seed=0, num_inference_steps=1, output_type="np")
    assert type(pipe).__name__ == "VTokTextToImagePipeline" and out.images.shape == (1, 64, 64, 3)


def test_task_dataset_templates_and_caption_dropout(shapes, ddt_folder, tmp_path):
    from hf_vtok.trainer.mllm_trainer import build_mllm

    _, processor, _ = build_mllm(_tiny_arguments(tmp_path)[0])
    pretokenize_dataset(ddt_folder[1], shapes, tmp_path, image_processor=processor.image_processor, progress=False)
    data = load_pretokenized(tmp_path)
    script_args = _tiny_arguments(tmp_path, stage="pretraining", task_mix={"text_to_image": 1.0}, prompt_dropout_prob=0.5,
                                  randomize_modality_order=False, num_examples=40)[0]
    examples = build_task_dataset(script_args, data, processor)
    texts = examples["text"]
    dropped = [t for t in texts if t.startswith(processor.boi_token)]
    assert 8 < len(dropped) < 32  # about half lose their caption: the unconditional sequences of guidance
    kept = next(t for t in texts if not t.startswith(processor.boi_token))
    assert kept.endswith(processor.eoi_token) and len(processor.text_to_ids(kept)[0]) == 16
    instruction = build_task_dataset(_tiny_arguments(tmp_path, prompt_templates=PAPER_PROMPTS, num_examples=12)[0], data, processor)
    assert all(p.startswith("USER:") and p.rstrip().endswith("ASSISTANT:") for p in instruction["prompt"])
    assert "Please generate an image." in " ".join(instruction["prompt"])


def test_runs_without_caption_dropout_draw_without_guidance(tmp_path):
    """Guidance needs the unconditional branch that caption dropout trains; without it the exported model draws at 1."""
    from hf_vtok.mllm import VTokMLLMConfig
    from hf_vtok.trainer.mllm_trainer import build_mllm

    default = VTokMLLMConfig.image_guidance_scale
    assert build_mllm(_tiny_arguments(tmp_path)[0])[0].config.image_guidance_scale == 1.0
    assert build_mllm(_tiny_arguments(tmp_path, prompt_dropout_prob=0.1)[0])[0].config.image_guidance_scale == default
    understanding_only = _tiny_arguments(tmp_path, task_mix={"qa": 1.0, "captioning": 1.0})[0]
    assert build_mllm(understanding_only)[0].config.image_guidance_scale == default  # nothing drawn: nothing to decide


def test_question_type_weights_choose_the_questions_qa_examples_ask(shapes, ddt_folder, tmp_path):
    """Weights pick a row's question by its type: weight 0 never asked, a heavy type asked most; none = uniform."""
    from hf_vtok.data.shapes import QUESTION_TYPES
    from hf_vtok.trainer.mllm_trainer import build_mllm

    _, processor, _ = build_mllm(_tiny_arguments(tmp_path)[0])
    pretokenize_dataset(ddt_folder[1], shapes, tmp_path, image_processor=processor.image_processor, progress=False)
    data = load_pretokenized(tmp_path)
    assert {q["type"] for row in data for q in row["questions"]} <= set(QUESTION_TYPES)
    kinds = {q["question"]: q["type"] for row in data for q in row["questions"]}

    def asked(**overrides):
        args = _tiny_arguments(tmp_path, prompt_templates={"qa": ["{image} {question}", "{answer}"]}, task_mix={"qa": 1.0},
                               num_examples=120, **overrides)[0]
        prompts = build_task_dataset(args, data, processor)["prompt"]
        return Counter(kinds[next(q for q in kinds if q in prompt)] for prompt in prompts)

    uniform = asked()
    assert uniform["position"] < 0.4 * sum(uniform.values()) and uniform["count"] > 0
    weighted = asked(question_type_weights={"position": 20.0, "count": 0.0})
    assert weighted["count"] == 0 and weighted["position"] > 0.6 * sum(weighted.values())
    assert weighted["position"] > 2 * uniform["position"]
    with pytest.raises(ValueError, match="question_type_weights key"):
        _tiny_arguments(tmp_path, question_type_weights={"colour": 2.0})
    with pytest.raises(ValueError, match="positive weight"):
        _tiny_arguments(tmp_path, question_type_weights=dict.fromkeys(QUESTION_TYPES, 0.0))
    assert _tiny_arguments(tmp_path, question_type_weights='{"position": 3}')[0].question_type_weights == {"position": 3}


def test_setok_mllm_trains_its_regression_loss_from_stored_embeddings(tmp_path):
    arguments = _tiny_arguments(tmp_path, visual_tokenizer="random:setok", stage="pretraining", use_peft=False,
                                freeze_language_model=True, num_train_images=8, max_steps=2,
                                task_mix={"captioning": 1.0, "text_to_image": 1.0})
    model, trainer, summary = train_mllm(*arguments)
    rows = 3 * 64 * 2  # <boi>, <eoi>, <image> rows of the embedding and the untied head
    projector = sum(p.numel() for p in model.base_model.model.model.projector.parameters())
    head = sum(p.numel() for p in model.base_model.model.regression_head.parameters())
    assert summary["trainable_parameters"] == rows + projector + head
    collator = trainer.data_collator
    assert isinstance(collator, ContinuousMLLMCollator)
    generation = [row for row in trainer.train_dataset if row["task"] == "text_to_image"][:2]
    batch = collator(generation)
    assert batch["visual_embeddings"].shape[-1] == 32 and int(batch["visual_attention_mask"].sum()) == sum(
        len(row["embeddings"][0]) for row in generation)
    from hf_vtok.utils.modeling_utils import VisualTokens

    visual = VisualTokens(embeddings=batch.pop("visual_embeddings"), attention_mask=batch.pop("visual_attention_mask"))
    out = model(**batch, visual_tokens=visual)
    assert out.regression_loss is not None and torch.isfinite(out.loss)


def test_shapes_source_is_rendered_at_the_tokenizer_resolution(monkeypatch, tmp_path):
    """A 128 px tokenizer pre-tokenises 128 px scenes, not 64 px ones upsampled by its image processor."""
    from hf_vtok.data import pretokenize
    from hf_vtok.data.pretokenize import dataset_from_source
    from hf_vtok.models.ddt import DDTTokenizerConfig, DDTTokenizerModel

    assert dataset_from_source("shapes:2:flat:3", image_size=128)[0]["image"].size == (128, 128)
    assert dataset_from_source("shapes:2")[0]["image"].size == (64, 64)
    with pytest.raises(ValueError, match="image_size"):
        dataset_from_source("shapes:2", image_size=0)

    seen = []
    real = pretokenize.dataset_from_source
    monkeypatch.setattr(pretokenize, "dataset_from_source", lambda *a, **k: seen.append(k["image_size"]) or real(*a, **k))
    tokenizer = DDTTokenizerModel(DDTTokenizerConfig.tiny(image_size=32, patch_size=8)).eval()
    pretokenize.pretokenize_dataset(tokenizer, "shapes:2", tmp_path / "ids", progress=False)
    assert seen == [32]


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_pretokenize_train_mllm_and_push(ddt_folder, tmp_path, capsys):
    from hf_vtok.commands.cli import main

    folder = ddt_folder[0]
    assert main(["pretokenize", "--tokenizer", str(folder), "--dataset", "shapes:6", "--out", str(tmp_path / "ids"),
                 "--shard-size", "4", "--batch-size", "3"]) == 0
    assert "6 rows in 2 shard(s)" in capsys.readouterr().out
    assert main(["train-mllm", "--recipe", "ddt_llama_pretrain_tiny", "--output-dir", str(tmp_path / "run"),
                 "--visual-tokenizer", str(folder), "--dataset", str(tmp_path / "ids"), "--max-steps", "2",
                 "--batch-size", "2"]) == 0
    assert (tmp_path / "run" / "mllm" / "model.safetensors").is_file() and (tmp_path / "run" / "decoder").is_dir()
    # the run records what the folder holds, not only its local path, and the model card says it
    provenance = json.loads((tmp_path / "run" / "recipe.json").read_text())["pretokenized_from"]
    assert provenance["source"] == "shapes:6" and provenance["num_rows"] == 6
    assert main(["push", str(tmp_path / "run"), "--repo-id", "me/tiny-ddt-llama", "--dry-run",
                 "--staging-dir", str(tmp_path / "staged")]) == 0
    assert "Dataset: `shapes:6`, pre-tokenised once" in (tmp_path / "staged" / "README.md").read_text()
    printed = capsys.readouterr().out
    assert "would upload" in printed and "mllm/model.safetensors" in printed and "checkpoints" not in printed.split("kept local")[0]
    assert main(["pretokenize", "--tokenizer", str(tmp_path), "--dataset", "shapes:2", "--out", str(tmp_path / "x")]) == 2


def test_held_out_token_maps_are_logged_while_a_tokenizer_trains(tmp_path, capsys):
    """--eval-steps: FG-ARI / mIoU / token counts of held-out scenes land in the log and in recipe.json."""
    from hf_vtok.commands.cli import main

    code = main(["train-tokenizer", "setok", "--recipe", "setok_stage1_tiny", "--max-steps", "4", "--num-train-images", "16",
                 "--batch-size", "8", "--eval-steps", "2", "--output-dir", str(tmp_path)])
    assert code == 0
    held_out = json.loads((tmp_path / "recipe.json").read_text())["held_out"]
    assert [entry["step"] for entry in held_out] == [2, 4]
    for entry in held_out:
        assert 0.0 <= entry["eval_fg_ari"] <= 1.0 and 0.0 <= entry["eval_miou"] <= 1.0
        assert 1.0 <= entry["eval_mean_tokens"] <= 17.0  # varies per image: up to 16 clusters + the remainder
    assert "[held-out, step 4]" in capsys.readouterr().out
    with pytest.raises(ValueError, match="eval_steps"):
        parse_tokenizer_arguments(["--recipe", "setok_stage1_tiny", "--output_dir", str(tmp_path), "--eval_steps", "-1"])


def test_held_out_callback_builds_its_scenes_only_on_the_main_process():
    """Other ranks of a multi-process run never render the held-out scenes; bad settings fail at construction."""
    from types import SimpleNamespace

    from hf_vtok.models.setok import SeTokImageProcessor
    from hf_vtok.trainer.tokenizer_trainer import HeldOutTokenMapsCallback

    callback = HeldOutTokenMapsCallback(SeTokImageProcessor(), 32, eval_steps=1, num_images=2)
    other_rank = SimpleNamespace(is_world_process_zero=False, global_step=1, max_steps=1)
    callback.on_step_end(None, other_rank, None, model=torch.nn.Module())
    assert "dataset" not in vars(callback)  # never rendered
    assert len(callback.dataset) == 2 and callback.dataset[0]["image"].size == (32, 32)
    with pytest.raises(ValueError, match="style"):
        HeldOutTokenMapsCallback(SeTokImageProcessor(), 32, eval_steps=1, style="photo")
    with pytest.raises(ValueError, match="eval_steps"):
        HeldOutTokenMapsCallback(SeTokImageProcessor(), 32, eval_steps=0)


# ------------------------------------------------------------------------------------------------ any Trainer / TRL flag
def test_a_trl_flag_nobody_mentions_works_from_a_recipe_and_the_command_line(tmp_path):
    """`neftune_noise_alpha` (SFTConfig) is not named anywhere in hf_vtok: set in a recipe or as a flag it reaches the
    SFTTrainer and changes training (NEFTune's embedding noise); both ways give the same run, unlike alpha unset."""
    from hf_vtok.commands.cli import main

    recipe = tmp_path / "neftune.yaml"
    recipe.write_text((RECIPES_DIR / "mllm" / "ddt_llama_pretrain_tiny.yaml").read_text() + "neftune_noise_alpha: 5\n")
    common = ["--num_train_images", "8", "--max_steps", "2", "--per_device_train_batch_size", "4", "--logging_steps", "1"]
    runs = {
        "plain": ["--recipe", "ddt_llama_pretrain_tiny"],
        "recipe": ["--recipe", str(recipe)],
        "flag": ["--recipe", "ddt_llama_pretrain_tiny", "--neftune_noise_alpha", "5"],
    }
    summaries = {}
    for name, argv in runs.items():
        assert main(["train-mllm", *argv, *common, "--output_dir", str(tmp_path / name)]) == 0
        summaries[name] = json.loads((tmp_path / name / "recipe.json").read_text())
    assert "neftune_noise_alpha" not in summaries["plain"]["recipe"]
    assert summaries["recipe"]["recipe"]["neftune_noise_alpha"] == summaries["flag"]["recipe"]["neftune_noise_alpha"] == 5
    assert summaries["recipe"]["first_loss"] == summaries["flag"]["first_loss"]  # deterministic: same alpha, same run
    assert summaries["flag"]["first_loss"] != summaries["plain"]["first_loss"]  # the noisy embeddings change the loss


def test_a_training_arguments_flag_nobody_mentions_reaches_the_tokenizer_trainer(tmp_path):
    """`--adam_beta2` (TrainingArguments) is not named anywhere in hf_vtok: it sets AdamW's beta2 and changes the weights."""
    from hf_vtok.trainer.tokenizer_trainer import train_tokenizer

    def run(name, *flags):
        argv = ["--recipe", "ddt_tiny", "--output_dir", str(tmp_path / name), "--max_steps", "2", "--num_train_images", "8",
                "--batch-size", "4", *flags]  # fmt: skip
        model, trainer = train_tokenizer(*parse_tokenizer_arguments(argv))
        return trainer.optimizer.param_groups[0]["betas"], model.state_dict()

    default_betas, default_weights = run("default")
    betas, weights = run("beta2", "--adam_beta2", "0.5")
    assert default_betas == (0.9, 0.999) and betas == (0.9, 0.5)
    assert any(not torch.equal(weights[name], default_weights[name]) for name in weights)


def test_visual_rows_learn_at_their_own_rate(tmp_path):
    # Adam's first step moves every element by about its group's learning rate (warm-up off), so with the rows at
    # 100x the adapters' rate their largest first update is about 100x the adapters' largest
    script_args, training_args, model_args = _tiny_arguments(tmp_path, learning_rate=1e-4, visual_rows_learning_rate=1e-2,
                                                             max_steps=1, num_train_images=8)
    from hf_vtok.trainer.mllm_trainer import apply_finetuning, build_mllm

    model, processor, _ = build_mllm(script_args, model_args, training_args.seed)
    before = {n: p.detach().clone() for n, p in apply_finetuning(model, processor, script_args, model_args).named_parameters()
              if p.requires_grad}
    trained, trainer, _ = train_mllm(script_args, training_args, model_args)
    groups = {group.get("name"): group for group in trainer.optimizer.param_groups}
    assert groups["visual_rows"]["initial_lr"] == pytest.approx(1e-2)  # the scheduler scales it from there
    steps = {n: (p.detach() - before[n]).abs().max().item() for n, p in trained.named_parameters() if n in before}
    rows = max(v for n, v in steps.items() if "trainable_tokens_delta" in n)
    adapters = max(v for n, v in steps.items() if "lora_" in n)
    assert 30 < rows / adapters < 300, (rows, adapters)
    # full fine-tuning has no separate rows to give a rate
    with pytest.raises(ValueError, match="visual_rows_learning_rate"):
        train_mllm(*_tiny_arguments(tmp_path / "full", use_peft=False, visual_rows_learning_rate=1e-2, max_steps=1))
    with pytest.raises(ValueError, match="visual_rows_learning_rate"):
        _tiny_arguments(tmp_path, visual_rows_learning_rate=0.0)


def test_per_example_loss_gives_a_one_word_answer_the_weight_of_an_image():
    from hf_vtok.trainer.mllm_trainer import per_example_loss

    # one packed row: example A (positions 0-2) ends in a one-token answer, example B (positions 3-9) in five targets
    labels = torch.tensor([[-100, -100, 7, -100, -100, 1, 2, 3, 4, 5]])
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 5, 6]])
    logits = torch.randn(1, 10, 11, generator=torch.Generator().manual_seed(0), requires_grad=True)

    def grads(loss_fn):
        logits.grad = None
        loss_fn().backward()
        return logits.grad[0].abs().sum(-1)  # how hard each position is pushed

    token = grads(lambda: torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100))
    example = grads(lambda: per_example_loss(logits, labels, position_ids))
    # the answer (predicted at position 1) weighs 1/6 of the token mean but 1/2 of the example mean; B's tokens 1/10
    torch.testing.assert_close(example[1] / token[1], torch.tensor(6 / 2))
    torch.testing.assert_close(example[5] / token[5], torch.tensor(6 / 10))
    # without packing each row is one example; equal lengths give the token mean back
    rows = torch.tensor([[-100, 1, 2], [-100, 3, 4]])
    two = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(1))
    expected = torch.nn.functional.cross_entropy(two[:, :-1].reshape(-1, 11), rows[:, 1:].reshape(-1))
    torch.testing.assert_close(per_example_loss(two, rows), expected)


def test_training_with_per_example_loss(tmp_path):
    script_args, training_args, model_args = _tiny_arguments(tmp_path, loss_normalization="example", gradient_accumulation_steps=2)
    _, trainer, summary = train_mllm(script_args, training_args, model_args)
    assert trainer.loss_is_scaled_for_ga is False and summary["recipe"]["loss_normalization"] == "example"
    assert summary["last_loss"] < 0.95 * summary["first_loss"], summary
    with pytest.raises(ValueError, match="loss_normalization"):
        train_mllm(*_tiny_arguments(tmp_path / "setok", visual_tokenizer="random:setok", stage="pretraining", use_peft=False,
                                    freeze_language_model=True, loss_normalization="example", max_steps=1,
                                    task_mix={"captioning": 1.0}))


def test_resuming_a_finished_run_exports_its_checkpoint_without_training_further(tmp_path):
    # transformers, resuming mid-epoch at max_steps, trains one more step; exporting a finished checkpoint must not
    from safetensors.torch import load_file

    settings = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2, "num_train_images": 96}
    train_mllm(*_tiny_arguments(tmp_path, **settings))
    checkpoint = load_file(tmp_path / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors")
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    _, trainer, summary = train_mllm(*_tiny_arguments(tmp_path, resume_from_checkpoint="last", **settings))
    exported = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert summary["global_step"] == trainer.state.global_step == 4
    assert all(torch.equal(exported[key], checkpoint[key]) for key in checkpoint)
    assert summary["last_loss"] == [e for e in trainer.state.log_history if "loss" in e][-1]["loss"]


def test_a_time_budget_stops_with_a_checkpoint_and_resume_goes_on_to_max_steps(tmp_path):
    # --max_train_seconds: a session of fixed length ends with a saved, exported run instead of a killed one
    settings = {"max_steps": 3, "save_strategy": "steps", "save_steps": 100, "num_train_images": 48}
    _, trainer, summary = train_mllm(*_tiny_arguments(tmp_path, max_train_seconds=1e-9, **settings))
    assert summary["global_step"] == trainer.state.global_step == 1 and summary["stopped_by_time_budget_at"] == 1
    assert (tmp_path / "checkpoints" / "checkpoint-1").is_dir()  # saved although save_steps is 100
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert "max_train_seconds" not in summary["recipe"]  # a property of the session, not of the model
    _, trainer, summary = train_mllm(*_tiny_arguments(tmp_path, resume_from_checkpoint="last", **settings))
    assert summary["global_step"] == 3 and summary["stopped_by_time_budget_at"] is None
    with pytest.raises(ValueError, match="max_train_seconds"):
        _tiny_arguments(tmp_path, max_train_seconds=0)


def test_a_time_budget_stop_of_a_tokenizer_run_is_recorded_in_its_recipe(tmp_path):
    # the exported recipe.json says how far a run lent a fixed time got, as the MLLM's does
    from hf_vtok.trainer.arguments import parse_tokenizer_arguments
    from hf_vtok.trainer.tokenizer_trainer import train_tokenizer

    def run(*extra):
        argv = ["--recipe", "ddt_tiny", "--num_train_images", "4", "--per_device_train_batch_size", "2", "--max_steps", "2",
                "--save_strategy", "no", "--report_to", "none", "--output_dir", str(tmp_path), *extra]  # fmt: skip
        train_tokenizer(*parse_tokenizer_arguments(argv))
        return json.loads((tmp_path / "recipe.json").read_text())

    stopped = run("--max_train_seconds", "1e-9")
    assert stopped["global_step"] == 1 and stopped["stopped_by_time_budget_at"] == 1
    finished = run()
    assert finished["global_step"] == 2 and finished["stopped_by_time_budget_at"] is None
