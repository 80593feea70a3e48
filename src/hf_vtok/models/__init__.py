"""One sub-package per tokenizer family (``import hf_vtok`` registers each with the Auto classes)."""

import importlib

FAMILIES = ("slot_qformer", "setok", "ddt")


def __getattr__(name: str):
    # the families and their configs load on first use (see hf_vtok/__init__.py)
    if name in FAMILIES:
        return importlib.import_module(f".{name}", __name__)
    if name == "TOKENIZER_CONFIG_CLASSES":  # what the trainer, the memory estimate and the hub check against
        from .ddt import DDTTokenizerConfig
        from .setok import SeTokConfig
        from .slot_qformer import SlotQFormerConfig

        return (SlotQFormerConfig, SeTokConfig, DDTTokenizerConfig)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
