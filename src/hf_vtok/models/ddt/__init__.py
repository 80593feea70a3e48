"""DDT tokenizer family: Discrete Diffusion Timestep tokens (Pan et al.) with an MMDiT decoder pipeline.

Importing this package registers the config, models and image processors with the transformers Auto
classes (idempotent).
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForPreTraining

from .analysis_ddt import counterfactual_interpolation, prefix_decoding_strip
from .configuration_ddt import DDTTokenizerConfig
from .image_processing_ddt import DDTImageProcessor, DDTImageProcessorPil
from .modeling_ddt import (
    DDTPreTrainedModel,
    DDTTokenizerForPreTraining,
    DDTTokenizerForPreTrainingOutput,
    DDTTokenizerModel,
)
from .modeling_ddt_decoder import DDTDecoderTransformer, DDTTokenConditioner, visible_token_counts
from .pipeline_ddt import DDTDecoderPipeline


def register_auto_classes() -> None:
    """Register the DDT classes with AutoConfig / AutoModel / AutoModelForPreTraining / AutoImageProcessor."""
    AutoConfig.register(DDTTokenizerConfig.model_type, DDTTokenizerConfig, exist_ok=True)
    AutoModel.register(DDTTokenizerConfig, DDTTokenizerModel, exist_ok=True)
    AutoModelForPreTraining.register(DDTTokenizerConfig, DDTTokenizerForPreTraining, exist_ok=True)
    AutoImageProcessor.register(
        DDTTokenizerConfig,
        image_processor_classes={"pil": DDTImageProcessorPil, "torch": DDTImageProcessor},
        exist_ok=True,
    )


__all__ = [
    "DDTDecoderPipeline",
    "DDTDecoderTransformer",
    "DDTImageProcessor",
    "DDTImageProcessorPil",
    "DDTPreTrainedModel",
    "DDTTokenConditioner",
    "DDTTokenizerConfig",
    "DDTTokenizerForPreTraining",
    "DDTTokenizerForPreTrainingOutput",
    "DDTTokenizerModel",
    "counterfactual_interpolation",
    "prefix_decoding_strip",
    "register_auto_classes",
    "visible_token_counts",
]

register_auto_classes()
