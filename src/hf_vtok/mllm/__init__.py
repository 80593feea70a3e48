"""The MLLM side: turn any Hugging Face causal LM into a model that reads and writes images through any of the
hf_vtok visual tokenizers.

``import hf_vtok`` registers ``VTokMLLMConfig`` with ``AutoConfig``, the model with ``AutoModel`` /
``AutoModelForCausalLM`` / ``AutoModelForImageTextToText``, the processor with ``AutoProcessor``, and the
``text-to-image`` task with ``transformers.pipeline``. The public names (each module's ``__all__``) load on first use.

Quick start::

    from hf_vtok.mllm import VTokMLLMForConditionalGeneration, VTokMLLMProcessor
    model = VTokMLLMForConditionalGeneration.from_text_model_and_tokenizer(lm, visual_tokenizer, text_tokenizer)
    processor = VTokMLLMProcessor.from_visual_tokenizer(text_tokenizer, visual_tokenizer)
"""

from typing import TYPE_CHECKING

from transformers.utils.import_utils import _LazyModule, define_import_structure

if TYPE_CHECKING:
    from .base_models import *
    from .collator_mllm import *
    from .configuration_mllm import *
    from .generation import *
    from .modeling_mllm import *
    from .pipeline_mllm import *
    from .processing_mllm import *
    from .transformers_pipelines import *
    from .vocabulary import *
else:
    import sys

    sys.modules[__name__] = _LazyModule(__name__, __file__, define_import_structure(__file__), module_spec=__spec__)
