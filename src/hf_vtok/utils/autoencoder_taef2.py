"""TAEF2: a tiny latent autoencoder for the FLUX.2 latent space, as a diffusers model.

TAEF2 is Ollin Boer Bohan's tiny autoencoder for FLUX.2 (https://github.com/madebyollin/taesd,
files ``taef2_encoder.pth`` / ``taef2_decoder.pth``), released under the MIT licence::

    MIT License - Copyright (c) 2023 Ollin Boer Bohan

The weights shipped in ``hf_vtok/checkpoints/taef2/`` are that release converted unchanged (same
tensors, float16) and carry its licence file. This module is written from the architecture
description that comes with the converted weights; it holds no code from that repository.

Why a model of our own: diffusers' ``AutoencoderTiny`` has no GroupNorm ("pool") branch in its
residual blocks, so it cannot hold these weights (dropping the branch costs 10-14 dB on the
shapes world, see the model card).

Conventions (as diffusers' ``AutoencoderTiny``):

* :meth:`AutoencoderTAEF2.encode` takes images in ``[-1, 1]`` and maps them to the ``[0, 1]`` range
  the network was trained on (``(x + 1) / 2``) before the encoder. It returns the **raw** latents,
  ``(B, 32, H/8, W/8)``.
* :meth:`AutoencoderTAEF2.decode` takes raw latents and returns images in ``[-1, 1]``
  (``2 * clamp(net(z), 0, 1) - 1``).
* A diffusion model works on the **scaled** latents ``(z - shift_factor) * scaling_factor``
  (:meth:`AutoencoderTAEF2.scale_latents`, undone by :meth:`AutoencoderTAEF2.unscale_latents`), which
  are roughly zero-mean, unit-variance on the shapes world (see ``DEFAULT_SCALING_FACTOR``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTinyOutput
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from safetensors.torch import load_file
from torch import nn

from .validation import check_int, describe

__all__ = [
    "DEFAULT_SCALING_FACTOR",
    "DEFAULT_SHIFT_FACTOR",
    "TAEF2_CHECKPOINT_DIR",
    "AutoencoderTAEF2",
    "load_taef2",
    "reference_bundled_taef2",
    "taef2_checkpoint_dir",
    "tiny_taef2_config",
]

#: The shipped diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, MIT).
TAEF2_CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints" / "taef2"

# Measured with benchmarks/bench_taef2.py on the raw latents of 256 shapes-world scenes (flat and
# textured, 64 and 128 px, 64 scenes each, seed 1234): mean 0.005, std 0.767 (flat 0.677, textured
# 0.847; bundled photos at 128 px: mean 0.001, std 0.896). The mean is noise next to the std, so no
# shift; 1 / 0.767 = 1.30 gives the shapes world unit variance (photos then 1.17).
DEFAULT_SHIFT_FACTOR = 0.0
DEFAULT_SCALING_FACTOR = 1.30

#: A ``vae/`` folder whose ``config.json`` holds this key (value ``"taef2"``) and no weights loads the weights bundled
#: in ``TAEF2_CHECKPOINT_DIR``: the shipped decoder pipelines reference them instead of each carrying a copy.
BUNDLED_WEIGHTS_KEY = "_hf_vtok_bundled_weights"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def taef2_checkpoint_dir() -> Path:
    """The folder of the shipped TAEF2 weights, loadable with ``AutoencoderTAEF2.from_pretrained``."""
    return TAEF2_CHECKPOINT_DIR


def _check_block_counts(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) < 1:
        raise TypeError(f"`{name}` must be a non-empty list/tuple of ints, got {describe(value)}.")
    return tuple(check_int(f"{name}[{i}]", v, minimum=1) for i, v in enumerate(value))


def _check_image_batch(name: str, value: Any, channels: int, multiple: int) -> torch.Tensor:
    """A floating ``(B, channels, H, W)`` tensor with ``H`` and ``W`` multiples of ``multiple``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {describe(value)}.")
    if value.ndim != 4:
        raise ValueError(
            f"`{name}` must have shape (batch, {channels}, height, width), got shape {tuple(value.shape)}."
        )
    if not value.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got dtype {value.dtype}.")
    if value.shape[1] != channels:
        raise ValueError(f"`{name}` must have {channels} channels (dim 1), got shape {tuple(value.shape)}.")
    if (
        min(value.shape[0], value.shape[2], value.shape[3]) == 0
        or value.shape[2] % multiple
        or value.shape[3] % multiple
    ):
        raise ValueError(
            f"`{name}` must have a non-empty batch and height/width that are positive multiples of "
            f"{multiple}, got shape {tuple(value.shape)}."
        )
    return value


class _TanhClamp(nn.Module):
    """``m * tanh(z / m)``: softly bounds the decoder's input latents to ``(-m, m)``.

    TAEF2's decoder was trained behind this soft clamp; leaving it out shifts every latent the
    encoder puts near or beyond ``m`` and costs several dB.
    """

    def __init__(self, magnitude: float):
        super().__init__()
        self.magnitude = float(magnitude)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z / self.magnitude) * self.magnitude

    def extra_repr(self) -> str:
        return f"magnitude={self.magnitude}"


class _ResBlock(nn.Module):
    """``relu(conv(x) + x)``, optionally after ``x = x + pool(x)``.

    ``conv`` is three 3×3 convolutions with ReLUs between them (Sequential indices 0, 2, 4, as in the
    published keys). ``pool`` is the GroupNorm branch of the lowest-resolution stage: 1×1 conv up to
    ``pool_channels``, GroupNorm, ReLU, 1×1 conv back, both convs without bias. Its GroupNorm sees
    the whole feature map, which gives these blocks a global (image-level) view.
    """

    def __init__(self, channels: int, pool_channels: int | None, pool_groups: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.pool = None
        if pool_channels is not None:
            self.pool = nn.Sequential(
                nn.Conv2d(channels, pool_channels, 1, bias=False),
                nn.GroupNorm(pool_groups, pool_channels),
                nn.ReLU(),
                nn.Conv2d(pool_channels, channels, 1, bias=False),
            )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.act(self.conv(x) + x)


class AutoencoderTAEF2(ModelMixin, ConfigMixin):
    r"""TAEF2 tiny autoencoder (FLUX.2 latent space: 32 channels at 1/8 resolution), MIT, by Ollin Boer Bohan.

    ``encoder`` and ``decoder`` are ``nn.Sequential`` whose indices are the published key names, so
    the original weights load one to one (:meth:`from_original_weights`).

    Args:
        in_channels / out_channels: image channels (3).
        latent_channels: channels of the latent (32 for FLUX.2).
        hidden_channels: width of every convolution between the first and the last (64).
        num_encoder_blocks: residual blocks per encoder stage; stage ``i > 0`` starts with a stride-2
            3×3 convolution (no bias), so the image shrinks by ``2 ** (len - 1)`` (8).
        num_decoder_blocks: residual blocks per decoder stage; stage ``i > 0`` starts with a nearest
            ×2 upsample and a 3×3 convolution (no bias). Must give the same number of stages.
        use_pool_branch: give the residual blocks of the lowest-resolution stage (the encoder's last,
            the decoder's first) the GroupNorm branch. TAEF2 has it.
        pool_channels / pool_groups: width and GroupNorm groups of that branch (256 = 4 × 64, 4).
        latent_magnitude: ``m`` of the decoder's input soft clamp ``m * tanh(z / m)`` (3).
        scaling_factor / shift_factor: ``scaled = (z - shift_factor) * scaling_factor`` gives a diffusion
            model roughly zero-mean unit-variance latents (measured values are the defaults).
        force_upcast: read by some diffusers pipelines; float16 works for this model, so ``False``.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        latent_channels: int = 32,
        hidden_channels: int = 64,
        num_encoder_blocks: tuple[int, ...] = (1, 3, 3, 3),
        num_decoder_blocks: tuple[int, ...] = (3, 3, 3, 1),
        use_pool_branch: bool = True,
        pool_channels: int = 256,
        pool_groups: int = 4,
        latent_magnitude: float = 3.0,
        scaling_factor: float = DEFAULT_SCALING_FACTOR,
        shift_factor: float = DEFAULT_SHIFT_FACTOR,
        force_upcast: bool = False,
    ):
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("latent_channels", latent_channels),
            ("hidden_channels", hidden_channels),
            ("pool_channels", pool_channels),
            ("pool_groups", pool_groups),
        ):
            check_int(name, value, minimum=1)
        enc_blocks = _check_block_counts("num_encoder_blocks", num_encoder_blocks)
        dec_blocks = _check_block_counts("num_decoder_blocks", num_decoder_blocks)
        if len(enc_blocks) != len(dec_blocks):
            raise ValueError(
                f"`num_decoder_blocks` must have as many stages as `num_encoder_blocks` ({len(enc_blocks)}), "
                f"got {len(dec_blocks)}."
            )
        if pool_channels % pool_groups:
            raise ValueError(
                f"`pool_channels` ({pool_channels}) must be divisible by `pool_groups` ({pool_groups})."
            )
        for name, value in (("latent_magnitude", latent_magnitude), ("scaling_factor", scaling_factor)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"`{name}` must be a positive number, got {describe(value)}.")
        if isinstance(shift_factor, bool) or not isinstance(shift_factor, (int, float)):
            raise TypeError(f"`shift_factor` must be a number, got {describe(shift_factor)}.")

        width = hidden_channels

        def res(pool: bool) -> _ResBlock:
            return _ResBlock(width, pool_channels if pool and use_pool_branch else None, pool_groups)

        def conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
            return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)

        last = len(enc_blocks) - 1
        encoder: list[nn.Module] = [conv(in_channels, width)]
        for stage, count in enumerate(enc_blocks):
            if stage > 0:
                encoder.append(conv(width, width, stride=2, bias=False))
            encoder.extend(res(stage == last) for _ in range(count))
        encoder.append(conv(width, latent_channels))
        self.encoder = nn.Sequential(*encoder)

        decoder: list[nn.Module] = [_TanhClamp(latent_magnitude), conv(latent_channels, width), nn.ReLU()]
        for stage, count in enumerate(dec_blocks):
            if stage > 0:
                decoder.extend([nn.Upsample(scale_factor=2, mode="nearest"), conv(width, width, bias=False)])
            decoder.extend(res(stage == 0) for _ in range(count))
        decoder.append(conv(width, out_channels))
        self.decoder = nn.Sequential(*decoder)

    # ------------------------------------------------------------------------------------ helpers
    @property
    def spatial_compression_ratio(self) -> int:
        """How much smaller the latent is than the image along each side (8)."""
        return 2 ** (len(self.config.num_encoder_blocks) - 1)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(latent_channels, height / r, width / r)`` for an image of that size."""
        r = self.spatial_compression_ratio
        for name, value in (("height", height), ("width", width)):
            check_int(name, value, minimum=1)
            if value % r:
                raise ValueError(f"`{name}` must be a multiple of {r}, got {value}.")
        return (self.config.latent_channels, height // r, width // r)

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents → the ``(z - shift_factor) * scaling_factor`` space a diffusion model works in.

        (Unlike ``AutoencoderTiny.scale_latents``, which maps to ``[0, 1]`` for byte storage.)
        """
        return (latents - self.config.shift_factor) * self.config.scaling_factor

    def unscale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`scale_latents`: ``latents / scaling_factor + shift_factor``."""
        return latents / self.config.scaling_factor + self.config.shift_factor

    # -------------------------------------------------------------------------------- encode/decode
    def encode(
        self, x: torch.Tensor, return_dict: bool = True
    ) -> AutoencoderTinyOutput | tuple[torch.Tensor]:
        """Images ``(B, 3, H, W)`` in ``[-1, 1]`` (H, W multiples of 8) → raw latents ``(B, 32, H/8, W/8)``.

        Floating inputs of another dtype are cast to the model's dtype.
        """
        x = _check_image_batch("x", x, self.config.in_channels, self.spatial_compression_ratio)
        # The network was trained on [0, 1] images; diffusers pipelines hand over [-1, 1].
        latents = self.encoder((x.to(self.dtype) + 1) / 2)
        if not return_dict:
            return (latents,)
        return AutoencoderTinyOutput(latents=latents)

    def decode(
        self, z: torch.Tensor, generator: torch.Generator | None = None, return_dict: bool = True
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Raw latents ``(B, 32, h, w)`` → images ``(B, 3, 8h, 8w)`` in ``[-1, 1]`` (clamped).

        ``generator`` is accepted for diffusers pipelines and ignored: decoding is deterministic.
        """
        z = _check_image_batch("z", z, self.config.latent_channels, 1)
        image = self.decoder(z.to(self.dtype)).clamp(0, 1) * 2 - 1
        if not return_dict:
            return (image,)
        return DecoderOutput(sample=image)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Round trip: ``decode(encode(sample))``, images in ``[-1, 1]``."""
        latents = self.encode(sample).latents
        return self.decode(latents, return_dict=return_dict)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``from_pretrained``; a local folder that only references the bundled weights (its
        ``config.json`` has ``BUNDLED_WEIGHTS_KEY``, see :func:`reference_bundled_taef2`) loads those."""
        folder = Path(os.fspath(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
        if _references_bundled_weights(folder):
            kwargs.pop("subfolder", None)
            return super().from_pretrained(TAEF2_CHECKPOINT_DIR, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # ---------------------------------------------------------------------------- original weights
    @classmethod
    def from_original_weights(
        cls,
        encoder_path: str | os.PathLike,
        decoder_path: str | os.PathLike,
        *,
        torch_dtype: torch.dtype = torch.float32,
        **config: Any,
    ) -> AutoencoderTAEF2:
        """Build the model from the published ``taef2_{encoder,decoder}.safetensors`` files.

        Every key of each file must exist in the module with the same shape and every parameter must be
        in the file; otherwise a ``ValueError`` names the first offending key. ``config`` overrides the
        default (TAEF2) configuration.
        """
        if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
            raise TypeError(f"`torch_dtype` must be a floating torch.dtype, got {describe(torch_dtype)}.")
        model = cls(**config)
        for name, path, part in (
            ("encoder_path", encoder_path, model.encoder),
            ("decoder_path", decoder_path, model.decoder),
        ):
            if not isinstance(path, (str, os.PathLike)):
                raise TypeError(f"`{name}` must be a path, got {describe(path)}.")
            if not Path(path).is_file():
                raise ValueError(f"`{name}` must be an existing safetensors file, got {str(path)!r}.")
            state = load_file(str(path))
            expected = part.state_dict()
            for key, tensor in state.items():
                if key not in expected:
                    raise ValueError(
                        f"`{name}` ({path}): unexpected key {key!r} (not in the TAEF2 {name[:7]})."
                    )
                if tuple(tensor.shape) != tuple(expected[key].shape):
                    raise ValueError(
                        f"`{name}` ({path}): key {key!r} has shape {tuple(tensor.shape)}, the module expects "
                        f"{tuple(expected[key].shape)}."
                    )
            missing = [key for key in expected if key not in state]
            if missing:
                raise ValueError(
                    f"`{name}` ({path}): missing key {missing[0]!r} ({len(missing)} missing in all)."
                )
            part.load_state_dict(state, strict=True)
        # nn.Module.to: ModelMixin.to (diffusers 0.42) warns about fp32 modules on every dtype cast,
        # even when there are none.
        return nn.Module.to(model, torch_dtype).eval()


def load_taef2(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> AutoencoderTAEF2:
    """The shipped TAEF2 weights (float16 on disk) as a ``dtype`` model on ``device``, in eval mode."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"`dtype` must be a floating torch.dtype, got {describe(dtype)}.")
    model = AutoencoderTAEF2.from_pretrained(TAEF2_CHECKPOINT_DIR, torch_dtype=dtype)
    return model.to(device).eval()


def _architecture(config: dict) -> dict:
    return {key: value for key, value in config.items() if not key.startswith("_")}


def _references_bundled_weights(folder: Path) -> bool:
    """``folder`` holds a config that names the bundled weights and no weights of its own (checked against them)."""
    config_file = folder / "config.json"
    if not config_file.is_file() or any(path.suffix in _WEIGHT_SUFFIXES for path in folder.iterdir()):
        return False
    config = json.loads(config_file.read_text())
    if BUNDLED_WEIGHTS_KEY not in config:
        return False
    if config[BUNDLED_WEIGHTS_KEY] != "taef2":
        raise ValueError(f"{config_file}: `{BUNDLED_WEIGHTS_KEY}` must be 'taef2', got {describe(config[BUNDLED_WEIGHTS_KEY])}.")
    bundled = _architecture(json.loads((TAEF2_CHECKPOINT_DIR / "config.json").read_text()))
    own = _architecture(config)
    if own != bundled:
        differing = sorted(key for key in set(own) | set(bundled) if own.get(key) != bundled.get(key))
        raise ValueError(
            f"{config_file} references the bundled TAEF2 weights but its architecture differs in {differing}: "
            "a folder that references them must have their config."
        )
    return True


def reference_bundled_taef2(vae_folder) -> None:
    """Turn a saved TAEF2 ``vae/`` folder into a reference to the bundled weights (config only, no weights).

    Only when its weights are the bundled ones (a frozen TAEF2, float32 or float16): anything else raises, so no
    trained autoencoder is ever replaced. Loading the folder with ``from_pretrained`` then loads the bundled weights.
    """
    folder = Path(vae_folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"`vae_folder` must be a saved AutoencoderTAEF2 folder, got {folder} (no config.json).")
    weights = [path for path in folder.iterdir() if path.suffix in _WEIGHT_SUFFIXES]
    if [path.suffix for path in weights] != [".safetensors"]:
        raise ValueError(f"`vae_folder` {folder} must hold one safetensors weights file, got {[p.name for p in weights]}.")
    bundled = load_file(TAEF2_CHECKPOINT_DIR / "diffusion_pytorch_model.safetensors")
    own = load_file(weights[0])
    if own.keys() != bundled.keys() or not all(
        torch.equal(own[key].float(), bundled[key].float()) for key in bundled
    ):
        raise ValueError(f"`vae_folder` {folder} holds weights other than the bundled TAEF2: it cannot reference them.")
    config = json.loads((folder / "config.json").read_text())
    config.pop("_name_or_path", None)
    config[BUNDLED_WEIGHTS_KEY] = "taef2"
    weights[0].unlink()
    (folder / "LICENSE").unlink(missing_ok=True)  # the licence stays with the weights, in TAEF2_CHECKPOINT_DIR
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if not _references_bundled_weights(folder):
        raise AssertionError(f"{folder} was written as a reference but does not read as one.")


def tiny_taef2_config(**overrides: Any) -> dict[str, Any]:
    """A small random-init configuration for tests: width 8, one block per stage, same latent shape."""
    config: dict[str, Any] = {
        "hidden_channels": 8,
        "num_encoder_blocks": (1, 1, 1, 1),
        "num_decoder_blocks": (1, 1, 1, 1),
        "pool_channels": 16,
        "pool_groups": 4,
    }
    config.update(overrides)
    return config
