"""DDT tokenizer family: Discrete Diffusion Timestep tokens (Pan et al.) with an MMDiT decoder pipeline.

The public names are those in the ``__all__`` of each module of the family, imported on first use
(``import hf_vtok`` registers the family with the Auto classes).
"""

from typing import TYPE_CHECKING

from transformers.utils.import_utils import _LazyModule, define_import_structure

if TYPE_CHECKING:
    from .analysis_ddt import *
    from .configuration_ddt import *
    from .image_processing_ddt import *
    from .modeling_ddt import *
    from .modeling_ddt_decoder import *
    from .pipeline_ddt import *
else:
    import sys

    sys.modules[__name__] = _LazyModule(__name__, __file__, define_import_structure(__file__), module_spec=__spec__)
