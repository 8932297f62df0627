"""torch -> ONNX for one network, with named dynamic axes and a recorded signature.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. With torch 2.13
the dynamo exporter ignores ``opset_version=17`` when its down-conversion fails (it
keeps opset 18 and only logs the error) and takes several times longer; the TorchScript
exporter emits exactly the requested opset, names dynamic axes through
``dynamic_axes``, and its graphs (shape arithmetic as Shape/Gather/Concat chains) are
what TensorRT's parser is tested most on. Graphs over protobuf's 2 GB limit (SAM ViT-H
in fp32) store their weights in one ``<name>.onnx.data`` file.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from visa_edge.runtime.backends.manifest import TensorRecord

from .errors import ExportError
from .lint import dtype_name
from .registry import ExportNetwork

DEFAULT_OPSET = 17  # LayerNormalization (TensorRT's INormalizationLayer) needs 17
OPSETS = range(17, 21)  # up to the newest opset TensorRT 10's parser imports
INLINE_LIMIT = 2**31 - 2**24  # protobuf's 2 GB limit, with margin for the graph itself


@dataclass
class OnnxExport:
    """An exported graph: its file(s), signature and the torch outputs it must reproduce."""

    path: Path
    data_path: Path | None
    inputs: tuple[TensorRecord, ...]
    outputs: tuple[TensorRecord, ...]
    reference: dict[str, torch.Tensor]


def torch_outputs(net: ExportNetwork, inputs: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The PyTorch module's outputs by name on ``inputs`` (default: the example inputs)."""
    inputs = net.example_inputs if inputs is None else inputs
    with torch.no_grad():
        out = net.module.eval()(*(inputs[n] for n in net.spec.inputs))
    out = out if isinstance(out, tuple) else (out,)
    return dict(zip(net.spec.outputs, out))


def export_onnx(net: ExportNetwork, out_dir: Path, opset: int = DEFAULT_OPSET, inline_limit: int = INLINE_LIMIT) -> OnnxExport:
    """Export ``net`` to ``out_dir/<name>.onnx`` and check it with ``onnx.checker``."""
    if opset not in OPSETS:
        raise ExportError(f"opset {opset}: expected {OPSETS.start}..{OPSETS.stop - 1}")
    reference = torch_outputs(net)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{net.name}-") as tmp:
        raw = Path(tmp) / f"{net.name}.onnx"
        _trace(net, raw, opset)
        model = onnx.load(str(raw))
    set_output_shapes(model, net, reference)
    path = out_dir / f"{net.name}.onnx"
    data_path = save_onnx(model, path, inline_limit)
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path}: the exported graph is not valid ONNX ({e})") from e
    return OnnxExport(path, data_path, graph_tensors(model.graph.input), graph_tensors(model.graph.output), reference)


def _trace(net: ExportNetwork, path: Path, opset: int) -> None:
    args = tuple(net.example_inputs[n] for n in net.spec.inputs)
    axes = {name: dict(ax) for name, ax in net.spec.axes.items()}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Tracer warnings about Python values derived from static shapes are expected;
            # a real dynamic-shape problem shows up in the parity checks at other sizes.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net.module.eval(),
                args,
                str(path),
                input_names=list(net.spec.inputs),
                output_names=list(net.spec.outputs),
                opset_version=opset,
                dynamo=False,
                dynamic_axes=axes or None,
                do_constant_folding=True,
            )
    except Exception as e:  # the exporter raises many types; report which network failed
        raise ExportError(f"{net.name}: torch.onnx.export failed ({type(e).__name__}: {e})") from e


def set_output_shapes(model: onnx.ModelProto, net: ExportNetwork, reference: Mapping[str, torch.Tensor]) -> None:
    """Annotate graph outputs with their sizes: declared dynamic axes by name, others as traced.

    The exporter's shape inference leaves many output dims as generated names even when
    they are static; the manifest and consumers need the real signature.
    """
    for out in model.graph.output:
        axes = net.spec.axes.get(out.name, {})
        shape = out.type.tensor_type.shape
        del shape.dim[:]
        for axis, size in enumerate(reference[out.name].shape):
            dim = shape.dim.add()
            if axis in axes:
                dim.dim_param = axes[axis]
            else:
                dim.dim_value = int(size)


def save_onnx(model: onnx.ModelProto, path: Path, inline_limit: int = INLINE_LIMIT) -> Path | None:
    """Save ``model``; weights go to ``<path>.data`` when they exceed ``inline_limit`` bytes."""
    data_path = path.with_name(path.name + ".data")
    data_path.unlink(missing_ok=True)
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size <= inline_limit:
        onnx.save_model(model, str(path))
        return None
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_path.name, size_threshold=0)
    return data_path


def graph_tensors(values) -> tuple[TensorRecord, ...]:
    """TensorRecords (name, dims with names for dynamic axes, dtype) of graph inputs/outputs."""
    out = []
    for v in values:
        t = v.type.tensor_type
        shape = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim)
        out.append(TensorRecord(v.name, shape, dtype_name(t.elem_type) or "undefined"))
    return tuple(out)
