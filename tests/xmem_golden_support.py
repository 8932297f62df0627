"""What the XMem golden tests share within one test session (tests #15: the slow part runs once).

The random weights are generated once, written once as .pth and .safetensors, and every golden
run (single- and multi-object) takes its key-encoder outputs from one ``FeatureCache``: the key
encoder does not see masks, and every run tracks the same blackswan frames 0..11 at the same
size, so each frame is encoded once per process.

The four golden runs are the slowest part of the suite; under xdist they split into two groups
of about equal cost, one per worker, each encoding the frames once (tests/conftest.py).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import tempfile
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from visa_edge.runtime.tracking.cache import FeatureCache

FEATURES = FeatureCache(max_frames=12)  # frame index -> key-encoder outputs, shared by every golden run
MAIN_GROUP = pytest.mark.xdist_group("xmem_golden_main")  # the main run and multi-object run A
LONG_TERM_GROUP = pytest.mark.xdist_group("xmem_golden_long_term")  # the long-term run, run B, the input checks


def load_make_weights(folder: Path):
    spec = importlib.util.spec_from_file_location("xmem_make_weights", folder / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def weights(folder: Path) -> dict[str, np.ndarray]:
    return load_make_weights(folder).generate(json.loads((folder / "xmem_state_dict_shapes.json").read_text()))


@functools.cache
def checkpoints(folder: Path) -> dict[str, Path]:
    """The generated weights as the official .pth layout and as .safetensors (written once per session)."""
    out = Path(tempfile.mkdtemp(prefix="xmem_weights_"))
    pth, st = out / "xmem_random.pth", out / "xmem_random.safetensors"
    w = weights(folder)
    torch.save({k: torch.from_numpy(v.copy()) for k, v in w.items()}, pth)
    load_make_weights(folder).write_safetensors(str(st), w)
    return {"pth": pth, "safetensors": st}


@functools.cache
def video(folder: Path, n_frames: int) -> tuple[np.ndarray, ...]:
    return tuple(np.array(Image.open(folder / "frames" / f"{i:05d}.png").convert("RGB")) for i in range(n_frames))


class RecordingEngine:
    """Passes calls to an engine and reports (name, inputs, outputs) to ``record``."""

    def __init__(self, engine, record: Callable[[str, dict, dict], None]):
        self.engine, self.record = engine, record
        self.name, self.input_names, self.output_names = engine.name, engine.input_names, engine.output_names

    def run(self, inputs):
        outputs = self.engine.run(inputs)
        self.record(self.name, inputs, outputs)
        return outputs


class RecordingCache:
    """The shared cache seen through one run: every key-encoder result (hit or miss) is reported to ``record``."""

    def __init__(self, cache: FeatureCache, record: Callable[[str, dict, dict], None]):
        self.cache, self.record = cache, record

    def get_or_compute(self, index: int | None, name: Hashable, compute: Callable[[], Any]) -> Any:
        value = self.cache.get_or_compute(index, name, compute)
        self.record(name[0], {}, value)
        return value
