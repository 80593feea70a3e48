"""Decoder pipeline of the Slot Q-Former: slots → unCLIP-style UNet (local slots by cross-attention, a global
embedding added to the timestep embedding). The sampling loop is :class:`VisualTokenDecoderPipeline`'s;
classifier-free guidance uses the conditioner's learned null condition (the one substituted by training-time
condition dropout).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from diffusers import DiffusionPipeline  # noqa: F401  (diffusers' loader finds a nested pipeline's base class here)

from ...utils.pipeline_utils import VisualTokenDecoderPipeline
from .image_processing_slot_qformer import SlotQFormerImageProcessorPil


class SlotQFormerDecoderPipeline(VisualTokenDecoderPipeline):
    """Reconstruct images or render Slot Q-Former ids / slot embeddings.

    Components:
        tokenizer (`SlotQFormerModel`, *optional*): images → ids, ids → rebuilt slot embeddings.
        conditioner (`SlotQFormerDecoderConditioner`): slots → local / global conditions.
        unet (`UNet2DConditionModel` with ``class_embed_type="projection"``).
        scheduler: any ε- / sample-prediction diffusers scheduler (``SlotQFormerForPreTraining.get_decoder_pipeline``
            picks clipped DDIM in pixel space, DPM-Solver multistep in latent space).
        vae (*optional*): ``None`` for a pixel-space decoder.
    """

    model_cpu_offload_seq = "tokenizer->conditioner->unet->vae"
    image_processor_class = SlotQFormerImageProcessorPil
    default_guidance_scale: ClassVar[float] = 2.0  # the released code samples with guidance 2

    def __init__(self, tokenizer, conditioner, unet, scheduler, vae=None):
        super().__init__(tokenizer=tokenizer, conditioner=conditioner, unet=unet, scheduler=scheduler, vae=vae)

    def __call__(self, *args, quantize: bool = True, **kwargs):
        """:meth:`VisualTokenDecoderPipeline.__call__`, plus ``quantize``: for ``images`` / ``pixel_values``, decode
        through the discrete ids (default, what an LLM sees) or from the continuous stage-1 slot embeddings."""
        return super().__call__(*args, encode_kwargs={"quantize": bool(quantize)}, **kwargs)

    def encode_pixels(self, images, pixel_values, quantize: bool = True):
        if quantize:
            return super().encode_pixels(images, pixel_values)
        if images is not None:
            pixel_values = self.tokenizer_image_processor(images, return_tensors="pt")["pixel_values"]
        pixel_values = self.tokenizer._check_pixel_values(pixel_values).to(self._execution_device, self.tokenizer.dtype)
        slots = self.tokenizer.encode_slots(pixel_values, sample_slots=False).slot_embeddings
        return slots, torch.ones(slots.shape[:2], dtype=torch.long)

    @property
    def token_embeddings_shape(self) -> tuple[int, int]:
        return self.conditioner.config.num_slots, self.conditioner.config.slot_dim

    def prepare_condition(self, token_embeddings, attention_mask):
        condition = self.conditioner(token_embeddings.to(self.conditioner.dtype))
        return self._unet_inputs(condition)

    def prepare_null_condition(self, condition):
        return self._unet_inputs(self.conditioner.null_condition(len(condition["class_labels"])))

    def _unet_inputs(self, condition) -> dict[str, torch.Tensor]:
        dtype = self.unet.dtype
        return {"encoder_hidden_states": condition.local_embeddings.to(dtype), "class_labels": condition.class_labels.to(dtype)}


__all__ = ["SlotQFormerDecoderPipeline"]
