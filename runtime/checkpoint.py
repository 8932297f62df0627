"""Reading Hugging Face ``save_pretrained`` weight folders and matching them to modules.

A folder holds one of: ``model.safetensors``, ``model.safetensors.index.json`` + shards,
``pytorch_model.bin``, ``pytorch_model.bin.index.json`` + shards. Every failure names the
file and what was expected.
"""

from __future__ import annotations

import contextlib
import zipfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from .errors import CheckpointError
from .validate import read_json_object

WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files of a checkpoint folder, shards resolved through the index."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found")
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        shards = _index_shards(path, folder)
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{path}: shard(s) listed in the index are missing from {folder}: {missing}")
        return [folder / s for s in shards]
    raise CheckpointError(f"{folder}: no weights found; expected one of {list(WEIGHT_FILES)}")


def load_file(path: Path, keep: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """Load one weight file (safetensors or a torch zip pickle) onto the CPU.

    Only tensors whose name passes ``keep`` are read: safetensors are opened lazily and
    pickles are memory-mapped, so skipped tensors (e.g. a 7B LLM) cost no memory.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys() if keep is None or keep(k)}
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # corrupt or truncated file: report which one
        raise CheckpointError(f"{path}: could not be read as a weight file ({_why_unreadable(path, e)})") from e
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(sd).__name__}")
    bad = [f"{k!r}: {type(v).__name__}" for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: expected a state dict of name -> tensor; {len(bad)} entries are not: {_clip_list(bad, 5)}")
    return {k: v for k, v in sd.items() if keep is None or keep(k)}


def _why_unreadable(path: Path, error: Exception) -> str:
    """A short reason a weight file failed to load (torch's own message for a non-zip file misleads)."""
    if path.suffix != ".safetensors" and not zipfile.is_zipfile(path):
        size = path.stat().st_size
        return (f"{size} bytes, not a PyTorch zip archive: corrupt, truncated, a Git LFS pointer, or saved with "
                "torch.save's legacy format")
    first = str(error).strip().splitlines()
    return f"{type(error).__name__}: {first[0] if first else 'no message'}"


def _index_shards(path: Path, folder: Path) -> list[str]:
    """The shard file names of a weight index (``weight_map``: tensor name -> file in ``folder``)."""
    index = read_json_object(path, "a weight index (a JSON object with 'weight_map')", CheckpointError)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        found = "missing" if "weight_map" not in index else repr(weight_map)[:60]
        raise CheckpointError(f"{path}: 'weight_map' is {found}; expected an object mapping tensor names to shard files")
    bad = sorted({repr(v) for v in weight_map.values() if not isinstance(v, str) or Path(v).name != v or not v})
    if bad:
        raise CheckpointError(f"{path}: weight_map names {_clip_list(bad, 5)}; expected shard file names inside {folder}")
    return sorted(set(weight_map.values()))


def load_state_dict(folder: str | Path, keep: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint folder (those passing ``keep``), merged over its shards."""
    merged: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        merged.update(load_file(path, keep))
    return merged


def check_keys(
    source: str,
    provided: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    what: str,
) -> None:
    """Raise a CheckpointError listing missing keys, unexpected keys and shape mismatches."""
    missing = sorted(set(expected) - set(provided))
    unexpected = sorted(set(provided) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(provided[k].shape)} vs model {tuple(expected[k])}"
        for k in sorted(set(provided) & set(expected))
        if tuple(provided[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_clip_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_clip_list(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch ({len(mismatched)}): {_clip_list(mismatched)}")
    if problems:
        raise CheckpointError(f"{source}: {what} does not match the checkpoint; " + "; ".join(problems))


def _clip_list(items: Iterable[str], limit: int = 20) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' info/progress output and deprecation warnings while loading."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()
