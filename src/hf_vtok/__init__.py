"""hf_vtok: Hugging Face-native visual tokenizers for multimodal LLMs.

Importing the package registers every config, model, image processor and processor with the
transformers Auto classes (idempotent), so that saved folders load with ``AutoModel.from_pretrained``,
``AutoImageProcessor.from_pretrained`` and ``AutoProcessor.from_pretrained`` without
``trust_remote_code``. The decoder pipelines load with their own class (``XDecoderPipeline.from_pretrained``).
"""

__version__ = "0.1.0"

from .modeling_utils import VisualTokenizerMixin, VisualTokens  # noqa: E402
from .quantizers import Codebook, QuantizerOutput, ResidualVectorQuantizer, VectorQuantizer  # noqa: E402
from .models.ddt import (  # noqa: E402
    DDTDecoderPipeline,
    DDTDecoderTransformer,
    DDTImageProcessor,
    DDTImageProcessorPil,
    DDTTokenConditioner,
    DDTTokenizerConfig,
    DDTTokenizerForPreTraining,
    DDTTokenizerModel,
)
from .models.setok import (  # noqa: E402
    SeTokConfig,
    SeTokDecoderPipeline,
    SeTokFeatureMapper,
    SeTokForPreTraining,
    SeTokImageProcessor,
    SeTokImageProcessorPil,
    SeTokModel,
)
from .models.slot_qformer import (  # noqa: E402
    SlotQFormerConfig,
    SlotQFormerDecoderConditioner,
    SlotQFormerDecoderPipeline,
    SlotQFormerForPreTraining,
    SlotQFormerImageProcessor,
    SlotQFormerImageProcessorPil,
    SlotQFormerModel,
)
from .mllm import (  # noqa: E402
    VTokImageEditingPipeline,
    VTokMLLMConfig,
    VTokMLLMForConditionalGeneration,
    VTokMLLMModel,
    VTokMLLMProcessor,
    VTokTextToImagePipeline,
    add_visual_tokens,
)

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
]

from .pipelines_registry import register_pipelines_with_diffusers; register_pipelines_with_diffusers()  # noqa: E402,E702  [issue 7: diffusers.DiffusionPipeline.from_pretrained finds our pipeline classes]
