"""Slot Q-Former decoder pipeline: slots → unCLIP-style UNet; the loop is :class:`VisualTokenDecoderPipeline`'s."""

from __future__ import annotations

from typing import ClassVar

import torch
from diffusers import DiffusionPipeline  # noqa: F401  (diffusers' loader finds a nested pipeline's base class here)

from ...utils.modeling_utils import VisualTokens
from ...utils.pipeline_utils import VisualTokenDecoderPipeline
from .image_processing_slot_qformer import SlotQFormerImageProcessorPil


class SlotQFormerDecoderPipeline(VisualTokenDecoderPipeline):
    """Reconstruct images or render Slot Q-Former ids / slot embeddings.

    Components: ``tokenizer`` (`SlotQFormerModel`, optional), ``conditioner`` (`SlotQFormerDecoderConditioner`: slots →
    local slots for cross-attention and a global embedding added to the timestep embedding), ``unet``
    (`UNet2DConditionModel`, ``class_embed_type="projection"``), ``scheduler`` (ε / sample prediction;
    ``get_decoder_pipeline`` picks clipped DDIM in pixel space, DPM-Solver in latent space), ``vae`` (optional).
    Guidance uses the conditioner's learned null condition (what training-time condition dropout substitutes). A
    conditioner with ``layout_channels`` also paints the slots' layout, which the UNet reads as extra input channels.
    """

    model_cpu_offload_seq = "tokenizer->conditioner->unet->vae"
    image_processor_class = SlotQFormerImageProcessorPil
    default_guidance_scale: ClassVar[float] = 2.0  # the released code samples with guidance 2

    def __init__(self, tokenizer, conditioner, unet, scheduler, vae=None, guidance_scale: float | None = None):
        super().__init__(tokenizer=tokenizer, conditioner=conditioner, unet=unet, scheduler=scheduler, vae=vae,
                         guidance_scale=guidance_scale)

    def __call__(self, *args, quantize: bool = True, **kwargs):
        """:meth:`VisualTokenDecoderPipeline.__call__`, plus ``quantize``: for ``images`` / ``pixel_values``, decode
        through the discrete ids (default, what an LLM sees) or from the continuous stage-1 slot embeddings."""
        return super().__call__(*args, encode_kwargs={"quantize": bool(quantize)}, **kwargs)

    def encode_images(self, images=None, pixel_values=None, quantize: bool = True) -> VisualTokens:
        if quantize:
            return super().encode_images(images, pixel_values)
        if images is not None:
            pixel_values = self.tokenizer_image_processor(images, return_tensors="pt")["pixel_values"]
        pixel_values = self.tokenizer._check_pixel_values(pixel_values).to(self._execution_device, self.tokenizer.dtype)
        slots = self.tokenizer.encode_slots(pixel_values, sample_slots=False).slot_embeddings
        return VisualTokens(embeddings=slots, attention_mask=torch.ones(slots.shape[:2], dtype=torch.long))

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
        inputs = {"encoder_hidden_states": condition.local_embeddings.to(dtype), "class_labels": condition.class_labels.to(dtype)}
        if condition.layout_map is not None:  # decoder_config.layout_channels: extra UNet input channels (see `predict`)
            inputs["sample_condition"] = condition.layout_map.to(dtype)
        return inputs


__all__ = ["SlotQFormerDecoderPipeline"]
