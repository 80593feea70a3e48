"""The pixel loss of SeTok's latent decoder (a departure, off by default; issue #16's lever for textures).

Properties checked: the clean sample implied by a DDPM-family prediction is exact for each prediction type (the true
noise / velocity / sample gives back the clean sample); SeTok's pixel loss is the frozen TAEF2's decoding of that
implied latent against the image, weighted per image by its signal fraction ``ᾱ_t``, counts only the first
``pixel_loss_max_images`` images, trains the tokenizer and decoder (not the autoencoder) when it is the only loss, and
is exactly 0 (the paper's loss unchanged) when its weight is 0; ``attach_vae`` makes the trainer's autoencoder the
model's without making it a submodule; the config refuses a pixel loss without a latent space, by name.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from hf_vtok.models.setok.configuration_setok import SeTokConfig
from hf_vtok.models.setok.modeling_setok import SeTokForPreTraining
from hf_vtok.utils.autoencoder_taef2 import load_taef2
from hf_vtok.utils.modeling_utils import decoded_pixel_loss, predicted_clean_sample

torch.set_num_threads(1)

LATENT_DECODER = {"vae": "taef2", "unet": {"sample_size": 8, "in_channels": 32, "out_channels": 32},
                  "scheduler": {"clip_sample": False}}  # fmt: skip


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_the_true_prediction_implies_the_clean_sample(prediction_type):
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    generator = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(3, 4, 5, 5, generator=generator), torch.randn(3, 4, 5, 5, generator=generator)
    timesteps = torch.tensor([0, 500, 999])
    noisy = scheduler.add_noise(clean, noise, timesteps)
    target = {"epsilon": noise, "v_prediction": scheduler.get_velocity(clean, noise, timesteps), "sample": clean}
    implied, signal = predicted_clean_sample(scheduler, noisy, target[prediction_type], timesteps)
    torch.testing.assert_close(implied, clean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(signal, scheduler.alphas_cumprod[timesteps])
    assert signal[0] > 0.99 and signal[2] < 0.01  # almost no noise at t = 0, almost all at the last step
    wrong, _ = predicted_clean_sample(scheduler, noisy, torch.zeros_like(noise), timesteps)
    assert not torch.allclose(wrong, clean, atol=1e-2)


def _model(**overrides) -> SeTokForPreTraining:
    torch.manual_seed(0)
    return SeTokForPreTraining(SeTokConfig.tiny(decoder_config=LATENT_DECODER, **overrides)).eval()


def test_pixel_loss_decodes_the_implied_latents_weighted_by_their_signal():
    vae = load_taef2()
    model = _model(pixel_loss_weight=2.0, pixel_loss_max_images=1, diffusion_loss_weight=0.0)
    model.attach_vae(vae)
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 4 - 2
    images = (pixels * torch.tensor(model.config.image_std)[:, None, None]
              + torch.tensor(model.config.image_mean)[:, None, None]).clamp(0, 1) * 2 - 1  # fmt: skip
    with torch.no_grad():
        latents = vae.scale_latents(vae.encode(images).latents)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    timesteps = torch.tensor([700, 700])

    out = model(pixel_values=pixels, latents=latents, noise=noise, timesteps=timesteps)
    assert out.loss.item() == pytest.approx(2.0 * out.pixel_loss.item())  # the diffusion loss is weighted 0
    # by hand: the UNet's noise prediction -> x̂_0 -> TAEF2 decoder, against the image, times ᾱ_700
    with torch.no_grad():
        features = model.tokenizer.get_image_features(pixels).last_hidden_state
        tokens, _ = model.tokenizer._tokenize(features, pixel_values=pixels)
        condition = model.feature_mapper(tokens.embeddings, tokens.attention_mask)
        noisy = model.noise_scheduler.add_noise(latents, noise, timesteps)
        predicted = model.unet(noisy, timesteps, encoder_hidden_states=condition).sample
        implied, signal = predicted_clean_sample(model.noise_scheduler, noisy, predicted, timesteps)
        decoded = vae.decode(implied[:1] / vae.config.scaling_factor).sample
        expected = signal[0] * torch.nn.functional.mse_loss(decoded, images[:1])
    torch.testing.assert_close(out.pixel_loss, expected, rtol=1e-4, atol=1e-6)

    # the second image is beyond pixel_loss_max_images; a less noisy step weighs more
    changed = torch.cat([pixels[:1], -pixels[1:]])
    again = model(pixel_values=changed, latents=latents, noise=noise, timesteps=timesteps).pixel_loss
    assert again.item() == pytest.approx(out.pixel_loss.item())
    early = model(pixel_values=pixels, latents=latents, noise=noise, timesteps=torch.tensor([50, 50])).pixel_loss
    late = model(pixel_values=pixels, latents=latents, noise=noise, timesteps=torch.tensor([990, 990])).pixel_loss
    assert late < early  # ᾱ_990 ~ 0.005: an x̂_0 made almost only of the noise prediction barely counts

    # the pixel loss alone trains the UNet, the feature mapper and the merger; the autoencoder stays frozen
    model.train()
    model.config.decoder_config.condition_dropout_prob = 0.0
    model(pixel_values=pixels, latents=latents, noise=noise, timesteps=timesteps).loss.backward()
    for part in (model.unet.conv_out, model.feature_mapper, model.tokenizer.merger):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), type(part).__name__
    assert all(p.grad is None for p in vae.parameters())
    # the attached autoencoder is the model's, but neither a submodule nor saved
    assert model.decoder_autoencoder() is vae
    assert all(module is not vae for module in model.modules())
    assert not any("decoder.conv" in name or name.startswith("_shipped") for name in model.state_dict())


def test_without_its_weight_the_loss_is_the_papers():
    model = _model()
    assert SeTokConfig().pixel_loss_weight == 0.0 and model.config.pixel_loss_weight == 0.0
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 4 - 2
    latents = torch.randn(2, 32, 8, 8, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(pixel_values=pixels, latents=latents, noise=noise, timesteps=torch.tensor([10, 600]))
    assert out.pixel_loss == 0 and out.loss == out.diffusion_loss
    assert "_shipped_autoencoder" not in model.__dict__  # the autoencoder is not even loaded


@pytest.mark.parametrize(("overrides", "name"), [
    ({"pixel_loss_weight": 1.0}, "pixel_loss_weight"),  # the tiny preset's decoder works in pixel space
    ({"pixel_loss_weight": -1.0, "decoder_config": LATENT_DECODER}, "pixel_loss_weight"),
    ({"pixel_loss_max_images": 0, "decoder_config": LATENT_DECODER}, "pixel_loss_max_images"),
])  # fmt: skip
def test_config_refuses_a_pixel_loss_it_cannot_compute(overrides, name):
    with pytest.raises(ValueError, match=name):
        SeTokConfig.tiny(**overrides)


def test_decoded_pixel_loss_weights_each_image():
    vae = load_taef2()
    latents = torch.randn(2, 32, 4, 4, generator=torch.Generator().manual_seed(0))
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mean, std = [0.0] * 3, [1.0] * 3
    with torch.no_grad():
        each = [decoded_pixel_loss(vae, latents[i : i + 1], pixels[i : i + 1], mean, std) for i in range(2)]
        weighted = decoded_pixel_loss(vae, latents, pixels, mean, std, weights=torch.tensor([1.0, 0.0]))
        plain = decoded_pixel_loss(vae, latents, pixels, mean, std)
    torch.testing.assert_close(weighted, each[0] / 2)
    torch.testing.assert_close(plain, (each[0] + each[1]) / 2)


@pytest.mark.slow
def test_the_pixel_recipe_continues_a_run_with_the_trainers_autoencoder(tmp_path, datasets_cache):
    """`setok_latent_128_footprint_pixel` from a previous run's folder: the trainer hands its TAEF2 to the model (the
    pixel loss decodes with the autoencoder that cached the latents), the architecture and weights are the previous
    run's, the log shows the loss's parts, and the exported config keeps the pixel-loss fields."""
    from hf_vtok.trainer.arguments import parse_tokenizer_arguments
    from hf_vtok.trainer.tokenizer_trainer import build_training_model, train_tokenizer

    previous = _model()
    previous.save_pretrained(tmp_path / "previous" / "training_model")
    own_vae = load_taef2()  # a TAEF2 that differs from the shipped one: the model must use the trainer's
    with torch.no_grad():
        next(own_vae.parameters()).mul_(0.5)
    own_vae.save_pretrained(tmp_path / "own_vae")
    argv = ["--recipe", "setok_latent_128_footprint_pixel", "--init_from", str(tmp_path / "previous"), "--vae", str(tmp_path / "own_vae"),
            "--num_train_images", "4", "--per_device_train_batch_size", "2", "--max_steps", "1", "--save_strategy", "no",
            "--logging_steps", "1",
            "--report_to", "none", "--output_dir", str(tmp_path / "run")]  # fmt: skip
    script_args, training_args = parse_tokenizer_arguments(argv)
    assert script_args.config_overrides == {"pixel_loss_weight": 4.0, "pixel_loss_max_images": 8}
    continued = build_training_model(script_args)
    for name, value in previous.state_dict().items():
        torch.testing.assert_close(continued.state_dict()[name], value)
    model, trainer = train_tokenizer(script_args, training_args)
    torch.testing.assert_close(next(model.decoder_autoencoder().parameters()), next(own_vae.parameters()))
    assert model.config.pixel_loss_weight == 4.0
    # the Trainer's log has the parts of the loss beside it (the loss is diffusion + 4 x pixel)
    logged = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert logged["pixel_loss"] > 0 and logged["num_tokens"] >= 1
    assert float(logged["loss"]) == pytest.approx(logged["diffusion_loss"] + 4.0 * logged["pixel_loss"], abs=2e-3)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        out = model.eval()(**{k: v for k, v in batch.items() if k in ("pixel_values", "latents")})
    assert out.pixel_loss > 0 and out.loss > out.diffusion_loss
    saved = SeTokConfig.from_pretrained(tmp_path / "run" / "tokenizer")
    assert (saved.pixel_loss_weight, saved.pixel_loss_max_images) == (4.0, 8)
