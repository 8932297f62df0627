"""Checks at the boundary where the runtime reads something: JSON files, their fields, frame sizes.

Every check raises the error type its caller names (``CheckpointError`` for checkpoint
files, ``InputError`` for inputs) with a message naming the file or input, the value found
and what was expected, before anything is allocated from the value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, VisaEdgeError

MIN_FRAME_SIDE = 16  # OpenCV's DIS flow asserts below 12 px and crashes the process on 12-15 px strips
MAX_FRAME_PIXELS = 1 << 30  # OpenCV's default image-size limit (CV_IO_MAX_IMAGE_PIXELS)


def read_json(path: str | Path, what: str, error: type[VisaEdgeError]) -> Any:
    """The parsed JSON of ``path`` (``what`` says which file it is), or ``error`` saying why not."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: not found; expected {what}")
    try:
        text = path.read_bytes().decode("utf-8")
        return json.loads(text)
    except PermissionError as e:
        raise error(f"{path}: permission denied; {what} must be readable") from e
    except OSError as e:
        raise error(f"{path}: could not be read ({e.strerror or e}); expected {what}") from e
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}); expected {what} as JSON") from e
    except (json.JSONDecodeError, RecursionError) as e:
        raise error(f"{path}: not valid JSON ({e}); expected {what}") from e


def read_json_object(path: str | Path, what: str, error: type[VisaEdgeError]) -> dict[str, Any]:
    """Like :func:`read_json`, for files whose top level must be a JSON object."""
    data = read_json(path, what, error)
    if not isinstance(data, dict):
        raise error(f"{path}: top level is a JSON {_json_type(data)}; expected {what} as a JSON object")
    return data


class Fields:
    """Typed, range-checked access to the fields of a JSON object read from ``source``."""

    def __init__(self, data: Mapping[str, Any], source: str, error: type[VisaEdgeError]):
        self.data, self.source, self.error = data, source, error

    def fail(self, name: str, found: Any, expected: str) -> VisaEdgeError:
        """The error (to raise) for field ``name`` holding ``found`` where ``expected`` was expected."""
        shown = repr(found) if not isinstance(found, (dict, list)) or len(repr(found)) < 80 else f"a JSON {_json_type(found)}"
        return self.error(f"{self.source}: field {name!r} is {shown}; expected {expected}")

    def integer(self, name: str, default: Any = ..., lo: int | None = None, hi: int | None = None) -> int:
        """An integer field in ``[lo, hi]`` (a JSON float with an integral value is accepted)."""
        value = self._get(name, default)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, value, _range("an integer", lo, hi))
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.fail(name, value, _range("an integer", lo, hi))
        return value

    def number(self, name: str, default: Any = ..., positive: bool = False) -> float:
        """A finite number field (strictly positive if ``positive``)."""
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (positive and value <= 0):
            raise self.fail(name, value, "a positive finite number" if positive else "a finite number")
        return float(value)

    def boolean(self, name: str, default: Any = ...) -> bool:
        """A JSON true/false field (not 0/1, not "yes")."""
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, value, "true or false")
        return value

    def optional_dict(self, name: str) -> dict[str, Any] | None:
        """A field that is absent, null or a JSON object."""
        value = self.data.get(name)
        if value is not None and not isinstance(value, dict):
            raise self.fail(name, value, "a JSON object or null")
        return value

    def _get(self, name: str, default: Any) -> Any:
        if name in self.data:
            return self.data[name]
        if default is ...:
            raise self.error(f"{self.source}: missing required field {name!r}")
        return default


def check_frame_size(frame: np.ndarray, what: str = "frame") -> None:
    """Raise InputError unless ``frame``'s sides are at least MIN_FRAME_SIDE and its pixels at most MAX_FRAME_PIXELS."""
    h, w = frame.shape[:2]
    if min(h, w) < MIN_FRAME_SIDE:
        raise InputError(f"{what}: image is {w}x{h} px; expected both sides >= {MIN_FRAME_SIDE} px")
    if h * w > MAX_FRAME_PIXELS:
        raise InputError(f"{what}: image is {w}x{h} = {h * w} px; expected at most {MAX_FRAME_PIXELS} px (OpenCV's limit)")


def _range(kind: str, lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"{kind} in [{lo}, {hi}]"
    if lo is not None:
        return f"{kind} >= {lo}"
    return kind if hi is None else f"{kind} <= {hi}"


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def parse_device(spec: str, what: str = "device") -> "torch.device":
    """A torch device that exists on this machine (``cpu``, ``cuda``, ``cuda:N``, ``mps``), or InputError."""
    import torch

    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError, ValueError) as e:
        raise InputError(f"{what} {spec!r}: not a torch device; expected cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{what} {spec!r}: CUDA is not available on this machine (torch {torch.__version__}); use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"{what} {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{what} {spec!r}: MPS is not available on this machine; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"{what} {spec!r}: device type {device.type!r} is not supported; expected cpu, cuda, cuda:N or mps")
    return device
