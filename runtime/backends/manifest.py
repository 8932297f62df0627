"""The engine manifest: what ``visa-edge export`` wrote into an engine folder, and its checks.

``ENGINE_DIR/manifest.json`` lists every network with its files (ONNX graph, optional
external weights, TensorRT engine) and their sha256, tensor signatures with named
dynamic dims and their bounds, precision, opset, the hashes of the checkpoints it came
from, the library versions and GPU it was built with, and the exact export command.
Loading checks files, hashes and (for TensorRT) the TensorRT version and GPU, and every
failure says how to rebuild. The writer lives in ``export/``; runtime only reads.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .base import DimRange, EngineError, Shape
from .hash_cache import sha256_file

MANIFEST_NAME = "manifest.json"
FORMAT = "visa-edge-engines"
SCHEMA_VERSION = 1
EXPORT_BACKENDS = ("onnx", "tensorrt")  # what an export produced; ONNX files are always present
EXPORT_TEMPLATE = (
    "visa-edge export --checkpoint DIR --clip DIR [--xmem XMem.pth] --out {out} --backend onnx|tensorrt --precision fp32|fp16"
)


class ManifestError(EngineError):
    """An engine folder, its manifest or a file it lists is missing, modified or incompatible."""


@dataclass(frozen=True)
class FileRecord:
    """A file of an engine folder (path relative to it) and its sha256."""

    file: str
    sha256: str


@dataclass(frozen=True)
class TensorRecord:
    """An input or output tensor: name, shape (str = named dynamic dim) and dtype name."""

    name: str
    shape: Shape
    dtype: str


@dataclass(frozen=True)
class NetworkRecord:
    """One exported network.

    ``files`` maps a role to a file: ``onnx`` (always), ``onnx_data`` (external weights of
    graphs over 2 GB) and ``engine`` (TensorRT). ``sources`` maps a source name of the
    manifest (``checkpoint``, ``clip``, ...) to the sha256 it had. ``environment`` holds
    library versions, and for engines ``gpu`` and ``compute_capability``.
    """

    name: str
    files: Mapping[str, FileRecord]
    inputs: tuple[TensorRecord, ...]
    outputs: tuple[TensorRecord, ...]
    dims: Mapping[str, DimRange]
    precision: str
    opset: int
    sources: Mapping[str, str]
    environment: Mapping[str, str | None]
    parity: Mapping[str, float] = field(default_factory=dict)
    build: Mapping[str, Any] = field(default_factory=dict)

    def input_shapes(self) -> dict[str, Shape]:
        return {t.name: t.shape for t in self.inputs}

    def output_shapes(self) -> dict[str, Shape]:
        return {t.name: t.shape for t in self.outputs}


@dataclass(frozen=True)
class SourceRecord:
    """A checkpoint the networks were exported from: the path given and its sha256."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Manifest:
    backend: str
    precision: str
    networks: Mapping[str, NetworkRecord]
    sources: Mapping[str, SourceRecord]
    export_command: tuple[str, ...]
    created: str
    format: str = FORMAT
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str) -> "Manifest":
        """Parse a manifest dict; raise ManifestError naming ``source`` on a bad format."""
        if d.get("format") != FORMAT:
            raise ManifestError(f"{source}: not a visa-edge engine manifest (format {d.get('format')!r}, expected {FORMAT!r})")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ManifestError(
                f"{source}: manifest schema version {d.get('schema_version')!r}; this visa-edge reads version "
                f"{SCHEMA_VERSION}. Re-export with:\n  {_command(d.get('export_command'), source)}"
            )
        if d.get("backend") not in EXPORT_BACKENDS:
            raise ManifestError(f"{source}: backend {d.get('backend')!r}; expected one of {EXPORT_BACKENDS}")
        if not isinstance(d.get("networks"), dict) or not d["networks"]:
            raise ManifestError(
                f"{source}: the manifest lists no networks (networks: {str(d.get('networks'))[:40]}); re-export with:\n"
                f"  {_command(d.get('export_command'), source)}"
            )
        try:
            networks = {name: _network(name, n) for name, n in d["networks"].items()}
            return cls(
                backend=d["backend"],
                precision=d["precision"],
                networks=networks,
                sources={k: SourceRecord(**v) for k, v in d["sources"].items()},
                export_command=tuple(d["export_command"]),
                created=d["created"],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ManifestError(f"{source}: malformed manifest ({type(e).__name__}: {e})") from e

    def rebuild_command(self, backend: str | None = None) -> str:
        """The export command that wrote this folder, with ``--backend`` replaced if given."""
        args = list(self.export_command)
        if backend is not None and "--backend" in args:
            args[args.index("--backend") + 1] = backend
        return shlex.join(args)

    def network(self, name: str, folder: Path) -> NetworkRecord:
        """The record of ``name`` or a ManifestError listing what the folder has."""
        if name not in self.networks:
            raise ManifestError(
                f"{folder / MANIFEST_NAME}: no network {name!r} (it has {sorted(self.networks)}). "
                f"Export it with:\n  {self.rebuild_command()}"
            )
        return self.networks[name]


def _network(name: str, d: Mapping[str, Any]) -> NetworkRecord:
    return NetworkRecord(
        name=name,
        files={role: FileRecord(**f) for role, f in d["files"].items()},
        inputs=tuple(_tensor(t) for t in d["inputs"]),
        outputs=tuple(_tensor(t) for t in d["outputs"]),
        dims={k: DimRange(**v) for k, v in d["dims"].items()},
        precision=d["precision"],
        opset=int(d["opset"]),
        sources=dict(d["sources"]),
        environment=dict(d["environment"]),
        parity=dict(d.get("parity", {})),
        build=dict(d.get("build", {})),
    )


def _tensor(d: Mapping[str, Any]) -> TensorRecord:
    return TensorRecord(d["name"], tuple(d["shape"]), d["dtype"])


def _command(args: Any, source: str) -> str:
    if isinstance(args, list) and all(isinstance(a, str) for a in args):
        return shlex.join(args)
    return EXPORT_TEMPLATE.format(out=Path(source).parent)


def read_manifest(folder: str | Path) -> Manifest:
    """Read ``folder/manifest.json``; a missing or unreadable one says how to create it."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        what = "engine folder not found" if not folder.is_dir() else f"no {MANIFEST_NAME}"
        raise ManifestError(f"{path}: {what}; create the engine folder with:\n  {EXPORT_TEMPLATE.format(out=folder)}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: unreadable manifest ({e}); re-export with:\n  {EXPORT_TEMPLATE.format(out=folder)}") from e
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a JSON object")
    return Manifest.from_dict(data, str(path))


def source_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint file, or of a folder: over its files' relative paths and sha256s
    (the hash ``visa-edge export`` records for each source; large files' hashes are remembered by
    their stat, ``hash_cache``)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise ManifestError(f"{path}: not found; expected a checkpoint file or folder")
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def check_sources(manifest: Manifest, given: Mapping[str, str | Path | None], folder: Path) -> None:
    """Raise unless every source in ``given`` that the manifest records hashes to the recorded sha256.

    Engines exported from another checkpoint would run with weights that do not belong to
    the model they are combined with.
    """
    for name, path in given.items():
        record = manifest.sources.get(name)
        if path is None or record is None:
            continue
        actual = source_sha256(path)
        if actual != record.sha256:
            raise ManifestError(
                f"{folder / MANIFEST_NAME}: engines were exported from {name} {record.path} (sha256 {record.sha256[:12]}...), "
                f"but this run loads {name} {path} (sha256 {actual[:12]}...); re-export them from it with:\n"
                f"  {manifest.rebuild_command()}"
            )


def check_signature(record: NetworkRecord, inputs: Mapping[str, Shape], path: Path) -> None:
    """Raise unless the graph's ``inputs`` (name -> shape, dynamic axes by name or None) match the manifest."""
    recorded = record.input_shapes()
    if set(recorded) != set(inputs):
        raise ManifestError(f"{path}: graph inputs {sorted(inputs)} differ from the manifest's {sorted(recorded)} for {record.name!r}")
    for name, shape in recorded.items():
        actual = tuple(inputs[name])
        static = [(r, a) for r, a in zip(shape, actual) if isinstance(r, int) or isinstance(a, int)]
        if len(shape) != len(actual) or any(r != a for r, a in static):
            raise ManifestError(
                f"{path}: input {name!r} of {record.name!r} has shape {list(actual)} in the graph but {list(shape)} in "
                f"the manifest; the manifest does not describe this graph (re-export the folder)"
            )


def verify_file(folder: Path, manifest: Manifest, record: NetworkRecord, role: str, backend: str) -> Path:
    """Path of ``record``'s ``role`` file after checking it exists and has the recorded sha256."""
    if role not in record.files:
        raise ManifestError(
            f"{folder / MANIFEST_NAME}: network {record.name!r} has no {role} file (exported for backend "
            f"{manifest.backend!r}). Rebuild with:\n  {manifest.rebuild_command(backend)}"
        )
    entry = record.files[role]
    path = folder / entry.file
    if not path.is_file():
        raise ManifestError(f"{path}: missing ({role} of {record.name!r}). Rebuild with:\n  {manifest.rebuild_command()}")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ManifestError(
            f"{path}: sha256 {actual[:12]}... does not match the manifest ({entry.sha256[:12]}...); the file was modified "
            f"or belongs to another export. Rebuild with:\n  {manifest.rebuild_command()}"
        )
    return path


def check_tensorrt_environment(
    manifest: Manifest, record: NetworkRecord, tensorrt_version: str, gpu: str, folder: Path
) -> None:
    """Raise unless ``record``'s engine was built with this TensorRT version and this GPU model.

    A serialized TensorRT engine only deserializes with the exact TensorRT version and on
    the GPU model it was tuned for.
    """
    built_trt, built_gpu = record.environment.get("tensorrt"), record.environment.get("gpu")
    if built_trt == tensorrt_version and built_gpu == gpu:
        return
    engine = record.files["engine"].file if "engine" in record.files else record.name
    raise ManifestError(
        f"{folder / engine}: built with TensorRT {built_trt} on {built_gpu!r}; this machine has TensorRT "
        f"{tensorrt_version} on {gpu!r}. TensorRT engines run only with the TensorRT version and GPU model "
        f"they were built with; rebuild them here with:\n  {manifest.rebuild_command('tensorrt')}"
    )
