"""SeTok decoder pipeline: a variable number of tokens → feature mapper → UNet; the loop is
:class:`VisualTokenDecoderPipeline`'s."""

from __future__ import annotations

from typing import ClassVar

from diffusers import DiffusionPipeline  # noqa: F401  (diffusers' loader finds a nested pipeline's base class here)

from ...utils.pipeline_utils import VisualTokenDecoderPipeline
from .image_processing_setok import SeTokImageProcessor


class SeTokDecoderPipeline(VisualTokenDecoderPipeline):
    r"""Reconstruct images or render SeTok tokens, e.g. an MLLM's regressed embeddings
    (``pipe(token_embeddings=..., attention_mask=...)``).

    Components: ``tokenizer`` ([`SeTokModel`], optional), ``feature_mapper`` ([`SeTokFeatureMapper`]: tokens → UNet
    context, and the learned null context that training substitutes with probability ``condition_dropout``),
    ``unet``, ``scheduler`` (DDIM from ``get_decoder_pipeline``), ``vae`` (optional).
    """

    model_cpu_offload_seq = "tokenizer->feature_mapper->unet->vae"
    image_processor_class = SeTokImageProcessor
    default_guidance_scale: ClassVar[float] = 3.0
    variable_token_count: ClassVar[bool] = True

    def __init__(self, tokenizer, feature_mapper, unet, scheduler, vae=None, guidance_scale: float | None = None):
        super().__init__(tokenizer=tokenizer, feature_mapper=feature_mapper, unet=unet, scheduler=scheduler, vae=vae,
                         guidance_scale=guidance_scale)

    @property
    def token_embeddings_shape(self) -> tuple[None, int]:
        return None, self.feature_mapper.config.token_dim

    def prepare_condition(self, token_embeddings, attention_mask):
        token_embeddings = token_embeddings.to(self.feature_mapper.dtype)
        condition = {"encoder_hidden_states": self.feature_mapper(token_embeddings, attention_mask).to(self.unet.dtype)}
        if self.feature_mapper.config.footprint_channels:
            painted = self.feature_mapper.paint_footprints(token_embeddings, attention_mask, self.unet.config.sample_size)
            condition["sample_condition"] = painted.to(self.unet.dtype)  # extra UNet input channels (see `predict`)
        return condition

    def prepare_null_condition(self, condition):
        batch = len(condition["encoder_hidden_states"])
        null = {"encoder_hidden_states": self.feature_mapper.null_embeddings(batch).to(self.unet.dtype)}
        if "sample_condition" in condition:
            painted = condition["sample_condition"]
            null["sample_condition"] = self.feature_mapper.null_footprint_map(batch, painted.shape[-1]).to(painted.dtype)
        return null


__all__ = ["SeTokDecoderPipeline"]
