"""What the XMem golden tests share within one test session (tests #15: the slow part runs once).

The random weights are generated once, written once as .pth and .safetensors, and every golden
run (single- and multi-object) takes its frame features (key encoder + the decoder's skip convs)
from one ``FeatureCache``: neither sees masks, and every run tracks the same blackswan frames
0..11 at the same size, so each frame is encoded once per process.

The four golden runs are the slowest part of the suite; under xdist they split into two groups
of about equal cost, one per worker, each encoding the frames once (`unit_of` in tests/conftest.py).
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
import torch
from PIL import Image

from visa_edge.runtime.tracking.cache import FeatureCache

FEATURES = FeatureCache(max_frames=12)  # frame index -> frame features (key encoder + skip convs), shared by every golden run


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


KEY_F8_F4: dict[int, dict[str, Any]] = {}  # frame index -> the key encoder's f8 and f4, for the golden checks


class KeyEncoderTap:
    """The key encoder engine, keeping f8 and f4 of the frame being encoded (the cached frame
    features hold the decoder's skip convs of them instead) under ``index``."""

    def __init__(self, engine):
        self.engine, self.index = engine, None
        self.name, self.input_names, self.output_names = engine.name, engine.input_names, engine.output_names

    def run(self, inputs):
        outputs = self.engine.run(inputs)
        KEY_F8_F4[self.index] = {k: outputs[k] for k in ("f8", "f4")}
        return outputs


class RecordingCache:
    """The shared cache seen through one run: every frame-features result (hit or miss) is reported
    to ``record``, with the key encoder's f8 and f4 of that frame (kept by ``tap``)."""

    def __init__(self, cache: FeatureCache, record: Callable[[str, dict, dict], None], tap: KeyEncoderTap):
        self.cache, self.record, self.tap = cache, record, tap

    def get_or_compute(self, index: int | None, name: Hashable, compute: Callable[[], Any]) -> Any:
        self.tap.index = index
        value = self.cache.get_or_compute(index, name, compute)
        self.record(name[0], {}, {**value, **KEY_F8_F4[index]})
        return value


def recording_tracker(checkpoint: Path, config, record: Callable[[str, dict, dict], None]):
    """An XMemTracker whose engine calls and frame features are reported to ``record``."""
    from visa_edge.runtime.tracking.xmem import XMemTracker

    base = XMemTracker.from_checkpoint(checkpoint, config)
    tap = KeyEncoderTap(base.engines["xmem_key_encoder"])
    per_frame = {"xmem_key_encoder": tap, "xmem_skips": base.engines["xmem_skips"]}  # reported through the cache
    engines = {n: per_frame.get(n) or RecordingEngine(e, record) for n, e in base.engines.items()}
    return XMemTracker(engines, config, cache=RecordingCache(FEATURES, record, tap))
