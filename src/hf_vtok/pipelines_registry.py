"""Make hf_vtok's pipelines loadable through the generic ``diffusers.DiffusionPipeline.from_pretrained``.

``DiffusionPipeline.from_pretrained(folder)`` reads ``_class_name`` from the folder's ``model_index.json`` and
looks the class up as an attribute of the ``diffusers`` module (``getattr(diffusers, class_name)``); anything
else is treated as remote code and needs ``trust_remote_code=True``. Setting our pipeline classes as
attributes of ``diffusers`` (what :func:`register_pipelines_with_diffusers` does, idempotently, on
``import hf_vtok``) lets saved tokenizer decoders and MLLM pipelines load with the generic entry point and
no remote code. The components inside the folder (the tokenizer, the conditioners) are recorded by diffusers
under the library name ``hf_vtok`` and resolved by importing this package, so they need nothing more.
"""

from __future__ import annotations

import importlib

# (module, class) of every DiffusionPipeline subclass hf_vtok ships
PIPELINE_CLASSES: tuple[tuple[str, str], ...] = (
    ("hf_vtok.models.slot_qformer", "SlotQFormerDecoderPipeline"),
    ("hf_vtok.models.setok", "SeTokDecoderPipeline"),
    ("hf_vtok.models.ddt", "DDTDecoderPipeline"),
    ("hf_vtok.mllm", "VTokTextToImagePipeline"),
    ("hf_vtok.mllm", "VTokImageEditingPipeline"),
)


def register_pipelines_with_diffusers() -> dict[str, type]:
    """Expose hf_vtok's pipeline classes as ``diffusers.<ClassName>`` (idempotent).

    Returns the mapping ``{class name: class}`` that was registered. A name that diffusers itself already
    defines with another class is never overwritten (a ``ValueError`` says which).
    """
    import diffusers

    registered = {}
    for module_name, class_name in PIPELINE_CLASSES:
        cls = getattr(importlib.import_module(module_name), class_name)
        existing = diffusers.__dict__.get(class_name)
        if existing is not None and existing is not cls:
            if getattr(existing, "__module__", "").startswith("hf_vtok"):
                pass  # an older definition of ours (module reloaded): replace it
            else:
                raise ValueError(
                    f"`diffusers.{class_name}` already names {existing!r}; hf_vtok will not shadow a diffusers class."
                )
        setattr(diffusers, class_name, cls)
        registered[class_name] = cls
    return registered


__all__ = ["PIPELINE_CLASSES", "register_pipelines_with_diffusers"]
