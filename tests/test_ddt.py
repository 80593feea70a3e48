"""Tests of the DDT tokenizer family: the paper's properties (prefix-masked decoding, k(t), EMA codebook
with dead-code revival), the shared API, save/load round trips, input validation and paper-size counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import hf_vtok  # noqa: F401  (registers the Auto classes)
from hf_vtok.models.ddt import (
    DDTDecoderPipeline,
    DDTDecoderTransformer,
    DDTImageProcessor,
    DDTImageProcessorPil,
    DDTTokenConditioner,
    DDTTokenizerConfig,
    DDTTokenizerForPreTraining,
    DDTTokenizerModel,
    counterfactual_interpolation,
    prefix_decoding_strip,
    visible_token_counts,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------- helpers
def _images(batch: int = 4, seed: int = 0, size: int = 64) -> torch.Tensor:
    """Distinct synthetic images in [-1, 1]: a coloured square on a coloured background each."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.empty(batch, 3, size, size)
    for i in range(batch):
        images[i] = (torch.rand(3, generator=generator) * 2 - 1)[:, None, None]
        top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        images[i, :, top : top + size // 2, left : left + size // 2] = (torch.rand(3, generator=generator) * 2 - 1)[:, None, None]
    return images


def _perturb_(module: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Give the zero-initialised layers (adaLN-Zero, output projection) non-zero weights, so that the
    decoder's output depends on its inputs and a 'no influence' test is not trivially true."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


@pytest.fixture(scope="module")
def tiny_model() -> DDTTokenizerForPreTraining:
    torch.manual_seed(0)
    model = DDTTokenizerForPreTraining(DDTTokenizerConfig.tiny()).eval()
    _perturb_(model.conditioner, seed=1)
    _perturb_(model.transformer, seed=2)
    return model


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model) -> DDTDecoderPipeline:
    pipe = tiny_model.get_decoder_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------- config
def test_config_defaults_follow_the_paper():
    config = DDTTokenizerConfig()
    assert config.model_type == "ddt_tokenizer"
    assert config.num_visual_tokens == 480 and config.token_order == "recursive"
    assert (config.hidden_size, config.num_hidden_layers, config.image_size, config.patch_size) == (256, 20, 256, 8)
    assert config.num_image_patches == 1024  # R^{1024 x 256} image tokens
    assert (config.codebook_size, config.codebook_dim, config.token_embedding_dim) == (65536, 16, 16)
    assert config.token_schedule == "uniform" and config.decoder_config.condition_dropout_prob == 0.1
    assert config.codebook_kmeans_init is False and config.entropy_loss_weight == 0.0 and config.image_attends_to_queries
    assert config.vision_config is None  # the paper patchifies raw pixels
    decoder = config.decoder_config
    assert (decoder["num_layers"], config.decoder_hidden_size) == (24, 1536)
    assert sum(config.staged_counts) == 480 and len(config.staged_counts) == 5
    tiny = DDTTokenizerConfig.tiny()
    assert (tiny.image_size, tiny.num_visual_tokens, tiny.codebook_size, tiny.decoder_in_pixel_space) == (64, 16, 512, True)


@pytest.mark.parametrize(
    "overrides, argument",
    [
        ({"patch_size": 7}, "patch_size"),
        ({"token_schedule": "cosine"}, "token_schedule"),
        ({"token_schedule": "staged", "staged_counts": [8, 4, 2, 1, 2]}, "staged_counts"),
        ({"staged_boundaries": [0.5, 0.4, 1.0]}, "staged_boundaries"),
        ({"decoder_config": {"sample_size": 32}}, "sample_size"),
        ({"decoder_config": {"in_channels": 4}}, "in_channels"),
        ({"decoder_config": {"unknown": 1}}, "decoder_config"),
        ({"decoder_config": {"condition_dropout_prob": 1.5}}, "condition_dropout_prob"),
        ({"hidden_size": 66, "num_attention_heads": 4}, "hidden_size"),
    ],
)
def test_config_validation_names_the_field(overrides, argument):
    with pytest.raises(ValueError, match=argument):
        DDTTokenizerConfig.tiny(**overrides)


# ---------------------------------------------------------------------------------------------- k(t)
@pytest.mark.parametrize("num_tokens", [16, 480])
@pytest.mark.parametrize("schedule", ["uniform", "staged"])
def test_token_schedule_is_monotone_and_bounded(num_tokens, schedule):
    config = DDTTokenizerConfig.tiny(num_visual_tokens=num_tokens, token_schedule=schedule)
    t = torch.cat([torch.linspace(0, 1, 1001), torch.rand(500)]).sort().values
    k = visible_token_counts(t, num_tokens, schedule, config.staged_boundaries, config.staged_counts)
    assert k.dtype == torch.long
    assert int(k.min()) >= 1 and int(k.max()) <= num_tokens
    assert bool((k[1:] >= k[:-1]).all())
    # direction (section 3): few tokens at low noise, all T at pure noise
    assert int(k[0]) == 1 and int(k[-1]) == num_tokens


def test_token_schedules_match_their_definitions():
    t = torch.tensor([0.0, 0.25, 0.5, 0.51, 1.0])
    assert visible_token_counts(t, 16).tolist() == [1, 4, 8, 9, 16]  # ceil(t T): token i <-> timestep i
    boundaries, counts = [0.2, 0.4, 0.6, 0.8, 1.0], [192, 184, 72, 48, 16]  # successor code, 512 tokens
    k = visible_token_counts(torch.tensor([0.1, 0.2, 0.4, 0.6, 0.8, 1.0]), 512, "staged", boundaries, counts)
    assert k.tolist() == [96, 192, 376, 448, 496, 512]


# ---------------------------------------------------------------------------------------------- tokenizer
def test_encode_ids_depend_on_the_image(tiny_model):
    tokenizer = tiny_model.tokenizer
    images = torch.cat([_images(2, seed=3), torch.rand(2, 3, 64, 64) * 2 - 1])
    tokens = tokenizer.encode(images)
    assert tokens.ids.shape == (4, 16) and tokens.ids.dtype == torch.long
    assert tokens.embeddings.shape == (4, 16, 16) and tokens.assignments is None
    assert torch.equal(tokens.attention_mask, torch.ones(4, 16, dtype=torch.long))
    assert torch.allclose(tokens.embeddings.norm(dim=-1), torch.ones(4, 16), atol=1e-5)  # cosine codes
    assert torch.equal(tokens.embeddings, tokenizer.embed_ids(tokens.ids))
    assert not torch.equal(tokens.ids[0], tokens.ids[2]) and not torch.equal(tokens.ids[1], tokens.ids[3])
    assert torch.equal(tokenizer.encode(images).ids, tokens.ids)  # deterministic, no codebook update
    assert tokenizer(images).quantization_loss.ndim == 0


def test_tokens_beyond_k_do_not_change_the_velocity(tiny_model):
    """The decoder's prediction at noise level t only depends on the first k(t) tokens (keys are masked)."""
    generator = torch.Generator().manual_seed(0)
    codes = F.normalize(torch.randn(4, 16, 16, generator=generator), dim=-1)
    x_t = torch.randn(4, 3, 64, 64, generator=generator)
    sigmas = torch.tensor([0.05, 0.3, 0.55, 0.8])
    k = tiny_model.conditioner.num_visible_tokens(sigmas)
    changed = codes.clone()
    for row, visible in enumerate(k.tolist()):
        changed[row, visible:] = F.normalize(torch.randn(16 - visible, 16, generator=generator), dim=-1)

    def velocity(token_codes, num_visible):
        context, mask = tiny_model.conditioner(token_codes, num_visible)
        return tiny_model.transformer(x_t, sigmas * 1000, context, mask).sample

    with torch.no_grad():
        reference = velocity(codes, k)
        assert torch.allclose(reference, velocity(changed, k), atol=1e-6)
        # ... while a change inside the prefix does change it (the test above is not vacuous)
        inside = codes.clone()
        inside[:, 0] = -inside[:, 0]
        assert (reference - velocity(inside, k)).abs().amax(dim=(1, 2, 3)).min() > 1e-4


def test_zero_mode_hidden_tokens_have_no_influence_either():
    torch.manual_seed(0)
    conditioner = DDTTokenConditioner(num_tokens=8, token_dim=16, hidden_size=64, hidden_token_mode="zero")
    codes = torch.randn(2, 8, 16)
    changed = codes.clone()
    changed[:, 3:] = torch.randn(2, 5, 16)
    visible = torch.tensor([3, 3])
    a, mask = conditioner(codes, visible)
    b, _ = conditioner(changed, visible)
    assert mask is None and torch.equal(a, b)


def test_training_step_reports_losses_and_codebook_usage():
    torch.manual_seed(0)
    model = DDTTokenizerForPreTraining(DDTTokenizerConfig.tiny()).train()
    out = model(_images(4))
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    expected = model.config.diffusion_loss_weight * out.diffusion_loss + model.config.commitment_weight * out.commitment_loss
    assert torch.allclose(out.loss.detach(), expected, atol=1e-6)
    assert 1.0 <= float(out.perplexity) <= 64 and 0 < float(out.codebook_usage) <= 1
    assert out.dead_codes.dtype == torch.long and out.ids.shape == (4, 16)
    assert out.num_visible_tokens.shape == (4,) and int(out.num_visible_tokens.max()) <= 16
    out.loss.backward()
    assert model.tokenizer.queries.grad is not None  # end to end: the encoder is trained
    assert model.tokenizer.quantizer.codebook.weight.grad is None  # EMA codebook, no gradient


def test_dead_codes_are_revived_from_batch_vectors():
    torch.manual_seed(0)
    model = DDTTokenizerForPreTraining(DDTTokenizerConfig.tiny()).train()
    images = _images(4)
    model(images)  # first step: calibrates the EMA usage
    codebook = model.tokenizer.quantizer.codebook
    used = model.tokenizer.encode(images).ids.unique()
    unused = torch.ones(512, dtype=torch.bool)
    unused[used] = False
    dead = unused.nonzero().flatten()[::4]  # codes this batch will not pick, so the EMA keeps them dead
    with torch.no_grad():
        codebook.cluster_size[dead] = 0.0  # force usage far below the threshold
    before = codebook.weight.detach().clone()
    out = model(images)
    assert int(out.dead_codes) >= len(dead)
    with torch.no_grad():
        vectors = F.normalize(model.tokenizer.encode_features(images).reshape(-1, 16), dim=-1)
    revived = codebook.weight.detach()[dead]
    assert not torch.allclose(revived, before[dead])
    # every revived code is now (up to float error) one of this batch's encoder outputs
    assert torch.allclose((revived @ vectors.t()).max(dim=1).values, torch.ones(len(dead)), atol=1e-5)


def test_loss_decreases_on_a_tiny_config():
    torch.manual_seed(0)
    model = DDTTokenizerForPreTraining(DDTTokenizerConfig.tiny())
    images = _images(8, seed=5)
    generator = torch.Generator().manual_seed(1)
    timesteps, noise = torch.linspace(0.05, 0.95, 8), torch.randn(images.shape, generator=generator)

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            return float(model(images, timesteps=timesteps, noise=noise).diffusion_loss)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    before = evaluate()
    model.train()
    for _ in range(60):
        loss = model(images).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate()
    assert after < 0.8 * before, (before, after)  # measured: 1.44 -> ~1.03


def test_stage_two_freezes_the_tokenizer():
    torch.manual_seed(0)
    model = DDTTokenizerForPreTraining(DDTTokenizerConfig.tiny()).set_stage(2).train()
    assert not any(p.requires_grad for p in model.tokenizer.parameters())
    codebook = model.tokenizer.quantizer.codebook.weight.detach().clone()
    out = model(_images(2))
    out.loss.backward()
    assert torch.equal(codebook, model.tokenizer.quantizer.codebook.weight)
    assert model.transformer.proj_out.weight.grad.abs().sum() > 0  # the decoder learns in stage 2
    model.set_stage(1)
    assert model.tokenizer.queries.requires_grad and not model.tokenizer.quantizer.codebook.weight.requires_grad
    with pytest.raises(ValueError, match="stage"):
        model.set_stage(3)


@pytest.mark.parametrize(
    "overrides",
    [
        {"token_schedule": "staged", "codebook_kmeans_init": True, "entropy_loss_weight": 0.1},
        {"image_attends_to_queries": False, "query_adaptive_norm": True, "loss_target": "x0"},
        {"timestep_sampling": "logit_normal", "timestep_shift": 3.0, "decoder_config": {"hidden_token_mode": "zero", "qk_norm": True}},
    ],
)
def test_released_code_flags_run(overrides):
    torch.manual_seed(0)
    model = DDTTokenizerForPreTraining(DDTTokenizerConfig.tiny(**overrides)).train()
    out = model(_images(2))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    if overrides.get("entropy_loss_weight"):
        assert float(out.entropy_loss) != 0.0


def test_optional_vision_encoder_is_frozen():
    config = DDTTokenizerConfig.tiny(
        vision_config={"model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "intermediate_size": 64, "patch_size": 8, "image_size": 64},
    )
    torch.manual_seed(0)
    model = DDTTokenizerForPreTraining(config).train()
    assert not any(p.requires_grad for p in model.tokenizer.vision_model.parameters())
    model(_images(2)).loss.backward()
    assert model.tokenizer.patch_embed.weight.grad.abs().sum() > 0
    assert model.tokenizer.encode(_images(2)).ids.shape == (2, 16)


# ---------------------------------------------------------------------------------------------- save / load
def test_auto_classes_round_trip(tmp_path, tiny_model):
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForPreTraining

    images = _images(3, seed=7)
    tiny_model.tokenizer.save_pretrained(tmp_path / "tok")
    DDTImageProcessorPil.from_tokenizer_config(tiny_model.config).save_pretrained(tmp_path / "tok")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "tok"), DDTTokenizerConfig)
    loaded = AutoModel.from_pretrained(tmp_path / "tok")
    assert isinstance(loaded, DDTTokenizerModel)
    assert torch.equal(loaded.encode(images).ids, tiny_model.tokenizer.encode(images).ids)
    processor = AutoImageProcessor.from_pretrained(tmp_path / "tok")
    assert isinstance(processor, DDTImageProcessorPil)
    pil = Image.fromarray((np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8))
    expected = DDTImageProcessorPil.from_tokenizer_config(tiny_model.config)(pil, return_tensors="pt").pixel_values
    assert torch.equal(processor(pil, return_tensors="pt").pixel_values, expected)
    torch_backend = DDTImageProcessor.from_tokenizer_config(tiny_model.config)(pil, return_tensors="pt").pixel_values
    assert torch_backend.shape == expected.shape == (1, 3, 64, 64)
    assert (torch_backend - expected).abs().mean() < 0.02  # the two resizers agree up to interpolation details
    # bf16 loading keeps the codebook in float32 and the nearest-code search unchanged
    half = AutoModel.from_pretrained(tmp_path / "tok", dtype=torch.bfloat16)
    assert half.quantizer.codebook.weight.dtype == torch.float32 and half.queries.dtype == torch.bfloat16
    # the training wrapper, through AutoModelForPreTraining, gives the same loss
    tiny_model.save_pretrained(tmp_path / "full")
    full = AutoModelForPreTraining.from_pretrained(tmp_path / "full").eval()
    timesteps, noise = torch.tensor([0.2, 0.5, 0.9]), torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(full(images, timesteps=timesteps, noise=noise).loss, tiny_model(images, timesteps=timesteps, noise=noise).loss)


def test_pipeline_round_trip(tmp_path, tiny_pipe):
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    kwargs = {"token_ids": ids, "num_inference_steps": 3, "guidance_scale": 2.0, "output_type": "np"}
    before = tiny_pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    tiny_pipe.save_pretrained(tmp_path)
    loaded = DDTDecoderPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.tokenizer, DDTTokenizerModel) and loaded.vae is None
    after = loaded(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert before.shape == (2, 64, 64, 3) and np.array_equal(before, after)
    other_seed = tiny_pipe(**kwargs, generator=torch.Generator().manual_seed(1)).images
    assert not np.array_equal(before, other_seed)


def test_pipeline_outputs_and_reconstruction(tiny_pipe):
    images = _images(2, seed=9)
    pil = tiny_pipe(pixel_values=images, num_inference_steps=2).images
    assert len(pil) == 2 and pil[0].size == (64, 64)
    pt = tiny_pipe(images=(images + 1) / 2, num_inference_steps=2, output_type="pt").images
    assert pt.shape == (2, 3, 64, 64) and 0 <= float(pt.min()) and float(pt.max()) <= 1
    tokens = tiny_pipe.encode_images(pixel_values=images)
    from_embeddings = tiny_pipe(token_embeddings=tokens.embeddings, num_inference_steps=2, output_type="np",
                                generator=torch.Generator().manual_seed(0)).images
    from_ids = tiny_pipe(token_ids=tokens.ids, num_inference_steps=2, output_type="np",
                         generator=torch.Generator().manual_seed(0)).images
    assert np.allclose(from_embeddings, from_ids, atol=1e-6)


def test_prefix_decoding_ignores_the_tail(tiny_pipe):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 512, (2, 16), generator=generator)
    tail_changed = ids.clone()
    tail_changed[:, 5:] = torch.randint(0, 512, (2, 11), generator=generator)
    noise = torch.randn(2, 3, 64, 64, generator=generator)
    kwargs = {"num_inference_steps": 4, "guidance_scale": 1.5, "latents": noise, "output_type": "pt"}
    prefix = tiny_pipe(token_ids=ids, max_tokens=5, **kwargs).images
    assert torch.allclose(prefix, tiny_pipe(token_ids=tail_changed, max_tokens=5, **kwargs).images, atol=1e-6)
    assert torch.allclose(prefix, tiny_pipe(token_ids=ids[:, :5], **kwargs).images, atol=1e-6)  # a short prefix
    assert torch.allclose(prefix, tiny_pipe(token_ids=ids, max_tokens=[5, 5], **kwargs).images, atol=1e-6)
    assert not torch.allclose(prefix, tiny_pipe(token_ids=ids, **kwargs).images, atol=1e-4)


def test_analysis_tools(tmp_path, tiny_pipe):
    image = Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8))
    strip, tiles = prefix_decoding_strip(tiny_pipe, image, prefix_lengths=[1, 4, 16], num_inference_steps=2, return_images=True)
    assert len(tiles) == 3 and strip.size[0] == 4 * 64  # input + 3 prefixes
    strip.save(tmp_path / "strip.png")
    ids_a, ids_b = torch.randint(0, 512, (16,)), torch.randint(0, 512, (16,))
    images = counterfactual_interpolation(tiny_pipe, ids_a, ids_b, span=(0, 16), num_inference_steps=2)
    assert len(images) == 3
    # swapping every token gives B's decoding (same noise for every variant)
    assert np.abs(np.asarray(images[1], dtype=int) - np.asarray(images[2], dtype=int)).max() <= 1
    strip = counterfactual_interpolation(tiny_pipe, ids_a, image, span=[(0, 4), (8, 16)], num_inference_steps=2, return_strip=True)
    assert strip.size[0] == 4 * 64


# ---------------------------------------------------------------------------------------------- validation
def test_bad_inputs_raise_with_the_argument_name(tiny_model, tiny_pipe):
    tokenizer = tiny_model.tokenizer
    ids = torch.randint(0, 512, (1, 16))
    with pytest.raises(ValueError, match="ids"):
        tokenizer.embed_ids(torch.full((1, 16), 512))
    with pytest.raises(ValueError, match="ids"):
        tokenizer.embed_ids(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="pixel_values"):
        tokenizer.encode(torch.zeros(1, 3, 60, 60))  # not the configured size (not a multiple of the patch)
    with pytest.raises(ValueError, match="pixel_values"):
        tokenizer.encode(torch.zeros(1, 1, 64, 64))
    with pytest.raises(TypeError, match="pixel_values"):
        tokenizer.encode(torch.zeros(1, 3, 64, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="token_ids"):
        tiny_pipe(token_ids=torch.full((1, 16), -1), num_inference_steps=1)
    with pytest.raises(ValueError, match="token_ids"):
        tiny_pipe(token_ids=torch.zeros(1, 17, dtype=torch.long), num_inference_steps=1)
    for bad in (0, 17):
        with pytest.raises(ValueError, match="max_tokens"):
            tiny_pipe(token_ids=ids, max_tokens=bad, num_inference_steps=1)
    with pytest.raises(ValueError, match="exactly one"):
        tiny_pipe(token_ids=ids, pixel_values=_images(1), num_inference_steps=1)
    with pytest.raises(ValueError, match="num_inference_steps"):
        tiny_pipe(token_ids=ids, num_inference_steps=0)
    with pytest.raises(ValueError, match="guidance_scale"):
        tiny_pipe(token_ids=ids, guidance_scale=-1.0)
    with pytest.raises(ValueError, match="output_type"):
        tiny_pipe(token_ids=ids, output_type="jpeg")
    with pytest.raises(ValueError, match="latents"):
        tiny_pipe(token_ids=ids, latents=torch.zeros(1, 3, 32, 32), num_inference_steps=1)
    for bad in ([0, 4], [4, 17]):
        with pytest.raises(ValueError, match="prefix_lengths"):
            prefix_decoding_strip(tiny_pipe, ids[0], prefix_lengths=bad)
    with pytest.raises(ValueError, match="span"):
        counterfactual_interpolation(tiny_pipe, ids[0], ids[0], span=(5, 5))
    with pytest.raises(ValueError, match="timesteps"):
        tiny_model(_images(2), timesteps=torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="latents"):
        DDTTokenizerForPreTraining(DDTTokenizerConfig.tiny(decoder_config={"vae_scale_factor": 8, "in_channels": 4}))(_images(1))


# ---------------------------------------------------------------------------------------------- paper size
def _encoder_parameters(c: DDTTokenizerConfig) -> dict[str, int]:
    d, m = c.hidden_size, int(c.hidden_size * c.mlp_ratio)
    stream = 4 * d * d + 2 * d * m + 9 * d + m  # norms, QKV, output projection, MLP of one stream
    pre_only = 3 * d * d + 5 * d  # last layer's image stream: norm + QKV only
    return {
        "patch_embed": c.num_channels * c.patch_size**2 * d + d,
        "queries": c.num_visual_tokens * d,
        "layers": (2 * c.num_hidden_layers - 1) * stream + pre_only,
        "norm_out": 2 * d,
        "quant_proj": d * c.codebook_dim + c.codebook_dim,
        "quantizer": c.codebook_size * c.codebook_dim,
    }


def _decoder_parameters(c: DDTTokenizerConfig) -> dict[str, int]:
    d = c.decoder_config
    w, m, out = c.decoder_hidden_size, int(c.decoder_hidden_size * d["mlp_ratio"]), d["patch_size"] ** 2 * d["in_channels"]
    mlp = 2 * w * m + m + w
    full_block = 20 * w * w + 20 * w + 2 * mlp  # two adaLN-Zero (6w each), two QKV, two outputs, two MLPs
    last_block = 15 * w * w + 15 * w + mlp  # token stream pre-only: 2w modulation + QKV
    return {
        "conditioner": c.codebook_dim * w + w,
        "pos_embed": out * w + w,
        "time_embed": 256 * w + w + w * w + w,
        "transformer_blocks": (d["num_layers"] - 1) * full_block + last_block,
        "final": 2 * w * w + 2 * w + w * out + out,
    }


def test_paper_size_builds_on_meta_with_documented_parameter_counts():
    config = DDTTokenizerConfig()
    with torch.device("meta"):
        model = DDTTokenizerForPreTraining(config)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    tokenizer, encoder_expected = model.tokenizer, _encoder_parameters(config)
    for name, expected in encoder_expected.items():
        module = getattr(tokenizer, name)
        assert (module.numel() if isinstance(module, torch.nn.Parameter) else count(module)) == expected, name
    decoder_expected = _decoder_parameters(config)
    transformer = model.transformer
    assert count(model.conditioner) == decoder_expected["conditioner"]
    assert count(transformer.pos_embed) == decoder_expected["pos_embed"]
    assert count(transformer.time_embed) == decoder_expected["time_embed"]
    assert count(transformer.transformer_blocks) == decoder_expected["transformer_blocks"]
    assert count(transformer.modulation_out) + count(transformer.proj_out) == decoder_expected["final"]
    # the numbers quoted in docs/ddt.md
    assert count(tokenizer) == sum(encoder_expected.values()) == 32_224_016
    assert count(model.conditioner) == 26_112
    assert count(transformer) == sum(decoder_expected.values()) - 26_112 == 2_016_526_912
    assert count(model) == 2_048_777_040


# ---------------------------------------------------------------------------------------------- extras
def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    import copy

    torch.manual_seed(0)
    base = DDTTokenizerForPreTraining(DDTTokenizerConfig.tiny(decoder_config={"condition_dropout_prob": 0.0})).train()
    _perturb_(base.transformer)
    checkpointed = copy.deepcopy(base)
    checkpointed.activation_checkpointing_enable()
    assert checkpointed.transformer.gradient_checkpointing and checkpointed.tokenizer.layers[0].gradient_checkpointing
    images, timesteps, noise = _images(2), torch.tensor([0.3, 0.7]), torch.randn(2, 3, 64, 64)
    losses = []
    for model in (base, checkpointed):
        loss = model(images, timesteps=timesteps, noise=noise).loss
        loss.backward()
        losses.append(loss.detach())
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    for name in ("transformer.transformer_blocks.0.to_qkv.weight", "tokenizer.layers.0.query_qkv.weight"):
        a, b = base.get_parameter(name).grad, checkpointed.get_parameter(name).grad
        assert torch.allclose(a, b, atol=1e-6), name


def test_latent_space_decoder_with_a_vae(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
        norm_num_groups=4, layers_per_block=1, sample_size=64,
    ).eval()
    config = DDTTokenizerConfig.tiny(decoder_config={"vae_scale_factor": 2, "in_channels": 4, "patch_size": 4})
    assert config.decoder_config["sample_size"] == 32 and not config.decoder_in_pixel_space
    model = DDTTokenizerForPreTraining(config).train()
    images = _images(2)
    with pytest.raises(ValueError, match="latents"):
        model(images)
    model(images, latents=torch.randn(2, 4, 32, 32)).loss.backward()
    model.attach_vae(vae)
    assert torch.isfinite(model(images).loss)
    pipe = model.eval().get_decoder_pipeline()
    pipe.set_progress_bar_config(disable=True)
    out = pipe(pixel_values=images, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (2, 64, 64, 3)
    pipe.save_pretrained(tmp_path)
    loaded = DDTDecoderPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    again = loaded(pixel_values=images, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert np.allclose(out, again, atol=1e-6)


def test_query_locality_prior_makes_each_token_read_its_anchor_region_first():
    # Paper (prior 0): at initialisation every query reads the same average of the image, so a change in one corner
    # moves all tokens alike. With the prior, the token anchored at that corner moves far more than one anchored in the
    # middle of the image, and the first four anchors are one per quadrant (every prefix covers the image).
    from hf_vtok.models.ddt.modeling_ddt import query_anchor_distances
    from hf_vtok.models.ddt.modeling_ddt_decoder import coarse_to_fine_order

    assert [divmod(int(i), 8) for i in coarse_to_fine_order(8)[:4]] == [(0, 0), (0, 4), (4, 0), (4, 4)]
    assert sorted(coarse_to_fine_order(3).tolist()) == list(range(9))
    assert query_anchor_distances(64, 16)[3].argmin() == 36  # query 3 -> patch (4, 4)
    images = _images(2)
    changed = images.clone()
    changed[:, :, :8, :8] = -changed[:, :, :8, :8]  # the top-left 8 px patch
    ratios = {}
    for prior in (0.0, 2.0):
        torch.manual_seed(0)
        model = DDTTokenizerModel(DDTTokenizerConfig.tiny(query_locality_prior=prior)).eval()
        with torch.no_grad():
            moved = (model.encode_features(changed) - model.encode_features(images)).norm(dim=-1).mean(0)  # [T]
        ratios[prior] = float(moved[0] / moved[3])  # query 0 is anchored at (0, 0), query 3 at (4, 4)
    assert ratios[0.0] < 2.0 and ratios[2.0] > 5.0, ratios
    assert DDTTokenizerConfig().query_locality_prior == 0.0
    with pytest.raises(ValueError, match="query_locality_prior"):
        DDTTokenizerConfig.tiny(query_locality_prior=-1.0)


def test_query_query_locality_prior_keeps_distant_queries_from_reading_each_other():
    # Paper (prior 0): every query reads every other query, so changing query 0's learned embedding moves all tokens.
    # With the query->query prior a query anchored away from query 0 barely notices (query 3 sits at patch (4, 4)).
    from hf_vtok.models.ddt.modeling_ddt import query_anchor_patches

    assert query_anchor_patches(64, 16)[3] == 36 and query_anchor_patches(64, 130)[128] == 0
    images = _images(2)
    moved_others = {}
    for prior in (0.0, 4.0):
        torch.manual_seed(0)
        model = DDTTokenizerModel(
            DDTTokenizerConfig.tiny(query_locality_prior=2.0, query_query_locality_prior=prior)
        ).eval()
        with torch.no_grad():
            before = model.encode_features(images)
            model.queries[0] += torch.randn(model.queries.shape[1])
            moved = (model.encode_features(images) - before).norm(dim=-1).mean(0)  # [T]
        assert moved[0] > 5 * moved[1:].max()  # query 0 itself moves most either way
        moved_others[prior] = float(moved[1:].max())
    assert moved_others[4.0] < 0.25 * moved_others[0.0], moved_others
    assert DDTTokenizerConfig().query_query_locality_prior == 0.0
    with pytest.raises(ValueError, match="query_query_locality_prior"):
        DDTTokenizerConfig.tiny(query_query_locality_prior=-0.5)


def test_query_anchor_init_ties_each_token_to_its_anchor_patch_without_any_prior():
    # Paper (learned queries only, no prior): a change in the top-left patch moves every token about alike. With
    # query_anchor_init each query starts from its anchor patch's embedding, so the token anchored there moves most.
    images = _images(2)
    changed = images.clone()
    changed[:, :, :8, :8] = -changed[:, :, :8, :8]
    ratios = {}
    for anchor_init in (False, True):
        torch.manual_seed(0)
        model = DDTTokenizerModel(DDTTokenizerConfig.tiny(query_anchor_init=anchor_init)).eval()
        with torch.no_grad():
            moved = (model.encode_features(changed) - model.encode_features(images)).norm(dim=-1).mean(0)
        ratios[anchor_init] = float(moved[0] / moved[3])
    assert ratios[False] < 2.0 and ratios[True] > 5.0, ratios
    assert DDTTokenizerConfig().query_anchor_init is False
    with pytest.raises(TypeError, match="query_anchor_init"):
        DDTTokenizerConfig.tiny(query_anchor_init="yes")


def _decoder_with_first_token_changed(config):
    """A randomly weighted MMDiT of ``config`` (adaLN-Zero's all-zero start would output 0), a noisy input, 16 tokens
    and the same tokens with token 0 (anchored at the top-left patch) redrawn."""
    torch.manual_seed(0)
    transformer = DDTDecoderTransformer(**config.transformer_kwargs()).eval()
    with torch.no_grad():
        for parameter in transformer.parameters():
            parameter.normal_(std=0.05)
    noisy = torch.randn(2, 3, 64, 64)
    tokens = torch.randn(2, 16, transformer.inner_dim)
    changed = tokens.clone()
    changed[:, 0] = torch.randn(2, transformer.inner_dim)
    return transformer, noisy, tokens, changed, torch.full((2,), 500.0)


def test_token_anchor_injection_feeds_each_patch_the_visible_tokens_of_its_cell():
    # Paper (tokens reach the image only through attention): changing the token anchored at the top-left moves the
    # whole prediction about evenly. With token_anchor_injection the top-left patch moves far more; a token hidden
    # by the prefix mask changes nothing; a null condition (no visible token) injects nothing.
    from hf_vtok.models.ddt.modeling_ddt_decoder import token_anchor_distances, token_anchor_slots

    slots = token_anchor_slots(192, 8, 8, 8)  # 3 tokens per cell of the 8 x 8 grid
    distances = token_anchor_distances(192, 8, 8, 8)
    assert slots.shape == (64, 3) and all(float(distances[p, slots[p]].max()) == 0.0 for p in range(64))
    assert sorted(slots.flatten().tolist()) == list(range(192))
    assert (token_anchor_slots(16, 4, 8, 8)[:, 1:] == -1).all()
    ratios = {}
    for injection in (False, True):
        config = DDTTokenizerConfig.tiny(decoder_config={"patch_size": 8, "token_anchor_injection": injection})
        transformer, noisy, tokens, changed, timestep = _decoder_with_first_token_changed(config)
        with torch.no_grad():
            moved = (transformer(noisy, timestep, changed).sample - transformer(noisy, timestep, tokens).sample).abs()
            if injection:
                hidden = torch.tensor([[False] + [True] * 15] * 2)  # token 0 masked out
                same = transformer(noisy, timestep, changed, hidden).sample
                assert torch.equal(same, transformer(noisy, timestep, tokens, hidden).sample)
                none = torch.zeros(2, 16, dtype=torch.bool)
                injected = transformer._anchored_tokens(changed, none, 8, 8)
                assert torch.equal(injected, torch.zeros_like(injected))
        ratios[injection] = float(moved[..., :8, :8].mean() / moved[..., -8:, -8:].mean())
    assert ratios[False] < 2.0 and ratios[True] > 5.0, ratios
    assert DDTTokenizerConfig().decoder_config.token_anchor_injection is False
    with pytest.raises(TypeError, match="token_anchor_injection"):
        DDTDecoderTransformer(token_anchor_injection=1)
    with pytest.raises(TypeError, match="token_anchor_injection"):
        DDTTokenizerConfig.tiny(decoder_config={"token_anchor_injection": "yes"})


def test_token_locality_prior_makes_each_image_patch_read_the_tokens_anchored_near_it():
    # Paper (prior 0): every image patch of the MMDiT reads all tokens alike, so changing the token anchored at the
    # top-left corner moves the whole prediction about evenly. With the decoder-side prior the top-left patch moves
    # far more than the bottom-right one; the anchors agree with the encoder's even on a finer decoder grid.
    from hf_vtok.models.ddt.modeling_ddt import query_anchor_distances
    from hf_vtok.models.ddt.modeling_ddt_decoder import token_anchor_distances

    assert torch.equal(token_anchor_distances(16, 8, 8, 8), query_anchor_distances(64, 16).T)
    fine = token_anchor_distances(16, 8, 16, 16)  # a 16 x 16 decoder grid under the encoder's 8 x 8 anchors
    assert divmod(int(fine[:, 3].argmin()), 16) in {(8, 8), (8, 9), (9, 8), (9, 9)}  # token 3 -> encoder patch (4, 4)
    ratios = {}
    for prior in (0.0, 2.0):
        config = DDTTokenizerConfig.tiny(decoder_config={"patch_size": 8, "token_locality_prior": prior})
        transformer, noisy, tokens, changed, timestep = _decoder_with_first_token_changed(config)
        with torch.no_grad():
            moved = (transformer(noisy, timestep, changed).sample - transformer(noisy, timestep, tokens).sample).abs()
        ratios[prior] = float(moved[..., :8, :8].mean() / moved[..., -8:, -8:].mean())
    assert ratios[0.0] < 2.0 and ratios[2.0] > 5.0, ratios
    assert DDTTokenizerConfig().decoder_config.token_locality_prior == 0.0
    with pytest.raises(ValueError, match="token_locality_prior"):
        DDTTokenizerConfig.tiny(decoder_config={"token_locality_prior": -1.0})
