"""The pixel loss of the Slot Q-Former's latent decoder (a departure, off by default; issue #16's lever).

Properties checked: the pixel loss is the frozen TAEF2's decoding of the clean latent the UNet predicts against the
image (unweighted for a sample-predicting UNet), counts only the first ``pixel_loss_max_images`` images, joins the
weighted loss in both stages, is absent (the paper's loss unchanged) when its weight is 0, and, trained alone, moves the
UNet and the slots (not the autoencoder) and lowers itself; the config refuses a pixel loss without a latent space, by
name.
"""

from __future__ import annotations

import pytest
import torch

from hf_vtok.models.slot_qformer.configuration_slot_qformer import SlotQFormerConfig
from hf_vtok.models.slot_qformer.modeling_slot_qformer import SlotQFormerForPreTraining
from hf_vtok.utils.autoencoder_taef2 import load_taef2

torch.set_num_threads(1)

LATENT_DECODER = {"image_size": 64, "vae": "taef2", "unet": {"sample_size": 8, "in_channels": 32, "out_channels": 32}}
TEXTLESS = {"contrastive_loss_weight": 0.0, "text_generation_loss_weight": 0.0}


def _model(vae, **overrides) -> SlotQFormerForPreTraining:
    torch.manual_seed(0)
    model = SlotQFormerForPreTraining(SlotQFormerConfig.tiny(decoder_config=LATENT_DECODER, **{**TEXTLESS, **overrides}))
    model.attach_vae(vae)
    return model.eval()


def _batch(model, vae, flat: bool = False):
    config = model.config
    mean, std = torch.tensor(config.image_mean)[:, None, None], torch.tensor(config.image_std)[:, None, None]
    size = (2, 3, 1, 1) if flat else (2, 3, 64, 64)  # flat: one colour per image
    images = torch.rand(size, generator=torch.Generator().manual_seed(1)).expand(2, 3, 64, 64)  # in [0, 1]
    with torch.no_grad():
        latents = vae.scale_latents(vae.encode(images * 2 - 1).latents)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    return (images - mean) / std, images * 2 - 1, latents, noise


def test_the_pixel_loss_decodes_the_predicted_clean_latents_of_the_first_images():
    vae = load_taef2()
    model = _model(vae, pixel_loss_weight=2.0, pixel_loss_max_images=1)
    assert model.noise_scheduler.config.prediction_type == "sample"  # the tiny preset's UNet predicts the latents
    pixels, images, latents, noise = _batch(model, vae)
    timesteps = torch.tensor([700, 700])
    with torch.no_grad():
        out = model(pixel_values=pixels, latents=latents, noise=noise, timesteps=timesteps)
        condition = model.conditioner(out.slot_embeddings)
        noisy = model.noise_scheduler.add_noise(latents, noise, timesteps)
        predicted = model.unet(noisy, timesteps, encoder_hidden_states=condition.local_embeddings,
                               class_labels=condition.class_labels).sample  # fmt: skip
        decoded = vae.decode(predicted[:1] / vae.config.scaling_factor).sample
    expected = torch.nn.functional.mse_loss(decoded, images[:1])
    torch.testing.assert_close(out.loss_pixel, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.loss, out.loss_diffusion + 0.5 * out.loss_global_mse + 2.0 * out.loss_pixel)
    # the second image is beyond pixel_loss_max_images
    changed = torch.cat([pixels[:1], -pixels[1:]])
    with torch.no_grad():
        again = model(pixel_values=changed, latents=latents, noise=noise, timesteps=timesteps).loss_pixel
    assert again.item() == pytest.approx(out.loss_pixel.item(), rel=1e-5)
    # stage 2: the rebuilt slots' decoding is compared the same way
    model.set_stage(2).eval()
    with torch.no_grad():
        stage2 = model(pixel_values=pixels, latents=latents, noise=noise, timesteps=timesteps)
    config = model.config
    torch.testing.assert_close(stage2.loss, config.reconstruction_loss_weight * stage2.loss_reconstruction
                               + config.commitment_loss_weight * stage2.loss_commitment
                               + config.stage2_diffusion_loss_weight * stage2.loss_diffusion
                               + config.stage2_global_mse_loss_weight * stage2.loss_global_mse
                               + 2.0 * stage2.loss_pixel)  # fmt: skip


def test_without_its_weight_there_is_no_pixel_loss():
    vae = load_taef2()
    model = _model(vae)
    pixels, _, latents, noise = _batch(model, vae)
    with torch.no_grad():
        out = model(pixel_values=pixels, latents=latents, noise=noise, timesteps=torch.tensor([10, 900]))
    assert out.loss_pixel is None
    torch.testing.assert_close(out.loss, out.loss_diffusion + 0.5 * out.loss_global_mse)


def test_the_pixel_loss_alone_trains_the_decoder_and_the_slots_not_the_autoencoder():
    vae = load_taef2()
    model = _model(vae, pixel_loss_weight=1.0, diffusion_loss_weight=0.0, global_mse_loss_weight=0.0).train()
    model.config.decoder_config.condition_dropout_prob = 0.0
    pixels, _, latents, noise = _batch(model, vae, flat=True)
    timesteps = torch.tensor([300, 300])
    vae_before = {name: value.clone() for name, value in vae.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(pixel_values=pixels, latents=latents, noise=noise, timesteps=timesteps).loss
        optimizer.zero_grad()
        loss.backward()
        if not losses:
            unet_grad = sum(float(p.grad.abs().sum()) for p in model.unet.parameters() if p.grad is not None)
            slot_grad = sum(float(p.grad.abs().sum()) for p in model.tokenizer.parameters() if p.grad is not None)
            assert unet_grad > 0 and slot_grad > 0
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(torch.equal(vae.state_dict()[name], value) for name, value in vae_before.items())
    assert not any(name.startswith("vae.") for name, _ in model.named_parameters())


def test_config_refuses_a_pixel_loss_without_a_latent_space():
    with pytest.raises(ValueError, match=r"pixel_loss_weight.*latent-space"):
        SlotQFormerConfig.tiny(pixel_loss_weight=1.0)
    with pytest.raises(ValueError, match="pixel_loss_max_images"):
        SlotQFormerConfig.tiny(decoder_config=LATENT_DECODER, pixel_loss_weight=1.0, pixel_loss_max_images=0)
