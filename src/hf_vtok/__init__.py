"""hf_vtok: Hugging Face-native visual tokenizers for multimodal LLMs.

Importing the package registers every config, model, image processor and processor with the transformers Auto
classes, the ``text-to-image`` task with ``transformers.pipeline`` and the pipelines with ``diffusers``, so that saved
folders load with ``AutoModel`` / ``AutoImageProcessor`` / ``AutoProcessor`` / ``DiffusionPipeline.from_pretrained``
without ``trust_remote_code``.

Importing is fast and loads neither torch nor transformers: public names are imported on first use, and the
registrations wait until transformers / diffusers are imported and a lookup asks for one of our names
(:mod:`hf_vtok.utils.import_utils`).
"""

import importlib
from functools import partial

from .utils.import_utils import DeferredEntries, when_imported

__version__ = "0.1.0"

# public name -> the module (under hf_vtok) that defines it
_PUBLIC_MODULES = {
    "mllm": ("VTokImageEditingPipeline", "VTokMLLMConfig", "VTokMLLMForConditionalGeneration", "VTokMLLMModel",
             "VTokMLLMProcessor", "VTokTextToImagePipeline", "add_visual_tokens"),
    "models.ddt": ("DDTDecoderPipeline", "DDTDecoderTransformer", "DDTImageProcessor", "DDTImageProcessorPil",
                   "DDTTokenConditioner", "DDTTokenizerConfig", "DDTTokenizerForPreTraining", "DDTTokenizerModel"),
    "models.setok": ("SeTokConfig", "SeTokDecoderPipeline", "SeTokFeatureMapper", "SeTokForPreTraining",
                     "SeTokImageProcessor", "SeTokImageProcessorPil", "SeTokModel"),
    "models.slot_qformer": ("SlotQFormerConfig", "SlotQFormerDecoderConditioner", "SlotQFormerDecoderPipeline",
                            "SlotQFormerForPreTraining", "SlotQFormerImageProcessor", "SlotQFormerImageProcessorPil",
                            "SlotQFormerModel"),
    "utils.modeling_utils": ("VisualTokenizerMixin", "VisualTokens"),
    "utils.quantizers": ("Codebook", "QuantizerOutput", "ResidualVectorQuantizer", "VectorQuantizer"),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _PUBLIC_MODULES.items() for name in names}
__all__ = sorted([*_MODULE_OF, "register_pipelines_with_diffusers"])


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__():
    return sorted({*globals(), *__all__})


# ---- what importing hf_vtok registers (by name; see the module docstring) ----

_MODEL_TYPES = {"slot_qformer": "SlotQFormerConfig", "setok": "SeTokConfig", "ddt_tokenizer": "DDTTokenizerConfig",
                "vtok_mllm": "VTokMLLMConfig"}  # fmt: skip
_AUTO_MODELS = {  # Auto class -> {config: model}
    "AutoModel": {"SlotQFormerConfig": "SlotQFormerModel", "SeTokConfig": "SeTokModel",
                  "DDTTokenizerConfig": "DDTTokenizerModel", "VTokMLLMConfig": "VTokMLLMModel"},
    "AutoModelForPreTraining": {"SlotQFormerConfig": "SlotQFormerForPreTraining", "SeTokConfig": "SeTokForPreTraining",
                                "DDTTokenizerConfig": "DDTTokenizerForPreTraining"},
    "AutoModelForCausalLM": {"VTokMLLMConfig": "VTokMLLMForConditionalGeneration"},
    "AutoModelForImageTextToText": {"VTokMLLMConfig": "VTokMLLMForConditionalGeneration"},
}  # fmt: skip
# config -> image processor; its ``...Pil`` subclass is the PIL backend, which Auto picks without torchvision
_AUTO_IMAGE_PROCESSORS = {"SlotQFormerConfig": "SlotQFormerImageProcessor", "SeTokConfig": "SeTokImageProcessor",
                          "DDTTokenizerConfig": "DDTImageProcessor"}  # fmt: skip
_DIFFUSERS_PIPELINES = ("SlotQFormerDecoderPipeline", "SeTokDecoderPipeline", "DDTDecoderPipeline",
                        "VTokTextToImagePipeline", "VTokImageEditingPipeline")  # fmt: skip


def _defer(owner, attribute: str, pending: dict) -> None:
    setattr(owner, attribute, DeferredEntries(getattr(owner, attribute), pending, owner=__name__))


def _register_configs(configuration_auto) -> None:
    def register(model_type):
        configuration_auto.AutoConfig.register(model_type, __getattr__(_MODEL_TYPES[model_type]), exist_ok=True)

    _defer(configuration_auto.CONFIG_MAPPING, "_extra_content", {model_type: partial(register, model_type) for model_type in _MODEL_TYPES})


def _register_models(modeling_auto) -> None:
    def register(auto_class, config, model):
        auto_class.register(__getattr__(config), __getattr__(model), exist_ok=True)

    for auto_name, models in _AUTO_MODELS.items():
        auto_class = getattr(modeling_auto, auto_name)
        pending = {config: partial(register, auto_class, config, model) for config, model in models.items()}
        _defer(auto_class._model_mapping, "_extra_content", pending)


def _register_image_processors(image_processing_auto) -> None:
    def register(config, processor):
        backends = {"pil": __getattr__(f"{processor}Pil"), "torch": __getattr__(processor)}
        image_processing_auto.AutoImageProcessor.register(__getattr__(config), image_processor_classes=backends, exist_ok=True)

    pending = {config: partial(register, config, processor) for config, processor in _AUTO_IMAGE_PROCESSORS.items()}
    _defer(image_processing_auto.IMAGE_PROCESSOR_MAPPING, "_extra_content", pending)


def _register_processor(processing_auto) -> None:
    def register():
        processing_auto.AutoProcessor.register(__getattr__("VTokMLLMConfig"), __getattr__("VTokMLLMProcessor"), exist_ok=True)

    _defer(processing_auto.PROCESSOR_MAPPING, "_extra_content", {"VTokMLLMConfig": register})


def _register_text_to_image_task(pipelines) -> None:
    def register():
        importlib.import_module(f"{__name__}.mllm.transformers_pipelines").register_pipelines()

    _defer(pipelines.PIPELINE_REGISTRY, "supported_tasks", {"text-to-image": register})


def _import_pipeline_components() -> None:
    """Import every module a saved hf_vtok pipeline may name as a component's library (the families' modules, the
    MLLM's model and processor, the TAEF2 autoencoder): diffusers loads a component only from an imported module."""
    import pkgutil

    models = importlib.import_module(f"{__name__}.models")
    names = [module.name for module in pkgutil.walk_packages(models.__path__, prefix=f"{models.__name__}.")]
    names += [f"{__name__}.mllm.{name}" for name in ("modeling_mllm", "processing_mllm", "pipeline_mllm")]
    for name in [*names, f"{__name__}.utils.autoencoder_taef2"]:
        importlib.import_module(name)


def _register_with_diffusers(diffusers) -> None:
    # ``DiffusionPipeline.from_pretrained`` finds the ``_class_name`` of model_index.json as ``diffusers.<name>``; the
    # lazy diffusers module answers from ``_objects`` first. A name diffusers defines itself is never shadowed.
    def register(name):
        _import_pipeline_components()
        diffusers._objects[name] = __getattr__(name)

    names = [name for name in _DIFFUSERS_PIPELINES if name not in diffusers._class_to_module]
    _defer(diffusers, "_objects", {name: partial(register, name) for name in names})


def register_pipelines_with_diffusers() -> None:
    """Set hf_vtok's pipeline classes as ``diffusers.<ClassName>`` now (idempotent; ``import hf_vtok`` already
    makes them resolve on first use). Refuses to shadow a name that diffusers defines with another class."""
    import diffusers

    _import_pipeline_components()
    for name in _DIFFUSERS_PIPELINES:
        cls = __getattr__(name)
        existing = diffusers.__dict__.get(name)
        if existing is not None and existing is not cls and not getattr(existing, "__module__", "").startswith(__name__):
            raise ValueError(f"`diffusers.{name}` already names {existing!r}; hf_vtok will not shadow a diffusers class.")
        setattr(diffusers, name, cls)


for _module, _register in (
    ("transformers.models.auto.configuration_auto", _register_configs),
    ("transformers.models.auto.modeling_auto", _register_models),
    ("transformers.models.auto.image_processing_auto", _register_image_processors),
    ("transformers.models.auto.processing_auto", _register_processor),
    ("transformers.pipelines", _register_text_to_image_task),
    ("diffusers", _register_with_diffusers),
):
    when_imported(_module, _register)
del _module, _register
