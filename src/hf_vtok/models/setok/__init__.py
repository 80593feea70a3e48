"""SeTok: density-peak clustering tokenizer with a variable number of continuous tokens per image.

Importing this package registers the config, models and image processors with the transformers Auto
classes (idempotent).
"""

from ...utils.modeling_utils import register_tokenizer_family
from .clustering_setok import SeTokClusteringOutput, density_peak_clustering, pairwise_squared_distances
from .configuration_setok import SeTokConfig, SeTokDecoderConfig, SeTokMaskDecoderConfig
from .image_processing_setok import SeTokImageProcessor, SeTokImageProcessorPil
from .modeling_setok import (
                             SeTokClusterMerger,
                             SeTokForPreTraining,
                             SeTokForPreTrainingOutput,
                             SeTokMaskDecoder,
                             SeTokModel,  # fmt: skip
                             SeTokPreTrainedModel,
)
from .modeling_setok_decoder import SeTokFeatureMapper
from .pipeline_setok import SeTokDecoderPipeline

register_tokenizer_family(
    SeTokConfig, SeTokModel, SeTokForPreTraining, {"pil": SeTokImageProcessorPil, "torch": SeTokImageProcessor}
)

__all__ = [
    "SeTokClusterMerger", "SeTokClusteringOutput", "SeTokConfig", "SeTokDecoderConfig", "SeTokDecoderPipeline",
    "SeTokFeatureMapper", "SeTokForPreTraining", "SeTokForPreTrainingOutput", "SeTokImageProcessor",
    "SeTokImageProcessorPil", "SeTokMaskDecoder", "SeTokMaskDecoderConfig", "SeTokModel", "SeTokPreTrainedModel",
    "density_peak_clustering", "pairwise_squared_distances",
]  # fmt: skip
