"""Slot Q-Former (Slot-MLLM): object-centric discrete visual tokens via slot attention in a Q-Former.

Public classes: configuration, tokenizer (``SlotQFormerModel``), training wrapper (``SlotQFormerForPreTraining``),
image processors, the decoder conditioner and the decoder pipeline: the ``__all__`` of each module, imported on first
use (``import hf_vtok`` registers the family with the Auto classes).
"""

from typing import TYPE_CHECKING

from transformers.utils.import_utils import _LazyModule, define_import_structure

if TYPE_CHECKING:
    from .configuration_slot_qformer import *
    from .image_processing_slot_qformer import *
    from .modeling_slot_qformer import *
    from .modeling_slot_qformer_decoder import *
    from .pipeline_slot_qformer import *
else:
    import sys

    sys.modules[__name__] = _LazyModule(__name__, __file__, define_import_structure(__file__), module_spec=__spec__)
