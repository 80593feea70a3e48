"""The decoder pipelines of the three families behave as diffusers pipelines do.

Properties checked on tiny random models saved and reloaded with the generic ``DiffusionPipeline.from_pretrained``:
``num_images_per_prompt`` multiplies the batch (different noise per image, reproducible per seed); ``output_type=
"latent"`` returns the denoised latents (with an autoencoder, the images are its decoding of them); a
``callback_on_step_end`` sees and replaces the latents and can stop the loop; another scheduler built with
``from_config`` drives the loop; guidance doubles the denoiser's batch only when ``guidance_scale > 1``; images come
back at the tokenizer's resolution unless ``height``/``width`` say otherwise; bad arguments name themselves; the
shipped decoders load with both loaders.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderTiny,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
)
from PIL import Image

import hf_vtok
from hf_vtok.models.ddt import DDTTokenizerConfig, DDTTokenizerForPreTraining
from hf_vtok.models.setok import SeTokConfig, SeTokForPreTraining
from hf_vtok.models.slot_qformer import SlotQFormerConfig, SlotQFormerForPreTraining
from hf_vtok.utils.pipeline_utils import VisualTokenDecoderPipeline

torch.set_num_threads(1)
FAMILIES = {
    "slot_qformer": (SlotQFormerConfig, SlotQFormerForPreTraining),
    "setok": (SeTokConfig, SeTokForPreTraining),
    "ddt": (DDTTokenizerConfig, DDTTokenizerForPreTraining),
}
CHECKPOINTS = Path(hf_vtok.__file__).parent / "checkpoints"


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    """Per family: the tiny decoder pipeline, saved and reloaded with the generic diffusers loader."""
    out = {}
    for family, (config_class, model_class) in FAMILIES.items():
        torch.manual_seed(0)
        model = model_class(config_class.tiny()).eval()
        pipe = model.get_decoder_pipeline()
        with torch.no_grad():  # zero-initialised output layers (adaLN-Zero) would make every prediction 0
            for parameter in pipe.denoiser.parameters():
                parameter.add_(
                    torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)) * 0.02
                )
        folder = tmp_path_factory.mktemp(family)
        pipe.save_pretrained(folder)
        out[family] = DiffusionPipeline.from_pretrained(folder)
        out[family].set_progress_bar_config(disable=True)
    return out


def _image(seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((64, 64, 3)) * 255).astype(np.uint8))


def _run(pipe, **kwargs):
    kwargs.setdefault("images", [_image()])
    kwargs.setdefault("num_inference_steps", 3)
    kwargs.setdefault("output_type", "pt")
    return pipe(**kwargs).images


def _native_size(pipe) -> int:
    return pipe.denoiser.config.sample_size


class DenoiserCalls:
    """Counts the denoiser's forward calls and records their batch sizes."""

    def __init__(self, pipe):
        self.batch_sizes = []
        self.handle = pipe.denoiser.register_forward_hook(
            lambda module, args, output: self.batch_sizes.append(len(args[0]))
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _with(pipe, **components):
    """A new pipeline of the same class sharing ``pipe``'s modules, some replaced."""
    new = type(pipe)(**{**pipe.components, **components})
    new.set_progress_bar_config(disable=True)
    return new


@pytest.mark.parametrize("family", FAMILIES)
def test_reloaded_pipeline_is_the_family_class(pipes, family):
    assert isinstance(pipes[family], VisualTokenDecoderPipeline)
    assert type(pipes[family]).__module__ == f"hf_vtok.models.{family}.pipeline_{family}"


@pytest.mark.parametrize("family", FAMILIES)
def test_num_images_per_prompt_multiplies_the_batch_with_reproducible_noise(pipes, family):
    pipe = pipes[family]
    images = [_image(0), _image(1)]
    first = _run(pipe, images=images, num_images_per_prompt=2, generator=torch.Generator().manual_seed(0))
    again = _run(pipe, images=images, num_images_per_prompt=2, generator=torch.Generator().manual_seed(0))
    assert first.shape[0] == 4 and torch.equal(first, again)
    assert not torch.allclose(
        first[0], first[1], atol=1e-3
    )  # two samples of the first image: different noise
    # one generator per output image: equal seeds give equal samples of the same image
    generators = [torch.Generator().manual_seed(seed) for seed in (7, 7, 8, 8)]
    per_image = _run(pipe, images=images, num_images_per_prompt=2, generator=generators)
    assert torch.equal(per_image[0], per_image[1]) and torch.equal(per_image[2], per_image[3])
    assert not torch.equal(per_image[0], per_image[2])


@pytest.mark.parametrize("family", FAMILIES)
def test_latent_output_is_what_the_images_are_decoded_from(pipes, family):
    pipe, native = pipes[family], _native_size(pipes[family])
    kwargs = {"generator": torch.Generator().manual_seed(0), "num_images_per_prompt": 2}
    latents = _run(pipe, output_type="latent", **kwargs)
    assert latents.shape == (2, pipe.denoiser.config.in_channels, native, native)
    kwargs["generator"].manual_seed(0)
    images = _run(pipe, height=native, width=native, **kwargs)
    torch.testing.assert_close(
        images, (latents / 2 + 0.5).clamp(0, 1)
    )  # pixel space: the latents are the image


@pytest.mark.parametrize("family", FAMILIES)
def test_latent_space_decoder_decodes_through_the_vae(pipes, family, tmp_path):
    pipe = pipes[family]
    torch.manual_seed(0)
    channels = (
        pipe.denoiser.config.in_channels
    )  # a one-stage tiny autoencoder: same size, its own latent space
    vae = AutoencoderTiny(
        encoder_block_out_channels=(8,), decoder_block_out_channels=(8,), num_encoder_blocks=(1,),
        num_decoder_blocks=(1,), latent_channels=channels, scaling_factor=0.5, shift_factor=0.1,
    ).eval()  # fmt: skip
    latent_pipe = _with(pipe, vae=vae)
    native = _native_size(pipe)
    latents = _run(latent_pipe, output_type="latent", generator=torch.Generator().manual_seed(0))
    images = _run(latent_pipe, height=native, width=native, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        decoded = vae.decode(latents / 0.5 + 0.1).sample
    torch.testing.assert_close(images, (decoded / 2 + 0.5).clamp(0, 1))
    assert not torch.allclose(images, (latents / 2 + 0.5).clamp(0, 1), atol=1e-2)  # latents are not pixels
    latent_pipe.save_pretrained(tmp_path)
    reloaded = DiffusionPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    assert isinstance(reloaded.vae, AutoencoderTiny)
    assert torch.equal(
        _run(reloaded, height=native, width=native, generator=torch.Generator().manual_seed(0)), images
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_callback_sees_and_replaces_latents_and_can_stop_the_loop(pipes, family):
    pipe = pipes[family]
    seen = []

    def stop_after_two_steps(pipeline, step, timestep, callback_kwargs):
        seen.append(callback_kwargs["latents"].clone())
        if step == 1:
            pipeline._interrupt = True
            return {"latents": torch.zeros_like(callback_kwargs["latents"])}
        return {}

    with DenoiserCalls(pipe) as calls:
        latents = _run(pipe, num_inference_steps=6, guidance_scale=1.0, output_type="latent",
                       callback_on_step_end=stop_after_two_steps)  # fmt: skip
    assert len(calls.batch_sizes) == 2 and len(seen) == 2 and pipe.num_timesteps == 6
    assert not torch.equal(seen[0], seen[1]) and torch.count_nonzero(latents) == 0
    with DenoiserCalls(pipe) as calls:
        _run(pipe, num_inference_steps=6, guidance_scale=1.0)
    assert len(calls.batch_sizes) == 6 and not pipe.interrupt  # the flag is reset by the next call


SWAPS = {
    "unet": [
        DDPMScheduler.from_config,
        EulerDiscreteScheduler.from_config,
        DPMSolverMultistepScheduler.from_config,
        lambda config: DDIMScheduler.from_config(config, clip_sample=False),
    ],
    "transformer": [
        FlowMatchHeunDiscreteScheduler.from_config,
        lambda config: FlowMatchEulerDiscreteScheduler.from_config(config, shift=3.0),
        lambda config: DPMSolverMultistepScheduler.from_config(
            config, use_flow_sigmas=True, prediction_type="flow_prediction"
        ),
    ],
}


@pytest.mark.parametrize("family", FAMILIES)
def test_swapped_scheduler_runs(pipes, family):
    pipe = pipes[family]
    reference = _run(pipe, generator=torch.Generator().manual_seed(0))
    for make in SWAPS[pipe.denoiser_name]:
        swapped = _with(pipe)
        swapped.scheduler = make(pipe.scheduler.config)
        images = _run(swapped, generator=torch.Generator().manual_seed(0))
        name = type(swapped.scheduler).__name__
        assert torch.isfinite(images).all() and 0 <= float(images.min()) and float(images.max()) <= 1, name
        assert not torch.allclose(images, reference, atol=1e-4), f"{name} gave the default scheduler's images"


@pytest.mark.parametrize("family", FAMILIES)
def test_guidance_doubles_the_denoiser_batch_only_above_one(pipes, family):
    pipe = pipes[family]
    images = [_image(0), _image(1), _image(2)]
    for scale, batch in ((0.0, 3), (1.0, 3), (1.5, 6), (4.0, 6)):
        with DenoiserCalls(pipe) as calls:
            _run(pipe, images=images, num_inference_steps=2, guidance_scale=scale)
        assert calls.batch_sizes == [batch, batch], scale
    generator = torch.Generator()
    unguided = [_run(pipe, guidance_scale=s, generator=generator.manual_seed(0)) for s in (0.0, 1.0)]
    assert torch.equal(*unguided)
    assert not torch.equal(unguided[1], _run(pipe, guidance_scale=3.0, generator=generator.manual_seed(0)))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_checkpoint_keeps_its_own_default_guidance(pipes, family, tmp_path):
    """A guidance chosen for a checkpoint is saved in its model_index.json and is what a call without one uses."""
    from hf_vtok.trainer.hub import build_model_card

    pipe = pipes[family]
    assert pipe.checkpoint_guidance_scale == type(pipe).default_guidance_scale  # none set: the family's default
    chosen = _with(pipe, guidance_scale=1.5)
    chosen.save_pretrained(tmp_path / "decoder")
    assert json.loads((tmp_path / "decoder" / "model_index.json").read_text())["guidance_scale"] == 1.5
    assert "classifier-free guidance 1.5 unless" in build_model_card(tmp_path, "me/decoder").content  # and says so
    reloaded = DiffusionPipeline.from_pretrained(tmp_path / "decoder")
    reloaded.set_progress_bar_config(disable=True)
    assert reloaded.checkpoint_guidance_scale == 1.5
    generator = torch.Generator()
    default = _run(reloaded, generator=generator.manual_seed(0))
    assert torch.equal(default, _run(reloaded, guidance_scale=1.5, generator=generator.manual_seed(0)))
    assert not torch.equal(default, _run(reloaded, guidance_scale=1.0, generator=generator.manual_seed(0)))
    with pytest.raises(ValueError, match="guidance_scale"):
        _with(pipe, guidance_scale=-1.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_images_come_back_at_the_tokenizer_resolution(pipes, family):
    pipe, native = pipes[family], _native_size(pipes[family])
    size = pipe.tokenizer.config.image_size
    default = _run(pipe, generator=torch.Generator().manual_seed(0), output_type="pil")
    assert default[0].size == (size, size)
    at_native = _run(pipe, generator=torch.Generator().manual_seed(0), height=native, width=native)
    assert at_native.shape[-2:] == (native, native)
    assert _run(pipe, height=48, width=40, output_type="np").shape == (1, 48, 40, 3)
    if native != size:  # the resize is antialiased bicubic of the native decoding
        resized = torch.nn.functional.interpolate(
            at_native * 2 - 1, size=(size, size), mode="bicubic", antialias=True
        )
        expected = _run(pipe, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(expected, (resized / 2 + 0.5).clamp(0, 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_arguments_name_themselves(pipes, family):
    pipe = pipes[family]
    image = _image()
    width = pipe.token_embeddings_shape[1]
    count = pipe.token_embeddings_shape[0] or 3
    generator = torch.Generator()
    latent = (pipe.denoiser.config.in_channels, _native_size(pipe), _native_size(pipe))
    cases = [
        ({"images": None}, ValueError, "exactly one of"),
        ({"token_embeddings": torch.zeros(1, count, width)}, ValueError, "exactly one of"),
        ({"num_images_per_prompt": 0}, ValueError, "`num_images_per_prompt` must be >= 1"),
        ({"num_images_per_prompt": 1.5}, TypeError, "`num_images_per_prompt` must be an int"),
        ({"height": 0}, ValueError, "`height` must be >= 1"),
        ({"width": "64"}, TypeError, "`width` must be an int"),
        ({"output_type": "jpeg"}, ValueError, "`output_type` must be one of"),
        ({"callback_on_step_end": "stop"}, TypeError, "`callback_on_step_end` must be callable"),
        ({"callback_on_step_end_tensor_inputs": ["noise"]}, ValueError, "`callback_on_step_end_tensor_inputs`"),
        ({"num_images_per_prompt": 2, "generator": [generator]}, ValueError, "`generator`.*2"),
        ({"num_images_per_prompt": 2, "latents": torch.zeros(1, *latent)}, ValueError, r"`latents` must have shape \[2,"),
        ({"images": None, "token_embeddings": torch.zeros(1, count, width), "attention_mask": torch.ones(1, count + 1)},
         ValueError, "attention_mask"),
    ]  # fmt: skip
    if not pipe.variable_token_count:
        cases.append(
            (
                {"attention_mask": torch.ones(1, 4)},
                ValueError,
                "`attention_mask` goes with `token_embeddings`",
            )
        )
    else:
        cases.append(
            (
                {"images": None, "token_ids": torch.zeros(1, 4, dtype=torch.long)},
                TypeError,
                "continuous tokens",
            )
        )
    for kwargs, error, message in cases:
        kwargs = {"images": [image], "num_inference_steps": 1, **kwargs}
        with pytest.raises(error, match=message):
            pipe(**kwargs)
    without_tokenizer = _with(pipe, tokenizer=None)
    assert without_tokenizer.tokenizer_image_processor is None
    with pytest.raises(ValueError, match="`images` needs the pipeline's `tokenizer`"):
        without_tokenizer(images=[image], num_inference_steps=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_shipped_decoders_load_with_both_loaders(family):
    folder = CHECKPOINTS / family / "decoder"
    pipe_class = {"slot_qformer": hf_vtok.SlotQFormerDecoderPipeline, "setok": hf_vtok.SeTokDecoderPipeline,
                  "ddt": hf_vtok.DDTDecoderPipeline}[family]  # fmt: skip
    direct, generic = pipe_class.from_pretrained(folder), DiffusionPipeline.from_pretrained(folder)
    assert type(generic) is pipe_class
    images = []
    for pipe in (direct, generic):
        pipe.set_progress_bar_config(disable=True)
        images.append(_run(pipe, num_inference_steps=2, generator=torch.Generator().manual_seed(0)))
    assert images[0].shape[-1] == direct.tokenizer.config.image_size and torch.equal(*images)
