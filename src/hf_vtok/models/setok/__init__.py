"""SeTok: density-peak clustering tokenizer with a variable number of continuous tokens per image.

The public names are those in the ``__all__`` of each module of the family, imported on first use
(``import hf_vtok`` registers the family with the Auto classes).
"""

from typing import TYPE_CHECKING

from transformers.utils.import_utils import _LazyModule, define_import_structure

if TYPE_CHECKING:
    from .clustering_setok import *
    from .configuration_setok import *
    from .image_processing_setok import *
    from .modeling_setok import *
    from .modeling_setok_decoder import *
    from .pipeline_setok import *
else:
    import sys

    sys.modules[__name__] = _LazyModule(__name__, __file__, define_import_structure(__file__), module_spec=__spec__)
