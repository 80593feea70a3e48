"""Slot Q-Former (Slot-MLLM): object-centric discrete visual tokens via slot attention in a Q-Former.

Public classes: configuration, tokenizer (``SlotQFormerModel``), training wrapper
(``SlotQFormerForPreTraining``), image processors, the decoder conditioner and the decoder pipeline.
Importing this package registers them with the transformers Auto classes (idempotent).
"""

import sys

from ...utils.modeling_utils import register_tokenizer_family
from .configuration_slot_qformer import *
from .image_processing_slot_qformer import *
from .modeling_slot_qformer import *
from .modeling_slot_qformer_decoder import *
from .pipeline_slot_qformer import *

register_tokenizer_family(
    SlotQFormerConfig, SlotQFormerModel, SlotQFormerForPreTraining,
    {"pil": SlotQFormerImageProcessorPil, "torch": SlotQFormerImageProcessor},
)

# the public names of every module of the family
__all__ = [name for module in ("configuration_slot_qformer", "image_processing_slot_qformer", "modeling_slot_qformer", "modeling_slot_qformer_decoder", "pipeline_slot_qformer") for name in sys.modules[f"{__name__}.{module}"].__all__]
