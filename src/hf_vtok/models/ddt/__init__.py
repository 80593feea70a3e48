"""DDT tokenizer family: Discrete Diffusion Timestep tokens (Pan et al.) with an MMDiT decoder pipeline.

Importing this package registers the config, models and image processors with the transformers Auto
classes (idempotent).
"""

from ...utils.modeling_utils import register_tokenizer_family
from .analysis_ddt import counterfactual_interpolation, prefix_decoding_strip
from .configuration_ddt import DDTDecoderConfig, DDTTokenizerConfig
from .image_processing_ddt import DDTImageProcessor, DDTImageProcessorPil
from .modeling_ddt import (
    DDTPreTrainedModel,
    DDTTokenizerForPreTraining,
    DDTTokenizerForPreTrainingOutput,
    DDTTokenizerModel,
)
from .modeling_ddt_decoder import DDTDecoderTransformer, DDTTokenConditioner, visible_token_counts
from .pipeline_ddt import DDTDecoderPipeline

register_tokenizer_family(
    DDTTokenizerConfig, DDTTokenizerModel, DDTTokenizerForPreTraining, {"pil": DDTImageProcessorPil, "torch": DDTImageProcessor}
)

__all__ = [
    "DDTDecoderConfig", "DDTDecoderPipeline", "DDTDecoderTransformer", "DDTImageProcessor", "DDTImageProcessorPil",
    "DDTPreTrainedModel", "DDTTokenConditioner", "DDTTokenizerConfig", "DDTTokenizerForPreTraining",
    "DDTTokenizerForPreTrainingOutput", "DDTTokenizerModel", "counterfactual_interpolation", "prefix_decoding_strip",
    "visible_token_counts",
]  # fmt: skip
