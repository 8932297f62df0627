"""Writing the engine manifest (the schema and reader are ``runtime/backends/manifest.py``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from visa_edge.runtime.backends.manifest import (MANIFEST_NAME, FileRecord, Manifest, SourceRecord, sha256_file,
                                                 source_sha256)

from .errors import ExportError


def hash_source(path: str | Path) -> SourceRecord:
    """sha256 of a checkpoint file, or of a folder: over its files' relative paths and sha256s."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: not found; expected a checkpoint file or folder")
    return SourceRecord(str(path.resolve()), source_sha256(path))  # the hash load_engines checks against


def file_record(folder: Path, path: Path) -> FileRecord:
    return FileRecord(path.relative_to(folder).as_posix(), sha256_file(path))


def environment(backend: str, device: torch.device | None = None) -> dict[str, str | None]:
    """Versions of the libraries an export used; for engines also TensorRT and the GPU."""
    import onnx

    env: dict[str, str | None] = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": None}
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if backend == "tensorrt":
        import tensorrt

        device = device or torch.device("cuda")
        major, minor = torch.cuda.get_device_capability(device)
        env.update(tensorrt=tensorrt.__version__, gpu=torch.cuda.get_device_name(device), compute_capability=f"{major}.{minor}")
    return env


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write ``folder/manifest.json`` atomically (a reader never sees a partial file)."""
    path = folder / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)
    return path
