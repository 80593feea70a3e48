"""Datasets: the built-in shapes world (public names: :data:`hf_vtok.data.shapes.__all__`)."""

from .shapes import *
from .shapes import __all__ as __all__
