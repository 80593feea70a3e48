"""diffusers pipelines around the MLLM: ``VTokTextToImagePipeline`` and ``VTokImageEditingPipeline``.

Components::

    mllm       VTokMLLMForConditionalGeneration   (transformers model, saved in mllm/)
    processor  VTokMLLMProcessor                  (saved in processor/ and, for transformers.pipeline, in mllm/)
    decoder    the tokenizer family's decoder DiffusionPipeline (saved in decoder/; e.g. DDTDecoderPipeline)

``pipe.save_pretrained(dir)`` / ``VTokTextToImagePipeline.from_pretrained(dir)`` round-trip after ``import
hf_vtok``. Because the processor is also written next to the MLLM weights, ``dir/mllm`` is a complete
transformers folder: ``transformers.pipeline("text-to-image", model=f"{dir}/mllm")`` finds the decoder in the
sibling ``decoder/`` folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from ..utils.pipeline_utils import load_decoder_pipeline
from ..utils.validation import describe
from .generation import generate_images
from .modeling_mllm import VTokMLLMForConditionalGeneration
from .processing_mllm import VTokMLLMProcessor


@dataclass
class VTokImagePipelineOutput(BaseOutput):
    """Images plus the visual tokens they were decoded from.

    Args:
        images: PIL images, `[B, H, W, 3]` array or `[B, 3, H, W]` tensor in [0, 1] (``output_type``), or ``None``
            when the pipeline has no decoder (then only the tokens are returned).
        token_ids: `[B, N]` visual ids (discrete tokenizers).
        token_embeddings / attention_mask: generated embeddings and their mask (continuous tokenizers).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None
    token_ids: torch.LongTensor | None = None
    token_embeddings: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None


class _VTokMLLMImagePipelineBase(DiffusionPipeline):
    _optional_components: ClassVar[list[str]] = ["decoder"]

    def __init__(self, mllm: VTokMLLMForConditionalGeneration, processor: VTokMLLMProcessor, decoder=None):
        super().__init__()
        if not isinstance(mllm, VTokMLLMForConditionalGeneration):
            raise TypeError(f"`mllm` must be a VTokMLLMForConditionalGeneration, got {describe(mllm)}.")
        if not isinstance(processor, VTokMLLMProcessor):
            raise TypeError(f"`processor` must be a VTokMLLMProcessor, got {describe(processor)}.")
        if decoder is not None and not isinstance(decoder, DiffusionPipeline):
            raise TypeError(f"`decoder` must be the tokenizer family's decoder DiffusionPipeline, got {describe(decoder)}.")
        if mllm.config.num_visual_tokens != processor.num_visual_tokens:
            raise ValueError(
                f"`processor` expects {processor.num_visual_tokens} tokens per image but `mllm`'s tokenizer makes "
                f"{mllm.config.num_visual_tokens}."
            )
        self.register_modules(mllm=mllm, processor=processor, decoder=decoder)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``from_pretrained``; a folder whose ``mllm/`` references its parts (:mod:`hf_vtok.mllm.parts`)
        and ships no decoder gets the referenced visual tokenizer's own decoder pipeline."""
        from .parts import parts_decoder_folder, references_mllm_parts

        pipeline = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        mllm_folder = Path(os.fspath(pretrained_model_name_or_path)) / "mllm"
        if pipeline.decoder is None and "decoder" not in kwargs and references_mllm_parts(mllm_folder):
            decoder_folder = parts_decoder_folder(mllm_folder)
            if decoder_folder is not None:
                pipeline.register_modules(decoder=load_decoder_pipeline(decoder_folder))
        return pipeline

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        # make mllm/ a complete transformers folder (AutoProcessor, transformers.pipeline)
        self.processor.save_pretrained(os.path.join(os.fspath(save_directory), "mllm"))

    @torch.no_grad()
    def _generate(
        self,
        prompt,
        images=None,
        num_inference_steps: int | None = None,
        decoder_guidance_scale: float | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        **generation_kwargs,
    ) -> VTokImagePipelineOutput | tuple:
        decoder_kwargs = {"output_type": output_type}  # the decoder pipeline validates it
        if num_inference_steps is not None:
            decoder_kwargs["num_inference_steps"] = num_inference_steps
        if decoder_guidance_scale is not None:
            decoder_kwargs["guidance_scale"] = decoder_guidance_scale
        tokens = generate_images(
            self.mllm, self.processor, prompt, images=images, decoder=self.decoder, decoder_kwargs=decoder_kwargs,
            progress=lambda total, description: self.progress_bar(total=total), **generation_kwargs,
        )
        self.maybe_free_model_hooks()
        output = VTokImagePipelineOutput(
            images=tokens.images, token_ids=tokens.ids, token_embeddings=tokens.embeddings, attention_mask=tokens.attention_mask
        )
        return output if return_dict else (output.images,)


class VTokTextToImagePipeline(_VTokMLLMImagePipelineBase):
    """Text → image with a :class:`VTokMLLMForConditionalGeneration` and its tokenizer's decoder.

    Examples:
        >>> pipe = VTokTextToImagePipeline(mllm=model, processor=processor, decoder=decoder_pipeline)
        >>> image = pipe("a red circle left of a blue square", generator=torch.Generator().manual_seed(0)).images[0]
    """

    def __call__(self, prompt: str | list[str], **kwargs) -> VTokImagePipelineOutput | tuple:
        """Generate images for ``prompt`` (one prompt or a list); the token arguments are those of
        :func:`~hf_vtok.mllm.generation.generate_images`.

        Args:
            negative_prompt: the unconditional prompt for classifier-free guidance (default: the empty prompt).
            num_images_per_prompt: samples per prompt.
            guidance_scale: classifier-free guidance on the LM logits (DDT-LLaMA: 8.0; 1 disables it; default: the
                model's `config.image_guidance_scale`).
            temperature, top_k, top_p: sampling of the visual ids (DDT-LLaMA: top-k 4096, top-p 0.9).
            generator / seed: randomness of the token sampling and of the decoder noise.
            batch_size: images per ``generate`` call.
            use_chat_template: wrap prompts in the processor's chat template (as in training).
            num_inference_steps, decoder_guidance_scale: forwarded to the decoder pipeline.
            output_type: forwarded to the decoder pipeline (``"pil"``, ``"np"``, ``"pt"``, ...).
            return_dict: return a :class:`VTokImagePipelineOutput` (else a tuple holding the images).
        """
        return self._generate(prompt, **kwargs)


class VTokImageEditingPipeline(_VTokMLLMImagePipelineBase):
    """Image + instruction → edited image (Slot-MLLM / SeTok / DDT-LLaMA editing).

    The source image is tokenized by the MLLM's frozen visual tokenizer and placed in the prompt (``<image>``,
    before the instruction unless the instruction holds the marker); the unconditional branch of
    classifier-free guidance keeps the image and drops the instruction.

    Examples:
        >>> edited = pipe(image=source, prompt="make the circle blue", seed=0).images[0]
    """

    def __call__(self, image, prompt: str | list[str], **kwargs) -> VTokImagePipelineOutput | tuple:
        """Edit ``image`` (one, or one per prompt) following ``prompt``; other arguments as for text-to-image."""
        if image is None:
            raise ValueError("`image` is required: the source image to edit.")
        return self._generate(prompt, images=image, **kwargs)


__all__ = [
    "VTokImageEditingPipeline",
    "VTokImagePipelineOutput",
    "VTokTextToImagePipeline",
    "load_decoder_pipeline",
]
