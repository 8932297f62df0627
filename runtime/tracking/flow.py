"""A weight-free mask tracker: optical flow from a small frame memory + bilateral-grid voting.

Runs on a CPU without checkpoints (the demo's tracker, and the fallback when no XMem weights
are given). For each new frame:

1. **Flow from every memory frame.** The memory holds the reference frame (the first mask or
   the last ``anchor``), the previous frame and up to ``memory_size`` frames kept every
   ``memory_every`` frames. Dense DIS optical flow from the new frame back to each of them
   warps the memory frame's mask *and its colours* onto the new frame. The reference keeps the
   tracker from drifting; the recent frames follow deformation and occlusions.
2. **Bilateral-grid voting** (the idea of bilateral space video segmentation, Maerki et al.,
   CVPR 2016). Each warped pixel votes for its label in a coarse grid over (y, x, L, a, b),
   keyed by the colour it *had* in its memory frame. The grid is blurred and read at every
   new pixel's own position and colour: a pixel takes the label that pixels of its colour
   nearby carried. Where the flow is wrong, the warped colour does not match the new colour,
   so the wrong label lands in another colour cell and hardly votes; boundaries snap to
   colour edges.

The vote is a probability (fraction of foreground votes). The mask is ``prob > 0.5``; the
previous frame's mask is kept binary so repeated warping does not blur it away.

Confidence (in [0, 1]) = agreement x decisiveness: agreement is the IoU between the voted
mask and the mask warped from the previous frame by flow alone (motion and appearance
agree), decisiveness the mean ``|2 prob - 1|`` over the pixels either mask covers (colour
separates object and background). It falls when the object is occluded, leaks into a
look-alike background or is lost, and is 0 when there is nothing to track.

Bad inputs: a frame of another size than the session's (the first reference frame's) is
resized to the session size with a warning, and its output resized back to the frame's size;
an empty reference mask gives empty outputs with confidence 0; ``step`` before any reference
does the same; a frame that is not RGB uint8 [H,W,3] or a mask of another size than its
frame raises :class:`~visa_edge.runtime.errors.InputError`.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import InputError
from .base import Tracker, TrackOutput, mask_objects


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
    flow_preset: int = cv2.DISOpticalFlow_PRESET_MEDIUM


@dataclass
class _Memory:
    """A frame the tracker can propagate from: grey for flow, Lab for votes, binary mask."""

    grey: np.ndarray  # uint8 [h,w]
    lab: np.ndarray  # float32 [h,w,3]
    mask: np.ndarray  # float32 0/1 [h,w]


def _blur_axis(a: np.ndarray, axis: int, out: np.ndarray) -> None:
    """Unnormalised [1, 2, 1] blur of ``a`` along ``axis`` into ``out`` (zero outside): spreads
    votes to neighbour cells."""
    lo = [slice(None)] * a.ndim
    hi = [slice(None)] * a.ndim
    lo[axis], hi[axis] = slice(1, None), slice(None, -1)
    np.multiply(a, 2, out=out)
    out[tuple(lo)] += a[tuple(hi)]
    out[tuple(hi)] += a[tuple(lo)]


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

    def vote(self, voters: list[tuple[np.ndarray, np.ndarray]], stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Splat (colour, label) voters taken every ``stride`` pixels, blur, and read at the region's
        own pixels: (foreground votes, all votes)."""
        spatial = self.spatial[::stride, ::stride]
        idx = np.concatenate([self.index(lab[::stride, ::stride], spatial) for lab, _ in voters])
        labels = np.concatenate([m[::stride, ::stride].ravel() for _, m in voters])
        g = np.empty((*self.shape, 2), np.float32)
        g[..., 0] = np.bincount(idx, labels, self.size).reshape(self.shape)
        g[..., 1] = np.bincount(idx, None, self.size).reshape(self.shape)
        spare = np.empty_like(g)
        for axis in range(5):
            _blur_axis(g, axis, spare)
            g, spare = spare, g
        g = g.reshape(-1, 2)[self.query]
        return g[:, 0].reshape(self.hw), g[:, 1].reshape(self.hw)


def _box(mask: np.ndarray, margin: float, pad: int) -> tuple[slice, slice]:
    """Bounding box of a non-empty mask grown by ``margin`` of its size plus ``pad`` px, clipped."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    dy, dx = int(margin * (y1 - y0)) + pad, int(margin * (x1 - x0)) + pad
    return slice(max(y0 - dy, 0), min(y1 + dy, h)), slice(max(x0 - dx, 0), min(x1 + dx, w))


class FlowTracker(Tracker):
    """Weight-free tracker: DIS optical flow from a frame memory + bilateral-grid label voting."""

    def __init__(self, config: FlowTrackerConfig | None = None):
        self.config = config or FlowTrackerConfig()
        self._dis = cv2.DISOpticalFlow_create(self.config.flow_preset)
        self.reset()

    def reset(self) -> None:
        self._size: tuple[int, int] | None = None  # session frame size (H, W)
        self._work: tuple[int, int] | None = None  # processing size (h, w)
        self._reference: _Memory | None = None
        self._previous: _Memory | None = None
        self._memory: deque[_Memory] = deque(maxlen=max(self.config.memory_size, 1))
        self._since_reference = 0
        self._empty_reference = False

    def step(self, frame: np.ndarray, mask: np.ndarray | None = None, *, objects: Sequence[int] | None = None,
             index: int | None = None) -> TrackOutput:
        if mask is not None and len(mask_objects(mask, objects)) > 1:
            raise InputError(f"FlowTracker: {len(mask_objects(mask, objects))} objects given; it tracks one (object 1)")
        frame = self._check_frame(frame)
        out_size = frame.shape[:2]
        if mask is not None:
            mask = self._check_mask(mask, out_size)
            if self._size is None:
                self._start(out_size)
        if self._size is None:
            return TrackOutput(np.zeros(out_size, np.float32), 0.0)
        frame = self._to_session(frame, mask is not None)
        if mask is not None:
            mask = cv2.resize(mask, self._size[::-1], interpolation=cv2.INTER_NEAREST) if mask.shape != self._size else mask
            prob, confidence = self._set_reference(frame, mask)
        else:
            prob, confidence = self._track(frame)
        if prob.shape != out_size:
            prob = cv2.resize(prob, out_size[::-1], interpolation=cv2.INTER_LINEAR)
        return TrackOutput(prob.astype(np.float32, copy=False), float(np.clip(confidence, 0.0, 1.0)))

    # --- input handling -------------------------------------------------------------------

    @staticmethod
    def _check_frame(frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError(f"frame: expected RGB uint8 [H,W,3], got {frame.dtype} {frame.shape}")
        return frame

    @staticmethod
    def _check_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        mask = np.asarray(mask)
        if mask.shape != size:
            raise InputError(f"mask: shape {mask.shape} differs from its frame's {size}")
        return (mask > 0).astype(np.uint8)

    def _start(self, size: tuple[int, int]) -> None:
        scale = min(1.0, self.config.work_size / min(size))
        self._size = size
        self._work = (max(round(size[0] * scale), 1), max(round(size[1] * scale), 1))

    def _to_session(self, frame: np.ndarray, is_reference: bool) -> np.ndarray:
        """Resize a frame of another size to the session size (with a warning)."""
        if frame.shape[:2] == self._size:
            return frame
        kind = "reference frame" if is_reference else "frame"
        warnings.warn(f"FlowTracker: {kind} of size {frame.shape[1]}x{frame.shape[0]} in a session of "
                      f"{self._size[1]}x{self._size[0]}; resized to the session size (reset() starts a new one)",
                      RuntimeWarning, stacklevel=3)
        return cv2.resize(frame, self._size[::-1], interpolation=cv2.INTER_AREA)

    # --- tracking -------------------------------------------------------------------------

    def _prepare(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        small = cv2.resize(frame, self._work[::-1], interpolation=cv2.INTER_AREA) if frame.shape[:2] != self._work else frame
        return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), cv2.cvtColor(small, cv2.COLOR_RGB2Lab).astype(np.float32)

    def _set_reference(self, frame: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
        grey, lab = self._prepare(frame)
        small = cv2.resize(mask.astype(np.float32), self._work[::-1], interpolation=cv2.INTER_AREA)
        memory = _Memory(grey, lab, (small > 0.5).astype(np.float32))
        if not memory.mask.any() and mask.any():  # an object smaller than a working pixel
            memory.mask[np.unravel_index(np.argmax(small), small.shape)] = 1.0
        self._reference = self._previous = memory
        self._memory.clear()
        self._since_reference = 0
        self._empty_reference = not mask.any()
        return mask.astype(np.float32), 0.0 if self._empty_reference else 1.0

    def _track(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        grey, lab = self._prepare(frame)
        h, w = grey.shape
        if self._empty_reference:
            self._previous = _Memory(grey, lab, np.zeros((h, w), np.float32))
            return np.zeros(self._size, np.float32), 0.0
        voters = [self._warp(grey, source) for source in self._sources()]
        motion_only = voters[0][1] > 0.5  # the previous frame's mask moved by flow alone
        candidates = np.logical_or.reduce([m > 0.5 for _, m in voters])
        prob = np.zeros((h, w), np.float32)
        if candidates.any():
            region = _box(candidates, self.config.roi_margin, int(np.ceil(self.config.cell_px)))
            grid = _LabGrid(lab[region], self.config.cell_px, self.config.cell_lab, self.config.max_cells)
            fg, total = grid.vote([(wl[region], wm[region]) for wl, wm in voters], self.config.vote_stride)
            fallback = np.mean([wm[region] for _, wm in voters], axis=0)
            prob[region] = np.where(total > 0, fg / np.maximum(total, 1e-12), fallback)
        mask = prob > 0.5
        confidence = self._confidence(prob, mask, motion_only)
        self._remember(_Memory(grey, lab, mask.astype(np.float32)))
        full = cv2.resize(prob, self._size[::-1], interpolation=cv2.INTER_LINEAR)
        return full, confidence

    def _sources(self) -> list[_Memory]:
        """Previous frame first (the confidence compares with it), then the reference and the memory."""
        sources = [self._previous]
        if self._reference is not self._previous:
            sources.append(self._reference)
        sources.extend(self._memory)
        return sources

    def _warp(self, grey: np.ndarray, source: _Memory) -> tuple[np.ndarray, np.ndarray]:
        """The source's colours and mask moved onto the new frame by backward optical flow."""
        flow = self._dis.calc(grey, source.grey, None)
        h, w = grey.shape
        flow[..., 0] += np.arange(w, dtype=np.float32)
        flow[..., 1] += np.arange(h, dtype=np.float32)[:, None]
        lab = cv2.remap(source.lab, flow, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mask = cv2.remap(source.mask, flow, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return lab, mask

    @staticmethod
    def _confidence(prob: np.ndarray, mask: np.ndarray, motion_only: np.ndarray) -> float:
        union = np.logical_or(mask, motion_only)
        n_union = np.count_nonzero(union)
        if n_union == 0:
            return 0.0
        agreement = np.count_nonzero(mask & motion_only) / n_union
        decisiveness = float(np.mean(np.abs(2.0 * prob[union] - 1.0)))
        return agreement * decisiveness

    def _remember(self, current: _Memory) -> None:
        self._previous = current
        self._since_reference += 1
        cfg = self.config
        if cfg.memory_size > 0 and cfg.memory_every > 0 and self._since_reference % cfg.memory_every == 0:
            self._memory.append(current)
