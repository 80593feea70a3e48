"""Training memory of a configuration, computed from the config (exported as ``hf_vtok.trainer.memory.estimate_memory``).

The estimate is a sum of four terms, each counted, none guessed:

* **weights** — every parameter (counted on the meta device from the config, after ``set_stage``) at the compute
  precision (2 bytes in bf16/fp16, 4 in fp32); codebooks stay float32 (``_keep_in_fp32_modules_strict``); buffers at
  their own dtype.
* **gradients** — trainable parameters only, at the compute precision.
* **optimizer** — AdamW's two moments in float32 (8 bytes) per trainable parameter, plus a float32 master copy (4
  bytes) in mixed precision: the 2 + 2 + 12 = 16 bytes per trainable parameter of the ZeRO paper's accounting.
  (``transformers.Trainer(bf16=True)`` instead keeps the weights themselves in float32 and autocasts: the same 16
  bytes per trainable parameter, and 4 instead of 2 bytes per frozen one unless the model is loaded with
  ``dtype=torch.bfloat16``.)
* **activations** — what backward needs, per transformer layer on the gradient path (frozen encoders run without
  storing anything), from the config's widths and token counts. Per token and layer, with hidden width ``h``,
  key/value width ``kv`` and feed-forward width ``f``: the two norm inputs (2h), the attention input (h), q, k, v
  (h + 2kv), the attention output (h), the MLP input (h), and the MLP's intermediate tensors (2f for GELU: pre- and
  post-activation; 4f for gated SwiGLU/GEGLU: gate, up, activation, product) — ``6h + 2kv + 2f`` or ``+ 4f``
  elements. With ``kv = h``, ``f = 4h`` and no dropout this is the 32·s·b·h bytes of Korthikanti et al. (2022) minus
  their two dropout masks. Attention probabilities are not stored (SDPA / flash attention recompute them).
  Cross-attention adds ``4h`` per query token and the keys and values (``2·kv_ctx``) per context token. UNet levels
  count 6·c·H·W per ResNet block and 26·c·H·W (+ 2·c per context token) per transformer block. Causal LMs add their
  logits (16-bit logits plus the float32 copy the cross-entropy upcasts: ``(p + 4)·s·V`` bytes). With activation
  checkpointing only each layer's input (``s·h``) is kept, plus one layer's activations during its recomputation.

Not counted: the CUDA context and allocator fragmentation (budget 1–3 GiB per GPU), temporary buffers of single
kernels, the data pipeline. Use ``hf_vtok.trainer.memory.estimate_memory(config, batch_size, precision)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from ..utils.validation import check_choice, check_int, describe

PRECISIONS = ("bf16", "fp16", "fp32")
GIB = 1024**3


@dataclass(frozen=True)
class TransformerStack:
    """``num_layers`` identical layers over ``tokens`` tokens (per sample) whose activations backward keeps."""

    name: str
    num_layers: int
    tokens: int
    hidden: int
    ffn: int
    kv_hidden: int | None = None
    gated: bool = False
    context_tokens: int = 0  # cross-attention context per sample (0: no cross-attention)
    context_hidden: int | None = None

    def elements_per_layer(self) -> int:
        """Stored activation elements of one layer for one sample (see the module docstring)."""
        h, kv = self.hidden, self.kv_hidden or self.hidden
        per_token = 6 * h + 2 * kv + (4 if self.gated else 2) * self.ffn
        elements = per_token * self.tokens
        if self.context_tokens:
            elements += 4 * h * self.tokens + 2 * (self.context_hidden or h) * self.context_tokens
        return elements

    def checkpointed_elements(self) -> int:
        """Elements kept per sample with activation checkpointing: each layer's input, plus one layer at recomputation."""
        return self.num_layers * self.tokens * self.hidden + self.elements_per_layer()


@dataclass
class MemoryEstimate:
    """Result of :func:`estimate_memory` (bytes; ``.gib(...)`` / ``summary()`` for people)."""

    precision: str
    batch_size: int
    parameters: int
    trainable_parameters: int
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    activations_per_component: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.gradients_bytes + self.optimizer_bytes + self.activations_bytes

    @property
    def states_bytes(self) -> int:
        """Weights + gradients + optimizer states (what ZeRO / FSDP shard)."""
        return self.weights_bytes + self.gradients_bytes + self.optimizer_bytes

    def gib(self, name: str = "total") -> float:
        value = self.total_bytes if name == "total" else getattr(self, f"{name}_bytes")
        return value / GIB

    def sharded(self, num_devices: int, stage: int = 3) -> float:
        """GiB per device when ZeRO stage 2 (gradients + optimizer) or 3 (+ weights) shards over ``num_devices``."""
        check_int("num_devices", num_devices, minimum=1)
        check_int("stage", stage, minimum=1, maximum=3)
        weights = self.weights_bytes / num_devices if stage == 3 else self.weights_bytes
        gradients = self.gradients_bytes / num_devices if stage >= 2 else self.gradients_bytes
        return (weights + gradients + self.optimizer_bytes / num_devices + self.activations_bytes) / GIB

    def summary(self) -> str:
        parts = [
            (
                f"{self.parameters / 1e6:,.1f} M parameters ({self.trainable_parameters / 1e6:,.1f} M trainable), "
                f"{self.precision}, batch {self.batch_size} per device:"
            ),
            (
                f"  weights {self.gib('weights'):.2f} GiB, gradients {self.gib('gradients'):.2f} GiB, "
                f"AdamW states {self.gib('optimizer'):.2f} GiB, activations {self.gib('activations'):.2f} GiB "
                f"-> total {self.gib():.2f} GiB"
            ),
        ]
        for name, value in self.activations_per_component.items():
            parts.append(f"    activations of {name}: {value / GIB:.2f} GiB")
        return "\n".join(parts)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["total_bytes"] = self.total_bytes
        return data


# ------------------------------------------------------------------------------------------- parameters
def _bytes_per_value(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def count_state_bytes(model: torch.nn.Module, precision: str) -> tuple[int, int, int, int, int]:
    """``(parameters, trainable, weights_bytes, gradients_bytes, optimizer_bytes)`` of a (meta) model."""
    value = _bytes_per_value(precision)
    parameters = trainable = weights = gradients = optimizer = 0
    seen = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in seen:  # tied weights count once
            continue
        seen.add(id(parameter))
        count = parameter.numel()
        parameters += count
        fp32 = "codebook" in name  # kept in float32 whatever the dtype
        weights += count * (4 if fp32 else value)
        if parameter.requires_grad:
            trainable += count
            gradients += count * value
            optimizer += count * (8 if precision == "fp32" else 12)
    for _, buffer in model.named_buffers():
        weights += buffer.numel() * (buffer.element_size() if buffer.is_floating_point() else 8)
    return parameters, trainable, weights, gradients, optimizer


def _meta_model(config, stage: int | None):
    """The training model of a config, built on the meta device: a tokenizer family's ``XForPreTraining``
    (the Auto class each family registers), else the MLLM / causal LM."""
    from transformers import AutoModelForCausalLM, AutoModelForPreTraining

    from ..models import TOKENIZER_CONFIG_CLASSES

    with torch.device("meta"):
        if isinstance(config, TOKENIZER_CONFIG_CLASSES):
            model = AutoModelForPreTraining.from_config(config)
            if stage is not None:
                model.set_stage(stage)
            return model
        return AutoModelForCausalLM.from_config(config)


# ------------------------------------------------------------------------------------------- activations
def _unet_elements(unet: dict, context_tokens: int) -> int:
    """Stored activation elements of a ``UNet2DConditionModel`` config for one sample (module docstring rule)."""
    size = int(unet.get("sample_size", 64))
    channels = list(unet.get("block_out_channels", [320, 640, 1280, 1280]))
    layers = int(unet.get("layers_per_block", 2))
    downs = list(unet.get("down_block_types", []))
    ups = list(unet.get("up_block_types", []))
    total = 0
    resolution = size
    for index, (kind, width) in enumerate(zip(downs, channels)):
        pixels = resolution * resolution
        total += layers * 6 * width * pixels
        if "CrossAttn" in kind:
            total += layers * (26 * width * pixels + 2 * width * context_tokens)
        if index < len(downs) - 1:
            total += width * pixels  # downsampler input
            resolution //= 2
    mid = channels[-1]
    pixels = resolution * resolution
    total += 2 * 6 * mid * pixels + 26 * mid * pixels + 2 * mid * context_tokens
    for index, (kind, width) in enumerate(zip(ups, reversed(channels))):
        pixels = resolution * resolution
        total += (layers + 1) * 8 * width * pixels  # ResNets over the skip-concatenated input (about 8·c·H·W)
        if "CrossAttn" in kind:
            total += (layers + 1) * (26 * width * pixels + 2 * width * context_tokens)
        if index < len(ups) - 1:
            resolution *= 2
            total += width * resolution * resolution  # upsampler output feeds a conv
    return total


def _slot_qformer_parts(config, stage: int, text_length: int):
    stacks, fixed = [], {}
    decoder = config.decoder_config
    conditioner = decoder["conditioner"]
    latent_scale = 8 if decoder.get("vae") else 1
    unet = dict(decoder["unet"], sample_size=decoder["image_size"] // latent_scale)
    if stage == 1:
        stacks.append(TransformerStack("Q-Former (slot queries)", config.num_hidden_layers, config.num_slots, config.hidden_size,
                                       config.intermediate_size))
        # slot attention (in place of cross-attention): keys/values of the patches once per layer, then per iteration
        # the queries, the slots x patches logits and softmax, the weighted means, the GRU (about 6 gates' worth)
        # and the residual MLP over the slots
        patches, width, heads = config.num_patches, config.hidden_size, config.slot_attention_heads
        per_layer = patches * (config.encoder_hidden_size + 2 * width)
        per_iteration = (2 * heads * config.num_slots * patches
                         + config.num_slots * (3 * width + 6 * width + width + 2 * config.slot_mlp_size))
        fixed["Q-Former slot attention"] = len(config.slot_attention_layers) * (per_layer + config.slot_iterations * per_iteration)
        if config.vision_projection:
            vision_width = config.vision_config.hidden_size
            fixed["vision projection (LayerNorm + MLP)"] = patches * (2 * vision_width + 2 * config.encoder_hidden_size)
        # the text passes twice through the shared layers: contrastive encoding and image-grounded generation
        stacks.append(TransformerStack("Q-Former text branch (2 passes)", 2 * config.num_hidden_layers, text_length,
                                       config.hidden_size, config.intermediate_size))
    else:
        stacks.append(TransformerStack("rebuild block", max(config.rebuild_num_layers, 1), config.num_slots, config.hidden_size,
                                       4 * config.hidden_size))
    if conditioner.get("num_layers", 1):
        hidden = conditioner["hidden_size"]
        stacks.append(TransformerStack("decoder conditioner", conditioner["num_layers"], config.num_slots, hidden,
                                       int(conditioner.get("mlp_ratio", 4.0) * hidden)))
    fixed["UNet (gradient path to the condition)"] = _unet_elements(unet, config.num_slots)
    return stacks, fixed


def _setok_parts(config, stage: int):
    stacks, fixed = [], {}
    vision = config.vision_config
    patch = getattr(vision, "patch_size", 14)
    patches = (getattr(vision, "image_size", 336) // patch) ** 2
    width = vision.hidden_size
    if (stage == 2 and getattr(config, "train_vision_encoder_in_stage2", False)) or not config.freeze_vision_encoder:
        stacks.append(TransformerStack("vision encoder", vision.num_hidden_layers, patches + 1, width,
                                       getattr(vision, "intermediate_size", 4 * width)))
    merger_ffn = config.merger_intermediate_size or 4 * width
    stacks.append(TransformerStack("cluster merger", config.merger_num_layers, patches, width, merger_ffn))
    decoder = config.decoder_config
    mapper = decoder["feature_mapper"]
    tokens = config.max_clusters
    stacks.append(TransformerStack("feature mapper", mapper["num_layers"], mapper["num_queries"], mapper["hidden_size"],
                                   mapper.get("intermediate_size", 4 * mapper["hidden_size"]),
                                   context_tokens=tokens, context_hidden=mapper["hidden_size"]))
    if stage == 2:
        masks = config.mask_decoder_config
        stacks.append(TransformerStack("mask decoder", masks["num_layers"], tokens, masks["hidden_size"],
                                       masks.get("intermediate_size", 4 * masks["hidden_size"]),
                                       context_tokens=patches, context_hidden=masks["hidden_size"]))
    unet = decoder["unet"]
    fixed["UNet (gradient path to the condition)"] = _unet_elements(unet, mapper["num_queries"])
    return stacks, fixed


def _ddt_parts(config, stage: int):
    stacks, fixed = [], {}
    image_tokens = (config.image_size // config.patch_size) ** 2
    if stage == 1:
        stacks.append(TransformerStack("encoder (two streams, joint attention)", config.num_hidden_layers,
                                       image_tokens + config.num_visual_tokens, config.hidden_size,
                                       int(config.mlp_ratio * config.hidden_size)))
    decoder = config.decoder_config
    latent = decoder["sample_size"] // decoder["patch_size"]
    width = decoder["num_attention_heads"] * decoder["attention_head_dim"]
    stacks.append(TransformerStack("MMDiT decoder (joint blocks)", decoder["num_layers"],
                                   latent * latent + config.num_visual_tokens, width, int(decoder["mlp_ratio"] * width)))
    return stacks, fixed


def _language_model_parts(text_config, sequence_length: int):
    hidden = text_config.hidden_size
    heads = getattr(text_config, "num_attention_heads", None) or text_config.n_head
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or hidden // heads
    ffn = getattr(text_config, "intermediate_size", None) or getattr(text_config, "n_inner", None) or 4 * hidden
    layers = getattr(text_config, "num_hidden_layers", None) or text_config.n_layer
    gated = getattr(text_config, "hidden_act", "gelu") in ("silu", "swiglu", "gelu_pytorch_tanh") and text_config.model_type != "gpt2"
    stack = TransformerStack("language model", layers, sequence_length, hidden, ffn, kv_hidden=kv_heads * head_dim, gated=gated)
    return [stack], {}


def estimate_memory(
    config,
    batch_size: int = 1,
    precision: str = "bf16",
    *,
    stage: int | None = None,
    sequence_length: int = 2048,
    text_length: int = 32,
    finetuning: str = "full",
    lora_rank: int = 64,
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    new_token_rows: int = 0,
    activation_checkpointing: bool = False,
) -> MemoryEstimate:
    """Memory of one training step per device, computed from ``config``.

    Args:
        config: a tokenizer config (``SlotQFormerConfig``, ``SeTokConfig``, ``DDTTokenizerConfig``: the family's
            ``ForPreTraining`` at ``stage``), a causal-LM config (``LlamaConfig``, ...) or a ``VTokMLLMConfig``.
        batch_size: samples per device (micro-batch).
        precision: ``"bf16"``/``"fp16"`` (mixed precision with float32 master weights and AdamW moments) or ``"fp32"``.
        stage: training stage for tokenizer configs (default: ``config.stage`` / ``config.training_stage`` / 1).
        sequence_length: tokens per sample for language models.
        text_length: caption tokens per sample (SlotQFormer stage 1's text branch).
        finetuning: language models only: ``"full"``, ``"lora"`` (adapters of ``lora_rank`` on every Linear whose name
            ends with one of ``lora_target_modules``, plus ``new_token_rows`` rows of the embedding and of an untied
            head) or ``"partial"`` (only the ``new_token_rows`` rows, and a continuous MLLM's projector/regression head).
        new_token_rows: rows added to the vocabulary that train under ``lora``/``partial``.
        activation_checkpointing: keep only each layer's input (plus one layer during recomputation).
    """
    check_choice("precision", precision, PRECISIONS)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    sequence_length = check_int("sequence_length", sequence_length, minimum=1)
    check_choice("finetuning", finetuning, ("full", "lora", "partial"))
    if not hasattr(config, "model_type"):
        raise TypeError(f"`config` must be a transformers PreTrainedConfig, got {describe(config)}.")
    model_type = config.model_type
    if stage is None:
        stage = getattr(config, "stage", None) or getattr(config, "training_stage", None) or 1
    notes = []
    model = _meta_model(config, stage)
    is_language_model = model_type not in ("slot_qformer", "setok", "ddt_tokenizer")
    value = _bytes_per_value(precision)
    if is_language_model:
        text_config = config.text_config if model_type == "vtok_mllm" else config
        # the visual tokenizer inside an MLLM is frozen and, with pre-tokenised data, never runs
        model.requires_grad_(finetuning == "full")
        visual = getattr(getattr(model, "model", None), "visual_tokenizer", None)
        if visual is not None:
            visual.requires_grad_(False)
        parameters, trainable, weights, gradients, optimizer = count_state_bytes(model, precision)
        rows_and_heads = adapters = 0  # trainable parts that are not whole LM parameters
        if finetuning in ("lora", "partial"):
            tied = bool(getattr(text_config, "tie_word_embeddings", False))
            rows_and_heads += new_token_rows * text_config.hidden_size * (1 if tied else 2)
            for name in ("projector", "regression_head"):
                module = getattr(getattr(model, "model", model), name, None) or getattr(model, name, None)
                if module is not None:
                    rows_and_heads += sum(p.numel() for p in module.parameters())
        if finetuning == "lora":
            for name, module in model.named_modules():
                if (isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in lora_target_modules
                        and ".visual_tokenizer." not in f".{name}."):
                    adapters += lora_rank * (module.in_features + module.out_features)
            notes.append(f"LoRA rank {lora_rank} on {', '.join(lora_target_modules)}: {adapters:,} adapter parameters")
        parameters += adapters
        weights += adapters * value  # the adapters themselves (the rows/heads are already part of the weights)
        trainable += adapters + rows_and_heads
        gradients += (adapters + rows_and_heads) * value
        optimizer += (adapters + rows_and_heads) * (8 if precision == "fp32" else 12)
        stacks, fixed = _language_model_parts(text_config, sequence_length)
        vocab = text_config.vocab_size
        fixed_bytes = {"logits (16-bit + float32 copy for the loss)": sequence_length * vocab * (value + 4)}
    else:
        parameters, trainable, weights, gradients, optimizer = count_state_bytes(model, precision)
        if model_type == "slot_qformer":
            stacks, fixed = _slot_qformer_parts(config, stage, text_length)
        elif model_type == "setok":
            stacks, fixed = _setok_parts(config, stage)
        else:
            stacks, fixed = _ddt_parts(config, stage)
        fixed_bytes = {}
    per_component = {}
    for stack in stacks:
        elements = stack.checkpointed_elements() if activation_checkpointing else stack.num_layers * stack.elements_per_layer()
        per_component[f"{stack.name} ({stack.num_layers} x {stack.tokens} tokens x {stack.hidden})"] = elements * value * batch_size
    for name, elements in fixed.items():
        stored = elements if not activation_checkpointing else math.ceil(elements / 4)
        per_component[name] = stored * value * batch_size
    for name, size in fixed_bytes.items():
        per_component[name] = size * batch_size
    if activation_checkpointing and fixed:
        notes.append("activation checkpointing: non-stack terms (UNet, slot attention) divided by 4")
    activations = sum(per_component.values())
    return MemoryEstimate(
        precision=precision,
        batch_size=batch_size,
        parameters=parameters,
        trainable_parameters=trainable,
        weights_bytes=weights,
        gradients_bytes=gradients,
        optimizer_bytes=optimizer,
        activations_bytes=activations,
        activations_per_component=per_component,
        notes=notes,
    )


def paper_language_model_config(name: str):
    """Configs of the papers' base LMs, written out (no download): ``"vicuna-7b"`` (Slot-MLLM, SETOKIM) or
    ``"llama-3-8b"`` (DDT-LLaMA)."""
    from transformers import LlamaConfig

    if name == "vicuna-7b":
        return LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    if name == "llama-3-8b":
        return LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0)
    raise ValueError(f"`name` must be 'vicuna-7b' or 'llama-3-8b', got {name!r}.")


__all__ = [
    "MemoryEstimate",
    "TransformerStack",
    "count_state_bytes",
    "estimate_memory",
    "paper_language_model_config",
    "paper_memory_table",
]


def paper_memory_table() -> list[dict]:
    """The per-device memory of every paper stage (the table of docs/training.md); ``python -m hf_vtok.trainer.memory``."""
    from ..mllm import VTokMLLMConfig
    from ..models.ddt import DDTTokenizerConfig
    from ..models.setok import SeTokConfig
    from ..models.slot_qformer import SlotQFormerConfig

    def mllm(base: str, visual, extra_rows: int):
        # the MLLM holds its frozen visual tokenizer (counted as weights; with pre-tokenised data it never runs)
        text = paper_language_model_config(base)
        text.vocab_size += extra_rows
        return VTokMLLMConfig(text_config=text, visual_tokenizer_config=visual)

    slot_vicuna = mllm("vicuna-7b", SlotQFormerConfig(), 8192 + 3)
    setok_vicuna = mllm("vicuna-7b", SeTokConfig(), 3)
    llama3 = mllm("llama-3-8b", DDTTokenizerConfig(), 65536 + 3)
    rows = [
        ("SlotQFormer stage 1 (448 px, unCLIP UNet at 768 px)", SlotQFormerConfig(), 128, {"stage": 1}),
        ("SlotQFormer stage 2", SlotQFormerConfig(), 128, {"stage": 2}),
        ("SeTok stage I, sub-phase 1", SeTokConfig(), 32, {"stage": 1}),
        ("SeTok stage I, sub-phase 2 (+ encoder, mask decoder)", SeTokConfig(), 32, {"stage": 2}),
        ("DDT tokenizer (256 px, MMDiT decoder)", DDTTokenizerConfig(), 32, {"stage": 1}),
        ("Slot-MLLM pre-training (Vicuna-7B, LoRA 64)", slot_vicuna, 4,
         {"sequence_length": 2048, "finetuning": "lora", "lora_rank": 64, "new_token_rows": 8195}),
        ("Slot-MLLM instruction tuning (LoRA 32)", slot_vicuna, 4,
         {"sequence_length": 2048, "finetuning": "lora", "lora_rank": 32, "new_token_rows": 8195}),
        ("SETOKIM stage II (Vicuna-7B, rows + projector)", setok_vicuna, 4,
         {"sequence_length": 2048, "finetuning": "partial", "new_token_rows": 3}),
        ("SETOKIM stage III (LoRA 128)", setok_vicuna, 4,
         {"sequence_length": 2048, "finetuning": "lora", "lora_rank": 128, "new_token_rows": 3}),
        ("DDT-LLaMA pre-training / SFT (Llama-3-8B, full)", llama3, 6, {"sequence_length": 2048}),
    ]
    table = []
    for name, config, batch, kwargs in rows:
        plain = estimate_memory(config, batch, "bf16", **kwargs)
        checkpointed = estimate_memory(config, batch, "bf16", activation_checkpointing=True, **kwargs)
        table.append({
            "stage": name, "batch": batch, "parameters": plain.parameters, "trainable": plain.trainable_parameters,
            "states_gib": plain.states_bytes / GIB, "activations_gib": plain.activations_bytes / GIB,
            "total_gib": plain.gib(), "checkpointed_gib": checkpointed.gib(),
            "zero3_8_checkpointed_gib": checkpointed.sharded(8, stage=3),
        })  # fmt: skip
    return table


def main() -> None:
    print("| stage | micro-batch | parameters | trainable | weights+grads+AdamW | activations | total | "
          "+ act. checkpointing | + ZeRO-3 over 8 GPUs |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in paper_memory_table():
        print(f"| {row['stage']} | {row['batch']} | {row['parameters'] / 1e9:.2f} B | {row['trainable'] / 1e6:,.1f} M | "
              f"{row['states_gib']:.1f} GiB | {row['activations_gib']:.1f} GiB | {row['total_gib']:.1f} GiB | "
              f"{row['checkpointed_gib']:.1f} GiB | {row['zero3_8_checkpointed_gib']:.1f} GiB |")


if __name__ == "__main__":
    main()
