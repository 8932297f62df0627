"""A weight-free mask tracker: optical flow from a small frame memory + bilateral-grid label voting.

Runs on a CPU without checkpoints (the demo's tracker, and the fallback when no XMem weights
are given). Tracks one or several objects (a label image). For each new frame:

1. **Flow from every memory frame.** The memory holds the reference frame (the first mask or
   the last ``anchor``), the previous frame and up to ``memory_size`` frames kept every
   ``memory_every`` frames. Dense DIS optical flow from the new frame back to each of them
   warps the memory frame's labels *and its colours* onto the new frame. The flow to the
   previous frame (DIS medium: it carries the boundaries from frame to frame) does not depend
   on the reference, nor does the frame's preparation (resize, grey, Lab): both go through the
   factory's shared :class:`~visa_edge.runtime.tracking.cache.FeatureCache` keyed by stream
   index (``precompute`` fills it ahead of any tracker, for every frame the streaming runtime
   buffers), so a catch-up tracker re-stepping buffered frames reuses them. The flows to the
   reference and the memory frames (DIS ultrafast: they only need to land the labels near
   the right colours) depend on the anchor and are computed by each tracker.
2. **Bilateral-grid voting** (the idea of bilateral space video segmentation, Maerki et al.,
   CVPR 2016). Each warped pixel votes for its label in a coarse grid over (y, x, L, a, b),
   keyed by the colour it *had* in its memory frame; one vote channel per object plus the
   count of all votes. The grid is blurred and read at every new pixel's own position and
   colour: a pixel takes the labels that pixels of its colour nearby carried. Where the flow is
   wrong, the warped colour does not match the new colour, so the wrong label lands in another
   colour cell and hardly votes; boundaries snap to colour edges.

3. **Re-detection when the flow loses an object.** Fast motion (an object moving about its
   own size per frame against the background) defeats coarse-to-fine flow: the object's
   labels stay behind and its mask collapses. When an object's mask falls below
   ``redetect_below`` of its reference area, it is looked for by its reference colour model
   (the fraction of the reference's pixels of each Lab colour that were the object) in a
   window around its last mask; the component of about the object's reference size (0.5-2x)
   nearest the window's centre joins its mask. Its confidence stays low (motion and
   appearance disagree), which asks the runtime for a new reasoning step.

**Bridging** (``bridge``, for the streaming runtime's catch-up: the frames between a reasoning
result's frame and the present, whose outputs are not published): the previous frame's labels
are only warped along the cached consecutive-frame flow, which costs a remap instead of the
anchor-dependent flows and the vote; frames that join the memory, and the newest frames of a
catch-up (the runtime steps those), are full steps.

An object's plane is its share of the votes; the frame's labels are the argmax over
[background, objects]; the previous frame's labels are kept hard so repeated warping does not
blur them away.

Confidence per object (in [0, 1]) = agreement x decisiveness: agreement is the IoU between the
voted mask and the mask warped from the previous frame by flow alone (motion and appearance
agree), decisiveness the mean ``|2 prob - 1|`` over the pixels either mask covers. It falls
when the object is occluded, leaks into a look-alike background or is lost, and is 0 when there
is nothing to track.

Bad inputs: a frame of another size than the session's (the first reference frame's) is
resized to the session size with a warning, and its output resized back to the frame's size;
an empty reference mask gives empty outputs with confidence 0; ``step`` before any reference
does the same; a frame that is not RGB uint8 [H,W,3], a mask of another size than its frame or
a label outside 0..255 raises :class:`~visa_edge.runtime.errors.InputError`.
"""

from __future__ import annotations

import warnings
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import InputError
from ..validate import check_frame_size
from .base import MAX_OBJECT_ID, Tracker, TrackOutput, mask_objects
from .cache import FeatureCache


@dataclass
class FlowTrackerConfig:
    """Parameters of :class:`FlowTracker` (defaults are the benchmarked ones)."""

    work_size: int = 240  # shorter side of the processing resolution, px (frames are never upscaled)
    memory_every: int = 5  # keep a frame in memory every N frames after the reference
    memory_size: int = 2  # memory frames besides the reference and the previous frame
    cell_px: float = 8.0  # bilateral grid cell along y and x, in working pixels
    cell_lab: tuple[float, float, float] = (16.0, 8.0, 8.0)  # grid cell along L, a, b (OpenCV 8-bit Lab)
    roi_margin: float = 0.3  # the grid covers the candidate box grown by this fraction (+ one cell)
    vote_stride: int = 2  # memory pixels vote on this sub-grid (speed; a cell still gets many votes)
    max_cells: int = 1_000_000  # compute budget: larger spatial cells where a big, colourful region needs more
    flow_preset: int = cv2.DISOpticalFlow_PRESET_MEDIUM  # frame -> previous frame (cached, shared)
    memory_flow_preset: int = cv2.DISOpticalFlow_PRESET_ULTRAFAST  # frame -> reference and memory frames
    redetect_below: float = 0.5  # an object whose mask shrinks below this fraction of its reference area is re-detected
    search_margin: float = 1.5  # re-detection window: the last mask's box grown by this fraction of its size


@dataclass
class _Features:
    """A frame's anchor-independent preparation at the working size."""

    grey: np.ndarray  # uint8 [h,w]
    lab: np.ndarray  # uint8 [h,w,3] OpenCV 8-bit Lab (a quarter of float32 in the shared cache)


@dataclass
class _Memory:
    """A frame the tracker propagates from: grey for flow, Lab for votes, hard label planes."""

    grey: np.ndarray  # uint8 [h,w]
    lab: np.ndarray  # float32 [h,w,3]
    planes: np.ndarray  # float32 0/1 [h,w,K], one plane per object


def _blur_axis(a: np.ndarray, axis: int, out: np.ndarray) -> None:
    """Unnormalised [1, 2, 1] blur of ``a`` along ``axis`` into ``out`` (zero outside): spreads
    votes to neighbour cells."""
    lo = [slice(None)] * a.ndim
    hi = [slice(None)] * a.ndim
    lo[axis], hi[axis] = slice(1, None), slice(None, -1)
    np.multiply(a, 2, out=out)
    out[tuple(lo)] += a[tuple(hi)]
    out[tuple(hi)] += a[tuple(lo)]


@dataclass
class _Voter:
    """Pixels voting in the grid: their colours and label planes [h,w,K]."""

    lab: np.ndarray
    planes: np.ndarray


class _LabGrid:
    """A dense bilateral grid over (y, x, L, a, b) covering one image region.

    The colour extent is the 1st-99th percentile of a sample of the region's pixels: rare
    colours clip into the end cells, which keeps the grid (and its blur) small. Where the grid
    would still exceed ``max_cells``, the spatial cells grow (the cost is linear in the cells).
    """

    def __init__(self, lab: np.ndarray, cell_px: float, cell_lab: tuple[float, float, float], max_cells: int):
        h, w = lab.shape[:2]
        self.cell = np.asarray(cell_lab, np.float32)
        sample = lab.reshape(-1, 3)[::7]  # every 7th pixel is plenty for two percentiles
        lo, hi = np.percentile(sample, [1.0, 99.0], axis=0)
        self.lo = lo.astype(np.float32) - 0.5 * self.cell
        n_col = ((hi + 0.5 * self.cell - self.lo) / self.cell + 0.5).astype(int) + 1
        n_spatial = (h / cell_px + 1) * (w / cell_px + 1)
        cell_px *= max(1.0, np.sqrt(n_spatial * int(np.prod(n_col)) / max_cells))
        self.shape = (int(h / cell_px + 0.5) + 1, int(w / cell_px + 0.5) + 1, *n_col.tolist())
        iy = (np.arange(h) / cell_px + 0.5).astype(np.int32)
        ix = (np.arange(w) / cell_px + 0.5).astype(np.int32)
        self.spatial = iy[:, None] * self.shape[1] + ix[None, :]
        self.hw = (h, w)
        self.size = int(np.prod(self.shape))
        self.query = self.index(lab, self.spatial)

    def index(self, lab: np.ndarray, spatial: np.ndarray) -> np.ndarray:
        """Flat cell index of Lab pixels at the given spatial cells (colours clipped to the grid)."""
        q = ((lab.reshape(-1, 3) - self.lo) / self.cell + 0.5).astype(np.int32)
        for c in range(3):
            np.clip(q[:, c], 0, self.shape[2 + c] - 1, out=q[:, c])
        return ((spatial.ravel() * self.shape[2] + q[:, 0]) * self.shape[3] + q[:, 1]) * self.shape[4] + q[:, 2]

    def vote(self, voters: list[_Voter], stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Splat voters taken every ``stride`` pixels, blur, and read at the region's own pixels:
        (per-object votes [h,w,K], all votes [h,w])."""
        k = voters[0].planes.shape[2]
        spatial = self.spatial[::stride, ::stride]
        idx = np.concatenate([self.index(v.lab[::stride, ::stride], spatial) for v in voters])
        labels = np.concatenate([v.planes[::stride, ::stride].reshape(-1, k) for v in voters])
        g = np.empty((*self.shape, k + 1), np.float32)
        for c in range(k):
            g[..., c] = np.bincount(idx, labels[:, c], self.size).reshape(self.shape)
        g[..., k] = np.bincount(idx, None, self.size).reshape(self.shape)
        spare = np.empty_like(g)
        for axis in range(5):
            _blur_axis(g, axis, spare)
            g, spare = spare, g
        g = g.reshape(-1, k + 1)[self.query]
        return g[:, :k].reshape(*self.hw, k), g[:, k].reshape(self.hw)


def _box(mask: np.ndarray, margin: float, pad: int) -> tuple[slice, slice]:
    """Bounding box of a non-empty mask grown by ``margin`` of its size plus ``pad`` px, clipped."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    dy, dx = int(margin * (y1 - y0)) + pad, int(margin * (x1 - x0)) + pad
    return slice(max(y0 - dy, 0), min(y1 + dy, h)), slice(max(x0 - dx, 0), min(x1 + dx, w))


def _warp(source: _Memory, flow: np.ndarray, identity: np.ndarray) -> _Voter:
    """The source's colours and label planes moved onto the frame by its backward ``flow`` (bilinear)."""
    sample = identity + flow
    lab = cv2.remap(source.lab, sample, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    planes = cv2.remap(source.planes, sample, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return _Voter(lab, planes.reshape(source.planes.shape))


class FlowTracker(Tracker):
    """Weight-free tracker: DIS optical flow from a frame memory + bilateral-grid voting over object labels.

    ``cache`` (shared by the trackers of one factory) holds each frame's preparation and its
    flow to the previously stepped frame, keyed by stream index.
    """

    def __init__(self, config: FlowTrackerConfig | None = None, cache: FeatureCache | None = None):
        self.config = config or FlowTrackerConfig()
        self.cache = cache
        self._dis = cv2.DISOpticalFlow_create(self.config.flow_preset)
        self._dis_memory = cv2.DISOpticalFlow_create(self.config.memory_flow_preset)
        self._identity: np.ndarray | None = None  # (x, y) of every working pixel: flow + identity = sampling map
        self.counts: Counter = Counter()  # work done: "memory_flow" (anchor-dependent DIS calls), "vote", "bridge"
        self._precomputed: tuple[int, np.ndarray] | None = None  # (index, grey) of the last precompute()
        self.reset()

    def reset(self) -> None:
        self._size: tuple[int, int] | None = None  # session frame size (H, W)
        self._work: tuple[int, int] | None = None  # processing size (h, w)
        self._objects: tuple[int, ...] = (1,)
        self._reference: _Memory | None = None
        self._previous: _Memory | None = None
        self._previous_index: int | None = None
        self._memory: deque[_Memory] = deque(maxlen=max(self.config.memory_size, 1))
        self._since_reference = 0
        self._empty = False
        self._colour: np.ndarray | None = None  # [K, colour cells] reference colour model per object
        self._reference_areas: np.ndarray | None = None  # [K] object areas in the reference, working px
        self._confidences: list[float] = []  # the last full step's, reported by bridges

    def step(self, frame: np.ndarray, mask: np.ndarray | None = None, *, objects: Sequence[int] | None = None,
             index: int | None = None) -> TrackOutput:
        frame = self._check_frame(frame)
        out_size = frame.shape[:2]
        if mask is not None:
            mask = self._check_mask(mask, out_size)
            if self._size is None:
                self._start(out_size)
        if self._size is None:
            return TrackOutput(np.zeros(out_size, np.float32), 0.0)
        frame = self._to_session(frame, mask is not None)
        features = self._features(frame, index)
        if mask is not None:
            if mask.shape != self._size:
                mask = cv2.resize(mask, self._size[::-1], interpolation=cv2.INTER_NEAREST)
            probs, confidences = self._set_reference(features, mask, mask_objects(mask, objects), index)
        else:
            probs, confidences = self._track(features, index)
        return self._output(probs, confidences, out_size)

    def bridge(self, frame: np.ndarray, *, index: int | None = None) -> TrackOutput:
        """A catch-up step along the cached consecutive-frame flow only: the previous frame's labels are
        warped onto ``frame`` and kept as the new previous frame. No flow to the reference or memory
        frames, no vote, no re-detection; the confidences are the last full step's (a bridge does not
        measure them). A frame that joins the memory (every ``memory_every``-th) is stepped in full
        instead: bridged labels drift, and the memory votes in every later step (bridging those too lost
        0.05 J&F over 20-frame catch-ups on DAVIS, see benchmarks/RESULTS.md)."""
        frame = self._check_frame(frame)
        out_size = frame.shape[:2]
        if self._size is None:
            return TrackOutput(np.zeros(out_size, np.float32), 0.0)
        features = self._features(self._to_session(frame, False), index)
        if self._empty or self._becomes_memory():  # a memory frame votes for the later steps: voted labels
            probs, confidences = self._track(features, index)
        else:
            probs, confidences = self._bridge(features, index)
        return self._output(probs, confidences, out_size)

    def _output(self, probs: np.ndarray, confidences: Sequence[float], out_size: tuple[int, int]) -> TrackOutput:
        """The TrackOutput of session-size ``probs`` [K,H,W] for a frame of ``out_size``."""
        self._confidences = list(confidences)
        if probs.shape[1:] != out_size:
            probs = np.stack([cv2.resize(p, out_size[::-1], interpolation=cv2.INTER_LINEAR) for p in probs])
        probs = probs.astype(np.float32, copy=False)
        confidences = tuple(float(np.clip(c, 0.0, 1.0)) for c in confidences)
        several = len(self._objects) > 1
        return TrackOutput(probs[0], confidences[0], self._objects, probs if several else None,
                           confidences if several else None)

    def precompute(self, frame: np.ndarray, index: int) -> None:
        """Put frame ``index``'s anchor-independent features in the shared cache exactly as ``step``
        computes them: its preparation and its flow to the frame precomputed before it (normally
        the previous frame a live path buffered), so that a later ``step`` of any tracker of the
        factory through these frames gets only cache hits. Leaves the tracking state alone; an
        index that does not increase, or a new frame size, starts a new chain.
        """
        frame = self._check_frame(frame)
        if self.cache is None:
            raise InputError("FlowTracker.precompute: the tracker has no FeatureCache to fill; expected cache=")
        work = self._work_size(frame.shape[:2])
        grey = self._prepare(frame, work, index).grey
        chain = self._precomputed
        if chain is not None and chain[0] < index and chain[1].shape == grey.shape:
            self._flow_to(grey, index, chain[1], chain[0], work)
        self._precomputed = (index, grey)

    # --- input handling -------------------------------------------------------------------

    @staticmethod
    def _check_frame(frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError(f"frame: expected RGB uint8 [H,W,3], got {frame.dtype} {frame.shape}")
        check_frame_size(frame, "FlowTracker frame")  # OpenCV's DIS flow aborts the process on strips < 16 px
        return frame

    @staticmethod
    def _check_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        mask = np.asarray(mask)
        if mask.shape != size:
            raise InputError(f"mask: shape {mask.shape} differs from its frame's {size}")
        if mask.dtype == bool:
            return mask.astype(np.uint8)
        if mask.size and (mask.min() < 0 or mask.max() > MAX_OBJECT_ID):
            raise InputError(f"mask: labels {mask.min()}..{mask.max()}; expected object ids 0..{MAX_OBJECT_ID}")
        return mask.astype(np.uint8)

    def _start(self, size: tuple[int, int]) -> None:
        self._size = size
        self._work = self._work_size(size)

    def _work_size(self, size: tuple[int, int]) -> tuple[int, int]:
        scale = min(1.0, self.config.work_size / min(size))
        return max(round(size[0] * scale), 1), max(round(size[1] * scale), 1)

    def _to_session(self, frame: np.ndarray, is_reference: bool) -> np.ndarray:
        """Resize a frame of another size to the session size (with a warning)."""
        if frame.shape[:2] == self._size:
            return frame
        kind = "reference frame" if is_reference else "frame"
        warnings.warn(f"FlowTracker: {kind} of size {frame.shape[1]}x{frame.shape[0]} in a session of "
                      f"{self._size[1]}x{self._size[0]}; resized to the session size (reset() starts a new one)",
                      RuntimeWarning, stacklevel=3)
        return cv2.resize(frame, self._size[::-1], interpolation=cv2.INTER_AREA)

    # --- per-frame features (cached by stream index) --------------------------------------

    def _cached(self, index: int | None, work: tuple[int, int], name: tuple, compute):
        if self.cache is None:
            return compute()
        return self.cache.get_or_compute(index, ("flow", work, *name), compute)

    def _features(self, frame: np.ndarray, index: int | None) -> _Features:
        return self._prepare(frame, self._work, index)

    def _prepare(self, frame: np.ndarray, work: tuple[int, int], index: int | None) -> _Features:
        def compute() -> _Features:
            small = cv2.resize(frame, work[::-1], interpolation=cv2.INTER_AREA) if frame.shape[:2] != work else frame
            return _Features(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), cv2.cvtColor(small, cv2.COLOR_RGB2Lab))

        return self._cached(index, work, ("features",), compute)

    def _flow_to(self, grey: np.ndarray, index: int | None, previous: np.ndarray, previous_index: int | None,
                 work: tuple[int, int]) -> np.ndarray:
        """Backward flow [h,w,2] from frame ``index`` to frame ``previous_index``; cached when both have an index."""
        key = None if previous_index is None else index
        return self._cached(key, work, ("to", previous_index, self.config.flow_preset),
                            lambda: self._dis.calc(grey, previous, None))

    # --- tracking -------------------------------------------------------------------------

    def _planes(self, mask: np.ndarray, objects: tuple[int, ...]) -> np.ndarray:
        """float32 0/1 [h,w,K] working-size planes of a session-size label image."""
        planes = []
        for obj in objects:
            plane = cv2.resize((mask == obj).astype(np.float32), self._work[::-1], interpolation=cv2.INTER_AREA)
            hard = (plane > 0.5).astype(np.float32)
            if not hard.any() and plane.any():  # an object smaller than a working pixel
                hard[np.unravel_index(np.argmax(plane), plane.shape)] = 1.0
            planes.append(hard)
        return np.stack(planes, axis=2)

    def _set_reference(self, features: _Features, mask: np.ndarray, objects: tuple[int, ...],
                       index: int | None) -> tuple[np.ndarray, list[float]]:
        kept = () if self._reference is None or self._empty else tuple(o for o in self._objects if o not in objects)
        if kept:  # objects absent from this reference keep their predicted planes
            tracked, _ = self._track(features, index)
            labels = np.asarray((0, *self._objects), np.uint8)[
                np.concatenate([1.0 - tracked.sum(0, keepdims=True), tracked], 0).argmax(0)]
            given = np.isin(mask, objects)
            mask = np.where(given, mask, np.where(np.isin(labels, kept), labels, 0)).astype(np.uint8)
        self._objects = (*objects, *kept) or (1,)
        memory = _Memory(features.grey, features.lab.astype(np.float32), self._planes(mask, self._objects))
        self._reference = self._previous = memory
        self._previous_index = index
        self._memory.clear()
        self._since_reference = 0
        self._empty = not memory.planes.any()
        self._colour = self._colour_models(memory.lab, memory.planes)
        self._reference_areas = memory.planes.sum(axis=(0, 1))
        probs = np.stack([(mask == o).astype(np.float32) for o in self._objects])
        return probs, [1.0 if p.any() else 0.0 for p in probs]

    def _track(self, features: _Features, index: int | None) -> tuple[np.ndarray, list[float]]:
        k = len(self._objects)
        h, w = features.grey.shape
        if self._empty:
            self._remember(index, _Memory(features.grey, features.lab.astype(np.float32), np.zeros((h, w, k), np.float32)))
            return np.zeros((k, *self._size), np.float32), [0.0] * k
        sources = self._sources()
        flows = [self._flow_to(features.grey, index, self._previous.grey, self._previous_index, self._work)]
        flows += [self._dis_memory.calc(features.grey, m.grey, None) for m in sources[1:]]
        self.counts["memory_flow"] += len(flows) - 1
        identity = self._identity_map(h, w)
        voters = [_warp(m, f, identity) for m, f in zip(sources, flows)]
        motion_only = voters[0].planes > 0.5  # the previous frame's labels moved by flow alone
        candidates = np.any([v.planes > 0.5 for v in voters], axis=(0, 3))
        lab = features.lab.astype(np.float32)
        probs = np.zeros((h, w, k), np.float32)
        if candidates.any():
            cfg = self.config
            region = _box(candidates, cfg.roi_margin, int(np.ceil(cfg.cell_px)))
            grid = _LabGrid(lab[region], cfg.cell_px, cfg.cell_lab, cfg.max_cells)
            votes, total = grid.vote([_Voter(v.lab[region], v.planes[region]) for v in voters], cfg.vote_stride)
            self.counts["vote"] += 1
            fallback = np.mean([v.planes[region] for v in voters], axis=0)
            probs[region] = np.where(total[..., None] > 0, votes / np.maximum(total, 1e-12)[..., None], fallback)
        labels = np.concatenate([1.0 - probs.sum(2, keepdims=True), probs], 2).argmax(2)
        planes = np.stack([labels == o + 1 for o in range(k)], axis=2)
        if self.config.redetect_below > 0:
            self._redetect(lab, probs, planes)
        confidences = [self._confidence(probs[..., o], planes[..., o], motion_only[..., o]) for o in range(k)]
        self._remember(index, _Memory(features.grey, lab, planes.astype(np.float32)))
        full = np.stack([cv2.resize(probs[..., o], self._size[::-1], interpolation=cv2.INTER_LINEAR) for o in range(k)])
        return full, confidences

    def _bridge(self, features: _Features, index: int | None) -> tuple[np.ndarray, list[float]]:
        """The previous frame's labels moved onto this frame by the (cached) consecutive flow."""
        h, w = features.grey.shape
        flow = self._flow_to(features.grey, index, self._previous.grey, self._previous_index, self._work)
        planes = cv2.remap(self._previous.planes, self._identity_map(h, w) + flow, None, cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0).reshape(self._previous.planes.shape)
        self.counts["bridge"] += 1
        hard = (planes > 0.5).astype(np.float32)
        self._remember(index, _Memory(features.grey, features.lab.astype(np.float32), hard))
        full = np.stack([cv2.resize(planes[..., o], self._size[::-1], interpolation=cv2.INTER_LINEAR)
                         for o in range(planes.shape[2])])
        return full, self._confidences

    def _becomes_memory(self) -> bool:
        """Whether the next tracked frame will be kept in the memory (see ``_remember``)."""
        cfg = self.config
        return cfg.memory_size > 0 and cfg.memory_every > 0 and (self._since_reference + 1) % cfg.memory_every == 0

    def _identity_map(self, h: int, w: int) -> np.ndarray:
        """(x, y) of every working pixel [h,w,2]: flow + identity = sampling map."""
        if self._identity is None or self._identity.shape[:2] != (h, w):
            self._identity = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), axis=2)
        return self._identity

    def _colour_cells(self) -> np.ndarray:
        """Cells per axis of a fixed (L, a, b) histogram over 8-bit Lab with the grid's colour cells."""
        return (256 / np.asarray(self.config.cell_lab)).astype(int) + 1

    def _colour_index(self, lab: np.ndarray) -> np.ndarray:
        """Histogram cell of each Lab pixel."""
        q = (lab.reshape(-1, 3) / np.asarray(self.config.cell_lab, np.float32)).astype(np.int32)
        n = self._colour_cells()
        return (q[:, 0] * n[1] + q[:, 1]) * n[2] + q[:, 2]

    def _colour_models(self, lab: np.ndarray, planes: np.ndarray) -> np.ndarray:
        """[K, cells] fraction of the reference's pixels of each colour that belong to each object."""
        idx = self._colour_index(lab)
        size = int(np.prod(self._colour_cells()))
        total = np.bincount(idx, minlength=size).astype(np.float32)
        return np.stack([np.bincount(idx, planes[..., o].ravel(), size) / (total + 1.0) for o in range(planes.shape[2])])

    def _redetect(self, lab: np.ndarray, probs: np.ndarray, planes: np.ndarray) -> None:
        """Objects whose mask collapsed are looked for by their reference colours near their last position."""
        idx = None
        for o in range(planes.shape[2]):
            area = self._reference_areas[o]
            if area == 0 or planes[..., o].sum() >= self.config.redetect_below * area:
                continue
            last = self._previous.planes[..., o] > 0.5
            window = np.zeros(planes.shape[:2], bool)
            window[_box(last if last.any() else self._reference.planes[..., o] > 0.5, self.config.search_margin, 0)] = True
            idx = self._colour_index(lab) if idx is None else idx
            p = self._colour[o][idx].reshape(planes.shape[:2])
            free = ~np.any(np.delete(planes, o, axis=2), axis=2)
            found = ((p > 0.5) & window & free).astype(np.uint8)
            _, comp, stats, centroids = cv2.connectedComponentsWithStats(found, connectivity=8)
            areas = stats[1:, cv2.CC_STAT_AREA]
            plausible = np.flatnonzero((areas >= 0.5 * area) & (areas <= 2.0 * area))  # about the object's size
            if plausible.size == 0:
                continue
            centre = np.argwhere(window).mean(0)[::-1]  # (x, y) of the search window
            best = 1 + plausible[np.argmin(np.sum((centroids[1 + plausible] - centre) ** 2, axis=1))]
            region = comp == best
            planes[..., o] |= region
            found_probs = probs[region]  # [n, K]
            found_probs[:, o] = np.maximum(found_probs[:, o], p[region])
            others = found_probs.sum(1) - found_probs[:, o]
            scale = np.minimum(1.0, (1.0 - found_probs[:, o]) / np.maximum(others, 1e-12))
            keep = found_probs[:, o].copy()
            found_probs *= scale[:, None]
            found_probs[:, o] = keep
            probs[region] = found_probs  # the objects still share each pixel's probability

    def _sources(self) -> list[_Memory]:
        """Previous frame first (the confidence compares with it), then the reference and the memory."""
        sources = [self._previous]
        if self._reference is not self._previous:
            sources.append(self._reference)
        sources.extend(self._memory)
        return sources

    @staticmethod
    def _confidence(prob: np.ndarray, mask: np.ndarray, motion_only: np.ndarray) -> float:
        union = np.logical_or(mask, motion_only)
        n_union = np.count_nonzero(union)
        if n_union == 0:
            return 0.0
        agreement = np.count_nonzero(mask & motion_only) / n_union
        decisiveness = float(np.mean(np.abs(2.0 * prob[union] - 1.0)))
        return agreement * decisiveness

    def _remember(self, index: int | None, current: _Memory) -> None:
        if self._becomes_memory():
            self._memory.append(current)
        self._previous = current
        self._previous_index = index
        self._since_reference += 1
