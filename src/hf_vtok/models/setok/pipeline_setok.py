"""SeTok image decoder as a diffusers pipeline: tokens → feature mapper → UNet (→ VAE) → image.

``pipe(images=...)`` tokenizes and reconstructs; ``pipe(token_embeddings=..., attention_mask=...)`` renders tokens
that came from elsewhere (e.g. an MLLM's regressed visual embeddings). Classifier-free guidance mixes the
conditional prediction with the one for the feature mapper's learned null condition (what training substitutes
with probability ``condition_dropout``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from hf_vtok.utils.validation import check_float, check_generator, check_int, check_tensor, describe

from .image_processing_setok import SeTokImageProcessor

OUTPUT_TYPES = ("pil", "np", "pt")


class SeTokDecoderPipeline(DiffusionPipeline):
    r"""Decode SeTok tokens to images.

    Components:
        tokenizer ([`SeTokModel`], *optional*): needed for ``images=`` / ``pixel_values=`` inputs.
        feature_mapper ([`SeTokFeatureMapper`]): tokens → UNet context (and the null context for guidance).
        unet ([`UNet2DConditionModel`]): ε- (or v-) prediction network.
        scheduler: any diffusers scheduler (DDIM by default from ``SeTokForPreTraining.get_decoder_pipeline``).
        vae ([`AutoencoderKL`], *optional*): latent decoder; `None` = the UNet works in pixel space.
    """

    model_cpu_offload_seq = "tokenizer->feature_mapper->unet->vae"
    _optional_components: ClassVar[list[str]] = ["tokenizer", "vae"]

    def __init__(self, tokenizer, feature_mapper, unet, scheduler, vae=None):
        super().__init__()
        self.register_modules(tokenizer=tokenizer, feature_mapper=feature_mapper, unet=unet, scheduler=scheduler, vae=vae)
        self.image_postprocessor = VaeImageProcessor(do_resize=False, do_normalize=True)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1

    def _tokenize_images(self, images, pixel_values):
        if self.tokenizer is None:
            raise ValueError(
                "This pipeline has no `tokenizer` component: pass `token_embeddings=` instead of `images=`/`pixel_values=`."
            )
        if images is not None:
            processor = SeTokImageProcessor.from_config(self.tokenizer.config)
            pixel_values = processor(images, return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(device=self._execution_device, dtype=self.tokenizer.dtype)
        tokens = self.tokenizer.encode(pixel_values)
        return tokens.embeddings, tokens.attention_mask

    def _check_tokens(self, token_embeddings, attention_mask):
        token_embeddings = check_tensor("token_embeddings", token_embeddings, ndim=(2, 3), floating=True, finite=True)
        if token_embeddings.ndim == 2:
            token_embeddings = token_embeddings[None]
            if attention_mask is not None and isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 1:
                attention_mask = attention_mask[None]
        expected = self.feature_mapper.config.token_dim
        if token_embeddings.shape[-1] != expected:
            raise ValueError(
                f"`token_embeddings` must have width {expected} (the feature mapper's token_dim), "
                f"got shape {tuple(token_embeddings.shape)}."
            )
        if attention_mask is None:
            attention_mask = torch.ones(token_embeddings.shape[:2], dtype=torch.long)
        elif not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"`attention_mask` must be a torch.Tensor, got {describe(attention_mask)}.")
        if tuple(attention_mask.shape) != tuple(token_embeddings.shape[:2]):
            raise ValueError(
                f"`attention_mask` must have shape {tuple(token_embeddings.shape[:2])} to match `token_embeddings`, "
                f"got {tuple(attention_mask.shape)}."
            )
        if not bool(attention_mask.bool().any(dim=-1).all()):
            raise ValueError("`attention_mask` must mark at least one real token per image.")
        return token_embeddings, attention_mask

    @torch.no_grad()
    def __call__(
        self,
        images=None,
        pixel_values: torch.Tensor | None = None,
        token_embeddings: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        r"""Reconstruct images or render tokens.

        Args:
            images: PIL images / arrays / paths (one or a list), tokenized with the pipeline's tokenizer.
            pixel_values (`torch.Tensor` `[B, 3, H, W]`): images already normalised by the image processor.
            token_embeddings (`torch.Tensor` `[B, T, D]` or `[T, D]`): SeTok tokens; exactly one of ``images``,
                ``pixel_values`` and ``token_embeddings`` is given.
            attention_mask (`torch.Tensor` `[B, T]`, *optional*): 1 for real tokens (default: all real).
            num_inference_steps (`int`): denoising steps.
            guidance_scale (`float`): classifier-free guidance weight; 1 disables guidance.
            generator: `torch.Generator` (or one per image) for reproducible sampling.
            latents (`torch.Tensor`, *optional*): initial noise of the UNet's sample shape.
            output_type (`str`): ``"pil"`` (list of images), ``"np"`` (``[B, H, W, 3]`` in [0, 1]) or ``"pt"``
                (``[B, 3, H, W]`` in [0, 1]).
        """
        given = [name for name, value in (("images", images), ("pixel_values", pixel_values),
                                          ("token_embeddings", token_embeddings)) if value is not None]
        if len(given) != 1:
            raise ValueError(
                "Pass exactly one of `images`, `pixel_values` and `token_embeddings`, got "
                f"{given or 'none of them'}."
            )
        num_inference_steps = check_int("num_inference_steps", num_inference_steps, minimum=1)
        guidance_scale = check_float("guidance_scale", guidance_scale, minimum=0.0)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {list(OUTPUT_TYPES)}, got {output_type!r}.")
        check_generator(generator)  # a wrong type would fail deep inside randn_tensor (issue 8)
        if pixel_values is not None:
            pixel_values = check_tensor("pixel_values", pixel_values, ndim=4, floating=True, finite=True)
        if token_embeddings is None:
            token_embeddings, attention_mask = self._tokenize_images(images, pixel_values)
        else:
            token_embeddings, attention_mask = self._check_tokens(token_embeddings, attention_mask)

        device = self._execution_device
        dtype = self.unet.dtype
        batch = token_embeddings.shape[0]
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"`generator` list must have one generator per image ({batch}), got {len(generator)}.")
        context = self.feature_mapper(
            token_embeddings.to(device=device, dtype=self.feature_mapper.dtype), attention_mask.to(device)
        ).to(dtype)
        do_guidance = guidance_scale != 1.0
        if do_guidance:
            context = torch.cat([self.feature_mapper.null_embeddings(batch).to(dtype), context])

        shape = (batch, self.unet.config.in_channels, self.unet.config.sample_size, self.unet.config.sample_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = check_tensor("latents", latents, ndim=4, floating=True, finite=True)
            if tuple(latents.shape) != shape:
                raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}.")
            latents = latents.to(device=device, dtype=dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        for timestep in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([latents] * 2) if do_guidance else latents
            model_input = self.scheduler.scale_model_input(model_input, timestep)
            prediction = self.unet(model_input, timestep, encoder_hidden_states=context).sample
            if do_guidance:
                unconditional, conditional = prediction.chunk(2)
                prediction = unconditional + guidance_scale * (conditional - unconditional)
            latents = self.scheduler.step(prediction, timestep, latents, generator=generator).prev_sample

        if self.vae is not None:
            images_out = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        else:
            images_out = latents
        images_out = self.image_postprocessor.postprocess(images_out.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images_out,)
        return ImagePipelineOutput(images=images_out)


__all__ = ["SeTokDecoderPipeline"]
