"""Fixtures shared by several test files."""

import pytest


@pytest.fixture
def encoder_calls(monkeypatch):
    """Images passed through ``AutoencoderTAEF2.encode`` (one entry per call: the batch size)."""
    from hf_vtok.utils.autoencoder_taef2 import AutoencoderTAEF2

    calls = []
    encode = AutoencoderTAEF2.encode

    def counting_encode(self, x, *args, **kwargs):
        calls.append(int(x.shape[0]))
        return encode(self, x, *args, **kwargs)

    monkeypatch.setattr(AutoencoderTAEF2, "encode", counting_encode)
    return calls


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """A fresh datasets cache for the test, so that the first latent cache of a test always encodes."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    return tmp_path / "datasets_cache"
