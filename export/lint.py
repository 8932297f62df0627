"""TensorRT-friendliness lint for exported ONNX graphs.

Finds, before any TensorRT build, what TensorRT 10's ONNX parser rejects or handles
badly, each finding naming the node:

- operators it does not support (or custom-domain ops), and supported operators fed a
  data type it does not accept;
- inputs that must be build-time constants but are computed (TopK ``K``, OneHot
  ``depth``, reduction/squeeze/slice/pad axes), and Tile with computed repeats: the INT64
  shape-tensor pattern that ``repeat_interleave`` exports (OneHot + Tile on shapes);
- shape tensors (Reshape/Expand/Slice/... shape inputs) computed from the *values* of
  a network input, and operators whose output size depends on values (NonZero):
  dynamic dims without a bound;
- graph inputs whose dynamic dims are unnamed or have no declared range.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import onnx

from .errors import ExportError
from .trt_ops import OPSET_RANGE, SUPPORTED_TYPES

DEFAULT_DOMAINS = ("", "ai.onnx")
MAX_TOPK = 3840
# Inputs that must be build-time constants (TensorRT reads them while building).
CONSTANT_INPUTS = {
    "TopK": {1: "K"},
    "OneHot": {1: "depth"},
    "CumSum": {1: "axis"},
    "Squeeze": {1: "axes"},
    "Unsqueeze": {1: "axes"},
    "Slice": {3: "axes"},
    "Pad": {3: "axes"},
    **{op: {1: "axes"} for op in SUPPORTED_TYPES if op.startswith("Reduce")},
}
# Inputs TensorRT treats as shape tensors: computable from input shapes, never from values.
SHAPE_INPUTS = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2),
    "Slice": (1, 2, 3, 4), "Pad": (1,), "Resize": (2, 3), "Upsample": (1,), "Split": (1,),
}
VALUE_SIZED_OUTPUTS = ("NonZero", "NonMaxSuppression")  # output length depends on the values
TYPED_INPUT = {"Where": 1}  # the input whose type the support table lists (default 0)
UNTYPED = ("ConstantOfShape", "Constant", "EyeLike", "RandomNormal", "RandomUniform")
SHAPE_ONLY = ("Shape", "Size")  # read only the shape of their input
_DTYPE_NAMES = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.BOOL: "bool",
}
REPEAT_INTERLEAVE_HINT = (
    "the INT64 shape-tensor pattern torch's repeat_interleave exports; write it with broadcasting (expand) instead"
)


@dataclass(frozen=True)
class Finding:
    """One problem: the node (or graph input) it is about, its op, a rule id and what is wrong."""

    node: str
    op: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op}) [{self.rule}]: {self.message}"


class LintError(ExportError):
    """An exported graph has TensorRT-unfriendly constructs; lists every finding."""

    def __init__(self, source: str, findings: list[Finding]):
        self.findings = findings
        lines = "\n".join(f"  - {f}" for f in findings)
        super().__init__(f"{source}: {len(findings)} TensorRT lint finding(s):\n{lines}")


def check_model(model: onnx.ModelProto, source: str, dims: Iterable[str] = (), allow: Iterable[str] = ()) -> None:
    """Raise LintError listing every finding of :func:`lint_model`."""
    findings = lint_model(model, dims, allow)
    if findings:
        raise LintError(source, findings)


def lint_model(model: onnx.ModelProto, dims: Iterable[str] = (), allow: Iterable[str] = ()) -> list[Finding]:
    """All findings for ``model``; ``dims`` are the declared (bounded) dynamic dim names,
    ``allow`` operator types to accept although the support table lacks them."""
    graph = _Graph(model)
    findings = _opset_findings(model)
    findings += _input_findings(model.graph, graph.initializers, set(dims))
    for index, node in enumerate(model.graph.node):
        findings += _node_findings(node, _label(node, index), graph, frozenset(allow))
        findings += _subgraph_findings(node, frozenset(allow))
    return findings


class _Graph:
    """Types, constness and value provenance of every tensor of a graph (one forward pass)."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.initializers = {t.name for t in g.initializer}
        inferred = _infer(model).graph
        infos = [*inferred.input, *inferred.value_info, *inferred.output]
        self.types = {i.name: dtype_name(i.type.tensor_type.elem_type) for i in infos if i.type.HasField("tensor_type")}
        self.types.update({t.name: dtype_name(t.data_type) for t in g.initializer})
        static = {i.name for i in infos if _is_static(i)} | self.initializers
        inputs = [i.name for i in g.input if i.name not in self.initializers]
        self.constant: set[str] = set(self.initializers)
        self.sources: dict[str, frozenset[str]] = {n: frozenset((n,)) for n in inputs}
        self.values: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self.onehots: dict[str, frozenset[str]] = {}  # OneHot nodes whose output flows into each tensor
        for index, node in enumerate(g.node):
            if node.op_type == "Constant":
                self.values.update({o: a.t for o in node.output for a in node.attribute if a.name == "value"})
            outs = [o for o in node.output if o]
            ins = [i for i in node.input if i]
            if node.op_type in SHAPE_ONLY:
                sources, onehots, const = frozenset(), frozenset(), all(i in static for i in ins)
            else:
                sources = frozenset().union(*(self.sources.get(i, frozenset()) for i in ins))
                onehots = frozenset().union(*(self.onehots.get(i, frozenset()) for i in ins))
                const = not node.op_type.startswith("Random") and all(i in self.constant for i in ins)
            if node.op_type == "OneHot":
                onehots |= {_label(node, index)}
            for o in outs:
                self.sources[o] = sources
                self.onehots[o] = onehots
                if const:
                    self.constant.add(o)


def _node_findings(node: onnx.NodeProto, label: str, graph: _Graph, allow: frozenset[str]) -> list[Finding]:
    op = node.op_type
    if node.domain not in DEFAULT_DOMAINS:
        return [Finding(label, op, "unsupported-op", f"custom operator of domain {node.domain!r}; TensorRT's parser has no importer for it")]
    if op not in SUPPORTED_TYPES:
        if op in allow:
            return []
        return [Finding(label, op, "unsupported-op", f"{op} is not supported by TensorRT 10's ONNX parser")]
    out = []
    typed = TYPED_INPUT.get(op, 0)
    if op not in UNTYPED and len(node.input) > typed and node.input[typed]:
        dtype = graph.types.get(node.input[typed])
        if dtype is not None and dtype not in SUPPORTED_TYPES[op]:
            out.append(Finding(label, op, "dtype", f"input {node.input[typed]!r} is {dtype}; TensorRT supports {op} on {sorted(SUPPORTED_TYPES[op])}"))
    for index, role in CONSTANT_INPUTS.get(op, {}).items():
        if len(node.input) > index and node.input[index] and node.input[index] not in graph.constant:
            hint = f" ({REPEAT_INTERLEAVE_HINT})" if op == "OneHot" else ""
            out.append(Finding(label, op, "not-constant", f"input {index} ({role}) must be a build-time constant for TensorRT but is computed at run time{hint}"))
    if op == "Tile" and len(node.input) > 1 and node.input[1] not in graph.constant:
        out.append(Finding(label, op, "shape-tensor", f"repeats are computed from run-time shapes: {REPEAT_INTERLEAVE_HINT}"))
    if op == "TopK":
        out += _topk_findings(node, label, graph)
    for index in SHAPE_INPUTS.get(op, ()):
        if len(node.input) > index and node.input[index]:
            data = graph.sources.get(node.input[index], frozenset())
            if data:
                out.append(Finding(label, op, "data-dependent-shape",
                                   f"shape input {index} is computed from the values of network input(s) {sorted(data)}; "
                                   "TensorRT shape tensors may depend only on input shapes"))
            for onehot in sorted(graph.onehots.get(node.input[index], ())):
                out.append(Finding(onehot, "OneHot", "shape-tensor", f"its output feeds shape input {index} of {label}: {REPEAT_INTERLEAVE_HINT}"))
    if op in VALUE_SIZED_OUTPUTS:
        out.append(Finding(label, op, "unbounded-dim", "output size depends on the input values (unbounded dynamic dim)"))
    return out


def _topk_findings(node: onnx.NodeProto, label: str, graph: _Graph) -> list[Finding]:
    out = []
    if any(a.name == "sorted" and a.i == 0 for a in node.attribute):
        out.append(Finding(label, "TopK", "attribute", "sorted=0; TensorRT requires sorted=1"))
    k = graph.values.get(node.input[1]) if len(node.input) > 1 else None
    if k is not None and int(onnx.numpy_helper.to_array(k).reshape(-1)[0]) >= MAX_TOPK:
        out.append(Finding(label, "TopK", "attribute", f"K >= {MAX_TOPK}, TensorRT's TopK limit"))
    return out


def _subgraph_findings(node: onnx.NodeProto, allow: frozenset[str]) -> list[Finding]:
    """Unsupported operators inside Loop/If/Scan bodies (TensorRT imports those too)."""
    out = []
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            for index, inner in enumerate(sub.node):
                label = f"{_label(node, 0)} > {_label(inner, index)}"
                if inner.domain not in DEFAULT_DOMAINS or (inner.op_type not in SUPPORTED_TYPES and inner.op_type not in allow):
                    out.append(Finding(label, inner.op_type, "unsupported-op", f"{inner.op_type} is not supported by TensorRT 10's ONNX parser"))
                out += _subgraph_findings(inner, allow)
    return out


def _opset_findings(model: onnx.ModelProto) -> list[Finding]:
    lo, hi = OPSET_RANGE
    return [
        Finding("graph", "opset", "opset", f"default-domain opset {o.version}; TensorRT 10's parser imports opsets {lo}..{hi}")
        for o in model.opset_import
        if o.domain in DEFAULT_DOMAINS and not lo <= o.version <= hi
    ]


def _input_findings(g: onnx.GraphProto, initializers: set[str], declared: set[str]) -> list[Finding]:
    out, used = [], set()
    for inp in g.input:
        if inp.name in initializers:
            continue
        for axis, d in enumerate(inp.type.tensor_type.shape.dim):
            if d.dim_param:
                used.add(d.dim_param)
                if d.dim_param not in declared:
                    out.append(Finding(inp.name, "input", "unbounded-dim", f"axis {axis} is dynamic ({d.dim_param!r}) without a declared range; declared: {sorted(declared)}"))
            elif d.dim_value <= 0:
                out.append(Finding(inp.name, "input", "unbounded-dim", f"axis {axis} has no size and no name"))
    for name in sorted(declared - used):
        out.append(Finding(name, "dim", "unbounded-dim", "declared dynamic dim is not a dynamic axis of any graph input (exported as static?)"))
    return out


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape/type inference; on failure the graph's own annotations are used."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except (onnx.shape_inference.InferenceError, ValueError):
        return model


def _is_static(info: onnx.ValueInfoProto) -> bool:
    t = info.type.tensor_type
    return t.HasField("shape") and all(d.dim_value > 0 and not d.dim_param for d in t.shape.dim)


def dtype_name(elem_type: int) -> str | None:
    """numpy-style name of an ONNX element type (``float32``, ``int64``, ...); None if undefined."""
    if elem_type == onnx.TensorProto.UNDEFINED:
        return None
    return _DTYPE_NAMES.get(elem_type) or onnx.TensorProto.DataType.Name(elem_type).lower()


def _label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}#{index} -> {list(node.output)}"
