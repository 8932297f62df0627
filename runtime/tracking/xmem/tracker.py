"""``XMemTracker``: XMem inference (InferenceCore.step) over pluggable engines and a bounded memory."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...backends import Engine
from ...errors import InputError
from ..base import Tracker, TrackOutput, mask_objects
from . import frames
from .checkpoint import load_xmem
from .config import XMemConfig
from .memory import XMemMemory
from .modules import HIDDEN_DIM
from .networks import XMEM_NETWORKS, xmem_torch_engines


@dataclass
class Session:
    """Per-reference state: frame geometry and the frame counters of InferenceCore."""

    frame_shape: tuple[int, int]  # (H, W) of the frame the session started on
    size: tuple[int, int]  # processing size (shorter side resized), before padding
    pads: frames.Pads
    t: int = -1  # frames stepped since the reference (0 = the reference frame)
    last_mem: int = 0
    last_deep: int = 0


@dataclass
class FramePlan:
    """What one step does (InferenceCore's flags)."""

    memory_frame: bool
    segment: bool
    deep_update: bool
    decoder_update: bool


def soft_iou_confidence(prob: torch.Tensor) -> float:
    """Soft IoU of a probability map with its own 0.5-threshold mask: sum(min(p, m)) / sum(max(p, m)).

    1 for a crisp map, lower when probability mass is uncertain (near 0.5) or diffuse, and 0
    when nothing is predicted (object lost), which asks the runtime for a new reasoning step.
    """
    fg = prob > 0.5
    inter = float(torch.where(fg, prob, 0).sum())
    union = float(torch.where(fg, 1, prob).sum())
    return min(max(inter / union, 0.0), 1.0) if union > 0 else 0.0


def check_engines(engines: Mapping[str, Engine]) -> None:
    """InputError unless every XMem network has an engine with the expected input/output names."""
    missing = sorted(set(XMEM_NETWORKS) - set(engines))
    if missing:
        raise InputError(f"XMemTracker: missing engine(s) {missing}; expected {sorted(XMEM_NETWORKS)}")
    for name, spec in XMEM_NETWORKS.items():
        engine = engines[name]
        if set(engine.input_names) != set(spec.inputs) or not set(spec.outputs) <= set(engine.output_names):
            raise InputError(
                f"XMemTracker: engine {name!r} has inputs {engine.input_names} / outputs {engine.output_names}; "
                f"expected inputs {spec.inputs} and outputs {spec.outputs}"
            )


class XMemTracker(Tracker):
    """XMem-compatible single-object tracker: the original's per-frame algorithm (InferenceCore.step).

    Matches the original's outputs to float rounding (tests/test_xmem_golden.py). Frames are
    RGB uint8 [H,W,3]; masks are [H,W] (non-zero = object). ``memory`` holds the working /
    long-term memory and the hidden state; ``session`` the frame geometry and counters. Bad input:

    * not RGB uint8 [H,W,3], or a mask whose shape differs from its frame: InputError.
    * a frame whose size differs from the session's first frame: resized (bilinear, on the
      normalised tensor) to the session's processing size, counted in ``resized_frames`` with a
      warning; its probability map is returned at its own size.
    * an empty reference mask (no object): the memory is cleared, and ``step`` returns an
      all-zero map with confidence 0 until a non-empty reference arrives; the same before the
      first reference. No NaN is produced.

    ``confidence`` is :func:`soft_iou_confidence` of the returned map, in [0, 1].
    """

    objects = 1

    def __init__(self, engines: Mapping[str, Engine], config: XMemConfig | None = None, device: str | torch.device = "cpu"):
        check_engines(engines)
        self.engines = dict(engines)
        self.config = config or XMemConfig()
        self.device = torch.device(device)
        self.resized_frames = 0
        self.reset()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        config: XMemConfig | None = None,
        device: str | torch.device = "cpu",
        engines: Mapping[str, Engine] | None = None,
    ) -> "XMemTracker":
        """A tracker on the official XMem.pth (or .safetensors) with PyTorch engines on ``device``.

        ``engines`` (e.g. ONNX Runtime / TensorRT) replace the PyTorch engine of the same name;
        the checkpoint is only read when some network has no engine given.
        """
        given = dict(engines or {})
        if set(XMEM_NETWORKS) - set(given):
            given = {**xmem_torch_engines(load_xmem(path).to(device)), **given}
        return cls(given, config, device)

    def reset(self) -> None:
        self.memory = XMemMemory(self.config)
        self.session: Session | None = None

    def anchor(self, frame: np.ndarray, mask: np.ndarray, *, objects: Sequence[int] | None = None,
               index: int | None = None) -> TrackOutput:
        """Restart from ``mask`` at ``frame``: the memory is cleared and this frame becomes the first reference.

        The caller steps the frames after it again; memory written from those frames under the
        previous reference would contradict the new one and appear twice.
        """
        self.reset()
        return self.step(frame, mask, objects=objects, index=index)

    def step(self, frame: np.ndarray, mask: np.ndarray | None = None, *, objects: Sequence[int] | None = None,
             index: int | None = None, end: bool = False) -> TrackOutput:
        """Track into ``frame`` or take ``mask`` as its reference (added to the memory, which is kept).

        ``end=True`` marks the last frame of a finite video: as in the original, it is not written
        to memory and the hidden state is not updated (the returned map is the same).
        """
        if mask is not None and len(mask_objects(mask, objects)) > 1:
            raise InputError(f"XMemTracker: {len(mask_objects(mask, objects))} objects given; it tracks one (object 1)")
        frames.check_frame(frame)
        reference = None if mask is None else frames.check_mask(mask, frame.shape)
        if reference is not None and not reference.any():
            self.reset()
        elif self.session is None and reference is not None:
            self.session = self.new_session(frame)
        if self.session is None:
            return TrackOutput(np.zeros(frame.shape[:2], np.float32), 0.0)
        with torch.inference_mode():
            prob = self.track(frame, reference, end)
            return TrackOutput(prob.contiguous().cpu().numpy(), soft_iou_confidence(prob))

    def new_session(self, frame: np.ndarray) -> Session:
        height, width = frame.shape[:2]
        size = frames.processing_size(height, width, self.config.shorter_side)
        return Session((height, width), size, frames.pad_amounts(*size))

    def plan(self, s: Session, reference: bool, end: bool) -> FramePlan:
        """InferenceCore's flags for frame ``s.t`` (one object: a given mask covers every object)."""
        memory_frame = (s.t - s.last_mem >= self.config.mem_every or reference) and not end
        sync = self.config.deep_update_every < 0
        if sync:
            deep = memory_frame
        else:
            deep = s.t - s.last_deep >= self.config.deep_update_every and not end
        return FramePlan(
            memory_frame=memory_frame,
            segment=s.t > 0 and not reference,
            deep_update=deep,
            decoder_update=(not sync or not deep) and not end,
        )

    def track(self, frame: np.ndarray, reference: np.ndarray | None, end: bool) -> torch.Tensor:
        """One InferenceCore step; returns the object probability [H,W] at the frame's size."""
        s = self.session
        s.t += 1
        plan = self.plan(s, reference is not None, end)
        image = self.prepare_image(frame)
        enc = self.run("xmem_key_encoder", image=image)
        mem = self.memory
        probs = None
        if plan.segment:
            readout = mem.read(enc["key"], enc["selection"])
            dec = self.run("xmem_decoder", f16=enc["f16"], f8=enc["f8"], f4=enc["f4"], readout=readout, hidden=mem.hidden)
            probs = frames.logits_to_prob(dec["logits"])
            if plan.decoder_update:
                mem.hidden = dec["hidden_out"]
        if reference is not None:
            probs = frames.aggregate(self.prepare_mask(reference))
            if mem.hidden is None:
                mem.hidden = torch.zeros((self.objects, HIDDEN_DIM, *enc["key"].shape[-2:]), device=self.device)
        if plan.memory_frame:
            fg = probs[1:, None]
            others = fg.sum(0, keepdim=True) - fg
            val = self.run("xmem_value_encoder", image=image, mask=fg, others=others, f16=enc["f16"], hidden=mem.hidden)
            mem.add(enc["key"], enc["shrinkage"], enc["selection"], val["value"])
            s.last_mem = s.t
            if plan.deep_update:
                mem.hidden = val["hidden_out"]
                s.last_deep = s.t
        prob = frames.unpad(probs[1:2], s.pads)
        return frames.resize(prob, tuple(frame.shape[:2]))[0]

    def run(self, name: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run one engine; outputs are brought to the tracker's device."""
        return {k: v.to(self.device) for k, v in self.engines[name].run(inputs).items()}

    def prepare_image(self, frame: np.ndarray) -> torch.Tensor:
        """Normalised, resized to the session size, padded: [1,3,H,W]."""
        s = self.session
        if tuple(frame.shape[:2]) != s.frame_shape:
            self.resized_frames += 1
            warnings.warn(
                f"XMemTracker: frame of size {frame.shape[:2]} in a session of {s.frame_shape} frames; "
                f"resized to the session's processing size {s.size}",
                RuntimeWarning,
                stacklevel=4,
            )
        image = frames.resize(frames.normalise(frame, self.device), s.size)
        return frames.pad(image, s.pads)[None]

    def prepare_mask(self, reference: np.ndarray) -> torch.Tensor:
        """Reference mask [H,W] bool -> [1,H,W] float 0/1 at the padded session size (nearest resize)."""
        s = self.session
        m = torch.from_numpy(reference).to(self.device, torch.float32)[None]
        return frames.pad(frames.resize(m, s.size, mode="nearest"), s.pads)
