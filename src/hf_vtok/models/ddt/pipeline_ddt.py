"""DDT decoder pipeline: tokens → prefix-masked MMDiT with flow matching; the loop is
:class:`VisualTokenDecoderPipeline`'s."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from diffusers import DiffusionPipeline  # noqa: F401  (diffusers' loader finds a nested pipeline's base class here)

from ...utils.pipeline_utils import VisualTokenDecoderPipeline
from ...utils.validation import check_int, describe
from .image_processing_ddt import DDTImageProcessor


class DDTDecoderPipeline(VisualTokenDecoderPipeline):
    """Reconstruct images or render DDT token ids. At noise level ``t`` the decoder sees only the first ``k(t)``
    tokens (``min(k(t), max_tokens)`` for prefix decoding); guidance contrasts the null condition of training-time
    condition dropout (no visible token).

    Components: ``tokenizer`` (:class:`DDTTokenizerModel`, optional), ``conditioner`` (:class:`DDTTokenConditioner`),
    ``transformer`` (:class:`DDTDecoderTransformer`), ``scheduler`` (flow matching, velocity prediction), ``vae``.

    Examples:
        >>> pipe = model.get_decoder_pipeline()                      # from a DDTTokenizerForPreTraining
        >>> images = pipe(images=pil_images).images                  # reconstruction
        >>> images = pipe(token_ids=ids, guidance_scale=2.0).images  # render ids (e.g. from an MLLM)
        >>> images = pipe(token_ids=ids, max_tokens=8).images        # decode from the first 8 tokens only
    """

    model_cpu_offload_seq = "tokenizer->conditioner->transformer->vae"
    image_processor_class = DDTImageProcessor
    denoiser_name: ClassVar[str] = "transformer"
    accepts_token_prefix: ClassVar[bool] = True

    def __init__(self, tokenizer, conditioner, transformer, scheduler, vae=None, guidance_scale: float | None = None):
        if conditioner.config.hidden_size != transformer.inner_dim:
            raise ValueError(
                f"`conditioner` width ({conditioner.config.hidden_size}) must equal the transformer width "
                f"({transformer.inner_dim})."
            )
        super().__init__(tokenizer=tokenizer, conditioner=conditioner, transformer=transformer, scheduler=scheduler, vae=vae,
                         guidance_scale=guidance_scale)

    def __call__(self, *args, max_tokens: int | Sequence[int] | None = None, **kwargs):
        """:meth:`VisualTokenDecoderPipeline.__call__`, plus ``max_tokens``: an int in [1, T] or one per input
        image; the decoder then sees ``min(k(t), max_tokens)`` tokens. ``token_ids`` / ``token_embeddings`` with
        ``n < T`` tokens are a prefix (the missing tokens are never visible)."""
        return super().__call__(*args, condition_kwargs={"max_tokens": max_tokens}, **kwargs)

    @property
    def num_tokens(self) -> int:
        return self.conditioner.config.num_tokens

    @property
    def token_embeddings_shape(self) -> tuple[int, int]:
        return self.num_tokens, self.conditioner.config.token_dim

    def prepare_condition(self, token_embeddings, attention_mask, max_tokens=None):
        limits = attention_mask.sum(dim=1)  # the prefix length of every image
        if max_tokens is not None:
            values = max_tokens.tolist() if isinstance(max_tokens, torch.Tensor) else max_tokens
            values = list(values) if isinstance(values, (list, tuple)) else [values] * len(limits)
            if len(values) != len(limits):
                raise ValueError(
                    f"`max_tokens` must be an int or {len(limits)} ints (one per image), got {describe(max_tokens)}."
                )
            values = [check_int("max_tokens", value, minimum=1, maximum=self.num_tokens) for value in values]
            limits = torch.minimum(limits, torch.tensor(values, device=limits.device))
        return {"token_embeddings": token_embeddings.to(self.transformer.dtype), "max_tokens": limits}

    def prepare_null_condition(self, condition):
        return {**condition, "max_tokens": torch.zeros_like(condition["max_tokens"])}  # no visible token

    def predict(self, latent_input, timestep, token_embeddings, max_tokens):
        batch = latent_input.shape[0]
        sigmas = (timestep / self.scheduler.config.num_train_timesteps).float().expand(batch)
        visible = self.conditioner.num_visible_tokens(sigmas, max_tokens)  # k(t), recomputed every step
        context, mask = self.conditioner(token_embeddings, visible)
        return self.transformer(
            latent_input,
            timestep=timestep.expand(batch).to(self.transformer.dtype),
            encoder_hidden_states=context,
            encoder_attention_mask=mask,
        ).sample


__all__ = ["DDTDecoderPipeline"]
