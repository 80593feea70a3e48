"""Slot Q-Former: the paper's properties (Slot-MLLM §2.1, appendix A.1) on tiny models, plus the
common contract (Auto round trip, paper-size build on meta, input validation, training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import hf_vtok  # noqa: F401  (registers the Auto classes)
from hf_vtok.models.slot_qformer import (
    SlotQFormerConfig,
    SlotQFormerForPreTraining,
    SlotQFormerImageProcessor,
    SlotQFormerImageProcessorPil,
    SlotQFormerModel,
)

COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 70, 220), "yellow": (230, 220, 40)}


def make_scenes(num: int, seed: int = 0, size: int = 64):
    """Small synthetic scenes (1-3 coloured squares/circles) with captions."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(num):
        canvas = np.full((size, size, 3), 30 + rng.integers(0, 40), dtype=np.uint8)
        words = []
        for _ in range(rng.integers(1, 4)):
            name = list(COLORS)[rng.integers(0, len(COLORS))]
            shape = ["square", "circle"][rng.integers(0, 2)]
            cx, cy, r = rng.integers(12, size - 12), rng.integers(12, size - 12), rng.integers(5, 11)
            if shape == "square":
                mask = (abs(xx - cx) <= r) & (abs(yy - cy) <= r)
            else:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            canvas[mask] = COLORS[name]
            words.append(f"a {name} {shape}")
        images.append(Image.fromarray(canvas))
        captions.append(" and ".join(words))
    return images, captions


def make_text_tokenizer(captions):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[DEC]": 2, "[SEP]": 3}
    for caption in captions + ["a red green blue yellow square circle and"]:
        for word in caption.split():
            vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", bos_token="[DEC]", eos_token="[SEP]"
    )


@pytest.fixture(scope="module")
def data():
    images, captions = make_scenes(8)
    config = SlotQFormerConfig.tiny()
    processor = SlotQFormerImageProcessor.from_tokenizer_config(config)
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]
    tokenizer = make_text_tokenizer(captions)
    assert len(tokenizer) <= config.vocab_size
    text = tokenizer(["[DEC] " + c + " [SEP]" for c in captions], padding=True, return_tensors="pt")
    return {"images": images, "pixel_values": pixel_values, "input_ids": text["input_ids"], "attention_mask": text["attention_mask"]}


def _step(model, optimizer, batch, seed=0):
    torch.manual_seed(seed)  # same noise, timesteps, dropout masks and slot noise at every step
    output = model(**batch)
    optimizer.zero_grad()
    output.loss.backward()
    optimizer.step()
    return output


@pytest.fixture(scope="module")
def trained(data):
    """A tiny Slot Q-Former after a few steps of stage 1 (60) and stage 2 (8): image-dependent ids."""
    torch.manual_seed(0)
    model = SlotQFormerForPreTraining(SlotQFormerConfig.tiny()).train()
    batch = {k: data[k] for k in ("pixel_values", "input_ids", "attention_mask")}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for step in range(60):
        _step(model, optimizer, batch, seed=step)
    model.set_stage(2)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for step in range(8):
        _step(model, optimizer, {"pixel_values": data["pixel_values"]}, seed=step)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer_model(trained):
    return trained.tokenizer.eval()


# ---------------------------------------------------------------------------------------- config
def test_config_paper_defaults():
    config = SlotQFormerConfig()
    assert (config.num_slots, config.hidden_size, config.num_hidden_layers) == (32, 768, 12)
    assert config.slot_attention_layers == [0, 2, 4, 6, 8, 10]
    assert config.slot_iterations == 3 and config.image_size == 448
    assert (config.codebook_size, config.codebook_dim, config.rvq_depths, config.shared_codebook) == (8192, 32, 4, True)
    assert config.num_visual_tokens == 128 and config.token_order == "slot_major"
    assert config.vision_config.model_type == "dinov2" and config.vision_config.hidden_size == 1024
    assert config.teacher_config.model_type == "clip_vision_model" and config.teacher_config.projection_dim == 1024
    assert (config.slot_attention_key_scale, config.slot_init, config.slot_softmax) == ("head_dim", "gaussian", "slots")
    stage1 = (config.contrastive_loss_weight, config.text_generation_loss_weight, config.diffusion_loss_weight, config.global_mse_loss_weight)
    stage2 = (config.reconstruction_loss_weight, config.commitment_loss_weight, config.stage2_diffusion_loss_weight, config.stage2_global_mse_loss_weight)
    assert stage1 == (0.5, 0.5, 1.0, 0.5) and stage2 == (1.0, 1.0, 0.1, 0.1)
    assert config.vocab_size == 30522 and config.token_embedding_dim == 768
    # ids go through the RVQ and rebuild block, which only stage 2 trains: a stage-1 config says so (hf-vtok eval warns)
    assert "stage 2" in config.untrained_token_parts and SlotQFormerConfig(stage=2).untrained_token_parts is None


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"slot_init": "noise"}, "slot_init"),
        ({"slot_softmax": "patches"}, "slot_softmax"),
        ({"slot_attention_key_scale": "x"}, "slot_attention_key_scale"),
        ({"slot_attention_layers": [0, 5]}, "slot_attention_layers"),
        ({"num_slots": 0}, "num_slots"),
        ({"token_order": "recursive"}, "token_order"),
        ({"stage": 3}, "stage"),
        ({"hidden_size": 30}, "hidden_size"),
        ({"decoder_config": {"unet": {"cross_attention_dim": 8}}}, "cross_attention_dim"),
    ],
)
def test_config_validation(overrides, field):
    with pytest.raises((ValueError, TypeError), match=field):
        SlotQFormerConfig.tiny(**overrides)


# ---------------------------------------------------------------------------------------- paper properties
def test_encode_shapes_and_slot_competition(tokenizer_model, data):
    config = tokenizer_model.config
    with torch.no_grad():
        tokens = tokenizer_model.encode(data["pixel_values"][:4])
    assert tokens.ids.shape == (4, config.num_visual_tokens) and tokens.ids.dtype == torch.long
    assert tokens.embeddings.shape == (4, config.num_slots, config.hidden_size)
    assert torch.equal(tokens.attention_mask, torch.ones_like(tokens.ids))
    assert tokens.assignments.shape == (4, config.num_slots, config.num_patches)
    # competitive attention: for every patch, the weights over the slot axis sum to one
    torch.testing.assert_close(tokens.assignments.sum(dim=1), torch.ones(4, config.num_patches))
    assert bool((tokens.assignments >= 0).all())


def test_released_code_softmax_over_heads_and_slots_is_also_a_distribution_over_slots(data):
    torch.manual_seed(0)
    config = SlotQFormerConfig.tiny(slot_softmax="heads_and_slots", slot_attention_heads=2, slot_init="queries",
                                    slot_attention_key_scale="num_slots")  # fmt: skip
    model = SlotQFormerModel(config).eval()
    with torch.no_grad():
        assignments = model.encode(data["pixel_values"][:2]).assignments
    torch.testing.assert_close(assignments.sum(dim=1), torch.ones(2, config.num_patches))


def test_ids_depend_on_the_image_and_are_deterministic(tokenizer_model, data):
    with torch.no_grad():
        first = tokenizer_model.encode(data["pixel_values"][:4]).ids
        again = tokenizer_model.encode(data["pixel_values"][:4]).ids
        other = tokenizer_model.encode(data["pixel_values"][4:8]).ids
    assert torch.equal(first, again)
    assert (first != other).float().mean() > 0.1
    all_ids = torch.cat([first, other])
    assert len({tuple(row.tolist()) for row in all_ids}) >= 4  # not one sequence for every image


def test_token_order_slot_major_and_depth_major(tokenizer_model):
    ids = torch.arange(2 * 8 * 2).reshape(2, 8, 2)  # [B, slots, depths]
    flat = tokenizer_model.flatten_ids(ids)
    assert flat[0, :4].tolist() == [ids[0, 0, 0], ids[0, 0, 1], ids[0, 1, 0], ids[0, 1, 1]]
    assert torch.equal(tokenizer_model.unflatten_ids(flat), ids)
    depth_major = SlotQFormerModel(SlotQFormerConfig.tiny(token_order="depth_major"))
    flat = depth_major.flatten_ids(ids)
    assert flat[0, :3].tolist() == [ids[0, 0, 0], ids[0, 1, 0], ids[0, 2, 0]]
    assert torch.equal(depth_major.unflatten_ids(flat), ids)


def test_replacing_half_the_ids_changes_the_rebuilt_embeddings(tokenizer_model, data):
    config = tokenizer_model.config
    with torch.no_grad():
        ids = tokenizer_model.encode(data["pixel_values"][:2]).ids
        generator = torch.Generator().manual_seed(0)
        slots = torch.randperm(config.num_slots, generator=generator)[: config.num_slots // 2]
        structured = tokenizer_model.unflatten_ids(ids).clone()
        structured[:, slots] = torch.randint(0, config.codebook_size, structured[:, slots].shape, generator=generator)
        replaced = tokenizer_model.flatten_ids(structured)
        original, changed = tokenizer_model.embed_ids(ids), tokenizer_model.embed_ids(replaced)
    difference = (original - changed).norm(dim=-1)  # [B, slots]
    kept = torch.ones(config.num_slots, dtype=torch.bool)
    kept[slots] = False
    spread = (original - original.mean(dim=(0, 1))).norm(dim=-1).mean()  # how much slots differ at all
    assert difference[:, slots].mean() > 0.1 * spread
    assert difference[:, slots].mean() > 2 * difference[:, kept].mean()  # a slot's ids mostly rebuild that slot


def test_query_self_attention_is_causal(tokenizer_model):
    layer = tokenizer_model.qformer.layers[1]
    hidden = torch.randn(2, 8, 64)
    k = 5
    perturbed = hidden.clone()
    perturbed[:, k] += 3.0
    with torch.no_grad():
        before = layer.self_attend(hidden, is_causal=True)
        after = layer.self_attend(perturbed, is_causal=True)
    torch.testing.assert_close(before[:, :k], after[:, :k])
    assert not torch.allclose(before[:, k:], after[:, k:])


def test_gaussian_slot_init_samples_only_in_training(tokenizer_model, data):
    encoder = tokenizer_model.qformer
    assert encoder.query_log_sigma is not None
    eval_slots = encoder.initial_slots(2, sample=False)
    assert torch.equal(eval_slots[0], encoder.query_tokens)
    sampled = encoder.initial_slots(2, sample=True, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(sampled, eval_slots)
    queries_only = SlotQFormerModel(SlotQFormerConfig.tiny(slot_init="queries")).qformer
    assert queries_only.query_log_sigma is None


# ---------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_name_the_argument(tokenizer_model):
    config = tokenizer_model.config
    with pytest.raises(ValueError, match="pixel_values"):
        tokenizer_model.encode(torch.randn(1, 1, 64, 64))  # channels
    with pytest.raises(ValueError, match="pixel_values"):
        tokenizer_model.encode(torch.randn(1, 3, 32, 32))  # size
    with pytest.raises(ValueError, match="pixel_values"):
        tokenizer_model.encode(torch.randn(0, 3, 64, 64))  # empty batch
    with pytest.raises(ValueError, match="pixel_values"):
        tokenizer_model.encode(torch.full((1, 3, 64, 64), float("nan")))
    with pytest.raises(ValueError, match="pixel_values"):
        tokenizer_model.encode(torch.randn(3, 64, 64))
    with pytest.raises(TypeError, match="pixel_values"):
        tokenizer_model.encode(np.zeros((1, 3, 64, 64), dtype=np.float32))
    good = torch.zeros(1, config.num_visual_tokens, dtype=torch.long)
    with pytest.raises(ValueError, match="ids"):
        tokenizer_model.embed_ids(good + config.codebook_size)  # out of range
    with pytest.raises(ValueError, match="ids"):
        tokenizer_model.embed_ids(good - 1)
    with pytest.raises(ValueError, match="ids"):
        tokenizer_model.embed_ids(good[:, :-1])  # wrong number of ids per image
    with pytest.raises(TypeError, match="ids"):
        tokenizer_model.embed_ids(good.float())
    with pytest.raises(ValueError, match="ids"):
        tokenizer_model.embed_ids(good[:0])
    with pytest.raises(ValueError, match="images"):
        SlotQFormerImageProcessorPil.from_tokenizer_config(config)([])


# ---------------------------------------------------------------------------------------- Auto round trip
def test_auto_round_trip_gives_identical_ids(tokenizer_model, data, tmp_path):
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    processor = SlotQFormerImageProcessorPil.from_tokenizer_config(tokenizer_model.config)
    tokenizer_model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SlotQFormerConfig)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    reloaded_processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, SlotQFormerModel)
    assert reloaded_processor.crop_size["height"] == 64
    pixels = processor(data["images"][:3], return_tensors="pt")["pixel_values"]
    reloaded_pixels = reloaded_processor(data["images"][:3], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels, reloaded_pixels)
    with torch.no_grad():
        assert torch.equal(tokenizer_model.encode(pixels).ids, reloaded.encode(reloaded_pixels).ids)


def test_for_pretraining_loads_from_an_exported_tokenizer(tokenizer_model, tmp_path):
    tokenizer_model.save_pretrained(tmp_path)
    model = SlotQFormerForPreTraining.from_pretrained(tmp_path)
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter).all(), name  # missing parts are initialised, not garbage
    assert torch.equal(model.tokenizer.qformer.query_tokens, tokenizer_model.qformer.query_tokens)
    assert torch.equal(model.tokenizer.quantizer.codebooks[0].weight, tokenizer_model.quantizer.codebooks[0].weight)
    assert not model.conditioner.null_local_embeddings.any()


def test_torch_and_pil_processors_agree(data):
    config = SlotQFormerConfig.tiny()
    pil = SlotQFormerImageProcessorPil.from_tokenizer_config(config)(data["images"][:2], return_tensors="pt")["pixel_values"]
    torch_ = SlotQFormerImageProcessor.from_tokenizer_config(config)(data["images"][:2], return_tensors="pt")["pixel_values"]
    assert pil.shape == torch_.shape == (2, 3, 64, 64)
    assert (pil - torch_).abs().mean() < 0.05  # both already at 64 px: only rescale + normalise
    assert SlotQFormerImageProcessorPil().crop_size["height"] == 448


def test_codebook_stays_float32_in_bfloat16(tokenizer_model, tmp_path):
    tokenizer_model.save_pretrained(tmp_path)
    model = SlotQFormerModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert model.quantizer.codebooks[0].weight.dtype == torch.float32
    assert model.qformer.query_tokens.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------- paper size on meta
def _linear(n_in, n_out):
    return n_in * n_out + n_out


def _transformer_block(d, ratio=4):
    return 2 * 2 * d + 4 * _linear(d, d) + _linear(d, ratio * d) + _linear(ratio * d, d)


def test_paper_size_builds_on_meta_with_documented_parameter_counts():
    config = SlotQFormerConfig()
    with torch.device("meta"):
        model = SlotQFormerForPreTraining(config)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    d, e, v = 768, 1408, 1024  # Q-Former width, key/value width, DINOv2-L width
    qformer_layer = 4 * _linear(d, d) + 2 * d + _linear(d, 3072) + _linear(3072, d) + 2 * d
    slot_attention = 2 * e + 2 * d + _linear(d, d) + 2 * _linear(e, d) + (2 * 3 * d * d + 2 * 3 * d) + 2 * d + _linear(d, 1536) + _linear(1536, d)
    expected = {
        "vision_model": 304_368_640,  # DINOv2-L/14 (518-px position table)
        "vision_projection": 2 * v + _linear(v, e) + _linear(e, e),  # 3,429,120
        "qformer": 32 * d + d + 2 * d + 12 * qformer_layer + 6 * slot_attention,  # 137,076,480
        "quantizer": _linear(d, 32) + _linear(32, d) + 8192 * 32,  # 312,096
        "rebuild": _transformer_block(d),  # 7,087,872
    }
    for name, number in expected.items():
        assert count(getattr(model.tokenizer, name)) == number, name
    assert expected["qformer"] == 137_076_480 and expected["vision_projection"] == 3_429_120
    assert count(model.tokenizer) == 452_274_208
    c = 1024  # conditioner width / UNet cross-attention width
    conditioner = _linear(d, c) + _transformer_block(c) + 2 * c + (2 * c + 2 * _linear(c, c)) + 32 * c + 1024
    assert count(model.conditioner) == conditioner == 15_520_768
    assert count(model.text_embeddings) == 30522 * d + 512 * d  # 23,834,112
    assert count(model.text_head) == _linear(d, d) + 2 * d + 30522  # 622,650
    assert count(model.itc_image_projection) == count(model.itc_text_projection) == _linear(d, 256)
    assert count(model.teacher) == 632_076_800  # CLIP ViT-H/14 vision tower + projection
    assert count(model.unet) == 870_173_124  # unCLIP-SD 2.1 UNet
    assert count(model.vae) == 83_653_863  # SD VAE
    assert model.tokenizer.quantizer.codebooks[0].weight.shape == (8192, 32)
    assert len(model.tokenizer.quantizer.codebooks) == 1  # one codebook shared by the 4 depths


# ---------------------------------------------------------------------------------------- pretrained parts
def test_from_pretrained_parts_copies_blip2_qformer_and_dinov2(tmp_path):
    from transformers import Blip2QFormerConfig, Blip2QFormerModel, Dinov2Model

    config = SlotQFormerConfig.tiny()
    torch.manual_seed(1)
    blip = Blip2QFormerModel(
        Blip2QFormerConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                           encoder_hidden_size=48, use_qformer_text_input=True)
    )
    with torch.no_grad():
        for parameter in blip.parameters():
            parameter.normal_()  # LayerNorms too: no weight equals a fresh initialisation by chance
    blip.save_pretrained(tmp_path / "qformer")
    dinov2 = Dinov2Model(config.vision_config)
    dinov2.save_pretrained(tmp_path / "dinov2")
    model = SlotQFormerForPreTraining.from_pretrained_parts(
        SlotQFormerConfig.tiny(), vision_model_path=tmp_path / "dinov2", qformer_path=tmp_path / "qformer"
    )
    layers = model.tokenizer.qformer.layers
    source = blip.encoder.layer
    assert torch.equal(layers[1].self_attention.to_q.weight, source[1].attention.attention.query.weight)
    assert torch.equal(layers[0].self_attention.to_out.bias, source[0].attention.output.dense.bias)
    assert torch.equal(layers[0].ffn[0].weight, source[0].intermediate_query.dense.weight)
    assert torch.equal(layers[1].ffn_norm.weight, source[1].output_query.LayerNorm.weight)
    assert torch.equal(layers[0].slot_attention.to_k.weight, source[0].crossattention.attention.key.weight)
    assert torch.equal(model.tokenizer.qformer.input_layernorm.weight, blip.layernorm.weight)
    for name, parameter in dinov2.state_dict().items():
        assert torch.equal(model.tokenizer.vision_model.state_dict()[name], parameter)
    # separate text FFN (BLIP-2 layout) takes the text FFN weights
    separate = SlotQFormerModel(SlotQFormerConfig.tiny(share_query_text_ffn=False))
    separate.load_blip2_qformer(tmp_path / "qformer")
    assert torch.equal(separate.qformer.layers[0].text_ffn[0].weight, source[0].intermediate.dense.weight)
    # a wider Q-Former is refused with a clear message
    Blip2QFormerModel(Blip2QFormerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, encoder_hidden_size=48)).save_pretrained(tmp_path / "narrow")  # fmt: skip
    with pytest.raises(ValueError, match="qformer_path.*shape"):
        SlotQFormerModel(config).load_blip2_qformer(tmp_path / "narrow")
    with pytest.raises(ValueError, match="qformer_path"):
        SlotQFormerModel(config).load_blip2_qformer(tmp_path / "missing")
    with pytest.raises(ValueError, match="vision_model_path"):
        SlotQFormerForPreTraining.from_pretrained_parts(SlotQFormerConfig.tiny(), vision_model_path=tmp_path / "missing")


# ---------------------------------------------------------------------------------------- training

def test_stage1_losses_decrease(data):
    torch.manual_seed(0)
    model = SlotQFormerForPreTraining(SlotQFormerConfig.tiny()).train()
    batch = {k: data[k] for k in ("pixel_values", "input_ids", "attention_mask")}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    first = _step(model, optimizer, batch)
    for _ in range(12):
        last = _step(model, optimizer, batch)
    for name in ("loss_contrastive", "loss_text_generation", "loss_diffusion", "loss_global_mse"):
        assert torch.isfinite(getattr(first, name)) and getattr(first, name) > 0, name
    assert last.loss.item() < 0.7 * first.loss.item()
    assert last.loss_text_generation.item() < first.loss_text_generation.item()
    assert last.loss_global_mse.item() < first.loss_global_mse.item()
    weights = (0.5, 0.5, 1.0, 0.5)
    parts = (first.loss_contrastive, first.loss_text_generation, first.loss_diffusion, first.loss_global_mse)
    torch.testing.assert_close(first.loss, sum(w * p for w, p in zip(weights, parts)))


def test_stage1_requires_captions(data):
    model = SlotQFormerForPreTraining(SlotQFormerConfig.tiny())
    with pytest.raises(ValueError, match="input_ids"):
        model(pixel_values=data["pixel_values"][:2])
    with pytest.raises(ValueError, match="input_ids"):
        model(pixel_values=data["pixel_values"][:2], input_ids=data["input_ids"][:3])
    with pytest.raises(ValueError, match="input_ids"):
        model(pixel_values=data["pixel_values"][:2], input_ids=data["input_ids"][:2] + 1000)
    with pytest.raises(ValueError, match="stage"):
        model.set_stage(3)
    with pytest.raises(TypeError, match="unexpected batch keys"):
        model(pixel_values=data["pixel_values"][:2], labels=data["input_ids"][:2])
    image_only = SlotQFormerForPreTraining(SlotQFormerConfig.tiny(contrastive_loss_weight=0.0, text_generation_loss_weight=0.0))
    assert image_only(pixel_values=data["pixel_values"][:2]).loss_contrastive is None


def test_stage2_trains_only_quantizer_and_rebuild(data):
    torch.manual_seed(0)
    model = SlotQFormerForPreTraining(SlotQFormerConfig.tiny())
    model.set_stage(2).train()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("tokenizer.quantizer.project", "tokenizer.rebuild.")) for n in trainable)
    assert not model.tokenizer.qformer.training and model.tokenizer.quantizer.training
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    codebook = model.tokenizer.quantizer.codebooks[0].weight.detach().clone()
    # every parameter in the optimizer, with weight decay: frozen ones must still not move
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    batch = {"pixel_values": data["pixel_values"]}
    first = _step(model, optimizer, batch)
    for _ in range(6):
        last = _step(model, optimizer, batch)
    for name, parameter in model.named_parameters():
        if name in frozen and "codebooks" not in name:
            assert torch.equal(parameter, frozen[name]), name
    assert not torch.equal(model.tokenizer.quantizer.codebooks[0].weight, codebook)  # EMA updates
    assert first.ids.shape == (8, 16) and first.loss_commitment is not None
    assert last.loss_reconstruction.item() < first.loss_reconstruction.item()
    assert last.loss.item() < first.loss.item()


def test_trainer_runs_a_few_steps(data, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = SlotQFormerForPreTraining(SlotQFormerConfig.tiny())
    rows = [
        {"pixel_values": data["pixel_values"][i], "input_ids": data["input_ids"][i], "attention_mask": data["attention_mask"][i]}
        for i in range(8)
    ]
    dataset = Dataset.from_list([{k: v.tolist() for k, v in row.items()} for row in rows]).with_format("torch")
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[], save_strategy="no",
        logging_steps=1, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    result = Trainer(model=model, args=args, train_dataset=dataset).train()
    assert np.isfinite(result.training_loss)


# ---------------------------------------------------------------------------------------- decoder pipeline
def _decode(pipe, **kwargs):
    kwargs.setdefault("num_inference_steps", 3)
    kwargs.setdefault("output_type", "pt")
    return pipe(generator=torch.Generator().manual_seed(0), **kwargs).images


def test_pipeline_uses_the_training_modules_and_round_trips(trained, data, tmp_path):
    from diffusers import DDIMScheduler

    from hf_vtok.models.slot_qformer import SlotQFormerDecoderPipeline

    pipe = trained.get_decoder_pipeline()
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet is trained.unet and pipe.conditioner is trained.conditioner and pipe.tokenizer is trained.tokenizer
    # pixel space: DDIM with the predicted image clipped (an unclipped sampler diverges under the cosine schedule)
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.scheduler.config.clip_sample and pipe.vae is None
    pixel_values = data["pixel_values"][:2]
    from_images = _decode(pipe, pixel_values=pixel_values)
    # the 32 px decoder output is resized to the 64 px the tokenizer sees
    assert from_images.shape == (2, 3, 64, 64) and 0 <= from_images.min() and from_images.max() <= 1
    with torch.no_grad():
        ids = trained.tokenizer.encode(pixel_values).ids
    from_ids = _decode(pipe, token_ids=ids)
    torch.testing.assert_close(from_images, from_ids)  # images are decoded through their ids
    pipe.save_pretrained(tmp_path)
    reloaded = SlotQFormerDecoderPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    assert isinstance(reloaded.tokenizer, SlotQFormerModel) and reloaded.vae is None
    assert torch.equal(_decode(reloaded, pixel_values=pixel_values), from_images)
    assert torch.equal(_decode(reloaded, token_ids=ids), from_ids)


def test_pipeline_inputs_outputs_and_guidance(trained, data):
    pipe = trained.get_decoder_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pil = pipe(images=data["images"][:2], num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 2 and pil[0].size == (64, 64)
    array = _decode(pipe, images=data["images"][:2], num_inference_steps=2, output_type="np")
    assert array.shape == (2, 64, 64, 3) and array.dtype == np.float32
    with torch.no_grad():
        slots = trained.tokenizer.encode_slots(data["pixel_values"][:2], sample_slots=False).slot_embeddings
    continuous = _decode(pipe, token_embeddings=slots)
    assert torch.equal(continuous, _decode(pipe, pixel_values=data["pixel_values"][:2], quantize=False))
    assert not torch.equal(_decode(pipe, token_embeddings=slots, guidance_scale=1.0), _decode(pipe, token_embeddings=slots, guidance_scale=4.0))
    generators = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    assert pipe(token_embeddings=slots, num_inference_steps=2, generator=generators, output_type="pt").images.shape[0] == 2


def test_pipeline_bad_inputs_name_the_argument(trained, data):
    pipe = trained.get_decoder_pipeline()
    pipe.set_progress_bar_config(disable=True)
    config = trained.config
    ids = torch.zeros(1, config.num_visual_tokens, dtype=torch.long)
    with pytest.raises(ValueError, match="exactly one"):
        pipe(images=data["images"][:1], token_ids=ids)
    with pytest.raises(ValueError, match="exactly one"):
        pipe()
    with pytest.raises(ValueError, match="token_ids"):
        pipe(token_ids=ids + config.codebook_size)
    with pytest.raises(ValueError, match="token_ids"):
        pipe(token_ids=ids[:, :5])
    with pytest.raises(ValueError, match="token_embeddings"):
        pipe(token_embeddings=torch.zeros(1, 3, config.hidden_size))
    with pytest.raises(ValueError, match="output_type"):
        pipe(token_ids=ids, output_type="jpeg")
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe(token_ids=ids, num_inference_steps=0)
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe(token_ids=ids, guidance_scale=-1.0)
    with pytest.raises(ValueError, match="generator"):
        pipe(token_ids=ids, generator=[torch.Generator(), torch.Generator()])
    with pytest.raises(TypeError, match="pixel_values"):
        pipe(pixel_values=torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="images"):
        pipe(images=[])
    with pytest.raises(ValueError, match="pixel_values"):
        pipe(pixel_values=torch.zeros(1, 3, 48, 48))


# ---------------------------------------------------------------------------------------- distributed ITC
def _contrastive_worker(rank, world, init_file, result_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    images, captions = make_scenes(8)
    config = SlotQFormerConfig.tiny()
    pixel_values = SlotQFormerImageProcessor.from_tokenizer_config(config)(images, return_tensors="pt")["pixel_values"]
    text = make_text_tokenizer(captions)(["[DEC] " + c + " [SEP]" for c in captions], padding=True, return_tensors="pt")
    torch.manual_seed(0)
    model = SlotQFormerForPreTraining(config).eval()
    rows = slice(rank * 4, rank * 4 + 4)
    encoded = model.tokenizer.encode_slots(pixel_values[rows], output_hidden_states=True)
    loss_itc, _ = model.text_losses(encoded.slot_embeddings, encoded.layer_inputs, text["input_ids"][rows], text["attention_mask"][rows])
    loss_itc.backward()
    grad = model.itc_image_projection.weight.grad.clone()
    total = loss_itc.detach().clone()
    dist.all_reduce(grad)
    dist.all_reduce(total)
    if rank == 0:
        torch.save({"loss": total / world, "grad": grad / world, "state": model.state_dict()}, result_file)
    dist.destroy_process_group()


@pytest.mark.slow
def test_contrastive_loss_gathers_negatives_across_processes(data, tmp_path):
    """Two processes with 4 images each give the loss and gradients of one process with 8."""
    import torch.multiprocessing as mp

    mp.spawn(_contrastive_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "result.pt")), nprocs=2)
    result = torch.load(tmp_path / "result.pt")
    model = SlotQFormerForPreTraining(SlotQFormerConfig.tiny()).eval()
    model.load_state_dict(result["state"])
    encoded = model.tokenizer.encode_slots(data["pixel_values"], output_hidden_states=True)
    loss_itc, _ = model.text_losses(encoded.slot_embeddings, encoded.layer_inputs, data["input_ids"], data["attention_mask"])
    loss_itc.backward()
    torch.testing.assert_close(result["loss"], loss_itc.detach())
    torch.testing.assert_close(result["grad"], model.itc_image_projection.weight.grad, rtol=1e-4, atol=1e-6)
