"""sha256 of large files, remembered by their stat so a checkpoint is read once, not at every start.

Engines are checked against the checkpoints they were exported from (``manifest.check_sources``)
and against their own recorded hashes: for a 14 GB checkpoint that is ~35 s of reading at every
``run`` or node start. A file's hash is remembered under its resolved path together with its
device, inode, size and modification time (ns); any change to those hashes it again. As in
git's "racy" rule, a file modified less than ``RACY_S`` before it was hashed is not remembered:
a write within the filesystem's timestamp granularity could keep its stamp. Files under
``MIN_BYTES`` are hashed every time (cheaper than the cache).

Cache file: ``$VISA_EDGE_CACHE_DIR/sha256.json`` (``VISA_EDGE_CACHE_DIR`` set to an empty string
turns the cache off), else ``$XDG_CACHE_HOME/visa-edge/sha256.json``, else
``~/.cache/visa-edge/sha256.json``. It holds at most ``MAX_ENTRIES`` files, the most recently
hashed kept. A cache that cannot be read is ignored and rewritten; one that cannot be written
is reported once per process (the hashes are still right, only recomputed next time).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from pathlib import Path

CACHE_DIR_ENV = "VISA_EDGE_CACHE_DIR"
CACHE_NAME = "sha256.json"
MIN_BYTES = 16 << 20
MAX_ENTRIES = 4096
RACY_S = 2.0
_unwritable_reported: set[Path] = set()


def cache_file() -> Path | None:
    """Where the hashes are remembered; None when ``VISA_EDGE_CACHE_DIR`` is set to an empty string."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured is not None:
        return Path(configured) / CACHE_NAME if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "visa-edge" / CACHE_NAME


def read_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (engines and weights can be GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of ``path``: remembered for large files whose stat has not changed since (module doc)."""
    path = Path(path)
    where = cache_file()
    stat = path.stat()
    if where is None or stat.st_size < MIN_BYTES:
        return read_sha256(path)
    key, stamp = str(path.resolve()), _stamp(stat)
    entries = _load(where)
    entry = entries.get(key)
    if isinstance(entry, dict) and entry.get("stat") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    started = time.time()
    digest = read_sha256(path)
    if started - stat.st_mtime > RACY_S and _stamp(path.stat()) == stamp:
        entries.pop(key, None)
        entries[key] = {"stat": stamp, "sha256": digest}
        _store(where, dict(list(entries.items())[-MAX_ENTRIES:]))
    return digest


def _stamp(stat: os.stat_result) -> str:
    return f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"


def _load(where: Path) -> dict:
    try:
        data = json.loads(where.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(where: Path, entries: dict) -> None:
    tmp = where.with_name(f"{where.name}.{os.getpid()}.tmp")
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(entries))
        os.replace(tmp, where)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if where not in _unwritable_reported:
            _unwritable_reported.add(where)
            warnings.warn(
                f"{where}: cannot write the file-hash cache ({e.strerror or e}); large checkpoints and engines will be "
                f"hashed again at every start (set {CACHE_DIR_ENV} to a writable folder, or to '' to turn the cache off)",
                RuntimeWarning,
                stacklevel=3,
            )
