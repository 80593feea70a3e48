"""One sub-package per tokenizer family; importing each registers it with the Auto classes."""

from . import ddt, setok, slot_qformer

# The configs of the tokenizer families (what the trainer, the memory estimate and the hub check against)
TOKENIZER_CONFIG_CLASSES = (slot_qformer.SlotQFormerConfig, setok.SeTokConfig, ddt.DDTTokenizerConfig)
