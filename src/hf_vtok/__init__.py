"""hf_vtok: Hugging Face-native visual tokenizers for multimodal LLMs.

Importing the package registers every config, model, image processor and processor with the
transformers Auto classes (idempotent), and every decoder pipeline with diffusers, so that saved
folders load with ``AutoModel.from_pretrained`` / ``DiffusionPipeline.from_pretrained`` and no
``trust_remote_code``.
"""

__version__ = "0.1.0"

from .modeling_utils import VisualTokenizerMixin, VisualTokens  # noqa: E402
from .quantizers import Codebook, QuantizerOutput, ResidualVectorQuantizer, VectorQuantizer  # noqa: E402
from . import models  # noqa: E402,F401  (registers the families)

__all__ = [
    "Codebook",
    "QuantizerOutput",
    "ResidualVectorQuantizer",
    "VectorQuantizer",
    "VisualTokenizerMixin",
    "VisualTokens",
]
from .models.slot_qformer import SlotQFormerConfig, SlotQFormerDecoderConditioner, SlotQFormerDecoderPipeline, SlotQFormerForPreTraining, SlotQFormerImageProcessor, SlotQFormerImageProcessorPil, SlotQFormerModel  # noqa: E402,F401  [slot_qformer exports — lead: fold into __all__]
from .models.setok import SeTokConfig, SeTokDecoderPipeline, SeTokFeatureMapper, SeTokForPreTraining, SeTokImageProcessor, SeTokImageProcessorPil, SeTokModel  # noqa: E402,F401  [setok exports — lead: fold into __all__]
from .models.ddt import DDTDecoderPipeline, DDTDecoderTransformer, DDTImageProcessor, DDTImageProcessorPil, DDTTokenConditioner, DDTTokenizerConfig, DDTTokenizerForPreTraining, DDTTokenizerModel  # noqa: E402,F401  [ddt exports — lead: fold into __all__]
from .mllm import VTokImageEditingPipeline, VTokMLLMConfig, VTokMLLMForConditionalGeneration, VTokMLLMModel, VTokMLLMProcessor, VTokTextToImagePipeline, add_visual_tokens  # noqa: E402,F401  [mllm exports — lead: fold into __all__]
