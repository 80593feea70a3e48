"""SeTok: density-peak clustering tokenizer with a variable number of continuous tokens per image."""

from .clustering_setok import SeTokClusteringOutput, density_peak_clustering, pairwise_squared_distances
from .configuration_setok import SeTokConfig
from .image_processing_setok import SeTokImageProcessor, SeTokImageProcessorPil
from .modeling_setok import (
    SeTokClusterMerger,
    SeTokForPreTraining,
    SeTokForPreTrainingOutput,
    SeTokMaskDecoder,
    SeTokModel,
    SeTokPreTrainedModel,
)
from .modeling_setok_decoder import SeTokFeatureMapper
from .pipeline_setok import SeTokDecoderPipeline


def register_auto_classes() -> None:
    """Register SeTok with the transformers Auto classes (idempotent)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForPreTraining

    AutoConfig.register(SeTokConfig.model_type, SeTokConfig, exist_ok=True)
    AutoModel.register(SeTokConfig, SeTokModel, exist_ok=True)
    AutoModelForPreTraining.register(SeTokConfig, SeTokForPreTraining, exist_ok=True)
    AutoImageProcessor.register(
        SeTokConfig,
        image_processor_classes={"pil": SeTokImageProcessorPil, "torch": SeTokImageProcessor},
        exist_ok=True,
    )


__all__ = [
    "SeTokClusterMerger",
    "SeTokClusteringOutput",
    "SeTokConfig",
    "SeTokDecoderPipeline",
    "SeTokFeatureMapper",
    "SeTokForPreTraining",
    "SeTokForPreTrainingOutput",
    "SeTokImageProcessor",
    "SeTokImageProcessorPil",
    "SeTokMaskDecoder",
    "SeTokModel",
    "SeTokPreTrainedModel",
    "density_peak_clustering",
    "pairwise_squared_distances",
    "register_auto_classes",
]

register_auto_classes()
