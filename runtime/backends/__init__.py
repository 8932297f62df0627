"""One small interface for running a network: ``Engine.run(named inputs) -> named outputs``.

Implementations: PyTorch (:class:`TorchEngine`), ONNX Runtime (``ort.OrtEngine``: CPU,
CUDA or TensorRT execution provider) and TensorRT (``trt.TensorRTEngine``). The pipeline
only sees ``Engine``; :func:`load_engines` builds them from an exported engine folder.
onnxruntime and tensorrt are imported only when such an engine is created.
"""

from .base import DimRange, Engine, EngineError, TorchEngine
from .loading import load_engines
from .manifest import Manifest, ManifestError, read_manifest

__all__ = ["DimRange", "Engine", "EngineError", "Manifest", "ManifestError", "TorchEngine", "load_engines", "read_manifest"]
