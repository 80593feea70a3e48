"""hf_vtok: Hugging Face-native visual tokenizers for multimodal LLMs.

Importing the package registers every config, model, image processor and processor with the
transformers Auto classes (idempotent), so that saved folders load with ``AutoModel.from_pretrained``,
``AutoImageProcessor.from_pretrained`` and ``AutoProcessor.from_pretrained`` without
``trust_remote_code``. The decoder pipelines load with their own class (``XDecoderPipeline.from_pretrained``).
"""

__version__ = "0.1.0"

from .mllm import (
    VTokImageEditingPipeline,
    VTokMLLMConfig,
    VTokMLLMForConditionalGeneration,
    VTokMLLMModel,
    VTokMLLMProcessor,
    VTokTextToImagePipeline,
    add_visual_tokens,
)
from .models.ddt import (
    DDTDecoderPipeline,
    DDTDecoderTransformer,
    DDTImageProcessor,
    DDTImageProcessorPil,
    DDTTokenConditioner,
    DDTTokenizerConfig,
    DDTTokenizerForPreTraining,
    DDTTokenizerModel,
)
from .models.setok import (
    SeTokConfig,
    SeTokDecoderPipeline,
    SeTokFeatureMapper,
    SeTokForPreTraining,
    SeTokImageProcessor,
    SeTokImageProcessorPil,
    SeTokModel,
)
from .models.slot_qformer import (
    SlotQFormerConfig,
    SlotQFormerDecoderConditioner,
    SlotQFormerDecoderPipeline,
    SlotQFormerForPreTraining,
    SlotQFormerImageProcessor,
    SlotQFormerImageProcessorPil,
    SlotQFormerModel,
)
from .utils.modeling_utils import VisualTokenizerMixin, VisualTokens
from .utils.quantizers import Codebook, QuantizerOutput, ResidualVectorQuantizer, VectorQuantizer

__all__ = [
    "Codebook",
    "DDTDecoderPipeline",
    "DDTDecoderTransformer",
    "DDTImageProcessor",
    "DDTImageProcessorPil",
    "DDTTokenConditioner",
    "DDTTokenizerConfig",
    "DDTTokenizerForPreTraining",
    "DDTTokenizerModel",
    "QuantizerOutput",
    "ResidualVectorQuantizer",
    "SeTokConfig",
    "SeTokDecoderPipeline",
    "SeTokFeatureMapper",
    "SeTokForPreTraining",
    "SeTokImageProcessor",
    "SeTokImageProcessorPil",
    "SeTokModel",
    "SlotQFormerConfig",
    "SlotQFormerDecoderConditioner",
    "SlotQFormerDecoderPipeline",
    "SlotQFormerForPreTraining",
    "SlotQFormerImageProcessor",
    "SlotQFormerImageProcessorPil",
    "SlotQFormerModel",
    "VTokImageEditingPipeline",
    "VTokMLLMConfig",
    "VTokMLLMForConditionalGeneration",
    "VTokMLLMModel",
    "VTokMLLMProcessor",
    "VTokTextToImagePipeline",
    "VectorQuantizer",
    "VisualTokenizerMixin",
    "VisualTokens",
    "add_visual_tokens",
    "register_pipelines_with_diffusers",
]



def register_pipelines_with_diffusers() -> None:
    """Expose hf_vtok's pipeline classes as ``diffusers.<ClassName>`` (idempotent).

    ``diffusers.DiffusionPipeline.from_pretrained(folder)`` looks the ``_class_name`` of ``model_index.json`` up as
    an attribute of the ``diffusers`` module; anything else counts as remote code. Registering our classes there
    lets saved decoders and MLLM pipelines load with the generic entry point and no ``trust_remote_code``. A
    name that diffusers itself defines with another class is never shadowed.
    """
    import diffusers

    for cls in (SlotQFormerDecoderPipeline, SeTokDecoderPipeline, DDTDecoderPipeline, VTokTextToImagePipeline,
                VTokImageEditingPipeline):
        existing = diffusers.__dict__.get(cls.__name__)
        if existing is not None and existing is not cls and not getattr(existing, "__module__", "").startswith("hf_vtok"):
            raise ValueError(f"`diffusers.{cls.__name__}` already names {existing!r}; hf_vtok will not shadow a diffusers class.")
        setattr(diffusers, cls.__name__, cls)


register_pipelines_with_diffusers()
