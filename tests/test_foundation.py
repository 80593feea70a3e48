"""Package-level behaviour: input validation, shared image processing, the CLI and the demo."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hf_vtok.commands.cli import build_parser, main
from hf_vtok.utils.image_processing_utils import (
    VTokImageProcessorPil,
    VTokImageProcessorTorch,
    images_to_list,
)
from hf_vtok.utils.modeling_utils import TransformerBlock, sinusoidal_embedding_2d
from hf_vtok.utils.validation import check_pixel_values, check_token_ids, load_image


class TinyPil(VTokImageProcessorPil):
    size = {"shortest_edge": 32}
    crop_size = {"height": 32, "width": 32}


class TinyTorch(VTokImageProcessorTorch):
    size = {"shortest_edge": 32}
    crop_size = {"height": 32, "width": 32}


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F", "HSV", "LAB"])
def test_every_pil_mode_becomes_rgb(mode):
    image = Image.new(mode, (20, 12))
    rgb = load_image(image)
    assert rgb.mode == "RGB" and rgb.size == (20, 12)


def test_alpha_is_composited_on_white():
    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(load_image(transparent)).min() == 255


def test_sixteen_bit_images_keep_their_contrast():
    array = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    rgb = np.asarray(load_image(Image.fromarray(array)))
    assert rgb.min() == 0 and rgb.max() == 255


@pytest.mark.parametrize(
    "value, error, match",
    [
        (b"", ValueError, "0 bytes"),
        (b"not an image at all", ValueError, "could not be decoded"),
        (png_bytes(Image.new("RGB", (8, 8)))[:40], ValueError, "could not be decoded"),
        (np.zeros((0, 5, 3), np.uint8), ValueError, "empty"),
        (np.full((4, 4, 3), np.nan, np.float32), ValueError, "NaN"),
        (np.full((4, 4, 3), 2.0, np.float32), ValueError, r"\[0, 1\]"),
        (np.zeros((4, 4, 3), np.int32), TypeError, "dtype"),
        (np.zeros((5, 5, 7), np.uint8), ValueError, "HxW"),
        (42, TypeError, "PIL.Image"),
        ("/no/such/file.png", ValueError, "existing image file"),
    ],
)
def test_bad_images_raise_clear_errors(value, error, match):
    with pytest.raises(error, match=match):
        load_image(value, name="image")


def test_decompression_bomb_is_refused():
    header = Image.new("L", (1, 1))
    buffer = io.BytesIO()
    header.save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    # patch the IHDR width/height to 100000 x 100000 (CRC is not checked before the size guard)
    data[16:20] = (100000).to_bytes(4, "big")
    data[20:24] = (100000).to_bytes(4, "big")
    with pytest.raises(ValueError, match="image"):
        load_image(bytes(data))


def test_image_processor_backends_agree_and_accept_every_input_kind(tmp_path):
    rng = np.random.default_rng(0)
    array = (rng.random((40, 50, 3)) * 255).astype(np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(array).save(path)
    inputs = [Image.fromarray(array), array, str(path), path.read_bytes(), torch.from_numpy(array).permute(2, 0, 1)]
    pil_out = TinyPil()(inputs, return_tensors="pt").pixel_values
    torch_out = TinyTorch()(inputs, return_tensors="pt").pixel_values
    assert pil_out.shape == torch_out.shape == (5, 3, 32, 32)
    assert torch.allclose(pil_out[0], pil_out[1]) and torch.allclose(pil_out[0], pil_out[3])
    # the two backends resample differently but agree closely
    assert (pil_out - torch_out).abs().mean() < 0.05
    restored = TinyPil().postprocess_pixel_values(pil_out)
    assert restored.min() >= 0 and restored.max() <= 1


def test_image_processor_refuses_empty_batches():
    with pytest.raises(ValueError, match="images"):
        TinyPil()([])


def test_image_processors_take_a_datasets_column_a_tuple_or_a_generator():
    from hf_vtok.data.shapes import generate_shapes_dataset

    column = generate_shapes_dataset(3)["image"]  # a `datasets` Column, not a list
    assert not isinstance(column, (list, tuple))
    as_list = [image.copy() for image in column]
    for processor in (TinyPil(), TinyTorch()):
        expected = processor(as_list, return_tensors="pt").pixel_values
        for images in (column, tuple(as_list), (image for image in as_list)):
            assert torch.equal(processor(images, return_tensors="pt").pixel_values, expected), type(images)
    with pytest.raises(ValueError, match="at least one image, got an empty generator"):
        TinyPil()(image for image in ())


def test_images_to_list_names_the_bad_item():
    with pytest.raises(ValueError, match=r"images\[1\]"):
        images_to_list([Image.new("RGB", (4, 4)), b"junk"])


def test_pixel_value_and_id_checks():
    with pytest.raises(ValueError, match="3 channels"):
        check_pixel_values(torch.zeros(1, 4, 8, 8), num_channels=3)
    with pytest.raises(ValueError, match="8x8"):
        check_pixel_values(torch.zeros(1, 3, 9, 8), num_channels=3, image_size=8)
    with pytest.raises(TypeError, match="floating"):
        check_pixel_values(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), num_channels=3)
    with pytest.raises(ValueError, match="Inf"):
        check_pixel_values(torch.full((1, 3, 8, 8), float("inf")), num_channels=3)
    with pytest.raises(ValueError, match="empty"):
        check_pixel_values(torch.zeros(0, 3, 8, 8), num_channels=3)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        check_token_ids(torch.tensor([[0, 10]]), codebook_size=10)
    with pytest.raises(ValueError, match="3 ids per image"):
        check_token_ids(torch.tensor([[0, 1]]), codebook_size=10, num_tokens=3)
    with pytest.raises(TypeError, match="integer"):
        check_token_ids(torch.tensor([[0.0, 1.0]]), codebook_size=10)


def test_sinusoidal_2d_embedding_distinguishes_every_position():
    embedding = sinusoidal_embedding_2d(6, 5, 32)
    assert embedding.shape == (30, 32)
    assert torch.cdist(embedding, embedding).add(torch.eye(30)).min() > 1e-3


def test_transformer_block_mask_hides_padded_context():
    torch.manual_seed(0)
    block = TransformerBlock(16, 2, cross_attention=True, context_dim=8)
    x, context = torch.randn(2, 3, 16), torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    changed = context.clone()
    changed[1, 2:] = 100.0
    assert torch.allclose(block(x, context=context, context_mask=mask), block(x, context=changed, context_mask=mask))


REGISTRATION_PROBE = """
import importlib, json
import hf_vtok
from transformers import AutoConfig, MODEL_FOR_PRETRAINING_MAPPING, MODEL_MAPPING

def registered():
    out = {}
    for model_type in ("slot_qformer", "setok", "ddt_tokenizer"):
        config_class = type(AutoConfig.for_model(model_type))
        out[model_type] = [config_class.__module__, config_class.__name__, MODEL_MAPPING[config_class].__name__,
                           MODEL_FOR_PRETRAINING_MAPPING[config_class].__name__]
    return out

before = registered()
importlib.reload(hf_vtok)  # registers again: fails unless registration tolerates a repeat
print(json.dumps({"before": before, "after": registered()}))
"""


@pytest.mark.slow
def test_import_registers_and_is_idempotent():
    """A fresh interpreter: `import hf_vtok` maps every family's model type to its config, model and pre-training
    classes; re-importing hf_vtok (reload) registers them again without an error and changes nothing."""
    result = subprocess.run([sys.executable, "-c", REGISTRATION_PROBE], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    expected = {
        "slot_qformer": ["SlotQFormerConfig", "SlotQFormerModel", "SlotQFormerForPreTraining"],
        "setok": ["SeTokConfig", "SeTokModel", "SeTokForPreTraining"],
        "ddt_tokenizer": ["DDTTokenizerConfig", "DDTTokenizerModel", "DDTTokenizerForPreTraining"],
    }
    for model_type, names in expected.items():
        module, *classes = report["before"][model_type]
        assert module.startswith("hf_vtok.models.") and classes == names, report["before"][model_type]
    assert report["after"] == report["before"]


def test_every_subcommand_has_help(capsys):
    """`hf-vtok <sub> --help` exits 0 and prints that subcommand's usage with every option it defines."""
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices
    assert {"demo", "eval", "data", "train-tokenizer", "train-mllm"} <= set(subcommands)
    for name, subparser in subcommands.items():
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        printed = capsys.readouterr().out
        assert printed.startswith("usage:") and f" {name}" in printed.splitlines()[0], (name, printed[:200])
        options = [option for action in subparser._actions for option in action.option_strings if option.startswith("--")]
        missing = [option for option in options if option not in printed]
        assert not missing, (name, missing)
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "shapes", "--help"])
    assert exit_info.value.code == 0
    assert "--num-images" in capsys.readouterr().out
    # and --help is the only way to a 0 exit without work: a bad option still fails
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--no-such-option"])
    assert exit_info.value.code == 2


def test_cli_data_shapes_writes_an_image_folder(tmp_path):
    out = tmp_path / "shapes_out"
    assert main(["data", "shapes", "--num-images", "6", "--out", str(out)]) == 0
    assert len(list((out / "images").glob("*.png"))) == 6
    assert len(list((out / "masks").glob("*.png"))) == 6
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(record["caption"] for record in records)
    # a second run into the same folder is refused without --overwrite: a clear error, exit code 2
    assert main(["data", "shapes", "--num-images", "6", "--out", str(out)]) == 2
    assert main(["data", "shapes", "--num-images", "6", "--out", str(out), "--overwrite"]) == 0


def test_cli_rejects_bad_numbers():
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "shapes", "--num-images", "-3", "--out", "x"])
    assert exit_info.value.code == 2


# ---------------------------------------------------------------------------------------------- one API
# The contracts every tokenizer family keeps (utils/modeling_utils.py, utils/configuration_utils.py).
import pathlib  # noqa: E402

from transformers import AutoConfig, AutoModel  # noqa: E402
from transformers.modeling_outputs import BaseModelOutput  # noqa: E402

import hf_vtok  # noqa: E402
from hf_vtok import (  # noqa: E402
    DDTTokenizerConfig,
    DDTTokenizerForPreTraining,
    SeTokConfig,
    SeTokForPreTraining,
    SlotQFormerConfig,
    SlotQFormerForPreTraining,
)
from hf_vtok.models.ddt import DDTDecoderConfig  # noqa: E402
from hf_vtok.models.setok import SeTokDecoderConfig, SeTokMaskDecoderConfig  # noqa: E402
from hf_vtok.models.slot_qformer import SlotQFormerDecoderConfig  # noqa: E402

FAMILY_CONFIGS = {"slot_qformer": SlotQFormerConfig, "setok": SeTokConfig, "ddt": DDTTokenizerConfig}
PRETRAINING_CLASSES = {"slot_qformer": SlotQFormerForPreTraining, "setok": SeTokForPreTraining, "ddt": DDTTokenizerForPreTraining}
SHIPPED = pathlib.Path(hf_vtok.__file__).parent / "checkpoints"


def _tiny_tokenizer(family, **overrides):
    torch.manual_seed(0)
    return AutoModel.from_config(FAMILY_CONFIGS[family].tiny(**overrides)).eval()


@pytest.mark.parametrize("family, overrides", [("slot_qformer", {}), ("slot_qformer", {"token_order": "depth_major"}), ("ddt", {})])
def test_embed_ids_of_encoded_ids_are_the_encoded_embeddings(family, overrides):
    model = _tiny_tokenizer(family, **overrides)
    with torch.no_grad():
        tokens = model.encode(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
        torch.testing.assert_close(model.embed_ids(tokens.ids), tokens.embeddings)
    # token_groups names the embedding row of every id, whatever the flattening order
    assert tokens.token_groups.shape == tokens.ids.shape and tokens.attention_mask.shape == tokens.ids.shape
    rows = tokens.embeddings.shape[1]
    grouped = torch.stack([tokens.ids[:, tokens.token_groups[0] == row] for row in range(rows)], dim=1)
    expected = model.unflatten_ids(tokens.ids) if family == "slot_qformer" else tokens.ids[..., None]
    assert torch.equal(grouped, expected)


def test_continuous_tokens_have_no_ids_and_no_groups():
    with torch.no_grad():
        tokens = _tiny_tokenizer("setok").encode(torch.randn(2, 3, 64, 64))
    assert tokens.ids is None and tokens.token_groups is None
    assert tokens.attention_mask.shape == tokens.embeddings.shape[:2]


@pytest.mark.parametrize("family", FAMILY_CONFIGS)
def test_get_image_features_returns_a_model_output_of_patch_features(family):
    model = _tiny_tokenizer(family)
    config = model.config
    patch = config.vision_config.patch_size if family != "ddt" else config.patch_size
    with torch.no_grad():
        first, second = (model.get_image_features(torch.randn(1, 3, 64, 64)) for _ in range(2))
    assert isinstance(first, BaseModelOutput)
    assert first.last_hidden_state.shape[1] == (64 // patch) ** 2  # one row per patch, class tokens dropped
    assert not torch.allclose(first.last_hidden_state, second.last_hidden_state)  # features of the image


@pytest.mark.parametrize("family", FAMILY_CONFIGS)
def test_set_stage_returns_the_model_and_records_the_stage(family):
    model = PRETRAINING_CLASSES[family](FAMILY_CONFIGS[family].tiny())
    assert model.set_stage(2) is model and model.config.stage == 2
    assert model.set_stage(1) is model and model.config.stage == 1


@pytest.mark.parametrize(
    "family, sub_configs",
    [
        ("slot_qformer", {"decoder_config": SlotQFormerDecoderConfig}),
        ("setok", {"decoder_config": SeTokDecoderConfig, "mask_decoder_config": SeTokMaskDecoderConfig}),
        ("ddt", {"decoder_config": DDTDecoderConfig}),
    ],
)
def test_config_round_trip_keeps_typed_sub_configs(family, sub_configs, tmp_path):
    config = FAMILY_CONFIGS[family].tiny()
    config.decoder_config.condition_dropout_prob = 0.25
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is type(config) and loaded.to_diff_dict() == config.to_diff_dict()
    for key, cls in sub_configs.items():
        assert type(getattr(loaded, key)) is cls
    assert loaded.decoder_config.condition_dropout_prob == 0.25
    with pytest.raises(ValueError, match="decoder_config.*unknown keys"):
        FAMILY_CONFIGS[family].tiny(decoder_config={"condition_dropout": 0.1, "not_a_field": 1})


# old name in config.json -> (new attribute path); the shipped checkpoints were written before the renames
OLD_NAMES = {
    "slot_qformer": {"loss_weight_global_mse": "global_mse_loss_weight", "loss_weight_commitment": "commitment_loss_weight",
                     "loss_weight_diffusion_stage2": "stage2_diffusion_loss_weight"},
    "setok": {"decoder_config.condition_dropout": "decoder_config.condition_dropout_prob"},
    "ddt": {"code_dim": "codebook_dim", "ema_decay": "codebook_ema_decay", "kmeans_iters": "codebook_kmeans_iters",
            "dead_code_threshold": "codebook_dead_code_threshold", "training_stage": "stage",
            "condition_dropout_prob": "decoder_config.condition_dropout_prob"},
}  # fmt: skip


def _lookup(source, dotted: str):
    for part in dotted.split("."):
        source = source[part] if isinstance(source, dict) else getattr(source, part)
    return source


@pytest.mark.parametrize("family", OLD_NAMES)
def test_old_config_json_with_old_field_names_still_loads(family, tmp_path):
    folder = SHIPPED / family / "decoder" / "tokenizer"  # the shipped folders keep the tokenizer once, inside the decoder
    saved = json.loads((folder / "config.json").read_text())
    config = AutoConfig.from_pretrained(folder)
    for old, new in OLD_NAMES[family].items():
        assert _lookup(config, new) == _lookup(saved, old), (old, new)
    model = AutoModel.from_pretrained(folder)  # weights load strictly against the old config
    assert model.config.codebook_size == saved.get("codebook_size")
    config.save_pretrained(tmp_path)
    rewritten = json.loads((tmp_path / "config.json").read_text())
    assert not {old.split(".")[0] for old in OLD_NAMES[family] if "." not in old} & set(rewritten)  # new names only


@pytest.mark.parametrize("family", FAMILY_CONFIGS)
def test_image_processor_is_built_from_the_tokenizer_config(family):
    config = FAMILY_CONFIGS[family].tiny(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6])
    processor = VTokImageProcessorPil.from_tokenizer_config(config)
    assert type(processor).__name__.endswith("ImageProcessorPil") and type(processor) is not VTokImageProcessorPil
    pixels = processor(Image.new("RGB", (80, 100), (255, 0, 128)), return_tensors="pt")["pixel_values"]
    assert pixels.shape[-2:] == (config.image_size, config.image_size)
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor([0.1, 0.2, 0.3])) / torch.tensor([0.4, 0.5, 0.6])
    torch.testing.assert_close(pixels[0, :, 10, 10], expected, atol=1e-3, rtol=0)
    with pytest.raises(TypeError, match="config"):
        VTokImageProcessorPil.from_tokenizer_config(object())
