"""SeTok decoder: feature mapper, DiffusionPipeline round trip, guidance and argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import hf_vtok
from hf_vtok.models.setok import SeTokConfig, SeTokDecoderPipeline, SeTokFeatureMapper, SeTokForPreTraining

STEPS = 2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SeTokForPreTraining(SeTokConfig.tiny()).eval()


@pytest.fixture(scope="module")
def pipe(model):
    pipeline = model.get_decoder_pipeline()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _generate(pipeline, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "pt")
    return pipeline(generator=torch.Generator().manual_seed(0), **kwargs).images


def test_pipeline_shares_the_training_modules(model, pipe):
    assert pipe.tokenizer is model.tokenizer and pipe.unet is model.unet
    assert pipe.feature_mapper is model.feature_mapper and pipe.vae is None
    assert pipe.scheduler.config.num_train_timesteps == model.noise_scheduler.config.num_train_timesteps
    assert hf_vtok.SeTokDecoderPipeline is SeTokDecoderPipeline and hf_vtok.SeTokModel is type(model.tokenizer)


def test_pipeline_round_trip(tmp_path, pipe):
    pixel_values = torch.randn(2, 3, 64, 64)
    before = _generate(pipe, pixel_values=pixel_values)
    pipe.save_pretrained(tmp_path)
    reloaded = SeTokDecoderPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    assert reloaded.vae is None and type(reloaded.tokenizer).__name__ == "SeTokModel"
    after = _generate(reloaded, pixel_values=pixel_values)
    # the 32 px decoder output is resized to the 64 px the tokenizer sees
    assert before.shape == (2, 3, 64, 64) and float(before.min()) >= 0 and float(before.max()) <= 1
    assert torch.equal(before, after)


def test_latent_pipeline_with_vae_round_trip(tmp_path):
    config = SeTokConfig.tiny(
        decoder_config={
            "vae": {"block_out_channels": [8, 16], "down_block_types": ["DownEncoderBlock2D"] * 2,
                    "up_block_types": ["UpDecoderBlock2D"] * 2, "layers_per_block": 1, "norm_num_groups": 4,
                    "latent_channels": 4, "sample_size": 32},
            "unet": {"in_channels": 4, "out_channels": 4, "sample_size": 16},
            "scheduler": {"clip_sample": False},  # latents are not bounded to [-1, 1] (SeTokConfig refuses clamping)
        }
    )
    torch.manual_seed(0)
    model = SeTokForPreTraining(config).eval()
    assert not any(p.requires_grad for p in model.vae.parameters())
    out = model(torch.randn(2, 3, 64, 64))
    assert torch.isfinite(out.loss)
    pipeline = model.get_decoder_pipeline()
    pipeline.set_progress_bar_config(disable=True)
    tokens = torch.randn(2, 3, 32)
    before = _generate(pipeline, token_embeddings=tokens)
    pipeline.save_pretrained(tmp_path)
    reloaded = SeTokDecoderPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    assert before.shape == (2, 3, 64, 64)
    assert torch.equal(before, _generate(reloaded, token_embeddings=tokens))


def test_images_input_and_output_types(pipe):
    images = [Image.fromarray(np.full((80, 64, 3), 40 * i, dtype=np.uint8)) for i in range(2)]
    pil = pipe(images=images, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 2 and all(isinstance(image, Image.Image) and image.size == (64, 64) for image in pil)
    array = _generate(pipe, images=images[0], output_type="np")
    assert array.shape == (1, 64, 64, 3) and array.dtype == np.float32
    tensor = _generate(pipe, images=images[0])
    np.testing.assert_allclose(tensor.permute(0, 2, 3, 1).numpy(), array, atol=1e-6)


def test_token_embeddings_input_and_seeded_generation(pipe):
    tokens = torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    first = _generate(pipe, token_embeddings=tokens, attention_mask=mask)
    second = _generate(pipe, token_embeddings=tokens, attention_mask=mask)
    assert torch.equal(first, second)
    single = _generate(pipe, token_embeddings=tokens[1])  # [T, D] is one image
    assert single.shape == (1, 3, 64, 64)


def test_classifier_free_guidance_uses_the_null_condition(pipe):
    a = torch.randn(1, 4, 32)
    # guidance is on when guidance_scale > 1 (diffusers' rule): at or below 1 the conditional prediction alone
    assert torch.equal(_generate(pipe, token_embeddings=a, guidance_scale=0.0),
                       _generate(pipe, token_embeddings=a, guidance_scale=1.0))
    unguided, guided = (_generate(pipe, token_embeddings=a, guidance_scale=scale) for scale in (1.0, 3.0))
    assert not torch.equal(unguided, guided)
    null = pipe.feature_mapper.null_condition
    original = null.detach().clone()
    with torch.no_grad():
        null.add_(torch.randn(null.shape, generator=torch.Generator().manual_seed(1)))
    try:  # the guided image moves with the null condition; the unguided one does not
        assert not torch.equal(_generate(pipe, token_embeddings=a, guidance_scale=3.0), guided)
        assert torch.equal(_generate(pipe, token_embeddings=a, guidance_scale=1.0), unguided)
    finally:
        with torch.no_grad():
            null.copy_(original)


def test_feature_mapper_honours_the_attention_mask():
    torch.manual_seed(0)
    mapper = SeTokFeatureMapper(token_dim=12, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                                num_queries=4, cross_attention_dim=8).eval()
    tokens = torch.randn(2, 6, 12)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    garbage = tokens.clone()
    garbage[0, 3:] = 1e3 * torch.randn(3, 12)
    with torch.no_grad():
        out = mapper(tokens, mask)
        assert out.shape == (2, 4, 8)
        torch.testing.assert_close(mapper(garbage, mask), out)
        torch.testing.assert_close(mapper(tokens[:1, :3]), out[:1], atol=1e-5, rtol=1e-5)
    assert mapper.null_embeddings(3).shape == (3, 4, 8)
    with pytest.raises(ValueError, match="token_embeddings"):
        mapper(torch.randn(2, 6, 11))
    with pytest.raises(ValueError, match="attention_mask"):
        mapper(tokens, torch.zeros(2, 6))
    with pytest.raises(ValueError, match="attention_mask"):
        mapper(tokens, torch.ones(2, 5))


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({}, ValueError, "exactly one"),
        ({"token_embeddings": torch.randn(1, 3, 32), "pixel_values": torch.randn(1, 3, 64, 64)}, ValueError,
         "exactly one"),
        ({"token_embeddings": torch.randn(1, 3, 31)}, ValueError, "token_embeddings"),
        ({"token_embeddings": torch.randn(1, 3, 32), "attention_mask": torch.ones(1, 4)}, ValueError,
         "attention_mask"),
        ({"token_embeddings": torch.randn(1, 3, 32), "attention_mask": [1, 1, 1]}, TypeError, "attention_mask"),
        ({"token_embeddings": torch.randn(1, 3, 32), "output_type": "jpeg"}, ValueError, "output_type"),
        ({"token_embeddings": torch.randn(1, 3, 32), "num_inference_steps": 0}, ValueError, "num_inference_steps"),
        ({"token_embeddings": torch.randn(1, 3, 32), "guidance_scale": -1.0}, ValueError, "guidance_scale"),
        ({"pixel_values": torch.randn(1, 3, 32, 32)}, ValueError, "pixel_values"),
        ({"token_embeddings": torch.randn(1, 3, 32), "latents": torch.randn(1, 3, 8, 8)}, ValueError, "latents"),
    ],
)
def test_pipeline_rejects_bad_arguments(pipe, kwargs, error, name):
    with pytest.raises(error, match=name):
        pipe(**kwargs)


def test_pipeline_without_tokenizer_renders_tokens_only(model):
    pipeline = SeTokDecoderPipeline(tokenizer=None, feature_mapper=model.feature_mapper, unet=model.unet,
                                    scheduler=model.get_decoder_pipeline().scheduler)
    pipeline.set_progress_bar_config(disable=True)
    # no tokenizer, no input resolution to return to: the decoder's own 32 px
    assert _generate(pipeline, token_embeddings=torch.randn(1, 2, 32)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="tokenizer"):
        pipeline(pixel_values=torch.randn(1, 3, 64, 64))
