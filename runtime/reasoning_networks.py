"""The exportable networks of the reasoning step: names and tensor signatures in one place.

Each network is built from a loaded ``VisaModel`` and runs behind an ``Engine``
(PyTorch here; ONNX Runtime or TensorRT after export). A ``NetworkSpec`` also says which
axes are dynamic, under which name, and within which sizes: the exporter marks those
axes dynamic, TensorRT builds its optimisation profile from the ranges, and the
manifest records them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .backends import DimRange, Engine, TorchEngine
from .model import VisaModel
from .prompt import MAX_REFERENCES

MAX_FRAMES = MAX_REFERENCES + 1  # references + target, encoded as one batch by ReasoningStep
MAX_QUERIES = 8  # [SEG] embeddings decoded in one mask-decoder call


@dataclass(frozen=True)
class NetworkSpec:
    """Input/output names and dynamic axes of a network.

    ``axes`` maps a tensor name to ``{axis: dim name}``; every name used there has its
    bounds in ``dims``. Axes not listed are static.
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    axes: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    dims: Mapping[str, DimRange] = field(default_factory=dict)

    def __post_init__(self):
        unknown = sorted(set(self.axes) - set(self.inputs) - set(self.outputs))
        unbounded = sorted({d for ax in self.axes.values() for d in ax.values()} - set(self.dims))
        if unknown or unbounded:
            raise ValueError(f"NetworkSpec: axes of unknown tensors {unknown} or dims without bounds {unbounded}")


REASONING_NETWORKS: dict[str, NetworkSpec] = {
    "visual_tokens": NetworkSpec(
        ("pixel_values",),
        ("visual_tokens",),
        axes={"pixel_values": {0: "frames"}, "visual_tokens": {0: "frames"}},
        dims={"frames": DimRange(1, MAX_FRAMES, MAX_FRAMES)},
    ),
    "sam_encoder": NetworkSpec(("image",), ("image_embeddings",)),
    "mask_decoder": NetworkSpec(
        ("image_embeddings", "seg_embeddings"),
        ("low_res_logits", "iou"),
        axes={"seg_embeddings": {0: "queries"}, "low_res_logits": {0: "queries"}, "iou": {0: "queries"}},
        dims={"queries": DimRange(1, 1, MAX_QUERIES)},
    ),
}


def reasoning_modules(model: VisaModel) -> dict:
    """name -> nn.Module for every reasoning-step network."""
    return {
        "visual_tokens": model.visual_token_net(),
        "sam_encoder": model.sam_encoder_net(),
        "mask_decoder": model.mask_decoder_net(),
    }


def torch_engines(model: VisaModel) -> dict[str, Engine]:
    """PyTorch engines for every reasoning-step network."""
    return {
        name: TorchEngine(name, module, REASONING_NETWORKS[name].inputs, REASONING_NETWORKS[name].outputs)
        for name, module in reasoning_modules(model).items()
    }
