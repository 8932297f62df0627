"""TensorRT lint: graphs with constructs TensorRT rejects fail with a finding naming the node."""

from __future__ import annotations

import warnings

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from visa_edge.export.lint import LintError, check_model, lint_model


def exported(module: torch.nn.Module, args: tuple, names: list[str], axes: dict, tmp_path) -> onnx.ModelProto:
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=names, output_names=["out"], opset_version=17,
                          dynamo=False, dynamic_axes=axes)
    return onnx.load(str(path))


def graph(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def tensor(name, dtype=TensorProto.FLOAT, shape=(2, 3)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def rules(findings) -> set[tuple[str, str]]:
    return {(f.node, f.rule) for f in findings}


class RepeatInterleave(torch.nn.Module):
    """What SAM's original mask decoder does: repeat the image per query (dynamic count)."""

    def forward(self, image, queries):
        return torch.repeat_interleave(image, queries.shape[0], dim=0) + queries[:, :, None, None]


class Broadcast(torch.nn.Module):
    """The same computation written with broadcasting, as runtime/sam.py does."""

    def forward(self, image, queries):
        return image.expand(queries.shape[0], -1, -1, -1) + queries[:, :, None, None]


def test_repeat_interleave_pattern_is_rejected_naming_the_nodes(tmp_path):
    args = (torch.randn(1, 4, 8, 8), torch.randn(3, 4))
    model = exported(RepeatInterleave(), args, ["image", "queries"], {"queries": {0: "q"}}, tmp_path)
    with pytest.raises(LintError) as err:
        check_model(model, "decoder.onnx", dims=["q"])
    assert {("/Tile", "shape-tensor"), ("/OneHot", "shape-tensor")} <= rules(err.value.findings)
    assert "decoder.onnx: 2 TensorRT lint finding(s)" in str(err.value)
    assert "/OneHot (OneHot) [shape-tensor]: its output feeds shape input 1 of /Tile" in str(err.value)


def test_broadcasting_version_passes(tmp_path):
    args = (torch.randn(1, 4, 8, 8), torch.randn(3, 4))
    model = exported(Broadcast(), args, ["image", "queries"], {"queries": {0: "q"}}, tmp_path)
    assert lint_model(model, dims=["q"]) == []


def test_unsupported_and_custom_ops_are_named():
    nodes = [helper.make_node("Unique", ["x"], ["u"], name="dedupe"),
             helper.make_node("FastGelu", ["x"], ["y"], name="fused_gelu", domain="com.microsoft")]
    model = graph(nodes, [tensor("x")], [tensor("u"), tensor("y")])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    findings = lint_model(model)
    assert rules(findings) == {("dedupe", "unsupported-op"), ("fused_gelu", "unsupported-op")}
    assert "Unique is not supported by TensorRT 10's ONNX parser" in str(findings[0])
    assert lint_model(graph(nodes[:1], [tensor("x")], [tensor("u")]), allow=["Unique"]) == []


def test_unsupported_dtype_is_named():
    nodes = [helper.make_node("Greater", ["x", "x"], ["b"], name="gt"), helper.make_node("NonZero", ["b"], ["nz"], name="where_positive")]
    model = graph(nodes, [tensor("x")], [helper.make_tensor_value_info("nz", TensorProto.INT64, None)])
    findings = {(f.node, f.rule): f.message for f in lint_model(model)}
    assert findings[("where_positive", "dtype")] == "input 'b' is bool; TensorRT supports NonZero on ['float16', 'float32']"
    assert ("where_positive", "unbounded-dim") in findings


def test_shape_computed_from_input_values_is_rejected():
    nodes = [helper.make_node("Cast", ["n"], ["shape"], to=TensorProto.INT64, name="to_int"),
             helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape_by_value")]
    model = graph(nodes, [tensor("x"), tensor("n", TensorProto.FLOAT, (2,))], [tensor("y", shape=(3, 2))])
    (finding,) = lint_model(model)
    assert (finding.node, finding.rule) == ("reshape_by_value", "data-dependent-shape")
    assert "network input(s) ['n']" in finding.message


def test_topk_needs_a_constant_k():
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Slice", ["s", "zero", "one"], ["k"], name="first_dim"),
             helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=0, name="topk_dynamic")]
    x = tensor("x", shape=("n", 3))
    consts = [helper.make_tensor("zero", TensorProto.INT64, [1], [0]), helper.make_tensor("one", TensorProto.INT64, [1], [1])]
    model = graph(nodes, [x], [tensor("v", shape=("n", 3)), tensor("i", TensorProto.INT64, ("n", 3))], consts)
    assert rules(lint_model(model, dims=["n"])) == {("topk_dynamic", "not-constant")}
    static = graph(nodes, [tensor("x", shape=(4, 3))], [tensor("v"), tensor("i", TensorProto.INT64)], consts)
    assert lint_model(static) == []  # K from the shape of a static tensor is a build-time constant


def test_dynamic_dims_must_be_named_and_bounded():
    model = graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], [tensor("x", shape=("batch", 0))], [tensor("y")])
    findings = {(f.node, f.rule, f.message) for f in lint_model(model, dims=["queries"])}
    assert ("x", "unbounded-dim", "axis 0 is dynamic ('batch') without a declared range; declared: ['queries']") in findings
    assert ("x", "unbounded-dim", "axis 1 has no size and no name") in findings
    assert any(f[0] == "queries" for f in findings)  # declared but not a dynamic axis of any input


def test_opset_outside_tensorrt_range():
    model = graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], [tensor("x")], [tensor("y")], opset=8)
    assert rules(lint_model(model)) == {("graph", "opset")}
