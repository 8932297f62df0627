"""The exportable networks of the reasoning step: names and tensor signatures in one place.

Each network is built from a loaded ``VisaModel`` and runs behind an ``Engine``
(PyTorch here; ONNX Runtime or TensorRT after export).
"""

from __future__ import annotations

from dataclasses import dataclass

from .backends import Engine, TorchEngine
from .model import VisaModel


@dataclass(frozen=True)
class NetworkSpec:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


REASONING_NETWORKS: dict[str, NetworkSpec] = {
    "visual_tokens": NetworkSpec(("pixel_values",), ("visual_tokens",)),
    "sam_encoder": NetworkSpec(("image",), ("image_embeddings",)),
    "mask_decoder": NetworkSpec(("image_embeddings", "seg_embeddings"), ("low_res_logits", "iou")),
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
