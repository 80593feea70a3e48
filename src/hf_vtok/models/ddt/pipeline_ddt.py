"""``DDTDecoderPipeline``: DDT tokens → image with the prefix-masked MMDiT and flow-matching Euler steps.

At every step with noise level ``t`` the decoder sees only the first ``k(t)`` tokens (recomputed at each
step; ``min(k(t), max_tokens)`` for prefix decoding). Classifier-free guidance contrasts the prediction
with the null condition used by training-time condition dropout (no visible token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from ...utils.validation import check_float, check_generator, check_int, check_tensor, describe
from .image_processing_ddt import DDTImageProcessor
from .modeling_ddt_decoder import DDTDecoderTransformer, DDTTokenConditioner

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class DDTDecoderPipeline(DiffusionPipeline):
    """Reconstruct images or render DDT token ids.

    Components: ``tokenizer`` (:class:`DDTTokenizerModel`, a transformers model; optional when only
    ``token_embeddings`` are decoded), ``conditioner`` (:class:`DDTTokenConditioner`), ``transformer``
    (:class:`DDTDecoderTransformer`), ``scheduler`` (``FlowMatchEulerDiscreteScheduler``) and ``vae``
    (``AutoencoderKL``, ``None`` for a pixel-space decoder such as the tiny preset).

    Examples:
        >>> pipe = model.get_decoder_pipeline()                      # from a DDTTokenizerForPreTraining
        >>> images = pipe(images=pil_images).images                  # reconstruction
        >>> images = pipe(token_ids=ids, guidance_scale=2.0).images  # render ids (e.g. from an MLLM)
        >>> images = pipe(token_ids=ids, max_tokens=8).images        # decode from the first 8 tokens only
    """

    model_cpu_offload_seq = "tokenizer->conditioner->transformer->vae"
    _optional_components: ClassVar[list[str]] = ["tokenizer", "vae"]

    def __init__(
        self,
        tokenizer,
        conditioner: DDTTokenConditioner,
        transformer: DDTDecoderTransformer,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae=None,
    ):
        super().__init__()
        if not isinstance(conditioner, DDTTokenConditioner):
            raise TypeError(f"`conditioner` must be a DDTTokenConditioner, got {describe(conditioner)}.")
        if not isinstance(transformer, DDTDecoderTransformer):
            raise TypeError(f"`transformer` must be a DDTDecoderTransformer, got {describe(transformer)}.")
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            raise TypeError(f"`scheduler` must be a FlowMatchEulerDiscreteScheduler, got {describe(scheduler)}.")
        if conditioner.config.hidden_size != transformer.inner_dim:
            raise ValueError(
                f"`conditioner` width ({conditioner.config.hidden_size}) must equal the transformer width "
                f"({transformer.inner_dim})."
            )
        self.register_modules(
            tokenizer=tokenizer, conditioner=conditioner, transformer=transformer, scheduler=scheduler, vae=vae
        )

    # ------------------------------------------------------------------ helpers
    @property
    def num_tokens(self) -> int:
        return self.conditioner.config.num_tokens

    def _require_tokenizer(self, argument: str):
        if self.tokenizer is None:
            raise ValueError(f"`{argument}` needs the pipeline's `tokenizer`, which is None; pass `token_embeddings`.")
        return self.tokenizer

    def get_image_processor(self) -> DDTImageProcessor:
        return DDTImageProcessor.from_model_config(self._require_tokenizer("images").config)

    @torch.no_grad()
    def encode_images(self, images=None, pixel_values: torch.Tensor | None = None):
        """Images (PIL, arrays, tensors in [0, 1], paths) or processed ``pixel_values`` → ``VisualTokens``."""
        tokenizer = self._require_tokenizer("images" if pixel_values is None else "pixel_values")
        if (images is None) == (pixel_values is None):
            raise ValueError("Pass exactly one of `images` and `pixel_values` to `encode_images`.")
        if pixel_values is None:
            pixel_values = self.get_image_processor()(images, return_tensors="pt")["pixel_values"]
        device = next(tokenizer.parameters()).device
        return tokenizer.encode(pixel_values.to(device=device, dtype=tokenizer.dtype))

    def _codes_from_ids(self, token_ids) -> tuple[torch.Tensor, int]:
        tokenizer = self._require_tokenizer("token_ids")
        if isinstance(token_ids, (list, tuple)):
            try:
                token_ids = torch.tensor(token_ids, dtype=torch.long)
            except (TypeError, ValueError) as error:
                raise TypeError(f"`token_ids` must be a LongTensor [B, n] or nested lists of ints: {error}") from None
        check_tensor("token_ids", token_ids, ndim=(1, 2), integer=True)
        if token_ids.ndim == 1:
            token_ids = token_ids[None]
        length = token_ids.shape[1]
        if length > self.num_tokens:
            raise ValueError(
                f"`token_ids` must hold at most {self.num_tokens} ids per image (T), got shape {tuple(token_ids.shape)}."
            )
        codebook_size = tokenizer.config.codebook_size
        low, high = int(token_ids.min()), int(token_ids.max())
        if low < 0 or high >= codebook_size:
            raise ValueError(f"`token_ids` must be codebook indices in [0, {codebook_size}), got values in [{low}, {high}].")
        # a shorter sequence is a prefix: pad it, and never let the padding become visible
        padded = torch.zeros(token_ids.shape[0], self.num_tokens, dtype=torch.long)
        padded[:, :length] = token_ids.cpu()
        return tokenizer.embed_ids(padded.to(tokenizer.device)), length

    def _limits(self, max_tokens, batch: int, length: int) -> torch.LongTensor:
        if max_tokens is None:
            return torch.full((batch,), length, dtype=torch.long)
        if isinstance(max_tokens, torch.Tensor):
            max_tokens = max_tokens.tolist()
        if isinstance(max_tokens, (list, tuple)):
            if len(max_tokens) != batch:
                raise ValueError(f"`max_tokens` must be an int or {batch} ints (one per image), got {describe(max_tokens)}.")
            values = [check_int("max_tokens", v, minimum=1, maximum=self.num_tokens) for v in max_tokens]
        else:
            values = [check_int("max_tokens", max_tokens, minimum=1, maximum=self.num_tokens)] * batch
        return torch.tensor(values, dtype=torch.long).clamp(max=length)

    def _denormalize(self, sample: torch.Tensor) -> torch.Tensor:
        if self.tokenizer is not None:
            mean, std = self.tokenizer.config.image_mean, self.tokenizer.config.image_std
        else:
            mean, std = [0.5] * sample.shape[1], [0.5] * sample.shape[1]
        mean = torch.tensor(mean, device=sample.device, dtype=sample.dtype)[:, None, None]
        std = torch.tensor(std, device=sample.device, dtype=sample.dtype)[:, None, None]
        return (sample * std + mean).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        images=None,
        pixel_values: torch.Tensor | None = None,
        token_ids: torch.LongTensor | None = None,
        token_embeddings: torch.Tensor | None = None,
        max_tokens: int | Sequence[int] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Decode images from DDT tokens.

        Args:
            images: images to reconstruct (PIL / arrays / tensors in [0, 1] / paths; encoded by ``tokenizer``).
            pixel_values: already processed images `[B, 3, H, W]` (see :class:`DDTImageProcessor`).
            token_ids: `[B, n]` (or `[n]`) codebook ids in recursive order, ``n <= T``; ``n < T`` decodes the
                prefix (the missing tokens are never visible).
            token_embeddings: `[B, n, code_dim]` codes (``tokenizer.embed_ids(ids)``), ``n <= T``.
            max_tokens: int in [1, T] or one per image: the decoder sees ``min(k(t), max_tokens)`` tokens.
            num_inference_steps: Euler steps (50 in the successor code; the paper samples over T steps).
            guidance_scale: classifier-free guidance against the null condition; 1 disables it.
            generator: torch generator(s) for the initial noise.
            latents: initial noise `[B, C, S, S]` (overrides ``generator``).
            output_type: ``"pil"``, ``"np"`` (`[B, H, W, 3]` in [0, 1]), ``"pt"`` (`[B, 3, H, W]` in [0, 1]) or
                ``"latent"`` (the raw decoder output).
        """
        given = [name for name, value in (("images", images), ("pixel_values", pixel_values),
                                          ("token_ids", token_ids), ("token_embeddings", token_embeddings))
                 if value is not None]
        if len(given) != 1:
            raise ValueError(
                "Pass exactly one of `images`, `pixel_values`, `token_ids` and `token_embeddings`, "
                f"got {given or 'none'}."
            )
        num_inference_steps = check_int("num_inference_steps", num_inference_steps, minimum=1)
        guidance_scale = check_float("guidance_scale", guidance_scale, minimum=0.0)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {list(OUTPUT_TYPES)}, got {output_type!r}.")
        check_generator(generator)  # a wrong type would fail deep inside randn_tensor (issue 8)
        device = self._execution_device
        dtype = self.transformer.dtype

        if images is not None or pixel_values is not None:
            codes = self.encode_images(images=images, pixel_values=pixel_values).embeddings
            length = codes.shape[1]
        elif token_ids is not None:
            codes, length = self._codes_from_ids(token_ids)
        else:
            check_tensor("token_embeddings", token_embeddings, ndim=3, floating=True, finite=True)
            if token_embeddings.shape[-1] != self.conditioner.config.token_dim or token_embeddings.shape[1] > self.num_tokens:
                raise ValueError(
                    f"`token_embeddings` must have shape [B, n <= {self.num_tokens}, {self.conditioner.config.token_dim}], "
                    f"got {tuple(token_embeddings.shape)}."
                )
            codes, length = token_embeddings, token_embeddings.shape[1]
        codes = codes.to(device=device, dtype=dtype)
        batch = codes.shape[0]
        limits = self._limits(max_tokens, batch, length).to(device)

        cfg = self.transformer.config
        shape = (batch, cfg.in_channels, cfg.sample_size, cfg.sample_size)
        if latents is None:
            if isinstance(generator, list) and len(generator) != batch:
                raise ValueError(f"`generator` must be one generator or {batch} (one per image), got {len(generator)}.")
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            check_tensor("latents", latents, ndim=4, floating=True, finite=True)
            if tuple(latents.shape) != shape:
                raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}.")
            latents = latents.to(device=device, dtype=dtype)

        use_cfg = guidance_scale > 1.0
        model_codes = torch.cat([codes, codes]) if use_cfg else codes
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        train_steps = self.scheduler.config.num_train_timesteps
        with self.progress_bar(total=len(self.scheduler.timesteps)) as progress_bar:
            for timestep in self.scheduler.timesteps:
                sigma = (timestep / train_steps).float().expand(batch)
                visible = self.conditioner.num_visible_tokens(sigma, limits)  # k(t), recomputed every step
                if use_cfg:
                    visible = torch.cat([visible, torch.zeros_like(visible)])  # null condition
                context, mask = self.conditioner(model_codes, visible)
                model_input = torch.cat([latents, latents]) if use_cfg else latents
                velocity = self.transformer(
                    model_input,
                    timestep=timestep.expand(model_input.shape[0]).to(dtype),
                    encoder_hidden_states=context,
                    encoder_attention_mask=mask,
                ).sample
                if use_cfg:
                    conditional, unconditional = velocity.chunk(2)
                    velocity = unconditional + guidance_scale * (conditional - unconditional)
                latents = self.scheduler.step(velocity, timestep, latents, return_dict=False)[0]
                progress_bar.update()

        if output_type == "latent":
            images_out = latents
        else:
            sample = latents
            if self.vae is not None:
                shift = getattr(self.vae.config, "shift_factor", None) or 0.0
                sample = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor + shift).sample
            images_out = self._denormalize(sample.float())
            if output_type in ("np", "pil"):
                images_out = images_out.permute(0, 2, 3, 1).cpu().numpy()
                if output_type == "pil":
                    images_out = [PIL.Image.fromarray(np.round(image * 255).astype(np.uint8)) for image in images_out]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images_out,)
        return ImagePipelineOutput(images=images_out)


__all__ = ["DDTDecoderPipeline"]
