"""One small interface for running a network: ``Engine.run(named inputs) -> named outputs``.

Implementations: PyTorch (:class:`TorchEngine`); ONNX Runtime and TensorRT live beside it.
The pipeline only sees ``Engine``.
"""

from .base import Engine, TorchEngine

__all__ = ["Engine", "TorchEngine"]
