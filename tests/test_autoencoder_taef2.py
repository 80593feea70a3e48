"""TAEF2 latent autoencoder (hf_vtok.utils.autoencoder_taef2) and the latent cache (hf_vtok.utils.latent_cache)."""

import copy
import json

import numpy as np
import pytest
import torch
from diffusers.models.autoencoders.vae import DecoderOutput
from safetensors.torch import load_file, save_file

from hf_vtok.data import generate_shapes_dataset
from hf_vtok.utils.autoencoder_taef2 import (
    TAEF2_CHECKPOINT_DIR,
    AutoencoderTAEF2,
    load_taef2,
    reference_bundled_taef2,
    taef2_checkpoint_dir,
    tiny_taef2_config,
)
from hf_vtok.utils.latent_cache import cache_latents

torch.set_num_threads(1)

# README of the converted weights: flat ≈ 33.5 dB, textured ≈ 24.2 dB at 128 px (benchmarks/bench_taef2.py
# measures 33.5 / 25.0 over 64 scenes). Thresholds leave room for the few scenes used here.
FLAT_MIN_DB, TEXTURED_MIN_DB = 30.0, 21.0


@pytest.fixture(scope="module")
def model():
    return load_taef2(torch.float32)


def _images(n, size, style, seed):
    ds = generate_shapes_dataset(n, image_size=size, style=style, seed=seed, with_edits=False, progress=False)
    pixels = np.stack([np.asarray(image.convert("RGB")) for image in ds["image"]])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


@pytest.fixture(scope="module")
def scenes():
    return {style: _images(4, 128, style, seed=7) for style in ("flat", "textured")}


def _psnr(x, y):
    mse = ((x.float() - y.float()) / 2).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1 / mse)).mean().item()


def _passes_quality_check(model, scenes):
    """Both styles above their thresholds (the textured round trip is skipped once flat fails)."""
    with torch.inference_mode():
        flat = _psnr(scenes["flat"], model(scenes["flat"]).sample)
        if flat <= FLAT_MIN_DB:
            return False, (flat, None)
        textured = _psnr(scenes["textured"], model(scenes["textured"]).sample)
    return textured > TEXTURED_MIN_DB, (flat, textured)


def test_shipped_weights_reproduce_measured_round_trip(model, scenes):
    ok, (flat, textured) = _passes_quality_check(model, scenes)
    assert ok, f"flat {flat:.2f} dB, textured {textured} dB"
    assert taef2_checkpoint_dir() == TAEF2_CHECKPOINT_DIR
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "LICENSE", "README.md"):
        assert (TAEF2_CHECKPOINT_DIR / name).is_file(), name
    assert "Ollin Boer Bohan" in (TAEF2_CHECKPOINT_DIR / "LICENSE").read_text()
    assert "MIT" in (TAEF2_CHECKPOINT_DIR / "README.md").read_text()


def _no_tanh(model):
    model.decoder[0] = torch.nn.Identity()


def _no_pool(model):
    for block in list(model.encoder) + list(model.decoder):
        if getattr(block, "pool", None) is not None:
            block.pool = None


def _swap_blocks(model):
    # A wrong index mapping that still loads: two residual blocks of the same stage swapped.
    a, b = model.decoder[8].state_dict(), model.decoder[9].state_dict()
    model.decoder[8].load_state_dict(b)
    model.decoder[9].load_state_dict(a)


def _no_range_conversion(model):
    # Feeding [-1, 1] images straight to the network and taking its [0, 1] output as [-1, 1].
    model.forward = lambda x: DecoderOutput(sample=model.decoder(model.encoder(x)).clamp(-1, 1))


@pytest.mark.parametrize("break_it", [_no_tanh, _no_pool, _swap_blocks, _no_range_conversion])
def test_wrong_architecture_fails_the_same_check(model, scenes, break_it):
    wrong = copy.deepcopy(model)
    break_it(wrong)
    ok, (flat, textured) = _passes_quality_check(wrong, scenes)
    assert not ok, f"{break_it.__name__} still passes: flat {flat:.2f} dB, textured {textured} dB"


def test_shipped_folder_holds_the_original_weights_in_float16():
    state = load_file(str(TAEF2_CHECKPOINT_DIR / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in state.values()} == {torch.float16}
    encoder = {k for k in state if k.startswith("encoder.")}
    assert sum(state[k].numel() for k in encoder) == 1_338_528  # "1.34 M parameters" each
    assert sum(t.numel() for k, t in state.items() if k not in encoder) == 1_338_499
    assert "encoder.11.pool.1.weight" in encoder and "encoder.10.pool.0.weight" not in encoder
    assert "decoder.3.pool.0.weight" in state and "decoder.19.weight" in state
    config = json.loads((TAEF2_CHECKPOINT_DIR / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderTAEF2" and config["latent_channels"] == 32


def _write_original_files(model, tmp_path, edit=None):
    encoder = {k: v.half().contiguous() for k, v in model.encoder.state_dict().items()}
    decoder = {k: v.half().contiguous() for k, v in model.decoder.state_dict().items()}
    if edit is not None:
        edit(encoder)
    save_file(encoder, tmp_path / "taef2_encoder.safetensors")
    save_file(decoder, tmp_path / "taef2_decoder.safetensors")
    return tmp_path / "taef2_encoder.safetensors", tmp_path / "taef2_decoder.safetensors"


def test_from_original_weights_maps_keys_one_to_one(model, tmp_path):
    enc, dec = _write_original_files(model, tmp_path)
    rebuilt = AutoencoderTAEF2.from_original_weights(enc, dec)
    for (name, a), (_, b) in zip(model.state_dict().items(), rebuilt.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # the shipped weights are float16, so the cast back is exact
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(model(x).sample, rebuilt(x).sample)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.pop("11.pool.1.weight"), "missing key '11.pool.1.weight'"),
        (lambda sd: sd.update({"15.weight": torch.zeros(1)}), "unexpected key '15.weight'"),
        (lambda sd: sd.update({"14.bias": torch.zeros(16)}), "key '14.bias' has shape (16,)"),
    ],
)
def test_from_original_weights_names_a_mismatched_key(model, tmp_path, edit, message):
    enc, dec = _write_original_files(model, tmp_path, edit)
    with pytest.raises(ValueError, match="encoder_path") as info:
        AutoencoderTAEF2.from_original_weights(enc, dec)
    assert message in str(info.value)


def test_from_original_weights_checks_its_paths(model, tmp_path):
    enc, _ = _write_original_files(model, tmp_path)
    with pytest.raises(ValueError, match="`decoder_path` must be an existing safetensors file"):
        AutoencoderTAEF2.from_original_weights(enc, tmp_path / "nope.safetensors")
    with pytest.raises(TypeError, match="`encoder_path` must be a path"):
        AutoencoderTAEF2.from_original_weights(None, enc)


def test_save_pretrained_round_trip_and_dtypes(model, tmp_path):
    model.save_pretrained(tmp_path / "fp32")
    again = AutoencoderTAEF2.from_pretrained(tmp_path / "fp32")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.inference_mode():
        z = model.encode(x).latents
        assert torch.equal(z, again.encode(x).latents)
        assert torch.equal(model.decode(z).sample, again.decode(z).sample)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}
    assert public(again.config) == public(model.config)

    half = load_taef2(torch.float16)
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with torch.inference_mode():
        zh = half.encode(x).latents  # float32 input is cast to the model's dtype
        yh = half.decode(zh).sample
    assert zh.dtype == yh.dtype == torch.float16
    assert (zh.float() - z).abs().max() < 0.05
    assert _psnr(model.decode(z).sample, yh) > 40


def test_a_folder_can_reference_the_bundled_weights_instead_of_copying_them(model, tmp_path):
    model.save_pretrained(tmp_path / "vae")
    reference_bundled_taef2(tmp_path / "vae")
    assert sorted(path.name for path in (tmp_path / "vae").iterdir()) == ["config.json"]
    loaded = AutoencoderTAEF2.from_pretrained(tmp_path / "vae")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True))
    loaded = AutoencoderTAEF2.from_pretrained(tmp_path, subfolder="vae")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True))

    # A reference whose architecture differs from the bundled weights is refused, naming the field.
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    (tmp_path / "vae" / "config.json").write_text(json.dumps({**config, "hidden_channels": 32}))
    with pytest.raises(ValueError, match="differs in \\['hidden_channels'\\]"):
        AutoencoderTAEF2.from_pretrained(tmp_path / "vae")

    # Trained (changed) weights are never replaced by a reference.
    changed = copy.deepcopy(model)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    changed.save_pretrained(tmp_path / "trained")
    with pytest.raises(ValueError, match="weights other than the bundled"):
        reference_bundled_taef2(tmp_path / "trained")
    assert (tmp_path / "trained" / "diffusion_pytorch_model.safetensors").is_file()


def test_latent_shape_range_and_scaling(model):
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.inference_mode():
        out = model.encode(x)
        z = out.latents
        y = model.decode(z).sample
        y_tuple = model.decode(z, return_dict=False)[0]
    assert z.shape == (2, 32, 16, 16) and model.latent_shape(128, 128) == (32, 16, 16)
    assert model.spatial_compression_ratio == 8
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert torch.equal(y, y_tuple)
    assert model.encode(torch.zeros(1, 3, 64, 128)).latents.shape == (1, 32, 8, 16)

    shifted = AutoencoderTAEF2(**tiny_taef2_config(scaling_factor=0.75, shift_factor=0.25))
    for m in (model, shifted):
        scaled = m.scale_latents(z)
        assert torch.equal(scaled, (z - m.config.shift_factor) * m.config.scaling_factor)
        assert torch.allclose(m.unscale_latents(scaled), z, atol=1e-6, rtol=0)  # float32 rounding only


def test_tiny_config_round_trips_through_save_pretrained(tmp_path):
    torch.manual_seed(0)
    tiny = AutoencoderTAEF2(**tiny_taef2_config())
    assert sum(p.numel() for p in tiny.parameters()) < 30_000
    tiny.save_pretrained(tmp_path)
    again = AutoencoderTAEF2.from_pretrained(tmp_path)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(tiny(x).sample, again(x).sample)
        assert tiny.encode(x).latents.shape == (1, 32, 4, 4)


@pytest.mark.parametrize(
    "value, name, message",
    [
        (torch.zeros(1, 4, 64, 64), "x", "3 channels"),
        (torch.zeros(1, 3, 60, 64), "x", "multiples of 8"),
        (torch.zeros(0, 3, 64, 64), "x", "non-empty batch"),
        (torch.zeros(1, 3, 64, 0), "x", "positive multiples of 8"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "x", "floating-point"),
        (torch.zeros(3, 64, 64), "x", "shape (batch, 3, height, width)"),
        (torch.zeros(1, 16, 8, 8), "z", "32 channels"),
        (torch.zeros(1, 32, 8, 8, dtype=torch.int64), "z", "floating-point"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(value, name, message):
    tiny = AutoencoderTAEF2(**tiny_taef2_config())
    call = tiny.encode if name == "x" else tiny.decode
    with pytest.raises(ValueError, match=f"`{name}`") as info:
        call(value)
    assert message in str(info.value)
    with pytest.raises(TypeError, match=f"`{name}` must be a torch.Tensor"):
        call(np.zeros((1, 3, 64, 64), dtype=np.float32))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"latent_channels": 0}, ValueError, "`latent_channels` must be >= 1"),
        ({"hidden_channels": 8.0}, TypeError, "`hidden_channels` must be an int"),
        ({"num_decoder_blocks": (1, 1, 1)}, ValueError, "`num_decoder_blocks` must have as many stages"),
        ({"pool_channels": 18}, ValueError, "divisible by `pool_groups`"),
        ({"latent_magnitude": 0}, ValueError, "`latent_magnitude` must be a positive number"),
    ],
)
def test_bad_config_is_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        AutoencoderTAEF2(**tiny_taef2_config(**kwargs))


def test_latent_cache_encodes_once(model, tmp_path):
    data = generate_shapes_dataset(
        5, image_size=64, style="textured", seed=3, with_edits=False, progress=False
    )
    other = copy.deepcopy(model)  # before the hook: a deep copy would carry it along
    with torch.no_grad():
        other.encoder[-1].bias.add_(1.0)
    calls = []
    hooks = [
        m.encoder.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
        for m in (model, other)
    ]
    try:
        first = cache_latents(data, model, image_size=64, batch_size=2, cache_dir=tmp_path)
        assert calls == [2, 2, 1]
        assert first.features["latents"].shape == (32, 8, 8)
        again = cache_latents(data, model, image_size=64, batch_size=4, cache_dir=tmp_path)
        assert calls == [2, 2, 1], "the second call ran the encoder instead of reading the cache"
        assert again["latents"] == first["latents"]
        assert again.column_names == data.column_names + ["latents"]

        # The cached values are the scaled latents of the (resized) images ...
        x = _images(5, 64, "textured", seed=3)
        with torch.inference_mode():
            expected = model.scale_latents(model.encode(x).latents)
        stored = torch.tensor(np.asarray(first.with_format("numpy")["latents"]))
        assert stored.dtype == torch.float32 and torch.allclose(stored, expected, atol=1e-5)
        calls.clear()

        # ... and anything that changes them is a different cache entry: size, dtype, weights.
        resized = cache_latents(data, model, image_size=32, cache_dir=tmp_path)
        assert calls == [5] and resized.features["latents"].shape == (32, 4, 4)
        half = cache_latents(data, model, image_size=64, dtype="float16", cache_dir=tmp_path)
        assert calls == [5, 5] and str(half.data.column("latents").type.value_type) == "float16"  # on disk
        cache_latents(data, other, image_size=64, cache_dir=tmp_path)
        assert calls == [5, 5, 5]
    finally:
        for hook in hooks:
            hook.remove()


def test_latent_cache_bad_arguments(model, tmp_path):
    data = generate_shapes_dataset(2, image_size=64, seed=0, with_edits=False, progress=False)
    with pytest.raises(ValueError, match="`image_size` must be a multiple of 8"):
        cache_latents(data, model, image_size=60, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="`image_column` 'pixels'"):
        cache_latents(data, model, image_size=64, image_column="pixels", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="`latents_column` 'caption' is already a column"):
        cache_latents(data, model, image_size=64, latents_column="caption", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="`dtype`"):
        cache_latents(data, model, image_size=64, dtype="int8", cache_dir=tmp_path)
    with pytest.raises(TypeError, match="`dataset`"):
        cache_latents(data.to_list(), model, image_size=64, cache_dir=tmp_path)


def test_latent_cache_default_locations(model, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    data = generate_shapes_dataset(2, image_size=64, seed=5, with_edits=False, progress=False)
    calls = []
    hook = model.encoder.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        # In memory: the file goes to <HF_DATASETS_CACHE>/hf_vtok_latents, found again next time.
        cache_latents(data, model, image_size=64)
        cache_latents(data, model, image_size=64)
        assert (
            calls == [2]
            and len(list((tmp_path / "hf_cache" / "hf_vtok_latents").glob("latents-*.arrow"))) == 1
        )
        # Other images, other entry.
        cache_latents(
            generate_shapes_dataset(2, image_size=64, seed=6, with_edits=False, progress=False),
            model,
            image_size=64,
        )
        assert calls == [2, 2]
        # On disk: datasets' own cache folder next to the dataset's files.
        data.save_to_disk(tmp_path / "saved")
        on_disk = datasets.load_from_disk(tmp_path / "saved")
        first = cache_latents(on_disk, model, image_size=64)
        again = cache_latents(datasets.load_from_disk(tmp_path / "saved"), model, image_size=64)
        assert calls == [2, 2, 2] and again["latents"] == first["latents"]
        assert all(str(tmp_path / "saved") in f["filename"] for f in again.cache_files)
    finally:
        hook.remove()
