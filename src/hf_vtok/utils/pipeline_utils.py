"""The decoder pipeline every tokenizer family subclasses: visual tokens → diffusion → images.

    images ─image processor→ pixel_values ─tokenizer.encode─┐
    token_ids ─tokenizer.embed_ids──────────────────────────┼→ token embeddings ─prepare_condition→ condition
    token_embeddings (+ attention_mask) ────────────────────┘
    noise ─denoiser(condition), guidance, scheduler steps→ latents ─vae.decode (if any)→ images

The loop is diffusers' own; a family says only how tokens become the denoiser's condition and how the denoiser is
called. Any scheduler made with ``from_config`` from the pipeline's runs if it matches the denoiser's prediction
type (ε / sample for the UNets, velocity for DDT's flow-matching transformer).
"""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .autoencoder_taef2 import TAEF2_CHECKPOINT_DIR, AutoencoderTAEF2
from .modeling_utils import decode_latents
from .validation import check_choice, check_float, check_generator, check_int, check_tensor, describe

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
TOKEN_INPUTS = ("images", "pixel_values", "token_ids", "token_embeddings")


class VisualTokenDecoderPipeline(DiffusionPipeline):
    r"""Reconstruct images (``pipe(images=...)``) or render visual tokens (``pipe(token_ids=...)`` /
    ``pipe(token_embeddings=...)``) with a family's diffusion decoder.

    Components: ``tokenizer`` (the family's transformers model; optional for ``token_embeddings``), the family's
    conditioning module, the denoiser (``denoiser_name``), ``scheduler`` and ``vae`` (optional: an autoencoder with
    diffusers' ``decode`` to [-1, 1] and ``config.scaling_factor``/``shift_factor``; without one the denoiser works
    on pixels in [-1, 1]).

    Output resolution: ``height`` x ``width``, by default the resolution the tokenizer sees (its image processor's
    crop size; the decoder's own without a tokenizer). A decoder whose native resolution differs is resized with
    antialiased bicubic interpolation before post-processing.

    ``guidance_scale``: the checkpoint's default classifier-free guidance (None: the family's ``default_guidance_scale``).

    A subclass sets ``image_processor_class``, ``denoiser_name``, ``default_guidance_scale`` and implements
    ``token_embeddings_shape`` (``(count or None when it varies, width)``), ``prepare_condition(token_embeddings,
    attention_mask, **condition_kwargs)`` and ``prepare_null_condition(condition)`` (dicts of batch-first tensors
    that :meth:`predict` receives as keyword arguments; the null one is what condition dropout trains).
    """

    _optional_components: ClassVar[list[str]] = ["tokenizer", "vae"]
    _callback_tensor_inputs: ClassVar[list[str]] = ["latents"]
    image_processor_class: ClassVar[type]  # the family's transformers image processor (tokenizer inputs)
    denoiser_name: ClassVar[str] = "unet"
    default_guidance_scale: ClassVar[float] = 1.0
    variable_token_count: ClassVar[bool] = False  # SeTok: any token count, `attention_mask` marks the real ones
    accepts_token_prefix: ClassVar[bool] = False  # DDT: fewer tokens than the maximum are a prefix

    def __init__(self, guidance_scale: float | None = None, **components):
        super().__init__()
        self.register_modules(**components)
        if guidance_scale is not None:
            guidance_scale = check_float("guidance_scale", guidance_scale, minimum=0.0)
        # the checkpoint's own default (model_index.json), chosen on validation scenes like any sampling setting
        self.register_to_config(guidance_scale=guidance_scale)
        tokenizer = components.get("tokenizer")
        self.tokenizer_image_processor = None if tokenizer is None else self.image_processor_for(tokenizer.config)
        self.image_processor = VaeImageProcessor(do_resize=False, do_normalize=True)

    @classmethod
    def image_processor_for(cls, config):
        """The family's image processor matching a tokenizer config: ``image_size`` crops, its mean and std."""
        size = check_int("tokenizer.config.image_size", config.image_size, minimum=1)
        return cls.image_processor_class(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size},
            image_mean=list(config.image_mean), image_std=list(config.image_std),
        )  # fmt: skip

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """diffusers' ``save_pretrained``; a TAEF2 ``vae`` (MIT) gets its licence file beside its weights in ``vae/``."""
        push_to_hub = kwargs.pop("push_to_hub", False)
        super().save_pretrained(save_directory, **kwargs)
        if isinstance(self.vae, AutoencoderTAEF2):
            shutil.copyfile(TAEF2_CHECKPOINT_DIR / "LICENSE", Path(save_directory) / "vae" / "LICENSE")
        if push_to_hub:  # saving again keeps the licence file; diffusers uploads the whole folder
            super().save_pretrained(save_directory, push_to_hub=True, **kwargs)

    @property
    def checkpoint_guidance_scale(self) -> float:
        """The guidance a call without ``guidance_scale`` uses: this checkpoint's ``guidance_scale`` (saved in its
        ``model_index.json``; set it with ``pipe.register_to_config(guidance_scale=...)`` before ``save_pretrained``),
        else the family's ``default_guidance_scale``."""
        value = self.config.get("guidance_scale")
        return self.default_guidance_scale if value is None else float(value)

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self, self.denoiser_name)

    def predict(self, latent_input: torch.Tensor, timestep: torch.Tensor, sample_condition=None, **condition) -> torch.Tensor:
        """The denoiser's prediction; by default a diffusers UNet taking the condition as keyword arguments. A
        ``sample_condition`` (a spatial map of the tokens, `[B, C, h, w]`: SeTok's footprints, SlotQFormer's layout)
        goes in as extra input channels, as the training loss feeds it (``denoising_loss(sample_condition=...)``)."""
        if sample_condition is not None:
            latent_input = torch.cat([latent_input, sample_condition.to(latent_input.dtype)], dim=1)
        return self.denoiser(latent_input, timestep, **condition, return_dict=False)[0]

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` (e.g. in ``callback_on_step_end``) to stop the denoising loop."""
        return self._interrupt

    # ------------------------------------------------------------------ diffusers-style steps
    def check_inputs(
        self, images, pixel_values, token_ids, token_embeddings, attention_mask, num_inference_steps, guidance_scale,
        num_images_per_prompt, height, width, output_type, callback_on_step_end, callback_on_step_end_tensor_inputs,
    ) -> None:  # fmt: skip
        values = (images, pixel_values, token_ids, token_embeddings)
        given = [name for name, value in zip(TOKEN_INPUTS, values) if value is not None]
        if len(given) != 1:
            raise ValueError(
                f"Pass exactly one of `images`, `pixel_values`, `token_ids` or `token_embeddings`; got {given or 'none'}."
            )
        if given[0] != "token_embeddings" and self.tokenizer is None:
            raise ValueError(f"`{given[0]}` needs the pipeline's `tokenizer`, which is None; pass `token_embeddings`.")
        if attention_mask is not None and not (self.variable_token_count and token_embeddings is not None):
            raise ValueError(
                f"`attention_mask` goes with `token_embeddings` of a variable token count; {type(self).__name__} "
                f"decodes a fixed number of tokens (got an attention_mask with `{given[0]}`)."
            )
        check_int("num_inference_steps", num_inference_steps, minimum=1)
        check_float("guidance_scale", guidance_scale, minimum=0.0)
        check_int("num_images_per_prompt", num_images_per_prompt, minimum=1)
        for name, value in (("height", height), ("width", width)):
            if value is not None:
                check_int(name, value, minimum=1)
        check_choice("output_type", output_type, OUTPUT_TYPES)
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise TypeError(f"`callback_on_step_end` must be callable, got {describe(callback_on_step_end)}.")
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` must be in {self._callback_tensor_inputs}, got {unknown}."
            )

    def encode_images(self, images=None, pixel_values: torch.Tensor | None = None):
        """``VisualTokens`` of images (PIL, arrays, tensors in [0, 1], paths) or of processed ``pixel_values``."""
        if self.tokenizer is None or (images is None) == (pixel_values is None):
            raise ValueError(
                "`encode_images` needs the pipeline's `tokenizer` and exactly one of `images`, `pixel_values`."
            )
        if images is not None:
            pixel_values = self.tokenizer_image_processor(images, return_tensors="pt")["pixel_values"]
        check_tensor("pixel_values", pixel_values, ndim=4, floating=True, finite=True)
        return self.tokenizer.encode(pixel_values.to(device=self._execution_device, dtype=self.tokenizer.dtype))

    def embed_token_ids(self, token_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings and attention mask of codebook ids ``[B, N]`` (``[N]`` is one image)."""
        if isinstance(token_ids, list):
            token_ids = torch.tensor(token_ids)
        token_ids = check_tensor("token_ids", token_ids, ndim=(1, 2), integer=True)
        token_ids = token_ids[None] if token_ids.ndim == 1 else token_ids
        count, length = self.tokenizer.num_visual_tokens, token_ids.shape[1]
        if self.accepts_token_prefix and length < count:  # a prefix: the mask keeps the padding invisible
            token_ids = F.pad(token_ids, (0, count - length))
        token_ids = self.tokenizer._check_ids(token_ids, name="token_ids")
        embeddings = self.tokenizer.embed_ids(token_ids.to(self._execution_device))
        positions = torch.arange(count, device=embeddings.device)
        return embeddings, (positions < length).long().expand(len(embeddings), -1)

    def check_token_embeddings(self, token_embeddings, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Validated ``token_embeddings`` ``[B, N, D]`` (``[N, D]`` is one image) and their attention mask."""
        token_embeddings = check_tensor("token_embeddings", token_embeddings, ndim=(2, 3), floating=True, finite=True)
        if token_embeddings.ndim == 2:  # one image
            token_embeddings = token_embeddings[None]
            if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 1:
                attention_mask = attention_mask[None]
        (count, width), length = self.token_embeddings_shape, token_embeddings.shape[1]
        if token_embeddings.shape[-1] != width or (
            count is not None and (length > count if self.accepts_token_prefix else length != count)
        ):
            expected = "N" if count is None else f"N <= {count}" if self.accepts_token_prefix else count
            raise ValueError(
                f"`token_embeddings` must have shape [B, {expected}, {width}], got {tuple(token_embeddings.shape)}."
            )
        if attention_mask is None:
            attention_mask = torch.ones(token_embeddings.shape[:2], dtype=torch.long)
        # the family's module checks the mask against the tokens (SeTok's feature mapper)
        return token_embeddings, check_tensor("attention_mask", attention_mask)

    def prepare_latents(self, batch_size, dtype, device, generator=None, latents=None) -> torch.Tensor:
        """Initial noise ``[batch_size, channels, sample_size, sample_size]`` of the denoiser (or ``latents``): the
        channels it predicts (more may go in: a spatial condition concatenated to its input)."""
        config = self.denoiser.config
        channels = getattr(config, "out_channels", None) or config.in_channels
        shape = (batch_size, channels, config.sample_size, config.sample_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(check_tensor("latents", latents, ndim=4, floating=True, finite=True).shape) != shape:
            raise ValueError(f"`latents` must have shape {list(shape)}, got {tuple(latents.shape)}.")
        # ε-schedulers start from noise of std init_noise_sigma; flow-matching schedulers have none (1)
        return latents.to(device=device, dtype=dtype) * getattr(self.scheduler, "init_noise_sigma", 1.0)

    def decode_latents(self, latents: torch.Tensor, height: int | None, width: int | None, output_type: str):
        """Latents → images of ``output_type`` at ``height`` x ``width`` (see the class docstring)."""
        if output_type == "latent":
            return latents
        image = latents if self.vae is None else decode_latents(self.vae, latents)
        crop = getattr(self.tokenizer_image_processor, "crop_size", None)
        default = (crop.height, crop.width) if crop else tuple(image.shape[-2:])
        size, image = (height or default[0], width or default[1]), image.float()
        if tuple(image.shape[-2:]) != size:
            image = F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True)
        return self.image_processor.postprocess(image, output_type=output_type)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        images=None,
        pixel_values: torch.Tensor | None = None,
        token_ids: torch.LongTensor | None = None,
        token_embeddings: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        encode_kwargs: dict[str, Any] | None = None,
        condition_kwargs: dict[str, Any] | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""Decode images.

        Args:
            images: images to reconstruct (PIL images, arrays, tensors in [0, 1] or paths), processed by the
                tokenizer's image processor and encoded by the ``tokenizer``.
            pixel_values (`torch.Tensor` `[B, 3, H, W]`): images already processed by that image processor.
            token_ids (`torch.LongTensor` `[B, N]` or `[N]`): codebook ids (discrete families).
            token_embeddings (`torch.Tensor` `[B, N, D]` or `[N, D]`): continuous tokens. Exactly one of
                ``images`` / ``pixel_values`` / ``token_ids`` / ``token_embeddings``.
            attention_mask (`torch.Tensor` `[B, N]`, *optional*): 1 for real tokens, for families whose token
                count varies (SeTok); default all real.
            num_inference_steps (`int`): denoising steps.
            guidance_scale (`float`, *optional*): classifier-free guidance weight against the null condition, on
                when > 1 (diffusers' rule); default: :attr:`checkpoint_guidance_scale`.
            num_images_per_prompt (`int`): images sampled per input (the batch grows by this factor).
            generator: a ``torch.Generator`` or one per output image.
            latents (`torch.Tensor`, *optional*): initial noise ``[B * num_images_per_prompt, C, h, w]``.
            height, width (`int`, *optional*): output size in pixels (see the class docstring).
            output_type (`str`): ``"pil"``, ``"np"`` (``[B, H, W, 3]`` in [0, 1]), ``"pt"`` (``[B, 3, H, W]`` in
                [0, 1]) or ``"latent"`` (the denoised latents, not decoded).
            return_dict (`bool`): an :class:`ImagePipelineOutput` (default) or a one-element tuple.
            callback_on_step_end: ``callback(pipe, step, timestep, callback_kwargs) -> dict`` called after every
                step with the tensors named in ``callback_on_step_end_tensor_inputs``; the dict it returns replaces
                them, and ``pipe._interrupt = True`` stops the loop.
            encode_kwargs, condition_kwargs: a family's options for encoding images and building the condition
                (the subclasses expose them as named arguments).
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        guidance_scale = self.checkpoint_guidance_scale if guidance_scale is None else guidance_scale
        self.check_inputs(
            images, pixel_values, token_ids, token_embeddings, attention_mask, num_inference_steps, guidance_scale,
            num_images_per_prompt, height, width, output_type, callback_on_step_end, callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        check_generator(generator)
        self._guidance_scale, self._interrupt = float(guidance_scale), False
        device = self._execution_device

        if token_embeddings is not None:
            token_embeddings, attention_mask = self.check_token_embeddings(token_embeddings, attention_mask)
        elif token_ids is not None:
            token_embeddings, attention_mask = self.embed_token_ids(token_ids)
        else:
            tokens = self.encode_images(images, pixel_values, **(encode_kwargs or {}))
            token_embeddings, attention_mask = tokens.embeddings, tokens.attention_mask
        options = condition_kwargs or {}
        condition = self.prepare_condition(token_embeddings.to(device), attention_mask.to(device), **options)
        condition = {k: v.repeat_interleave(num_images_per_prompt, dim=0) for k, v in condition.items()}
        if self.do_classifier_free_guidance:
            null = self.prepare_null_condition(condition)
            condition = {k: torch.cat([null[k], v]) for k, v in condition.items()}
        batch_size = len(token_embeddings) * num_images_per_prompt
        check_generator(generator, batch_size=batch_size)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self.prepare_latents(batch_size, self.denoiser.dtype, device, generator, latents)
        accepts_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        step_kwargs = {"generator": generator} if accepts_generator else {}
        self._num_timesteps = len(self.scheduler.timesteps)
        with self.progress_bar(total=self._num_timesteps) as progress_bar:
            for i, t in enumerate(self.scheduler.timesteps):
                if self.interrupt:
                    break
                latent_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                if hasattr(self.scheduler, "scale_model_input"):  # flow-matching schedulers have none
                    latent_input = self.scheduler.scale_model_input(latent_input, t)
                prediction = self.predict(latent_input, t, **condition)
                if self.do_classifier_free_guidance:
                    unconditional, conditional = prediction.chunk(2)
                    prediction = unconditional + self._guidance_scale * (conditional - unconditional)
                latents = self.scheduler.step(prediction, t, latents, **step_kwargs, return_dict=False)[0]
                if callback_on_step_end is not None:
                    tensors = {"latents": latents}
                    callback_kwargs = {name: tensors[name] for name in callback_on_step_end_tensor_inputs}
                    latents = callback_on_step_end(self, i, t, callback_kwargs).pop("latents", latents)
                progress_bar.update()

        images = self.decode_latents(latents, height, width, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def load_decoder_pipeline(path, **kwargs) -> VisualTokenDecoderPipeline:
    """Load a tokenizer's decoder pipeline saved with ``save_pretrained``, whatever its family.

    ``diffusers.DiffusionPipeline.from_pretrained`` resolves the class named in ``model_index.json``: ``import
    hf_vtok`` (which importing any of its modules does first) registers every hf_vtok pipeline with diffusers, so
    this needs no remote code and no registry of ours.
    """
    import json
    import os

    from diffusers import DiffusionPipeline

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`decoder` must be a folder path, got {describe(path)}.")
    folder = os.fspath(path)
    index = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index):
        raise ValueError(f"`decoder` must be a folder written by a decoder pipeline's save_pretrained, got {path!r}.")
    try:  # diffusers' own message for a broken index is an OSError about "the config file"
        with open(index, encoding="utf-8") as handle:
            json.load(handle)["_class_name"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"`decoder`: {index!r} is not a valid pipeline index ({error}).") from None
    pipeline = DiffusionPipeline.from_pretrained(folder, **kwargs)
    if not isinstance(pipeline, VisualTokenDecoderPipeline):
        raise ValueError(f"`decoder` {folder!r} holds a {type(pipeline).__name__}, not an hf_vtok tokenizer decoder.")
    return pipeline


__all__ = ["OUTPUT_TYPES", "VisualTokenDecoderPipeline", "load_decoder_pipeline"]
