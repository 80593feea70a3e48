"""The contracts transformers' own common tests (``ModelTesterMixin``, the image-processor tests) check, on the three
tiny tokenizers and the MLLM: meta-device initialisation, ``return_dict=False``, deterministic training losses given
the random draws (so save/load checks compare like with like), float32 modules under a half-precision default,
``output_hidden_states``, ``get_image_features``, ``enable_input_require_grads``, ``inputs_embeds`` with images, and
image processors whose two backends agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_mllm import build_tiny_mllm
from transformers import CONFIG_MAPPING, AutoModel, AutoModelForPreTraining
from transformers.modeling_outputs import BaseModelOutput

import hf_vtok  # noqa: F401  (registers everything)
from hf_vtok.mllm import VTokMLLMForConditionalGeneration
from hf_vtok.models.slot_qformer import SlotQFormerConfig, SlotQFormerForPreTraining
from hf_vtok.trainer.arguments import FAMILY_MODEL_TYPES
from hf_vtok.utils.quantizers import Codebook

torch.set_num_threads(1)
FAMILIES = ("slot_qformer", "setok", "ddt")


def tiny_config(family: str):
    return CONFIG_MAPPING[FAMILY_MODEL_TYPES[family]].tiny()


def pixels(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tokenizers():
    torch.manual_seed(0)
    return {family: AutoModel.from_config(tiny_config(family)).eval() for family in FAMILIES}


@pytest.fixture(scope="module")
def mllms(tokenizers):
    return {family: build_tiny_mllm(tokenizers[family]) for family in ("ddt", "setok")}


IMAGE = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)


def mllm_batch(model, processor, completion=None):
    """One sample: an image and a prompt, and a completion (with a second image when it holds ``<image>``)."""
    images = [IMAGE] + ([IMAGE[::-1].copy()] if completion and "<image>" in completion else [])
    pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    counts = None if processor.is_discrete else model.count_image_tokens(pixel_values)
    kwargs = {"completion": [completion]} if completion else {}
    return processor(images=[images], text=["<image> describe"], num_image_tokens=counts, **kwargs)


def assert_same(a, b):
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------- 1. meta-device init
def assert_meta_init_matches_a_fresh_build(build):
    """transformers' test_can_init_all_missing_weights: build on meta, ``to_empty``, ``init_weights()``; every buffer
    is finite and equals a fresh build's wherever a fresh build is deterministic (the same under two seeds)."""
    torch.manual_seed(0)
    first = dict(build().named_buffers())
    torch.manual_seed(1)
    second = dict(build().named_buffers())
    with torch.device("meta"):
        model = build()
    model.to_empty(device="cpu")
    model.init_weights()
    deterministic = 0
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point():
            assert torch.isfinite(buffer).all(), name
        if torch.equal(first[name], second[name]):
            deterministic += 1
            assert torch.equal(buffer, first[name]), name
    codebooks = [module for module in model.modules() if isinstance(module, Codebook)]
    for codebook in codebooks:  # the EMA statistics describe the codes (random ones, so not compared above)
        torch.testing.assert_close(codebook.embed_sum, codebook.weight * codebook.cluster_size[:, None])
    return deterministic, codebooks


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("auto_class", [AutoModel, AutoModelForPreTraining])
def test_meta_device_then_init_weights_gives_real_buffers(family, auto_class):
    config = tiny_config(family)
    deterministic, codebooks = assert_meta_init_matches_a_fresh_build(lambda: auto_class.from_config(config))
    assert deterministic > 0 and len(codebooks) == (family != "setok")


def test_meta_device_then_init_weights_gives_real_buffers_in_the_mllm(mllms):
    config = mllms["ddt"][0].config
    _, codebooks = assert_meta_init_matches_a_fresh_build(lambda: VTokMLLMForConditionalGeneration(config))
    assert len(codebooks) == 1


# ------------------------------------------------------------------------------------------- 2. return_dict=False
@pytest.mark.parametrize("family", FAMILIES)
def test_return_dict_false_returns_the_output_tuple(tokenizers, family):
    model, x = tokenizers[family], pixels()
    with torch.no_grad():
        output, as_tuple = model(x), model(x, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert_same(as_tuple, output.to_tuple())


@pytest.mark.parametrize("family", FAMILIES)
def test_pretraining_models_share_their_output_base_and_their_argument_checks(family):
    """Every ``XForPreTraining``: a ``VTokPreTrainingOutput`` (``loss`` first), ``return_dict=False`` gives its tuple,
    and the shared keyword arguments are checked alike: unknown batch keys, out-of-range ``timesteps``."""
    from hf_vtok.utils.modeling_utils import VTokPreTrainingOutput

    overrides = {"contrastive_loss_weight": 0.0, "text_generation_loss_weight": 0.0} if family == "slot_qformer" else {}
    torch.manual_seed(0)
    model = AutoModelForPreTraining.from_config(CONFIG_MAPPING[FAMILY_MODEL_TYPES[family]].tiny(**overrides)).eval()
    x = pixels()
    with torch.no_grad():
        torch.manual_seed(1)
        output = model(x)
        torch.manual_seed(1)
        as_tuple = model(x, return_dict=False)
    assert isinstance(output, VTokPreTrainingOutput) and next(iter(output.keys())) == "loss"
    assert isinstance(as_tuple, tuple)
    assert_same(as_tuple, output.to_tuple())
    with pytest.raises(TypeError, match=r"unexpected batch keys \['labels'\]; expected pixel_values, .*noise, timesteps"):
        model(x, labels=torch.zeros(2))
    bad = torch.tensor([0.5, 1.5]) if family == "ddt" else torch.tensor([10, 10**7])
    expected = "2 noise levels in" if family == "ddt" else "2 integer timesteps in"
    with pytest.raises(ValueError, match=f"`timesteps` must be {expected}"):
        model(x, timesteps=bad)


@pytest.mark.parametrize("family", ("ddt", "setok"))
def test_mllm_return_dict_false_returns_the_output_tuple(mllms, family):
    model, processor = mllms[family]
    batch = mllm_batch(model, processor, completion=" a circle")
    batch["labels"] = batch["input_ids"].masked_fill(batch["input_ids"] == processor.image_token_id, -100)
    with torch.no_grad():
        output = model(**batch, use_cache=False)
        as_tuple = model(**batch, use_cache=False, return_dict=False)
        base_tuple = model.model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False, return_dict=False)
    assert isinstance(as_tuple, tuple) and isinstance(base_tuple, tuple)
    assert_same(as_tuple, output.to_tuple())
    assert torch.equal(base_tuple[0], model.model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).last_hidden_state)


# ------------------------------------------------------------------------------ 3. deterministic given the draws
def test_slot_qformer_pretraining_loss_is_reproducible_given_noise_and_timesteps(tmp_path):
    torch.manual_seed(0)
    model = SlotQFormerForPreTraining(SlotQFormerConfig.tiny()).eval()
    size = model.config.decoder_config.image_size
    generator = torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": pixels(),
        "input_ids": torch.randint(1, model.config.vocab_size, (2, 6), generator=generator),
        "noise": torch.randn(2, 3, size, size, generator=generator),
        "timesteps": torch.tensor([10, 600]),
    }
    with torch.no_grad():
        first, second = model(**batch), model(**batch)
        other_noise = model(**{**batch, "noise": torch.randn(2, 3, size, size, generator=generator)})
    for name in ("loss", "loss_contrastive", "loss_text_generation", "loss_diffusion", "loss_global_mse"):
        assert torch.equal(first[name], second[name]), name
    assert not torch.equal(first.loss_diffusion, other_noise.loss_diffusion)  # the noise is really used
    model.save_pretrained(tmp_path)
    reloaded = SlotQFormerForPreTraining.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).loss, first.loss, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="`noise` must be a tensor of shape"):
        model(**{**batch, "noise": torch.zeros(2, 3, 4, 4)})
    with pytest.raises(ValueError, match="`timesteps` must be 2 integer timesteps"):
        model(**{**batch, "timesteps": torch.tensor([10, 5000])})


# ----------------------------------------------------------------------------- 4. _keep_in_fp32_modules_strict
def strict_fp32_tensors(model):
    names = model._keep_in_fp32_modules_strict
    return {name: tensor for name, tensor in [*model.named_parameters(), *model.named_buffers()]
            if tensor.is_floating_point() and any(part in names for part in name.split("."))}


@pytest.mark.parametrize("family", ("slot_qformer", "ddt"))
def test_keep_in_fp32_modules_strict_are_float32_from_construction(family):
    config = tiny_config(family)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        under_default = AutoModel.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    for model in (under_default, AutoModel.from_config(config, dtype=torch.bfloat16)):
        strict = strict_fp32_tensors(model)
        assert strict and all(tensor.dtype == torch.float32 for tensor in strict.values()), {
            name: tensor.dtype for name, tensor in strict.items()
        }
        assert any(p.dtype == torch.bfloat16 for n, p in model.named_parameters() if n not in strict)


# ------------------------------------------------------------------------------------ 5. output_hidden_states
@pytest.mark.parametrize("family", FAMILIES)
def test_output_hidden_states_are_the_encoder_layers(tokenizers, family):
    model, x = tokenizers[family], pixels()
    config = model.config
    layers = config.vision_config.num_hidden_layers if family == "setok" else config.num_hidden_layers
    with torch.no_grad():
        plain, output = model(x), model(x, output_hidden_states=True)
        hidden = output.hidden_states
        assert plain.hidden_states is None and len(hidden) == layers + 1
        assert not torch.equal(hidden[0], hidden[-1])
        assert list(output.keys()) == [*plain.keys(), "hidden_states"] or set(output.keys()) == {*plain.keys(), "hidden_states"}
        assert_same([plain[key] for key in plain], [output[key] for key in plain])  # asking changes nothing else
        if family == "slot_qformer":  # the last one is what the quantizer reads
            assert torch.equal(hidden[-1], model.encode_slots(x).slot_embeddings)
        elif family == "ddt":
            assert torch.equal(model.quantizer.encode(model.quant_proj(model.norm_out(hidden[-1]))), output.ids)
        else:  # the clustering reads the vision encoder's last layer
            assert torch.equal(hidden[-1][:, -config.num_patches :], model.get_image_features(x).last_hidden_state)


# ------------------------------------------------------------------------------------- 6. get_image_features
@pytest.mark.parametrize("family", FAMILIES)
def test_get_image_features_returns_a_base_model_output(tokenizers, family):
    model = tokenizers[family]
    with torch.no_grad():
        features = model.get_image_features(pixels())
    assert isinstance(features, BaseModelOutput) and features.last_hidden_state.ndim == 3
    assert features.last_hidden_state.shape[:2] == (2, 64)  # 8x8 patches of 8 px


# -------------------------------------------------------------------------------- 7. enable_input_require_grads
@pytest.mark.parametrize("family", FAMILIES)
def test_enable_input_require_grads_hooks_the_patch_embedding(family):
    torch.manual_seed(0)
    model = AutoModel.from_config(tiny_config(family)).eval().requires_grad_(False)
    model.enable_input_require_grads()
    seen = []
    handle = model.get_input_embeddings().register_forward_hook(lambda module, args, output: seen.append(output.requires_grad))
    try:
        output = model(pixels(), output_hidden_states=True)
    finally:
        handle.remove()
    assert seen == [True]  # the patch embedding ran once, and its output now carries gradients
    if family != "setok":  # SeTok skips autograd through a vision encoder with nothing to train
        assert output.hidden_states[-1].requires_grad  # through the frozen encoder (what gradient checkpointing needs)


# -------------------------------------------------------------------------------- 8. inputs_embeds with images
@pytest.mark.parametrize("family", ("ddt", "setok"))
def test_mllm_inputs_embeds_with_pixel_values_match_input_ids(mllms, family):
    model, processor = mllms[family]
    completion = "<image>" if family == "ddt" else " a circle"  # ddt: an image target, so labels use merged ids
    batch = mllm_batch(model, processor, completion=completion)
    assert "labels" in batch
    with torch.no_grad():
        by_ids = model(**batch)
        embeds = model.get_input_embeddings()(batch["input_ids"])
        by_embeds = model(inputs_embeds=embeds, **{k: v for k, v in batch.items() if k != "input_ids"})
    torch.testing.assert_close(by_embeds.logits, by_ids.logits, rtol=0, atol=0)
    torch.testing.assert_close(by_embeds.loss, by_ids.loss, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------- 9. image processors
@pytest.fixture(scope="module")
def processors():
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

    config = tiny_config("slot_qformer")
    classes = IMAGE_PROCESSOR_MAPPING[type(config)]
    return [classes[backend].from_tokenizer_config(config) for backend in ("pil", "torch")]


def test_both_backends_resize_a_non_square_image_alike(processors):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    pil, torch_ = (processor(image, do_center_crop=False, return_tensors="pt")["pixel_values"] for processor in processors)
    assert pil.shape == torch_.shape == (1, 3, 64, 91)  # 53 * 64 / 37 = 91.7, truncated as transformers does
    cropped = [processor(image, return_tensors="pt")["pixel_values"] for processor in processors]
    assert (cropped[0] - cropped[1]).abs().mean() < 0.1  # same crop window: only the resampling filters differ


def test_channel_last_tensors_are_accepted_by_both_backends(processors):
    image = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    for processor in processors:
        channel_first = processor(image.permute(2, 0, 1), return_tensors="pt")["pixel_values"]
        channel_last = processor(image, return_tensors="pt")["pixel_values"]
        assert torch.equal(channel_first, channel_last)


def test_do_convert_rgb_false_refuses_other_channel_counts(processors):
    rgba = Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 40, 4), dtype=np.uint8), "RGBA")
    rgb = rgba.convert("RGB")
    for processor in processors:
        with pytest.raises(ValueError, match=r"`images\[0\]` has 4 channel.*`do_convert_rgb=False`"):
            processor(rgba, do_convert_rgb=False, return_tensors="pt")
        kept = processor(rgb, do_convert_rgb=False, return_tensors="pt")["pixel_values"]
        assert torch.equal(kept, processor(rgb, return_tensors="pt")["pixel_values"])
        assert processor(rgba, return_tensors="pt")["pixel_values"].shape[1] == 3  # the default converts
