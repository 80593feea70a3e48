"""The MLLM side: turn any Hugging Face causal LM into a model that reads and writes images through any of the
hf_vtok visual tokenizers.

Importing this package registers ``VTokMLLMConfig`` with ``AutoConfig``, the model with ``AutoModel`` /
``AutoModelForCausalLM`` / ``AutoModelForImageTextToText``, the processor with ``AutoProcessor``, and the
``text-to-image`` task with ``transformers.pipeline`` (all idempotent).

Quick start::

    from hf_vtok.mllm import VTokMLLMForConditionalGeneration, VTokMLLMProcessor
    model = VTokMLLMForConditionalGeneration.from_text_model_and_tokenizer(lm, visual_tokenizer, text_tokenizer)
    processor = VTokMLLMProcessor.from_visual_tokenizer(text_tokenizer, visual_tokenizer)
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from .. import models as _models  # noqa: F401  (the tokenizer families must be registered for sub-configs)
from .base_models import (
    DEFAULT_SMOLLM2_CACHE,
    SMOLLM2,
    SMOLLM2_INSTALL,
    find_smollm2_gguf,
    load_smollm2,
    load_smollm2_or_fallback,
    resolve_base_model,
)
from .collator_mllm import VTokMLLMDataCollator
from .configuration_mllm import VTokMLLMConfig
from .generation import (
    VisualGenerationOutput,
    VisualWindowLogitsProcessor,
    generate_images,
    generate_visual_embeddings,
    image_generation_config,
)
from .modeling_mllm import (
    VTokMLLMCausalLMOutputWithPast,
    VTokMLLMForConditionalGeneration,
    VTokMLLMModel,
    VTokMLLMPreTrainedModel,
)
from .pipeline_mllm import (
    VTokImageEditingPipeline,
    VTokImagePipelineOutput,
    VTokTextToImagePipeline,
    load_decoder_pipeline,
)
from .processing_mllm import CHAT_TEMPLATES, VTokMLLMProcessor, image_processor_for
from .transformers_pipelines import VTokTextToImageHFPipeline, register_pipelines
from .vocabulary import VisualVocabulary, add_visual_tokens, code_token


def register_auto_classes() -> None:
    """Register the MLLM with the transformers Auto classes and the ``text-to-image`` pipeline task."""
    AutoConfig.register(VTokMLLMConfig.model_type, VTokMLLMConfig, exist_ok=True)
    AutoModel.register(VTokMLLMConfig, VTokMLLMModel, exist_ok=True)
    AutoModelForCausalLM.register(VTokMLLMConfig, VTokMLLMForConditionalGeneration, exist_ok=True)
    AutoModelForImageTextToText.register(VTokMLLMConfig, VTokMLLMForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(VTokMLLMConfig, VTokMLLMProcessor, exist_ok=True)
    register_pipelines()


__all__ = [
    "CHAT_TEMPLATES",
    "DEFAULT_SMOLLM2_CACHE",
    "SMOLLM2",
    "SMOLLM2_INSTALL",
    "VTokImageEditingPipeline",
    "VTokImagePipelineOutput",
    "VTokMLLMCausalLMOutputWithPast",
    "VTokMLLMConfig",
    "VTokMLLMDataCollator",
    "VTokMLLMForConditionalGeneration",
    "VTokMLLMModel",
    "VTokMLLMPreTrainedModel",
    "VTokMLLMProcessor",
    "VTokTextToImageHFPipeline",
    "VTokTextToImagePipeline",
    "VisualGenerationOutput",
    "VisualVocabulary",
    "VisualWindowLogitsProcessor",
    "add_visual_tokens",
    "code_token",
    "find_smollm2_gguf",
    "generate_images",
    "generate_visual_embeddings",
    "image_generation_config",
    "image_processor_for",
    "load_decoder_pipeline",
    "load_smollm2",
    "load_smollm2_or_fallback",
    "register_auto_classes",
    "resolve_base_model",
]

register_auto_classes()
