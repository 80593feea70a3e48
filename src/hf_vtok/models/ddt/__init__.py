"""DDT tokenizer family: Discrete Diffusion Timestep tokens (Pan et al.) with an MMDiT decoder pipeline.

Importing this package registers the config, models and image processors with the transformers Auto
classes (idempotent). Every module lists its public names in ``__all__``.
"""

import sys

from ...utils.modeling_utils import register_tokenizer_family
from .analysis_ddt import *
from .configuration_ddt import *
from .image_processing_ddt import *
from .modeling_ddt import *
from .modeling_ddt_decoder import *
from .pipeline_ddt import *

register_tokenizer_family(
    DDTTokenizerConfig, DDTTokenizerModel, DDTTokenizerForPreTraining, {"pil": DDTImageProcessorPil, "torch": DDTImageProcessor}
)

# the public names of every module of the family
__all__ = [name for module in ("analysis_ddt", "configuration_ddt", "image_processing_ddt", "modeling_ddt", "modeling_ddt_decoder", "pipeline_ddt") for name in sys.modules[f"{__name__}.{module}"].__all__]
