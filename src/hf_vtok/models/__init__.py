"""One sub-package per tokenizer family; importing each registers it with the Auto classes."""

from . import ddt, setok, slot_qformer  # noqa: F401
