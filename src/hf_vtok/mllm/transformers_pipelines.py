"""A ``text-to-image`` task for ``transformers.pipeline``.

After ``import hf_vtok``::

    from transformers import pipeline
    pipe = pipeline("text-to-image", model="path/to/mllm")      # config + weights + processor files
    images = pipe("a red circle left of a blue square", seed=0)  # list of PIL images

The decoder (the tokenizer family's decoder pipeline) is taken from ``decoder=`` (a pipeline or a folder), else
from ``<model>/decoder`` or the sibling ``<model>/../decoder`` (the layout ``VTokTextToImagePipeline.save_pretrained``
writes). Without a decoder the pipeline returns the visual tokens.

Understanding goes through the built-in ``image-text-to-text`` task: the MLLM is registered with
``AutoModelForImageTextToText`` and its processor with ``AutoProcessor``, so
``pipeline("image-text-to-text", model=path)(images=image, text="USER: <image> what is left? ASSISTANT:")`` works.
"""

from __future__ import annotations

import os

from transformers import Pipeline

from ..utils.validation import describe
from .generation import generate_images
from .modeling_mllm import VTokMLLMForConditionalGeneration


def _find_decoder(model) -> str | None:
    root = getattr(model, "name_or_path", None)
    if not root or not os.path.isdir(root):
        return None
    for candidate in (os.path.join(root, "decoder"), os.path.join(os.path.dirname(os.path.abspath(root)), "decoder")):
        if os.path.isfile(os.path.join(candidate, "model_index.json")):
            return candidate
    return None


class VTokTextToImageHFPipeline(Pipeline):
    """``transformers`` pipeline: prompt(s) → images with a :class:`VTokMLLMForConditionalGeneration`.

    Call arguments: those of :func:`hf_vtok.mllm.generation.generate_images` (``num_images_per_prompt``,
    ``guidance_scale``, ``temperature``, ``top_k``, ``top_p``, ``seed``/``generator``, ...) plus the decoder's
    ``num_inference_steps``, ``decoder_guidance_scale`` and ``output_type``. Returns a list of images per prompt.
    """

    _load_processor = True
    _load_image_processor = False
    _load_tokenizer = False
    _load_feature_extractor = False

    def __init__(self, *args, decoder=None, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.model, VTokMLLMForConditionalGeneration):
            raise TypeError(f"`model` must be a VTokMLLMForConditionalGeneration, got {describe(self.model)}.")
        if self.processor is None:
            raise ValueError("The text-to-image pipeline needs the model's VTokMLLMProcessor (`processor=`).")
        if decoder is None:
            decoder = _find_decoder(self.model)
        if isinstance(decoder, (str, os.PathLike)):
            from .pipeline_mllm import load_decoder_pipeline

            decoder = load_decoder_pipeline(decoder)
        self.decoder = decoder

    def _sanitize_parameters(self, **kwargs):
        return {}, kwargs, {}  # generate_images names any argument it does not know

    def preprocess(self, prompt):
        if not isinstance(prompt, str):
            raise TypeError(f"`prompt` must be a string, got {describe(prompt)}.")
        return {"prompt": prompt}

    def _forward(self, model_inputs, num_inference_steps=None, decoder_guidance_scale=None, output_type=None, **kwargs):
        decoder_kwargs = {"num_inference_steps": num_inference_steps, "guidance_scale": decoder_guidance_scale, "output_type": output_type}
        decoder_kwargs = {key: value for key, value in decoder_kwargs.items() if value is not None}
        output = generate_images(
            self.model, self.processor, model_inputs["prompt"], decoder=self.decoder, decoder_kwargs=decoder_kwargs, progress=False, **kwargs
        )
        return {"output": output}

    def postprocess(self, model_outputs):
        output = model_outputs["output"]
        if output.images is not None:
            return list(output.images)
        return output.ids if output.ids is not None else output.embeddings


def register_pipelines() -> None:
    """Register the ``text-to-image`` task with ``transformers.pipelines.PIPELINE_REGISTRY`` (idempotent)."""
    from transformers.pipelines import PIPELINE_REGISTRY

    existing = PIPELINE_REGISTRY.supported_tasks.get("text-to-image")
    if existing is not None and existing.get("impl") is VTokTextToImageHFPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(
        "text-to-image",
        pipeline_class=VTokTextToImageHFPipeline,
        pt_model=VTokMLLMForConditionalGeneration,
        type="multimodal",
    )


__all__ = ["VTokTextToImageHFPipeline", "register_pipelines"]
