"""Decoder pipeline of the Slot Q-Former: images or slot ids → unCLIP-style diffusion → images.

    images ─SlotQFormerModel.encode→ ids ─embed_ids→ rebuilt slots ─┐
    token_ids ─────────────────────────embed_ids→ rebuilt slots ────┼→ conditioner → (local, global)
    token_embeddings (continuous slots) ────────────────────────────┘        │
                           noise ─UNet(cross-attn: local; class emb.: global), CFG, scheduler→ latents
                           latents ─VAE decode (if any)→ images

Classifier-free guidance uses the conditioner's learned null condition (the one substituted during
training-time condition dropout).
"""

from __future__ import annotations

import inspect
from typing import ClassVar

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from ...utils.validation import check_choice, check_float, check_int, check_tensor, describe
from .image_processing_slot_qformer import SlotQFormerImageProcessorPil

OUTPUT_TYPES = ("pil", "np", "pt")


class SlotQFormerDecoderPipeline(DiffusionPipeline):
    """Reconstruct images (``pipe(images=...)``) or render Slot Q-Former ids (``pipe(token_ids=...)``).

    Components:
        tokenizer (`SlotQFormerModel`): images → ids, ids → rebuilt slot embeddings.
        conditioner (`SlotQFormerDecoderConditioner`): slots → local / global conditions.
        unet (`UNet2DConditionModel` with ``class_embed_type="projection"``).
        scheduler: any diffusers scheduler (DPM-Solver multistep by default from
            ``SlotQFormerForPreTraining.get_decoder_pipeline``).
        vae (`AutoencoderKL`, optional): ``None`` for a pixel-space decoder.
    """

    model_cpu_offload_seq = "tokenizer->conditioner->unet->vae"
    _optional_components: ClassVar[list[str]] = ["vae"]

    def __init__(self, tokenizer, conditioner, unet, scheduler, vae=None):
        super().__init__()
        self.register_modules(tokenizer=tokenizer, conditioner=conditioner, unet=unet, scheduler=scheduler, vae=vae)

    @property
    def vae_scale_factor(self) -> int:
        if getattr(self, "vae", None) is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ conditions
    def _image_processor(self):
        return SlotQFormerImageProcessorPil.from_config(self.tokenizer.config)

    def slot_embeddings_from_images(self, images, quantize: bool = True) -> torch.Tensor:
        """Slot embeddings of images (PIL / arrays / paths, or a processed ``pixel_values`` tensor).

        ``quantize=True`` goes through the ids (what an LLM would see); ``False`` uses the continuous
        stage-1 slot embeddings.
        """
        device = self._execution_device
        if isinstance(images, torch.Tensor) and images.ndim == 4 and images.is_floating_point():
            pixel_values = self.tokenizer._check_pixel_values(images)
        else:
            if isinstance(images, torch.Tensor):
                raise ValueError(
                    "`images` as a tensor must be processed pixel_values [B, 3, H, W] (floating point), "
                    f"got {describe(images)}; pass PIL images otherwise."
                )
            pixel_values = self._image_processor()(images, return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(device=device, dtype=self.tokenizer.dtype)
        if quantize:
            return self.tokenizer.encode(pixel_values).embeddings
        return self.tokenizer.encode_slots(pixel_values, sample_slots=False).slot_embeddings

    def _check_token_embeddings(self, token_embeddings) -> torch.Tensor:
        config = self.tokenizer.config
        check_tensor("token_embeddings", token_embeddings, ndim=3, floating=True, finite=True)
        if tuple(token_embeddings.shape[1:]) != (config.num_slots, config.hidden_size):
            raise ValueError(
                f"`token_embeddings` must have shape [B, {config.num_slots}, {config.hidden_size}] (slot embeddings), "
                f"got {tuple(token_embeddings.shape)}."
            )
        return token_embeddings

    def prepare_extra_step_kwargs(self, generator):
        parameters = set(inspect.signature(self.scheduler.step).parameters)
        return {"generator": generator} if "generator" in parameters else {}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        images=None,
        token_ids: torch.LongTensor | None = None,
        token_embeddings: torch.Tensor | None = None,
        quantize: bool = True,
        num_inference_steps: int = 50,
        guidance_scale: float = 2.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Decode images.

        Args:
            images: images to reconstruct (PIL images, arrays, paths, or processed pixel_values).
            token_ids: `[B, num_visual_tokens]` Slot Q-Former ids (in ``token_order``).
            token_embeddings: `[B, num_slots, hidden_size]` slot embeddings.
                Exactly one of ``images`` / ``token_ids`` / ``token_embeddings``.
            quantize: for ``images``, go through the discrete ids (default) or use continuous slots.
            num_inference_steps: denoising steps (the released code samples with DPM-Solver, ~100).
            guidance_scale: classifier-free guidance weight; ≤ 1 disables guidance (released code: 2).
            generator: a ``torch.Generator`` (or one per image) for reproducible sampling.
            latents: optional initial noise `[B, C, h, w]`.
            output_type: ``"pil"``, ``"np"`` (`[B, H, W, 3]` floats in [0, 1]) or ``"pt"`` (`[B, 3, H, W]`).
        """
        given = [name for name, value in (("images", images), ("token_ids", token_ids), ("token_embeddings", token_embeddings)) if value is not None]  # fmt: skip
        if len(given) != 1:
            raise ValueError(
                f"Pass exactly one of `images`, `token_ids` or `token_embeddings`; got {given or 'none'}."
            )
        num_inference_steps = check_int("num_inference_steps", num_inference_steps, minimum=1)
        guidance_scale = check_float("guidance_scale", guidance_scale, minimum=0.0)
        check_choice("output_type", output_type, OUTPUT_TYPES)
        device = self._execution_device

        if images is not None:
            slots = self.slot_embeddings_from_images(images, quantize=bool(quantize))
        elif token_ids is not None:
            token_ids = self.tokenizer._check_ids(token_ids, name="token_ids")
            slots = self.tokenizer.embed_ids(token_ids.to(device))
        else:
            slots = self._check_token_embeddings(token_embeddings).to(device)
        batch = slots.shape[0]
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"`generator` must be one generator or a list of {batch}, got a list of {len(generator)}.")
        if generator is not None and not isinstance(generator, (torch.Generator, list)):
            raise TypeError(f"`generator` must be a torch.Generator or a list of them, got {describe(generator)}.")

        slots = slots.to(self.conditioner.dtype)
        condition = self.conditioner(slots)
        do_guidance = guidance_scale > 1.0
        local, class_labels = condition.local_embeddings, condition.class_labels
        if do_guidance:
            null = self.conditioner.null_condition(batch)
            local = torch.cat([null.local_embeddings, local])
            class_labels = torch.cat([null.class_labels, class_labels])
        local, class_labels = local.to(self.unet.dtype), class_labels.to(self.unet.dtype)

        sample_size = self.unet.config.sample_size
        sample_size = sample_size if isinstance(sample_size, (list, tuple)) else (sample_size, sample_size)
        shape = (batch, self.unet.config.in_channels, *sample_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        else:
            check_tensor("latents", latents, ndim=4, floating=True, finite=True)
            if tuple(latents.shape) != shape:
                raise ValueError(f"`latents` must have shape {list(shape)}, got {tuple(latents.shape)}.")
            latents = latents.to(device=device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        extra = self.prepare_extra_step_kwargs(generator)

        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([latents] * 2) if do_guidance else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            prediction = self.unet(model_input, t, encoder_hidden_states=local, class_labels=class_labels).sample
            if do_guidance:
                unconditional, conditional = prediction.chunk(2)
                prediction = unconditional + guidance_scale * (conditional - unconditional)
            latents = self.scheduler.step(prediction, t, latents, **extra).prev_sample

        if getattr(self, "vae", None) is not None:
            images_out = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        else:
            images_out = latents
        images_out = (images_out.float() / 2 + 0.5).clamp(0, 1)
        self.maybe_free_model_hooks()
        if output_type == "pt":
            result = images_out.cpu()
        else:
            result = images_out.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
            if output_type == "pil":
                result = self.numpy_to_pil(result)
        if not return_dict:
            return (result,)
        return ImagePipelineOutput(images=result)


__all__ = ["SlotQFormerDecoderPipeline"]
