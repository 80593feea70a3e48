"""Latent-space decoders and the pretrained base LM in training (issue 16).

Properties checked: a DDT tokenizer whose decoder works in the TAEF2 latent space trains on latents encoded ONCE
(the encoder runs one pass over the data on the first run, never during a training step, and not at all on a
second run, which then trains to the same weights); the collator hands ``latents`` only to a forward that takes
them, from the same pixels as ``pixel_values``; the exported ``decoder/`` holds the TAEF2 as ``vae`` with its MIT
licence, reloads with ``DDTDecoderPipeline`` and the generic ``DiffusionPipeline``, draws the same images for the same
seed and decodes exactly ``vae.decode`` of its latents; the model card carries the TAEF2 notice and maps
``smollm2`` to its Hub id; the 128 px latent recipe stays within its bit budget and trains; the ``mixed`` shapes
style is half flat, half textured, seeded; an MLLM recipe on a tied-embedding Llama whose pad token is its EOS keeps
float32 trainable rows under bf16 autocast, trains the visual rows of the tied head, and keeps the final EOS of
every completion in the labels.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hf_vtok.trainer.arguments import parse_mllm_arguments, parse_tokenizer_arguments
from hf_vtok.trainer.tokenizer_trainer import (
    TokenizerTrainingCollator,
    build_training_model,
    decoder_autoencoder,
    generate_training_scenes,
    train_tokenizer,
)
from hf_vtok.utils.autoencoder_taef2 import TAEF2_CHECKPOINT_DIR, AutoencoderTAEF2

torch.set_num_threads(1)

LATENT_DECODER = {"decoder_config": {"patch_size": 2, "in_channels": 32, "vae_scale_factor": 8}}


def latent_ddt_argv(output_dir, *extra):
    return ["--recipe", "ddt_tiny", "--config_overrides", json.dumps(LATENT_DECODER), "--num_train_images", "8",
            "--per_device_train_batch_size", "4", "--max_steps", "2", "--logging_steps", "1", "--report_to", "none",
            "--output_dir", str(output_dir), *extra]  # fmt: skip


@pytest.mark.slow
def test_latent_decoder_trains_on_latents_encoded_once_and_exports_its_vae(tmp_path, datasets_cache, encoder_calls):
    from diffusers import DiffusionPipeline

    from hf_vtok.models.ddt.pipeline_ddt import DDTDecoderPipeline

    model, _ = train_tokenizer(*parse_tokenizer_arguments(latent_ddt_argv(tmp_path / "first")))
    # one pass over the 8 images (cache_latents' batches of 16), none during the two training steps
    assert encoder_calls == [8]
    assert any(datasets_cache.rglob("latents-*.arrow"))
    encoder_calls.clear()
    again, _ = train_tokenizer(*parse_tokenizer_arguments(latent_ddt_argv(tmp_path / "second")))
    assert encoder_calls == []  # the datasets cache answered
    for (name, value), other in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(value, other), name  # same seed, same cached latents: the same training

    decoder_dir = tmp_path / "first" / "decoder"
    index = json.loads((decoder_dir / "model_index.json").read_text())
    assert index["vae"] == ["hf_vtok.utils.autoencoder_taef2", "AutoencoderTAEF2"]
    assert (decoder_dir / "vae" / "LICENSE").read_text() == (TAEF2_CHECKPOINT_DIR / "LICENSE").read_text()
    assert "MIT" in (decoder_dir / "vae" / "LICENSE").read_text()

    ids = torch.randint(0, model.config.codebook_size, (2, model.config.num_visual_tokens), generator=torch.Generator().manual_seed(1))
    kwargs = {"token_ids": ids, "num_inference_steps": 3, "guidance_scale": 1.0}
    reloaded = DDTDecoderPipeline.from_pretrained(decoder_dir)
    generic = DiffusionPipeline.from_pretrained(decoder_dir)
    assert isinstance(generic, DDTDecoderPipeline) and isinstance(generic.vae, AutoencoderTAEF2)
    in_memory = model.get_decoder_pipeline(vae=reloaded.vae)
    images = [pipe(**kwargs, generator=torch.Generator().manual_seed(0), output_type="np").images for pipe in (in_memory, reloaded, generic)]
    np.testing.assert_allclose(images[1], images[0], atol=1e-6)
    np.testing.assert_allclose(images[2], images[0], atol=1e-6)

    latents = reloaded(**kwargs, generator=torch.Generator().manual_seed(0), output_type="latent").images
    assert latents.shape == (2, 32, 64 // 8, 64 // 8)
    # pixels are exactly the autoencoder's decoding of those (scaled) latents
    with torch.no_grad():
        decoded = reloaded.vae.decode(reloaded.vae.unscale_latents(latents)).sample
    np.testing.assert_allclose(images[1], ((decoded.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy(), atol=1e-5)

    # an MLLM trained on this tokenizer re-ships the decoder, and with it the licence and the card's notice
    from hf_vtok.trainer.hub import build_model_card
    from hf_vtok.trainer.mllm_trainer import train_mllm

    train_mllm(*parse_mllm_arguments(["--recipe", "ddt_llama_sft_tiny", "--visual_tokenizer", str(tmp_path / "first"),
                                      "--num_train_images", "4", "--max_steps", "1", "--report_to", "none",
                                      "--output_dir", str(tmp_path / "mllm")]))  # fmt: skip
    assert (tmp_path / "mllm" / "decoder" / "vae" / "LICENSE").read_text() == (TAEF2_CHECKPOINT_DIR / "LICENSE").read_text()
    assert "decoder/vae/LICENSE" in build_model_card(tmp_path / "mllm", "me/mllm").content


@pytest.mark.slow
def test_model_card_carries_the_taef2_notice_and_the_smollm2_hub_id(tmp_path, datasets_cache):
    from hf_vtok.trainer.hub import build_model_card, push_folder

    train_tokenizer(*parse_tokenizer_arguments(latent_ddt_argv(tmp_path / "latent", "--num_train_images", "4", "--max_steps", "1")))
    train_tokenizer(*parse_tokenizer_arguments(["--recipe", "ddt_tiny", "--num_train_images", "4", "--max_steps", "1",
                                                "--report_to", "none", "--output_dir", str(tmp_path / "pixel")]))  # fmt: skip
    plan = push_folder(tmp_path / "latent", "me/latent-ddt", dry_run=True, staging_dir=tmp_path / "staged")
    assert "decoder/vae/LICENSE" in plan.files
    card = (plan.staging_dir / "README.md").read_text()
    assert "TAEF2" in card and "MIT" in card and "decoder/vae/LICENSE" in card
    assert "TAEF2" not in build_model_card(tmp_path / "pixel", "me/pixel-ddt").content

    # an MLLM folder trained from `smollm2`: the card's metadata names the Hub repository of the base model
    mllm = tmp_path / "mllm_run"
    (mllm / "mllm").mkdir(parents=True)
    (mllm / "mllm" / "config.json").write_text(json.dumps({"model_type": "vtok_mllm", "visual_tokenizer_config": {}}))
    (mllm / "recipe.json").write_text(json.dumps({"recipe": {"model_name_or_path": "smollm2", "finetuning": "lora"}}))
    assert build_model_card(mllm, "me/smol-mllm").data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_collator_passes_latents_only_to_a_forward_that_takes_them():
    from PIL import Image

    from hf_vtok.mllm.processing_mllm import image_processor_for
    from hf_vtok.models.ddt.configuration_ddt import DDTTokenizerConfig

    processor = image_processor_for(DDTTokenizerConfig.tiny())
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))  # cache_latents stretches it to 64 x 64
    latents = torch.randn(2, 32, 8, 8)
    rows = [{"image": wide, "latents": latents[0]}, {"image": wide, "latents": latents[1]}]
    batch = TokenizerTrainingCollator(processor, ["pixel_values", "latents"])(rows)
    assert torch.equal(batch["latents"], latents)
    stretched = processor([wide.resize((64, 64), Image.BICUBIC)], return_tensors="pt").pixel_values
    torch.testing.assert_close(batch["pixel_values"][0], stretched[0])
    assert "latents" not in TokenizerTrainingCollator(processor, ["pixel_values"])(rows)


def test_decoder_autoencoder_matches_the_decoder_latent_space():
    pixel_model = build_training_model(parse_tokenizer_arguments(["--recipe", "ddt_tiny", "--output_dir", "unused"])[0])
    assert decoder_autoencoder(pixel_model, "taef2") is None  # pixel space: no autoencoder
    args = parse_tokenizer_arguments(["--recipe", "ddt_tiny", "--config_overrides", json.dumps(LATENT_DECODER), "--output_dir", "x"])[0]
    latent_model = build_training_model(args)
    assert isinstance(decoder_autoencoder(latent_model, args.vae), AutoencoderTAEF2)
    with pytest.raises(ValueError, match="`vae` is None"):
        decoder_autoencoder(latent_model, None)
    with pytest.raises(ValueError, match="`vae` must be 'taef2'"):
        decoder_autoencoder(latent_model, "sd3")
    sixteen = {"decoder_config": {**LATENT_DECODER["decoder_config"], "in_channels": 16}}
    args = parse_tokenizer_arguments(["--recipe", "ddt_tiny", "--config_overrides", json.dumps(sixteen), "--output_dir", "x"])[0]
    with pytest.raises(ValueError, match="32-channel latents at 1/8 resolution.*in_channels = 16"):
        decoder_autoencoder(build_training_model(args), "taef2")


def test_mixed_style_is_half_flat_half_textured_and_seeded():
    from hf_vtok.data.shapes import generate_shapes_dataset

    mixed = generate_training_scenes(5, 64, "mixed", 7, progress=False)
    flat = generate_shapes_dataset(2, image_size=64, style="flat", seed=7, with_edits=False, progress=False)
    textured = generate_shapes_dataset(3, image_size=64, style="textured", seed=8, with_edits=False, progress=False)
    expected = list(flat["image"]) + list(textured["image"])
    assert [np.asarray(a).tobytes() for a in mixed["image"]] == [np.asarray(b).tobytes() for b in expected]
    with pytest.raises(ValueError, match="style"):
        generate_training_scenes(4, 64, "striped", 0)


@pytest.mark.slow
def test_latent_128_recipe_fits_its_bit_budget_and_trains(tmp_path, datasets_cache, encoder_calls):
    script_args, training_args = parse_tokenizer_arguments(["--recipe", "ddt_latent_128", "--output_dir", str(tmp_path)])
    config = build_training_model(script_args).config
    bits = config.num_visual_tokens * math.log2(config.codebook_size)
    assert (config.image_size, config.patch_size, config.num_visual_tokens, bits) == (128, 16, 192, 1920)
    assert bits <= 0.12 * config.image_size**2
    assert (config.codebook_dim, config.codebook_kmeans_init, config.loss_target) == (16, True, "x0")
    decoder = config.decoder_config
    assert (decoder.in_channels, decoder.vae_scale_factor, decoder.sample_size, decoder.patch_size) == (32, 8, 16, 2)
    assert (script_args.vae, script_args.dataset_style) == ("taef2", "mixed")
    assert (training_args.learning_rate, training_args.warmup_steps, training_args.weight_decay) == (5e-4, 200, 0.0)
    assert (training_args.adam_beta1, training_args.adam_beta2, training_args.per_device_train_batch_size) == (0.9, 0.99, 32)
    assert (training_args.bf16, training_args.seed, training_args.save_steps, training_args.logging_steps) == (False, 0, 200, 50)

    # two steps of the recipe at its own sizes, on 4 scenes
    argv = ["--recipe", "ddt_latent_128", "--num_train_images", "4", "--per_device_train_batch_size", "2", "--max_steps", "2",
            "--save_strategy", "no", "--logging_steps", "1", "--report_to", "none", "--output_dir", str(tmp_path / "run")]  # fmt: skip
    _, trainer = train_tokenizer(*parse_tokenizer_arguments(argv))
    assert encoder_calls == [4]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert (tmp_path / "run" / "decoder" / "vae" / "LICENSE").is_file()


# ------------------------------------------------------------------------------------------------ MLLM on SmolLM2
@pytest.fixture
def chatml_tokenizer_dir(tmp_path):
    """The shapes word-level tokenizer with ChatML markers and SmolLM2's special-token layout: pad = eos = <|im_end|>."""
    from hf_vtok.data.text_tokenizer import build_text_tokenizer

    tokenizer = build_text_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"
    tokenizer.save_pretrained(tmp_path / "chatml_tokenizer")
    return tmp_path / "chatml_tokenizer"


def test_smollm2_recipe_values():
    script_args, training_args, model_args = parse_mllm_arguments(["--recipe", "smollm2_ddt_shapes", "--output_dir", "x"])
    assert (model_args.model_name_or_path, script_args.visual_tokenizer, script_args.chat_template) == ("smollm2", "shipped:ddt", "chatml")
    assert (model_args.use_peft, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout) == (True, 16, 32, 0.05)
    assert set(model_args.lora_target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert script_args.train_visual_rows and script_args.task_mix == {"qa": 3.0, "captioning": 1.0, "text_to_image": 1.0}
    assert (script_args.num_train_images, script_args.dataset_style, training_args.max_length) == (4000, "flat", 128)
    assert (training_args.learning_rate, training_args.lr_scheduler_type.value, training_args.warmup_steps) == (5e-4, "cosine", 50)
    assert (training_args.weight_decay, training_args.max_grad_norm, training_args.max_steps) == (0.0, 1.0, 1500)
    assert (training_args.per_device_train_batch_size, training_args.gradient_accumulation_steps) == (8, 2)
    assert (training_args.save_steps, training_args.save_total_limit, training_args.bf16) == (100, 2, True)
    assert model_args.dtype in (None, "float32")  # float32 weights; bf16 is autocast only


@pytest.mark.slow
def test_smollm2_recipe_machinery_on_a_tied_llama_whose_pad_is_eos(tmp_path, chatml_tokenizer_dir):
    from hf_vtok.trainer.mllm_trainer import new_token_rows, train_mllm

    argv = ["--recipe", "smollm2_ddt_shapes", "--model_name_or_path", "tiny-llama", "--visual_tokenizer", "random:ddt",
            "--text_tokenizer", str(chatml_tokenizer_dir), "--base_model_overrides", '{"tie_word_embeddings": true}',
            "--num_train_images", "8", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
            "--max_steps", "2", "--warmup_steps", "0", "--save_strategy", "no", "--report_to", "none",
            "--output_dir", str(tmp_path / "run")]  # fmt: skip
    script_args, training_args, model_args = parse_mllm_arguments(argv)
    model, trainer, summary = train_mllm(script_args, training_args, model_args)
    tokenizer = trainer.processing_class
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    base = model.get_base_model()
    # tied: PEFT wraps the head too, and it reads the same trained rows as the embedding
    assert torch.equal(base.get_output_embeddings().weight, base.get_input_embeddings().weight)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())  # bf16 autocasts, weights stay fp32
    assert any("trainable_tokens_delta" in name for name in trainable) and any("lora_" in name for name in trainable)
    assert summary["global_step"] == 2 and math.isfinite(summary["train_loss"])

    # the trained visual rows reach the tied head of the merged model; the text rows are untouched
    from transformers import AutoModelForImageTextToText, AutoProcessor, set_seed

    from hf_vtok.trainer.mllm_trainer import build_mllm

    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "run" / "mllm")
    rows = torch.tensor(new_token_rows(merged, AutoProcessor.from_pretrained(tmp_path / "run" / "mllm")))
    set_seed(training_args.seed)
    untrained = build_mllm(script_args, model_args, training_args.seed)[0].get_input_embeddings().weight
    embedding, head = merged.get_input_embeddings().weight, merged.get_output_embeddings().weight
    assert torch.equal(embedding, head)
    text_rows = torch.arange(int(rows[0]))
    assert torch.equal(embedding[text_rows], untrained[text_rows])
    assert not torch.allclose(embedding[rows], untrained[rows])

    # labels keep the final <|im_end|> of every completion although it is also the pad token
    batch = next(iter(trainer.get_train_dataloader()))
    labels, eos = batch["labels"], tokenizer.eos_token_id
    examples = int((batch["position_ids"] == 0).sum()) if "position_ids" in batch else len(labels)
    assert int((labels == eos).sum()) == examples > 0



def test_attached_taef2_encodes_like_the_cached_latents():
    """``attach_vae`` with the deterministic TAEF2 (no ``latent_dist``) trains on the same latents as the cache."""
    from hf_vtok.models.ddt import DDTTokenizerConfig, DDTTokenizerForPreTraining
    from hf_vtok.utils.autoencoder_taef2 import load_taef2

    config = DDTTokenizerConfig.tiny(decoder_config={"in_channels": 32, "vae_scale_factor": 8, "patch_size": 2})
    model, vae = DDTTokenizerForPreTraining(config).eval(), load_taef2()
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = vae.scale_latents(vae.encode(pixels).latents)
    fixed = {"timesteps": torch.tensor([0.5, 0.7]), "noise": torch.zeros_like(latents)}
    cached = model(pixel_values=pixels, latents=latents, **fixed).diffusion_loss
    model.attach_vae(vae)
    attached = model(pixel_values=pixels, **fixed).diffusion_loss
    torch.testing.assert_close(attached, cached)
    # the VAE is used, not owned: neither a submodule nor in the saved state dict
    assert not any(name.startswith("_vae") for name in model.state_dict())
    assert all(module is not vae for module in model.modules())


def test_pixel_loss_decodes_the_predicted_latents_through_the_frozen_vae():
    """``pixel_loss_weight``: the implied x̂_0 is decoded by the attached TAEF2 and compared with the image. At t = 0
    x̂_0 is the clean latent, so the pixel loss is exactly the TAEF2 round-trip error; at t > 0 it is the only loss that
    reaches the decoder when the diffusion loss is weighted 0; only the first ``pixel_loss_max_images`` images count."""
    from hf_vtok.models.ddt import DDTTokenizerConfig, DDTTokenizerForPreTraining
    from hf_vtok.utils.autoencoder_taef2 import load_taef2

    decoder = {"in_channels": 32, "vae_scale_factor": 8, "patch_size": 2}
    config = DDTTokenizerConfig.tiny(decoder_config=decoder, pixel_loss_weight=2.0, pixel_loss_max_images=1,
                                     diffusion_loss_weight=0.0)  # fmt: skip
    torch.manual_seed(0)
    model, vae = DDTTokenizerForPreTraining(config).eval(), load_taef2()
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = vae.scale_latents(vae.encode(pixels).latents)
    noise = torch.randn_like(latents)
    with pytest.raises(ValueError, match="attach_vae"):
        model(pixel_values=pixels, latents=latents, timesteps=torch.tensor([0.5, 0.5]), noise=noise)
    model.attach_vae(vae)

    clean = model(pixel_values=pixels, latents=latents, timesteps=torch.zeros(2), noise=noise).pixel_loss
    with torch.no_grad():
        round_trip = torch.nn.functional.mse_loss(vae.decode(latents[:1] / vae.config.scaling_factor).sample, pixels[:1])
    torch.testing.assert_close(clean, round_trip, rtol=1e-4, atol=1e-6)

    out = model(pixel_values=pixels, latents=latents, timesteps=torch.tensor([0.6, 0.6]), noise=noise)
    assert not torch.allclose(out.pixel_loss, clean)
    out.loss.backward()
    assert model.transformer.proj_out.weight.grad.abs().sum() > 0  # from the pixel loss alone (diffusion weight 0)
    assert all(p.grad is None for p in vae.parameters())  # the VAE stays frozen
    changed = pixels.clone()
    changed[1] = -changed[1]
    second = model(pixel_values=changed, latents=latents, timesteps=torch.tensor([0.6, 0.6]), noise=noise).pixel_loss
    torch.testing.assert_close(second, out.pixel_loss)  # image 2 is beyond pixel_loss_max_images

    with pytest.raises(ValueError, match="pixel_loss_weight"):
        DDTTokenizerConfig.tiny(pixel_loss_weight=1.0)  # a pixel-space decoder


@pytest.mark.slow
def test_train_tokenizer_attaches_the_vae_for_the_pixel_loss(tmp_path, datasets_cache, encoder_calls):
    overrides = {**LATENT_DECODER, "pixel_loss_weight": 0.5, "pixel_loss_max_images": 2}
    argv = latent_ddt_argv(tmp_path / "run")
    argv[argv.index("--config_overrides") + 1] = json.dumps(overrides)
    model, trainer = train_tokenizer(*parse_tokenizer_arguments(argv))
    assert model.config.pixel_loss_weight == 0.5 and model._vae is not None
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert encoder_calls == [8]  # still trained on the cached latents: the VAE only decodes


def test_a_continued_stage_takes_top_level_overrides_such_as_the_pixel_loss(tmp_path):
    from hf_vtok.models.ddt import DDTTokenizerConfig, DDTTokenizerForPreTraining

    torch.manual_seed(0)
    trained = DDTTokenizerForPreTraining(DDTTokenizerConfig.tiny(**LATENT_DECODER))
    trained.save_pretrained(tmp_path / "stage1" / "training_model")

    def continued(overrides):
        argv = ["--recipe", "ddt_tiny", "--init_from", str(tmp_path / "stage1"), "--config_overrides", json.dumps(overrides),
                "--output_dir", str(tmp_path / "stage2")]  # fmt: skip
        return build_training_model(parse_tokenizer_arguments(argv)[0])

    model = continued({"pixel_loss_weight": 0.5})
    assert model.config.pixel_loss_weight == 0.5
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="pixel_loss_weight"):
        continued({"pixel_loss_weight": -1.0})
    with pytest.raises(ValueError, match="sub-config"):
        continued({"decoder_config": {"num_layers": 1}})


def test_a_continued_stage_starts_from_a_shipped_folder_that_kept_only_the_decoder_pipeline(tmp_path):
    """Shipped checkpoints and Hub repos keep tokenizer/ + decoder/ but not training_model/: `init_from` reassembles
    the training model from the pipeline's components, with exactly the trained weights (EMA codebook included)."""
    from hf_vtok.models.ddt import DDTTokenizerConfig, DDTTokenizerForPreTraining
    from hf_vtok.utils.autoencoder_taef2 import load_taef2

    torch.manual_seed(0)
    trained = DDTTokenizerForPreTraining(DDTTokenizerConfig.tiny(**LATENT_DECODER))
    with torch.no_grad():  # weights no fresh model has: a random init could not pass the comparison below
        for tensor in trained.state_dict().values():  # parameters and the EMA codebook's buffers
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor))
    trained.get_decoder_pipeline(vae=load_taef2()).save_pretrained(tmp_path / "shipped" / "decoder")
    argv = ["--recipe", "ddt_tiny", "--init_from", str(tmp_path / "shipped"), "--stage", "2",
            "--config_overrides", json.dumps({"pixel_loss_weight": 0.5}), "--output_dir", str(tmp_path / "stage2")]  # fmt: skip
    model = build_training_model(parse_tokenizer_arguments(argv)[0])
    assert type(model) is DDTTokenizerForPreTraining and model.config.pixel_loss_weight == 0.5
    assert model.config.stage == 2 and not any(p.requires_grad for p in model.tokenizer.parameters())
    expected, found = trained.state_dict(), model.state_dict()
    assert expected.keys() == found.keys() and all(torch.equal(expected[key], found[key]) for key in expected)

    (tmp_path / "empty").mkdir()
    argv[argv.index(str(tmp_path / "shipped"))] = str(tmp_path / "empty")
    with pytest.raises(ValueError, match="training_model/ or decoder/"):
        build_training_model(parse_tokenizer_arguments(argv)[0])
