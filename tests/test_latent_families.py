"""SlotQFormer and SeTok with a TAEF2 latent-space decoder and a frozen pretrained vision encoder (issue 16).

Properties checked: the 128 px latent recipes build with the "pretrained" encoder's weights and config (a tiny random
DINOv2 saved here), stay within their token budgets and train two steps on latents encoded once; the patch-colour
features reach the slot attention / the clustering only when ``color_feature_weight > 0`` (off by default); a decoder
pipeline saved with its TAEF2 reloads and draws the same images for the same seed; cached ``latents`` give the same
loss as encoding with the shipped TAEF2 in ``forward``; paper defaults and tiny presets keep their decoders.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hf_vtok.evaluation.tokenizers import load_tokenizer_folder
from hf_vtok.models.setok.configuration_setok import SeTokConfig
from hf_vtok.models.setok.modeling_setok import SeTokForPreTraining, SeTokModel
from hf_vtok.models.slot_qformer.configuration_slot_qformer import SlotQFormerConfig
from hf_vtok.models.slot_qformer.modeling_slot_qformer import SlotQFormerForPreTraining, SlotQFormerModel
from hf_vtok.trainer.arguments import parse_tokenizer_arguments
from hf_vtok.trainer.tokenizer_trainer import build_training_model, train_tokenizer
from hf_vtok.utils.autoencoder_taef2 import TAEF2_CHECKPOINT_DIR, AutoencoderTAEF2, reference_bundled_taef2

torch.set_num_threads(1)

SQ_LATENT_DECODER = {"image_size": 64, "vae": "taef2", "unet": {"sample_size": 8, "in_channels": 32, "out_channels": 32}}
SETOK_LATENT_DECODER = {"vae": "taef2", "unet": {"sample_size": 8, "in_channels": 32, "out_channels": 32},
                        "scheduler": {"clip_sample": False}}


@pytest.fixture
def pretrained_dinov2(tmp_path):
    """A tiny random DINOv2 saved as a "pretrained" encoder folder (pretrained at 28 px, interpolated at 126 px)."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                                     image_size=28, patch_size=14))  # fmt: skip
    model.save_pretrained(tmp_path / "dinov2")
    return tmp_path / "dinov2", model


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["slot_qformer_latent_128", "setok_latent_128", "setok_latent_128_footprint"])
def test_latent_recipe_loads_the_pretrained_encoder_and_trains_on_cached_latents(recipe, tmp_path, pretrained_dinov2, datasets_cache, encoder_calls):
    folder, dinov2 = pretrained_dinov2
    argv = ["--recipe", recipe, "--num_train_images", "4", "--per_device_train_batch_size", "2", "--max_steps", "2",
            "--save_strategy", "no", "--logging_steps", "1", "--report_to", "none", "--output_dir", str(tmp_path / "run")]  # fmt: skip
    script_args, training_args = parse_tokenizer_arguments(argv)
    assert script_args.config_overrides["vision_model_name_or_path"] == "/work/runs/dinov2-s"
    assert (script_args.vae, script_args.dataset_style) == ("taef2", "mixed")
    script_args.config_overrides["vision_model_name_or_path"] = str(folder)

    model = build_training_model(script_args)
    config = model.config
    assert config.vision_config.hidden_size == 32 and config.color_feature_weight == 4.0
    for name, value in dinov2.state_dict().items():
        assert torch.equal(model.tokenizer.vision_model.state_dict()[name], value), name
    assert not any(p.requires_grad for p in model.tokenizer.vision_model.parameters())  # frozen
    assert (config.image_size, config.decoder_latent_shape) == (126, (32, 16, 16))
    if recipe.startswith("slot_qformer"):
        assert config.num_slots * config.rvq_depths * math.log2(config.codebook_size) <= 32 * 4 * 13
    else:
        assert config.num_visual_tokens <= 65

    trained, trainer = train_tokenizer(script_args, training_args)
    assert encoder_calls == [4]  # the scenes encoded once, never during the two steps
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    decoder_dir = tmp_path / "run" / "decoder"
    # the tokenizer reads 126 px, the decoder draws 128 px: `hf-vtok eval` scores at the decoder's size by default
    loaded = load_tokenizer_folder(tmp_path / "run")
    assert (loaded.image_size, loaded.decoder_image_size) == (126, 128)
    assert (decoder_dir / "vae" / "LICENSE").read_text() == (TAEF2_CHECKPOINT_DIR / "LICENSE").read_text()
    # the saved tokenizer is self-contained: its config holds the pretrained encoder's, its weights the encoder's
    reloaded = type(trained.tokenizer).from_pretrained(tmp_path / "run" / "tokenizer")
    assert reloaded.config.vision_config.hidden_size == 32
    assert torch.equal(reloaded.vision_model.embeddings.patch_embeddings.projection.weight,
                       dinov2.embeddings.patch_embeddings.projection.weight)  # fmt: skip


def _patch_colors(pixel_values, config, patch):
    """Mean colour in [0, 1] of each patch, row-major (computed independently of the library)."""
    mean = torch.tensor(config.image_mean)[:, None, None]
    std = torch.tensor(config.image_std)[:, None, None]
    images = (pixel_values * std + mean).clamp(0, 1)
    b, c, h, w = images.shape
    return images.reshape(b, c, h // patch, patch, w // patch, patch).mean(dim=(3, 5)).flatten(2).transpose(1, 2)


def test_slot_attention_reads_patch_colors_only_when_weighted():
    torch.manual_seed(0)
    pixel_values = torch.randn(2, 3, 64, 64)
    seen = {}
    for weight in (0.0, 4.0):
        torch.manual_seed(1)  # the same encoder weights for both
        model = SlotQFormerModel(SlotQFormerConfig.tiny(**({"color_feature_weight": weight} if weight else {}))).eval()
        assert model.config.color_feature_weight == weight  # 0 by default
        model.vision_projection.register_forward_hook(lambda module, args, out, w=weight: seen.__setitem__(w, args[0]))
        model.get_image_features(pixel_values)
    hidden = model.vision_model(pixel_values=pixel_values).last_hidden_state[:, 1:]
    torch.testing.assert_close(seen[0.0], hidden)  # off: the encoder's features untouched
    assert seen[4.0].shape[-1] == hidden.shape[-1] + 3
    torch.testing.assert_close(seen[4.0][..., :-3], torch.nn.functional.normalize(hidden, dim=-1))
    torch.testing.assert_close(seen[4.0][..., -3:], 4.0 * _patch_colors(pixel_values, model.config, 8))


def test_clustering_reads_patch_colors_only_when_weighted(monkeypatch):
    import hf_vtok.models.setok.modeling_setok as modeling_setok

    seen = []
    clustering = modeling_setok.density_peak_clustering
    monkeypatch.setattr(modeling_setok, "density_peak_clustering", lambda features, **kw: seen.append(features) or clustering(features, **kw))
    torch.manual_seed(0)
    pixel_values = torch.randn(2, 3, 64, 64)
    for weight in (0.0, 4.0):
        torch.manual_seed(1)
        model = SeTokModel(SeTokConfig.tiny(**({"color_feature_weight": weight} if weight else {}))).eval()
        assert model.config.color_feature_weight == weight
        tokens = model.encode(pixel_values)
    features = model.get_image_features(pixel_values).last_hidden_state
    assert seen[0].shape[-1] == features.shape[-1]  # off: the encoder's features
    torch.testing.assert_close(seen[1][..., -3:], 4.0 * _patch_colors(pixel_values, model.config, 8))
    torch.testing.assert_close(seen[1][..., :-3], torch.nn.functional.normalize(features, dim=-1))
    assert tokens.embeddings.shape[-1] == features.shape[-1]  # the merger still pools the encoder's features
    with pytest.raises(ValueError, match="pixel_values"):
        model.tokenize_features(features)


def test_merger_pixel_embedding_puts_a_clusters_own_pixels_into_its_token_only():
    # The frozen encoder's features fixed, recolouring the patches of one cluster changes that cluster's token (the
    # merger pools the embedded pixels too) and no other; with the flag off (the paper) the tokens ignore the pixels.
    torch.manual_seed(0)
    pixel_values = torch.randn(2, 3, 64, 64)
    for flag in (False, True):
        torch.manual_seed(1)
        model = SeTokModel(SeTokConfig.tiny(merger_pixel_embedding=flag)).eval()
        assert model.config.merger_pixel_embedding is flag and (model.pixel_embedding is not None) is flag
        with torch.no_grad():
            features = model.get_image_features(pixel_values).last_hidden_state
            tokens = model.tokenize_features(features, pixel_values=pixel_values)
            labels = tokens.assignments.argmax(dim=1)[0].reshape(8, 8)  # image 0's cluster of every 8 px patch
            recoloured = pixel_values.clone()
            inside = (labels == labels[0, 0]).repeat_interleave(8, 0).repeat_interleave(8, 1)
            recoloured[0, 0][inside] += 2.0  # more red in the first patch's cluster, features unchanged
            changed = model.tokenize_features(features, pixel_values=recoloured)
        assert torch.equal(changed.attention_mask, tokens.attention_mask)  # the clustering reads the features only
        moved = (changed.embeddings - tokens.embeddings).abs().amax(dim=-1)  # [B, T]
        if not flag:
            assert moved.max() == 0
            continue
        assert moved[0, labels[0, 0]] > 1e-3
        others = torch.ones_like(moved, dtype=torch.bool)
        others[0, labels[0, 0]] = False
        assert moved[others].max() == 0
    with pytest.raises(ValueError, match="pixel_values"):
        model.tokenize_features(features)
    with pytest.raises(TypeError, match="merger_pixel_embedding"):
        SeTokConfig.tiny(merger_pixel_embedding=1)
    assert SeTokConfig().merger_pixel_embedding is False  # the paper's merger


def test_paper_and_tiny_decoders_are_unchanged():
    assert isinstance(SlotQFormerConfig().decoder_config.vae, dict) and SlotQFormerConfig().decoder_latent_shape is None
    assert isinstance(SeTokConfig().decoder_config.vae, dict) and SeTokConfig().decoder_latent_shape is None
    assert SlotQFormerConfig.tiny().decoder_config.vae is None and SeTokConfig.tiny().decoder_config.vae is None
    assert SlotQFormerConfig.tiny().color_feature_weight == 0.0 and SeTokConfig().color_feature_weight == 0.0
    with pytest.raises(TypeError, match="decoder_config\\['vae'\\]"):
        SlotQFormerConfig.tiny(decoder_config={"vae": "sd3"})
    with pytest.raises(ValueError, match="in_channels"):
        SeTokConfig.tiny(decoder_config={"vae": "taef2", "scheduler": {"clip_sample": False}})  # 3-channel UNet
    # the tiny preset clamps its predicted pixels to [-1, 1]; a latent decoder must not (TAEF2 latents reach +-8)
    with pytest.raises(ValueError, match="clip_sample"):
        SeTokConfig.tiny(decoder_config=dict(SETOK_LATENT_DECODER, scheduler={"clip_sample": True}))
    wide = SeTokConfig.tiny(decoder_config=dict(SETOK_LATENT_DECODER, scheduler={"clip_sample": True, "clip_sample_range": 5.0}))
    assert wide.decoder_config.scheduler["clip_sample_range"] == 5.0


def test_clamping_taef2_latents_to_the_unit_range_ruins_the_round_trip():
    # Why a latent decoder must not clip its predicted sample to [-1, 1]: a fraction of TAEF2 latents lies outside.
    from hf_vtok.data.shapes import generate_shapes_dataset
    from hf_vtok.utils.autoencoder_taef2 import load_taef2

    vae = load_taef2().eval()
    scenes = generate_shapes_dataset(4, image_size=64, style="flat", seed=5, progress=False)
    images = torch.stack([torch.from_numpy(np.asarray(image.convert("RGB"))) for image in scenes["image"]])
    images = images.permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        latents = vae.scale_latents(vae.encode(images).latents)  # the space the decoders denoise

        def psnr(scaled):
            decoded = vae.decode(vae.unscale_latents(scaled)).sample
            return float(10 * torch.log10(4.0 / ((decoded - images) ** 2).mean()))

        assert (latents.abs() > 1).float().mean() > 0.05
        assert psnr(latents) > psnr(latents.clamp(-1, 1)) + 6


FAMILIES = [
    (SlotQFormerForPreTraining, lambda: SlotQFormerConfig.tiny(decoder_config=SQ_LATENT_DECODER)),
    (SeTokForPreTraining, lambda: SeTokConfig.tiny(decoder_config=SETOK_LATENT_DECODER)),
]


@pytest.mark.parametrize(("model_class", "make_config"), FAMILIES)
def test_cached_latents_train_like_latents_encoded_in_forward(model_class, make_config):
    torch.manual_seed(0)
    config = make_config()
    assert config.decoder_latent_shape == (32, 8, 8)
    model = model_class(config).eval()
    assert model.vae is None and not any("taef2" in name for name, _ in model.named_modules())  # not a submodule
    pixel_values = torch.randn(2, 3, 64, 64)
    images = torch.nn.functional.interpolate(pixel_values, size=(64, 64))
    vae = model.decoder_autoencoder()
    assert isinstance(vae, AutoencoderTAEF2)
    from hf_vtok.utils.modeling_utils import decoder_images, encode_latents

    latents = encode_latents(vae, decoder_images(images, config.image_mean, config.image_std, 64))
    kwargs = {"noise": torch.randn(2, 32, 8, 8), "timesteps": torch.tensor([10, 500])}
    extra = {"input_ids": torch.randint(1, 64, (2, 8))} if model_class is SlotQFormerForPreTraining else {}
    cached = model(pixel_values, latents=latents, **kwargs, **extra).loss
    encoded = model(pixel_values, **kwargs, **extra).loss
    torch.testing.assert_close(cached, encoded)
    with pytest.raises(ValueError, match="`latents` must have shape"):
        model(pixel_values, latents=latents[:, :4], **kwargs, **extra)
    pixel_model = model_class(type(config).tiny())
    with pytest.raises(ValueError, match="`latents` were given"):
        pixel_model(pixel_values, latents=latents, **extra)


@pytest.mark.parametrize(("model_class", "make_config"), FAMILIES)
def test_latent_decoder_pipeline_round_trip_draws_the_same_images(model_class, make_config, tmp_path):
    from diffusers import DiffusionPipeline

    torch.manual_seed(0)
    model = model_class(make_config()).eval()
    pipe = model.get_decoder_pipeline()
    assert isinstance(pipe.vae, AutoencoderTAEF2)
    pipe.save_pretrained(tmp_path / "decoder")
    assert (tmp_path / "decoder" / "vae" / "LICENSE").is_file()
    reloaded = DiffusionPipeline.from_pretrained(tmp_path / "decoder")
    assert type(reloaded) is type(pipe) and isinstance(reloaded.vae, AutoencoderTAEF2)
    pixel_values = torch.randn(2, 3, 64, 64)
    drawn = [p(pixel_values=pixel_values, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
             for p in (pipe, reloaded)]  # fmt: skip
    np.testing.assert_allclose(drawn[1], drawn[0], atol=1e-6)
    assert drawn[0].shape == (2, 64, 64, 3)
    # A shipped folder keeps only a reference to the bundled TAEF2 weights and draws the same images.
    reference_bundled_taef2(tmp_path / "decoder" / "vae")
    assert sorted(path.name for path in (tmp_path / "decoder" / "vae").iterdir()) == ["config.json"]
    referenced = DiffusionPipeline.from_pretrained(tmp_path / "decoder")
    again = referenced(pixel_values=pixel_values, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_allclose(again, drawn[0], atol=1e-6)
    latents = reloaded(pixel_values=pixel_values, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                       output_type="latent").images  # fmt: skip
    assert latents.shape == (2, 32, 8, 8)
