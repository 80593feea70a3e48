"""SeTok: density-peak clustering tokenizer with a variable number of continuous tokens per image.

Importing this package registers the config, models and image processors with the transformers Auto
classes (idempotent). Every module lists its public names in ``__all__``.
"""

import sys

from ...utils.modeling_utils import register_tokenizer_family
from .clustering_setok import *
from .configuration_setok import *
from .image_processing_setok import *
from .modeling_setok import *
from .modeling_setok_decoder import *
from .pipeline_setok import *

register_tokenizer_family(
    SeTokConfig, SeTokModel, SeTokForPreTraining, {"pil": SeTokImageProcessorPil, "torch": SeTokImageProcessor}
)

# the public names of every module of the family
__all__ = [name for module in ("clustering_setok", "configuration_setok", "image_processing_setok", "modeling_setok", "modeling_setok_decoder", "pipeline_setok") for name in sys.modules[f"{__name__}.{module}"].__all__]
