"""Evaluation: reconstruction, object-discovery, perceptual and CLIP metrics, the papers' token analyses, the
MLLM's shapes-world scores, and ``hf-vtok eval`` with its baselines and gates (see docs/evaluation.md).

The perceptual/CLIP metrics, the analyses and the MLLM scores import their heavier dependencies lazily. The public
names are each module's ``__all__``; the picture helpers stay in :mod:`hf_vtok.evaluation.visualization`.
"""

from . import analysis, baselines, metrics, mllm, perceptual, quality, report, tokenizers
from .analysis import *
from .baselines import *
from .metrics import *
from .mllm import *
from .perceptual import *
from .quality import *
from .report import *
from .tokenizers import *

__all__ = analysis.__all__ + baselines.__all__ + metrics.__all__ + mllm.__all__ + perceptual.__all__ + quality.__all__ + report.__all__ + tokenizers.__all__
