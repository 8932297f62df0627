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
from ..base import MAX_OBJECT_ID, Tracker, TrackOutput, mask_objects
from ..cache import FeatureCache
from . import image_ops
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
    pads: image_ops.Pads
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


def check_objects(ids: tuple[int, ...]) -> tuple[int, ...]:
    """The reference's object ids, or an InputError naming the ones outside 1..255."""
    bad = [i for i in ids if not 1 <= i <= MAX_OBJECT_ID]
    if bad:
        raise InputError(f"XMemTracker: object ids {bad} in the reference; expected ids 1..{MAX_OBJECT_ID} (0 = background)")
    return ids


def others(fg: torch.Tensor) -> torch.Tensor:
    """Value-encoder "others" planes [K,1,H,W]: per object the sum of the other objects' probabilities (zeros for one)."""
    k = fg.shape[0]
    return torch.stack([fg[[j for j in range(k) if j != i]].sum(0) for i in range(k)])


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
                f"expected inputs {spec.inputs} and outputs {spec.outputs} (engines exported by an older "
                "visa-edge: export them again)"
            )


class XMemTracker(Tracker):
    """XMem-compatible tracker of one or several objects: the original's per-frame algorithm
    (InferenceCore.step with eval.py's label bookkeeping).

    Matches the original's outputs to float rounding (tests/test_xmem_golden.py,
    tests/test_xmem_multi_golden.py). Frames are RGB uint8 [H,W,3]; masks are label images [H,W]
    (0 = background, k = object k) or 0/1 masks (object 1). Objects keep the order in which they
    were first given (ascending ids within a frame); objects first given on a later frame form a
    new object group (``XMemMemory``), start from a zero hidden state, and the objects not given
    with that frame keep their prediction, re-aggregated with the new masks. ``memory`` holds the
    working / long-term memory and the hidden states; ``session`` the frame geometry and counters;
    ``object_ids`` the tracked objects. ``cache`` (shared by the trackers of one factory) holds the
    key-encoder outputs of each frame ``index``, which do not depend on the objects. Bad input:

    * not RGB uint8 [H,W,3], or a mask whose shape differs from its frame: InputError.
    * a frame whose size differs from the session's first frame: resized (bilinear, on the
      normalised tensor) to the session's processing size, counted in ``resized_frames`` with a
      warning; its probability map is returned at its own size.
    * object ids outside 1..255: InputError.
    * an empty reference mask (no object): the memory is cleared, and ``step`` returns an
      all-zero map with confidence 0 until a non-empty reference arrives; the same before the
      first reference. No NaN is produced.

    ``confidences`` are :func:`soft_iou_confidence` of each object's returned map, in [0, 1].
    A single object 1 gives ``TrackOutput(prob, confidence)`` as before (``probs`` None).
    """

    def __init__(
        self,
        engines: Mapping[str, Engine],
        config: XMemConfig | None = None,
        device: str | torch.device = "cpu",
        cache: FeatureCache | None = None,
    ):
        check_engines(engines)
        self.engines = dict(engines)
        self.config = config or XMemConfig()
        self.device = torch.device(device)
        self.cache = cache
        self.resized_frames = 0
        self.reset()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        config: XMemConfig | None = None,
        device: str | torch.device = "cpu",
        engines: Mapping[str, Engine] | None = None,
        cache: FeatureCache | None = None,
    ) -> "XMemTracker":
        """A tracker on the official XMem.pth (or .safetensors) with PyTorch engines on ``device``.

        ``engines`` (e.g. ONNX Runtime / TensorRT) replace the PyTorch engine of the same name;
        the checkpoint is only read when some network has no engine given.
        """
        given = dict(engines or {})
        if set(XMEM_NETWORKS) - set(given):
            given = {**xmem_torch_engines(load_xmem(path).to(device)), **given}
        return cls(given, config, device, cache)

    def reset(self) -> None:
        self.memory = XMemMemory(self.config)
        self.session: Session | None = None
        self.object_ids: list[int] = []

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
        image_ops.check_frame(frame)
        given: tuple[int, ...] = ()
        labels = None
        if mask is not None:
            labels = image_ops.check_mask(mask, frame.shape)
            given = check_objects(mask_objects(labels, objects))
            if not given:
                self.reset()
            elif self.session is None:
                self.session = self.new_session(frame)
        if self.session is None:
            return TrackOutput(np.zeros(frame.shape[:2], np.float32), 0.0)
        with torch.inference_mode():
            probs = self.track(frame, labels if given else None, given, end, index).contiguous().cpu().numpy()
        ids = tuple(self.object_ids)
        confidences = tuple(soft_iou_confidence(torch.from_numpy(p)) for p in probs)
        if ids == (1,):
            return TrackOutput(probs[0], confidences[0])
        return TrackOutput(probs[0], confidences[0], ids, probs, confidences)

    def precompute(self, frame: np.ndarray, index: int) -> None:
        """Put frame ``index``'s key-encoder outputs in the shared cache exactly as ``step`` computes
        them in a session of this frame's size, so that a later ``step`` of any tracker of the
        factory through the frame gets a cache hit. Leaves the tracking state alone."""
        image_ops.check_frame(frame)
        if self.cache is None:
            raise InputError("XMemTracker.precompute: the tracker has no FeatureCache to fill; expected cache=")
        s = self.new_session(frame)
        with torch.inference_mode():
            self.encode_key(self.session_image(frame, s), index)

    def new_session(self, frame: np.ndarray) -> Session:
        height, width = frame.shape[:2]
        size = image_ops.processing_size(height, width, self.config.shorter_side)
        return Session((height, width), size, image_ops.pad_amounts(*size))

    def plan(self, s: Session, reference: bool, every_object_given: bool, end: bool) -> FramePlan:
        """InferenceCore's flags for frame ``s.t``: a reference for only some objects is also segmented."""
        memory_frame = (s.t - s.last_mem >= self.config.mem_every or reference) and not end
        sync = self.config.deep_update_every < 0
        if sync:
            deep = memory_frame
        else:
            deep = s.t - s.last_deep >= self.config.deep_update_every and not end
        return FramePlan(
            memory_frame=memory_frame,
            segment=s.t > 0 and not every_object_given,
            deep_update=deep,
            decoder_update=(not sync or not deep) and not end,
        )

    def track(
        self, frame: np.ndarray, labels: np.ndarray | None, given: tuple[int, ...], end: bool, index: int | None
    ) -> torch.Tensor:
        """One InferenceCore step; returns the object probabilities [K,H,W] at the frame's size."""
        s = self.session
        s.t += 1
        known = list(self.object_ids)
        all_ids = known + sorted(set(given) - set(known))
        plan = self.plan(s, labels is not None, set(all_ids) <= set(given), end)
        image = self.prepare_image(frame)
        enc = self.encode_key(image, index)
        mem = self.memory
        probs = None
        if plan.segment:
            readout = mem.read(enc["key"], enc["selection"])
            dec = self.run("xmem_decoder", f16=enc["f16"], s8=enc["s8"], s4=enc["s4"], readout=readout, hidden=mem.hidden)
            probs = image_ops.logits_to_prob(dec["logits"])
            if plan.decoder_update:
                mem.hidden = dec["hidden_out"]
        if labels is not None:
            probs = self.reference_probs(labels, given, all_ids, known, probs)
            self.object_ids = all_ids
            hidden = torch.zeros((len(all_ids), HIDDEN_DIM, *enc["key"].shape[-2:]), device=self.device)
            mem.hidden = hidden if mem.hidden is None else torch.cat([mem.hidden, hidden[mem.hidden.shape[0] :]])
        if plan.memory_frame:
            fg = probs[1:, None]
            val = self.run("xmem_value_encoder", image=image, mask=fg, others=others(fg), f16=enc["f16"], hidden=mem.hidden)
            mem.add(enc["key"], enc["shrinkage"], enc["selection"], val["value"])
            s.last_mem = s.t
            if plan.deep_update:
                mem.hidden = val["hidden_out"]
                s.last_deep = s.t
        return image_ops.resize(image_ops.unpad(probs[1:], s.pads), tuple(frame.shape[:2]))

    def reference_probs(
        self, labels: np.ndarray, given: tuple[int, ...], all_ids: list[int], known: list[int], pred: torch.Tensor | None
    ) -> torch.Tensor:
        """Aggregated probabilities [K+1,H,W] (padded) of a reference frame, as the original builds them.

        Given objects get their 0/1 planes; the predictions of known objects not given are set to 0
        where any given object is, and everything is soft-aggregated again (not pasted).
        """
        planes = torch.stack([self.prepare_mask(labels == i if i in given else np.zeros_like(labels, bool))[0] for i in all_ids])
        if pred is not None:
            pred_fg = pred[1:]
            pred_fg[:, planes.sum(0) > 0.5] = 0
            for k, object_id in enumerate(known):
                if object_id not in given:
                    planes[k] = pred_fg[k]
        return image_ops.aggregate(planes)

    def encode_key(self, image: torch.Tensor, index: int | None) -> dict[str, torch.Tensor]:
        """The frame's per-frame features: key, shrinkage, selection, f16 and the decoder's skip
        features s8, s4 (f8 and f4 are only their inputs); from the shared cache when another
        tracker computed them."""
        if self.cache is None:
            return self.frame_features(image)
        name = ("xmem_frame_features", tuple(image.shape[-2:]))
        return self.cache.get_or_compute(index, name, lambda: self.frame_features(image))

    def frame_features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        enc = self.run("xmem_key_encoder", image=image)
        skips = self.run("xmem_skips", f8=enc.pop("f8"), f4=enc.pop("f4"))
        return {**enc, **skips}

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
        return self.session_image(frame, s)

    def session_image(self, frame: np.ndarray, s: Session) -> torch.Tensor:
        """``frame`` normalised, resized to ``s``'s processing size and padded: [1,3,H,W]."""
        return image_ops.pad(image_ops.resize(image_ops.normalise(frame, self.device), s.size), s.pads)[None]

    def prepare_mask(self, reference: np.ndarray) -> torch.Tensor:
        """Reference mask [H,W] bool -> [1,H,W] float 0/1 at the padded session size (nearest resize)."""
        s = self.session
        m = torch.from_numpy(reference).to(self.device, torch.float32)[None]
        return image_ops.pad(image_ops.resize(m, s.size, mode="nearest"), s.pads)
