"""Slot Q-Former (Slot-MLLM): object-centric discrete visual tokens via slot attention in a Q-Former.

Public classes: configuration, tokenizer (``SlotQFormerModel``), training wrapper
(``SlotQFormerForPreTraining``), image processors, the decoder conditioner and the decoder pipeline.
Importing this package registers them with the transformers Auto classes.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForPreTraining

from .configuration_slot_qformer import SlotQFormerConfig
from .image_processing_slot_qformer import SlotQFormerImageProcessor, SlotQFormerImageProcessorPil
from .modeling_slot_qformer import (
    SlotQFormerEncoderOutput,
    SlotQFormerForPreTraining,
    SlotQFormerForPreTrainingOutput,
    SlotQFormerModel,
    SlotQFormerPreTrainedModel,
)
from .modeling_slot_qformer_decoder import SlotQFormerConditionOutput, SlotQFormerDecoderConditioner
from .pipeline_slot_qformer import SlotQFormerDecoderPipeline


def register_auto_classes() -> None:
    """Register the family with AutoConfig / AutoModel / AutoModelForPreTraining / AutoImageProcessor."""
    AutoConfig.register(SlotQFormerConfig.model_type, SlotQFormerConfig, exist_ok=True)
    AutoModel.register(SlotQFormerConfig, SlotQFormerModel, exist_ok=True)
    AutoModelForPreTraining.register(SlotQFormerConfig, SlotQFormerForPreTraining, exist_ok=True)
    AutoImageProcessor.register(
        SlotQFormerConfig,
        image_processor_classes={"pil": SlotQFormerImageProcessorPil, "torch": SlotQFormerImageProcessor},
        exist_ok=True,
    )


__all__ = [
    "SlotQFormerConditionOutput",
    "SlotQFormerConfig",
    "SlotQFormerDecoderConditioner",
    "SlotQFormerDecoderPipeline",
    "SlotQFormerEncoderOutput",
    "SlotQFormerForPreTraining",
    "SlotQFormerForPreTrainingOutput",
    "SlotQFormerImageProcessor",
    "SlotQFormerImageProcessorPil",
    "SlotQFormerModel",
    "SlotQFormerPreTrainedModel",
    "register_auto_classes",
]

register_auto_classes()
