"""Issue 8 — the bad-input suite: every kind of broken input a user can hand the public API must raise a
documented exception (docs/errors.md) whose message names the problem — never a crash deep inside a library, a
hang, or a silently wrong result.

Kinds covered (each test names its kinds): image files (truncated, corrupt, not an image, empty, lazily opened
and truncated, directories), image sizes (0x0, 1x1, extreme aspect, decompression bombs), every PIL mode, arrays
and tensors of wrong dtypes / ranges / shapes / NaN, empty batches, pixel_values (dtype, NaN/Inf, empty, size,
channels, numpy), ids (out of range, negative, wrong count, wrong rank, float/bool dtype, continuous families),
pipelines (input combinations, steps, guidance, output type, generators and batch sizes, latents, token
embeddings, masks), saved folders (truncated/garbage/empty safetensors, config of another model type, codebook
size or RVQ depths edited, invalid config.json, missing weights / processor files, broken decoder components), quantizers,
the MLLM processor and generation, the shapes world, the metrics and the CLI.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hf_vtok
from hf_vtok.evaluation import foreground_ari, load_tokenizer_folder, perceptual_distance, psnr, ssim
from hf_vtok.mllm.processing_mllm import image_processor_for
from hf_vtok.trainer.arguments import FAMILY_MODEL_TYPES
from hf_vtok.utils.modeling_utils import CheckpointMismatchError
from hf_vtok.utils.validation import MAX_IMAGE_PIXELS, load_image

torch.set_num_threads(1)
FAMILIES = ("slot_qformer", "setok", "ddt")


def inference_class(family: str):
    """The inference model class ``AutoModel`` loads for a family."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    return MODEL_MAPPING[CONFIG_MAPPING[FAMILY_MODEL_TYPES[family]]]


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def parts():
    """Per family: the tiny training model (random), its tokenizer, pipeline and both image processors."""
    out = {}
    for family in FAMILIES:
        from transformers import CONFIG_MAPPING, AutoModelForPreTraining

        torch.manual_seed(0)
        model = AutoModelForPreTraining.from_config(CONFIG_MAPPING[FAMILY_MODEL_TYPES[family]].tiny()).eval()
        pipe = model.get_decoder_pipeline()
        pipe.set_progress_bar_config(disable=True)
        module = __import__(f"hf_vtok.models.{family}", fromlist=["x"])
        torch_processor = next(getattr(module, n) for n in module.__all__ if n.endswith("ImageProcessor"))
        size = model.config.image_size
        out[family] = {
            "model": model,
            "tokenizer": model.tokenizer,
            "pipe": pipe,
            "processors": [
                image_processor_for(model.config),
                torch_processor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
            ],
        }
    return out


@pytest.fixture(scope="module")
def saved(parts, tmp_path_factory):
    """Per family: a complete tokenizer folder (tokenizer/ with image processor, decoder/)."""
    root = tmp_path_factory.mktemp("saved")
    folders = {}
    for family, p in parts.items():
        folder = root / family
        p["tokenizer"].save_pretrained(folder / "tokenizer")
        p["processors"][0].save_pretrained(folder / "tokenizer")
        p["pipe"].save_pretrained(folder / "decoder")
        folders[family] = folder
    return folders


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def png_bytes(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb never needs its pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


PHOTO = Image.fromarray((np.random.default_rng(0).random((40, 52, 3)) * 255).astype(np.uint8))


# ------------------------------------------------------------------------------------------------- image files
def test_corrupt_truncated_and_non_image_files(parts, tmp_path):
    """Kinds: truncated PNG/JPEG bytes and files, garbage bytes, a text file, an empty file, a directory, a missing
    path, and a lazily opened truncated file (``Image.open``)."""
    processor = parts["ddt"]["processors"][0]
    png, jpeg = png_bytes(PHOTO), png_bytes(PHOTO, "JPEG")
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    cases = {
        "truncated png bytes": (png[: len(png) // 2], "could not be decoded"),
        "truncated jpeg bytes": (jpeg[: len(jpeg) // 2], "could not be decoded"),
        "garbage bytes": (b"\x00\x01 definitely not an image", "could not be decoded"),
        "truncated file": (tmp_path / "cut.png", "could not be decoded"),
        "text file": (str(tmp_path / "notes.txt"), "could not be decoded"),
        "empty file": (tmp_path / "empty.png", "empty"),
        "directory": (str(tmp_path), "existing image file"),
        "missing file": (str(tmp_path / "nope.png"), "existing image file"),
        "lazily opened truncated file": (Image.open(tmp_path / "cut.png"), "could not be converted"),
    }
    for kind, (value, message) in cases.items():
        with pytest.raises(ValueError, match=rf"`images\[0\]`.*{message}|{message}.*`images\[0\]`"):
            processor(value, return_tensors="pt")
        assert kind  # every case raised


def test_image_sizes_zero_tiny_extreme_and_decompression_bombs(parts, monkeypatch):
    """Kinds: 0x0 image, 1x1 image, 1x1000 image, a PNG header claiming 20000x20000 (between PIL's warning and
    error thresholds: refused before decoding) and 100000x100000, an oversized in-memory image."""
    for p in parts.values():
        for processor in p["processors"]:
            size = p["model"].config.image_size
            assert processor(Image.new("RGB", (1, 1), "red"), return_tensors="pt").pixel_values.shape == (1, 3, size, size)
            assert processor(Image.new("L", (1, 1000)), return_tensors="pt").pixel_values.shape == (1, 3, size, size)
    processor = parts["setok"]["processors"][1]
    with pytest.raises(ValueError, match="positive size"):
        processor(Image.new("RGB", (0, 0)), return_tensors="pt")
    with pytest.raises(ValueError, match="20000x20000 pixels, above the"):
        processor(png_header_only(20000, 20000), return_tensors="pt")
    with pytest.raises(ValueError, match="too large to decode safely"):
        processor(png_header_only(100000, 100000), return_tensors="pt")
    monkeypatch.setattr(hf_vtok.utils.validation, "MAX_IMAGE_PIXELS", 100)  # the guard reads the module constant
    with pytest.raises(ValueError, match="decompression bombs"):
        load_image(Image.new("RGB", (11, 10)))
    assert MAX_IMAGE_PIXELS == 16384 * 16384


MODES = ("1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA", "La", "RGBa", "RGBX",
         "I;16", "I;16B", "I;16L")


def _image_in_mode(mode: str) -> Image.Image:
    if mode.startswith("I;16"):
        array = (np.random.default_rng(0).random((40, 52)) * 65535).astype(np.uint16)
        return Image.fromarray(array).convert(mode) if mode != "I;16" else Image.fromarray(array)
    if mode == "PA":
        return PHOTO.convert("P").convert("PA")
    if mode == "La":
        return PHOTO.convert("RGBA").convert("La")
    return PHOTO.convert(mode)


@pytest.mark.parametrize("mode", MODES)
def test_every_pil_mode_becomes_finite_rgb_pixel_values(parts, mode):
    """Kind: every PIL mode (alpha composited on white, 16-bit and float rescaled, premultiplied alpha)."""
    image = _image_in_mode(mode)
    assert image.mode == mode
    for processor in parts["slot_qformer"]["processors"]:
        pixel_values = processor(image, return_tensors="pt").pixel_values
        assert pixel_values.shape == (1, 3, 64, 64) and torch.isfinite(pixel_values).all()


def test_arrays_and_tensors_of_wrong_dtype_range_shape_or_nan(parts):
    """Kinds: int64 arrays/tensors, floats outside [0, 1], NaN arrays/tensors/float images, 2-channel and 5-D
    inputs, non-image objects, empty lists."""
    processor = parts["setok"]["processors"][0]
    nan_image = Image.fromarray(np.full((8, 8), np.nan, dtype=np.float32), mode="F")
    cases = [
        (np.zeros((8, 8, 3), np.int64), TypeError, "uint8, uint16, bool or float"),
        (torch.zeros(3, 8, 8, dtype=torch.int64), TypeError, "uint8, uint16, bool or float"),
        (np.full((8, 8, 3), 2.0), ValueError, r"in \[0, 1\]"),
        (torch.full((3, 8, 8), 255.0), ValueError, r"in \[0, 1\]"),
        (np.full((8, 8, 3), np.nan), ValueError, "NaN or Inf"),
        (torch.full((3, 8, 8), float("inf")), ValueError, "NaN or Inf"),
        (nan_image, ValueError, "NaN or Inf"),
        (np.zeros((8, 8, 2), np.uint8), ValueError, "HxW, HxWx3 or HxWx4"),
        (torch.zeros(2, 8, 8), ValueError, "1, 3 or 4 channels"),
        (torch.zeros(1, 1, 3, 8, 8), ValueError, "CxHxW"),
        ({"image": 1}, TypeError, "PIL.Image, numpy array, bytes or file path"),
        (None, TypeError, "PIL.Image, numpy array, bytes or file path"),
        ([], ValueError, "at least one image"),
    ]
    for value, error, message in cases:
        with pytest.raises(error, match=message):
            processor(value, return_tensors="pt")


# ------------------------------------------------------------------------------------------------- tokenizers
@pytest.mark.parametrize("family", FAMILIES)
def test_pixel_values_checked_by_every_tokenizer(parts, family):
    """Kinds: integer, NaN, Inf, empty-batch, wrong-size, wrong-channel and numpy pixel_values (encode, forward and
    the training model); float64 / float16 are accepted and give the float32 answer."""
    p = parts[family]
    tokenizer, training_model = p["tokenizer"], p["model"]
    cases = [
        (torch.zeros(1, 3, 64, 64, dtype=torch.long), TypeError, "floating-point"),
        (torch.full((1, 3, 64, 64), float("nan")), ValueError, "NaN or Inf"),
        (torch.full((1, 3, 64, 64), float("inf")), ValueError, "NaN or Inf"),
        (torch.zeros(0, 3, 64, 64), ValueError, "must not be empty"),
        (torch.zeros(1, 3, 32, 32), ValueError, "64x64 pixels"),
        (torch.zeros(1, 1, 64, 64), ValueError, "3 channels"),
        (np.zeros((1, 3, 64, 64), np.float32), TypeError, "torch.Tensor"),
    ]
    for value, error, message in cases:
        for call in (tokenizer.encode, lambda x: tokenizer(pixel_values=x), lambda x: training_model(pixel_values=x)):
            with pytest.raises(error, match=f"pixel_values.*{message}|{message}"):
                call(value)
    x = torch.randn(2, 3, 64, 64)
    reference = tokenizer.encode(x)
    for dtype in (torch.float64, torch.float16):
        other = tokenizer.encode(x.to(dtype))
        assert other.embeddings.dtype == reference.embeddings.dtype
        if reference.ids is not None and dtype == torch.float64:
            assert torch.equal(other.ids, reference.ids)


@pytest.mark.parametrize("family", ("slot_qformer", "ddt"))
def test_ids_checked_by_discrete_tokenizers_and_pipelines(parts, family):
    """Kinds: out-of-range, negative, wrong-count, 1-D, empty, float, bool and list ids (embed_ids and the
    pipeline's token_ids); int32 ids are accepted."""
    p = parts[family]
    tokenizer, pipe = p["tokenizer"], p["pipe"]
    K, N = tokenizer.codebook_size, tokenizer.num_visual_tokens
    for call, name in ((tokenizer.embed_ids, "ids"), (lambda ids: pipe(token_ids=ids, num_inference_steps=1), "token_ids")):
        with pytest.raises(ValueError, match=rf"`{name}` must be codebook indices in \[0, {K}\)"):
            call(torch.full((1, N), K))
        with pytest.raises(ValueError, match=rf"`{name}` must be codebook indices"):
            call(torch.full((1, N), -1))
        with pytest.raises(ValueError, match=f"`{name}` must hold"):
            call(torch.zeros(1, N + 1, dtype=torch.long))
        with pytest.raises(ValueError, match=f"`{name}` must not be empty"):
            call(torch.zeros(0, N, dtype=torch.long))
        with pytest.raises(TypeError, match=f"`{name}` must be an integer tensor"):
            call(torch.zeros(1, N))
    with pytest.raises(ValueError, match="`ids` must have 2 dimensions"):
        tokenizer.embed_ids(torch.zeros(N, dtype=torch.long))
    with pytest.raises(TypeError, match="`ids` must be an integer tensor"):
        tokenizer.embed_ids(torch.zeros(1, N, dtype=torch.bool))
    with pytest.raises(TypeError, match="`ids` must be a torch.Tensor"):
        tokenizer.embed_ids([[0] * N])
    assert tokenizer.embed_ids(torch.zeros(1, N, dtype=torch.int32)).shape[0] == 1


def test_continuous_tokenizer_has_no_ids(parts):
    """Kind: ids handed to the continuous family (SeTok)."""
    with pytest.raises(TypeError, match="continuous tokens and has no codebook"):
        parts["setok"]["tokenizer"].embed_ids(torch.zeros(1, 4, dtype=torch.long))


# -------------------------------------------------------------------------------------------------- pipelines
@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_arguments(parts, family):
    """Kinds: two inputs / no input, steps 0 / float, NaN / negative guidance, unknown output type, generator of the
    wrong type or count (mismatched batch sizes), latents of the wrong shape, NaN and wrong-width token embeddings,
    empty and undecodable image lists."""
    pipe = parts[family]["pipe"]
    image = np.zeros((64, 64, 3), np.uint8)
    width = parts[family]["tokenizer"].config.token_embedding_dim
    generator = torch.Generator().manual_seed(0)
    cases = [
        ({"images": [image], "token_embeddings": torch.zeros(1, 4, width)}, ValueError, "exactly one of"),
        ({}, ValueError, "exactly one of"),
        ({"images": [image], "num_inference_steps": 0}, ValueError, "`num_inference_steps` must be >= 1"),
        ({"images": [image], "num_inference_steps": 2.5}, TypeError, "`num_inference_steps` must be an int"),
        ({"images": [image], "guidance_scale": float("nan")}, ValueError, "`guidance_scale` must be finite"),
        ({"images": [image], "guidance_scale": -1.0}, ValueError, "`guidance_scale` must be >= 0"),
        ({"images": [image], "output_type": "jpg"}, ValueError, "`output_type` must be one of"),
        ({"images": [image], "generator": 5}, TypeError, "`generator` must be a torch.Generator"),
        ({"images": [image, image], "generator": [generator]}, ValueError, "`generator`.*2"),
        ({"images": [image], "latents": torch.zeros(1, 3, 5, 5)}, ValueError, "`latents` must have shape"),
        ({"token_embeddings": torch.full((1, 4, width), float("nan"))}, ValueError, "`token_embeddings` contains NaN"),
        ({"token_embeddings": torch.zeros(1, 4, width + 1)}, ValueError, "`token_embeddings` must have"),
        ({"images": []}, ValueError, "`images` must contain at least one image"),
        ({"images": [b"garbage"]}, ValueError, r"`images\[0\]` could not be decoded"),
    ]
    for kwargs, error, message in cases:
        kwargs.setdefault("num_inference_steps", 1)
        with pytest.raises(error, match=message):
            pipe(**kwargs)


def test_setok_pipeline_attention_mask(parts):
    """Kinds: an all-padding mask and a mask whose shape does not match the tokens."""
    pipe, width = parts["setok"]["pipe"], parts["setok"]["tokenizer"].config.token_embedding_dim
    tokens = torch.zeros(1, 4, width)
    with pytest.raises(ValueError, match="at least one real token"):
        pipe(token_embeddings=tokens, attention_mask=torch.zeros(1, 4), num_inference_steps=1)
    with pytest.raises(ValueError, match="`attention_mask` must have shape"):
        pipe(token_embeddings=tokens, attention_mask=torch.ones(1, 5), num_inference_steps=1)


# ------------------------------------------------------------------------------------------------ saved folders
@pytest.mark.parametrize("family", FAMILIES)
def test_corrupt_safetensors_raise_a_clear_error(saved, tmp_path, family):
    """Kinds: truncated, garbage and empty model.safetensors (direct from_pretrained, the Auto class, the decoder
    pipeline and load_tokenizer_folder), and missing weights."""
    from transformers import AutoModel

    model_class = inference_class(family)
    folder = copy_of(saved[family], tmp_path)
    weights = folder / "tokenizer" / "model.safetensors"
    data = weights.read_bytes()
    pipeline_class = getattr(hf_vtok, json.loads((folder / "decoder" / "model_index.json").read_text())["_class_name"])
    for broken in (data[: len(data) // 2], b"garbage" * 10, b""):
        weights.write_bytes(broken)
        for load in (model_class.from_pretrained, AutoModel.from_pretrained):
            with pytest.raises(CheckpointMismatchError, match="not a readable safetensors file.*truncated or corrupt"):
                load(folder / "tokenizer")
        with pytest.raises(ValueError, match="model.safetensors' is not a readable safetensors file"):
            load_tokenizer_folder(folder)
    decoder_weights = folder / "decoder" / "tokenizer" / "model.safetensors"
    decoder_weights.write_bytes(decoder_weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        pipeline_class.from_pretrained(folder / "decoder")
    weights.unlink()
    with pytest.raises(OSError, match="no file named model.safetensors"):
        model_class.from_pretrained(folder / "tokenizer")


def test_decoder_component_and_invalid_config_files(saved, tmp_path):
    """Kinds: a truncated diffusers component (load_tokenizer_folder names the file), config.json that is not JSON,
    a decoder index that is not JSON."""
    folder = copy_of(saved["ddt"], tmp_path)
    unet = next((folder / "decoder" / "transformer").glob("*.safetensors"))
    unet.write_bytes(unet.read_bytes()[:64])
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors' is not a readable safetensors file"):
        load_tokenizer_folder(folder)
    config = folder / "tokenizer" / "config.json"
    config.write_text("{ this is not json")
    with pytest.raises(CheckpointMismatchError, match="not a valid JSON config"):
        inference_class("ddt").from_pretrained(folder / "tokenizer")
    other = copy_of(saved["setok"], tmp_path)
    (other / "decoder" / "model_index.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="not a valid pipeline index"):
        load_tokenizer_folder(other)


def test_config_of_another_model_type(saved):
    """Kind: a SeTok folder loaded with SlotQFormerModel (and every other wrong pairing)."""
    for family in FAMILIES:
        for other in FAMILIES:
            if other == family:
                continue
            other_class = inference_class(other)
            with pytest.raises(CheckpointMismatchError, match=f"holds a '.*' checkpoint.*{other_class.__name__} loads"):
                other_class.from_pretrained(saved[family] / "tokenizer")
    # the Auto class reads the type and succeeds
    from transformers import AutoModel

    assert type(AutoModel.from_pretrained(saved["setok"] / "tokenizer")).__name__ == "SeTokModel"


def test_model_type_edited_to_another_family_in_config_json(saved, tmp_path):
    """Kind: config.json's `model_type` edited to another family's, loaded with AutoModel (transformers used to fail
    with an AttributeError about a property setter, or a misleading error about `decoder_config` keys)."""
    from transformers import AutoModel

    for family in FAMILIES:
        for other in FAMILIES:
            if other == family:
                continue
            folder = copy_of(saved[family], tmp_path / f"{family}_as_{other}") / "tokenizer"
            config = json.loads((folder / "config.json").read_text())
            config["model_type"] = FAMILY_MODEL_TYPES[other]
            (folder / "config.json").write_text(json.dumps(config))
            with pytest.raises(ValueError, match="model_type"):
                AutoModel.from_pretrained(folder)


@pytest.mark.parametrize(("family", "field", "error", "message"), [
    ("setok", "token_embedding_dim", CheckpointMismatchError, r"checkpoint has no `merger\.output_projection.*shape-defining field"),
    ("slot_qformer", "token_embedding_dim", ValueError, r"`token_embedding_dim` of SlotQFormerConfig is derived"),
    ("ddt", "token_embedding_dim", ValueError, r"`token_embedding_dim` of DDTTokenizerConfig is derived"),
])
def test_shape_defining_field_edited_in_config_json_is_refused(saved, tmp_path, family, field, error, message):
    """Kind: a field that defines weight shapes edited in config.json (SeTok's used to load with a random output
    projection; the derived ones raised an AttributeError about a property setter)."""
    from transformers import AutoModel

    folder = copy_of(saved[family], tmp_path) / "tokenizer"
    config = json.loads((folder / "config.json").read_text())
    config[field] = 48
    (folder / "config.json").write_text(json.dumps(config))
    for load in (AutoModel.from_pretrained, inference_class(family).from_pretrained):
        with pytest.raises(error, match=message):
            load(folder)


@pytest.mark.parametrize("depths", [3, 1])
def test_rvq_depths_edited_in_config_json_is_refused(parts, saved, tmp_path, depths):
    """Kind: SlotQFormer's `rvq_depths` edited in config.json. With the (default) shared codebook no weight has a
    per-depth shape, so the model used to load silently and give every id another meaning; the quantizer's per-depth
    usage counts record the depth count, and loading names the field, the saved value and the edited one, also with
    ignore_mismatched_sizes=True and for the training model."""
    from transformers import AutoModel, AutoModelForPreTraining

    saved_depths = parts["slot_qformer"]["tokenizer"].config.rvq_depths
    parts["slot_qformer"]["model"].save_pretrained(tmp_path / "training_model")
    for folder, loaders in (
        (copy_of(saved["slot_qformer"], tmp_path) / "tokenizer", (AutoModel, inference_class("slot_qformer"))),
        (tmp_path / "training_model", (AutoModelForPreTraining,)),
    ):
        config = json.loads((folder / "config.json").read_text())
        assert config["shared_codebook"] and config["rvq_depths"] == saved_depths != depths
        config["rvq_depths"] = depths
        (folder / "config.json").write_text(json.dumps(config))
        message = rf"`rvq_depths` in config.json must be {saved_depths}, .*`(tokenizer\.)?quantizer\.codebook_usage`.* got {depths}"
        for loader in loaders:
            for kwargs in ({}, {"ignore_mismatched_sizes": True}):
                with pytest.raises(CheckpointMismatchError, match=message):
                    loader.from_pretrained(folder, **kwargs)


def test_slot_qformer_saved_before_the_usage_counts_loads_and_says_rvq_depths_is_unchecked(parts, tmp_path, caplog):
    """A SlotQFormer saved before the quantizer kept its per-depth usage counts still loads, with the same weights,
    but the log says that `rvq_depths` cannot be checked against it (instead of refusing the folder)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    tokenizer = parts["slot_qformer"]["tokenizer"]
    tokenizer.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["quantizer.codebook_usage"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            loaded = AutoModel.from_pretrained(tmp_path)
    finally:
        hf_logging.disable_propagation()
    assert "`rvq_depths` in config.json cannot be checked" in caplog.text
    saved_state, loaded_state = tokenizer.state_dict(), loaded.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    assert all(torch.equal(saved_state[key], loaded_state[key]) for key in saved_state if not key.endswith("codebook_usage"))
    assert int(loaded.quantizer.codebook_usage.abs().sum()) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_unnormalised_pixel_values_are_refused(parts, family):
    """Kind: pixel values that never went through the image processor (0-255 values, 1e6): the tokens would be
    meaningless, so every tokenizer (and its training model) refuses them, naming `pixel_values` and the processor."""
    p = parts[family]
    raw = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    for value in (raw, torch.full((1, 3, 64, 64), 1e6)):
        for call in (p["tokenizer"].encode, p["tokenizer"], p["model"]):
            with pytest.raises(ValueError, match=r"`pixel_values` holds values up to .* image processor"):
                call(value)
    processed = p["processors"][0](Image.fromarray(np.full((64, 64, 3), 255, np.uint8)), return_tensors="pt")
    p["tokenizer"].encode(processed["pixel_values"])  # the processor's extremes are accepted


@pytest.mark.parametrize("family", ("slot_qformer", "ddt"))
def test_codebook_size_edited_in_config_json_is_refused(saved, tmp_path, family):
    """Kind: config.json's codebook_size disagrees with the saved codebook: an error naming the codebook tensor,
    also with ignore_mismatched_sizes=True (a re-initialised codebook would give every id a random meaning)."""
    folder = copy_of(saved[family], tmp_path) / "tokenizer"
    config = json.loads((folder / "config.json").read_text())
    config["codebook_size"] *= 2
    (folder / "config.json").write_text(json.dumps(config))
    model_class = inference_class(family)
    for kwargs in ({}, {"ignore_mismatched_sizes": True}):
        with pytest.raises(CheckpointMismatchError, match=r"codebook.*in the checkpoint but .*A codebook is never re-initialised"):
            model_class.from_pretrained(folder, **kwargs)
    with pytest.raises(RuntimeError):  # still a RuntimeError for code that caught transformers' exception
        model_class.from_pretrained(folder)


def test_missing_processor_and_decoder_files(saved, tmp_path):
    """Kinds: no preprocessor_config.json, no decoder/, an empty folder."""
    from transformers import AutoImageProcessor

    folder = copy_of(saved["setok"], tmp_path)
    (folder / "tokenizer" / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match="preprocessor_config.json is missing"):
        load_tokenizer_folder(folder)
    with pytest.raises(OSError, match="preprocessor_config.json"):
        AutoImageProcessor.from_pretrained(folder / "tokenizer")
    shutil.rmtree(folder / "decoder")
    with pytest.raises(ValueError, match="`tokenizer/` and `decoder/`"):
        load_tokenizer_folder(folder)
    with pytest.raises(TypeError, match="`path` must be a folder path"):
        load_tokenizer_folder(3)


# -------------------------------------------------------------------------------------------------- quantizers
def test_quantizer_inputs():
    """Kinds: NaN vectors (encode used to pick code 0 silently), wrong width, integer input, out-of-range and
    wrong-depth ids, invalid sizes."""
    from hf_vtok import ResidualVectorQuantizer, VectorQuantizer

    vq, rvq = VectorQuantizer(8, 16), ResidualVectorQuantizer(8, 16, 2)
    for quantizer in (vq, rvq):
        for call in (quantizer.encode, quantizer):
            with pytest.raises(ValueError, match="`x` contains NaN or Inf"):
                call(torch.full((2, 8), float("nan")))
            with pytest.raises(ValueError, match="`x` must have last dimension 8"):
                call(torch.randn(2, 4))
            with pytest.raises(TypeError, match="`x` must be a floating-point tensor"):
                call(torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`ids` must be in \[0, 16\)"):
        vq.decode(torch.tensor([16]))
    with pytest.raises(ValueError, match="`ids` must have last dimension 2"):
        rvq.decode(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="`dim` must be >= 1"):
        VectorQuantizer(0, 16)


# ------------------------------------------------------------------------------------------------------ MLLM
@pytest.fixture(scope="module")
def mllm(parts):
    from tiny_mllm import build_tiny_mllm

    return build_tiny_mllm(parts["ddt"]["tokenizer"])


def test_mllm_processor_and_generation_inputs(mllm):
    """Kinds: markers vs images (more, fewer, per-sample lists), completions per prompt, non-string text (a list
    holding a number, a number), ids beyond the vocabulary, more tokens than `max_position_embeddings`, wrong
    token counts, broken visual windows, out-of-range ids, sampling settings, prompts, NaN pixel_values and
    placeholders without images."""
    model, processor = mllm
    image = np.zeros((64, 64, 3), np.uint8)
    cases = [
        (lambda: processor(images=[image], text=["<image> <image> hi"]), ValueError, "2 <image> marker"),
        (lambda: processor(images=[image, image], text=["<image> hi"]), ValueError, "2 image"),
        (lambda: processor(images=[[image], [image]], text=["<image> hi"]), ValueError, "per-sample lists"),
        (lambda: processor(images=[image], text=["<image> hi"], completion=["a", "b"]), ValueError, "`completion`"),
        (lambda: processor(text=[3]), TypeError, "`text` must be a string"),
        (lambda: processor(images=[image], text=["<image> hi"], num_image_tokens=[3]), ValueError, "`num_image_tokens`"),
        (lambda: processor.text_to_ids("<boi><v_00001>"), ValueError, "`sequence` breaks the visual window"),
        (lambda: processor.ids_to_text(torch.full((1, 16), 512)), ValueError, r"`ids` must be codebook indices"),
        (lambda: model.generate_images("a red circle", processor, num_images_per_prompt=0, progress=False), ValueError, "num_images_per_prompt"),
        (lambda: model.generate_images("a red circle", processor, temperature=-1.0, progress=False), ValueError, "temperature"),
        (lambda: model.generate_images("a red circle", processor, top_p=2.0, progress=False), ValueError, "top_p"),
        (lambda: model.generate_images(3, processor, progress=False), TypeError, "`prompt`"),
        (lambda: model.generate_images(["a", "b"], processor, images=[image] * 3, progress=False), ValueError, "`images`"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    with pytest.raises(TypeError, match="`text` must be a string or a list of strings, got int 5"):
        processor(text=5)
    batch = processor(images=[image], text=["<image> hi"])
    vocabulary = model.get_input_embeddings().weight.shape[0]
    with pytest.raises(ValueError, match=rf"`input_ids` must be token ids in \[0, {vocabulary}\)"):
        model(input_ids=torch.full((1, 3), vocabulary))
    limit = model.config.text_config.max_position_embeddings
    with pytest.raises(ValueError, match=f"reach position {limit}.*`max_position_embeddings` = {limit}"):
        model(input_ids=torch.full((1, limit + 1), processor.tokenizer.eos_token_id))
    with pytest.raises(ValueError, match="no `pixel_values`"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with pytest.raises(ValueError, match="`pixel_values` contains NaN"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              pixel_values=torch.full_like(batch["pixel_values"], float("nan")))
    with pytest.raises(ValueError, match="placeholder run"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"].repeat(2, 1, 1, 1))


# ----------------------------------------------------------------------------------- shapes world and metrics
def test_shapes_world_arguments():
    """Kinds: zero images, min > max objects, unknown style / colour, tiny images, negative seeds, wrong
    expected objects for the attribute checker."""
    from hf_vtok.data import check_attributes, generate_shapes_dataset

    cases = [
        ({"num_images": 0}, ValueError, "`num_images` must be >= 1"),
        ({"num_images": 2, "min_objects": 4, "max_objects": 2}, ValueError, "`min_objects` must be <= `max_objects`"),
        ({"num_images": 2, "style": "fancy"}, ValueError, "`style` must be one of"),
        ({"num_images": 2, "colors": ["octarine"]}, ValueError, "`colors` must be one of"),
        ({"num_images": 2, "image_size": 4}, ValueError, "`image_size` must be >= 16"),
        ({"num_images": 2, "seed": -1}, ValueError, "`seed` must be >= 0"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            generate_shapes_dataset(progress=False, **kwargs)
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r"`expected_objects\[0\]\['color'\]`"):
        check_attributes(image, [{"color": "octarine", "shape": "circle"}])
    with pytest.raises(TypeError, match="`expected_objects` must be a list of dicts"):
        check_attributes(image, "red circle")


def test_metric_inputs(tmp_path):
    """Kinds: images of different shapes, NaN images, images smaller than the SSIM window, float masks, a missing
    or non-path perceptual backbone, a folder that is not a model."""
    with pytest.raises(ValueError, match="same shape"):
        psnr(np.zeros((4, 4, 3)), np.zeros((5, 4, 3)))
    with pytest.raises(ValueError, match="`a` contains NaN or Inf"):
        psnr(np.full((4, 4, 3), np.nan), np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="at least 11x11 pixels"):
        ssim(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)))
    with pytest.raises(TypeError, match="`true_mask` must hold integer ids"):
        foreground_ari(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="`backbone_path` must be a local folder"):
        perceptual_distance(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), tmp_path / "nothing")
    with pytest.raises(TypeError, match="`backbone_path` must be the path"):
        perceptual_distance(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), 3)


# ----------------------------------------------------------------------------------------------------------- CLI
def test_cli_arguments(tmp_path, capsys):
    """Kinds: non-positive counts, unknown families and choices (argparse: exit 2), a tokenizer folder that does
    not exist and one without a decoder (one clear line on stderr, exit code 2)."""
    from hf_vtok.commands.cli import main

    for argv in (["data", "shapes", "--out", str(tmp_path), "--num-images", "0"], ["train-tokenizer", "vqgan", "--output-dir", "x"],
                 ["data", "shapes", "--out", str(tmp_path), "--style", "fancy"], ["eval", "--steps", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert main(["eval", "--tokenizer", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "half" / "tokenizer").mkdir(parents=True)
    assert main(["eval", "--tokenizer", str(tmp_path / "half"), "--out", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err
