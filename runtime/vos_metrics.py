"""DAVIS video object segmentation metrics: region similarity J, boundary accuracy F, J&F.

Written from the definitions of the DAVIS benchmark (Perazzi et al., CVPR 2016) and the
conventions of its public evaluation toolkit, so that figures are comparable with published
ones:

- J is the intersection over union of the binary masks; two empty masks score 1.
- F is the F-measure of boundary precision and recall. Boundaries are one pixel wide
  (``seg2bmap``); a boundary pixel matches when the other mask's boundary lies within
  ``bound_pix`` pixels, a disk of radius ``ceil(0.008 * image diagonal)`` (8 px at 854x480).
  An empty boundary on both sides scores 1, an empty boundary on one side scores 0.
- A sequence scores the mean over its evaluated frames; a benchmark the mean over sequences,
  and J&F is the mean of J and F.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError
from .io import read_mask

BOUND_TH = 0.008


def _binary(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    return mask > 0


def _check_shapes(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and annotation {gt.shape} differ in size")


def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """Region similarity J: |pred & gt| / |pred | gt|, 1 when both masks are empty."""
    p, g = _binary(pred), _binary(gt)
    _check_shapes(p, g)
    union = np.count_nonzero(p | g)
    if union == 0:
        return 1.0
    return np.count_nonzero(p & g) / union


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a binary mask.

    A pixel is a boundary pixel when it differs from its east, south or south-east neighbour
    (the boundary sits half a pixel towards the origin); the last row compares only with its
    east neighbour, the last column only with its south one, and the corner pixel never counts.
    """
    seg = _binary(mask)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def disk(radius: float) -> np.ndarray:
    """uint8 disk structuring element: offsets (dy, dx) in [-r, r]^2 with dy^2 + dx^2 <= r^2."""
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy * yy + xx * xx <= radius * radius).astype(np.uint8)


def bound_pixels(shape: tuple[int, int], bound_th: float = BOUND_TH) -> float:
    """Matching tolerance in pixels: ``bound_th`` itself when >= 1, else a fraction of the diagonal."""
    if bound_th >= 1:
        return float(bound_th)
    return float(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def boundary_precision_recall(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> tuple[float, float]:
    """Boundary precision and recall with the toolkit's conventions for empty boundaries."""
    p, g = _binary(pred), _binary(gt)
    _check_shapes(p, g)
    pred_b, gt_b = seg2bmap(p), seg2bmap(g)
    n_pred, n_gt = np.count_nonzero(pred_b), np.count_nonzero(gt_b)
    if n_pred == 0 and n_gt == 0:
        return 1.0, 1.0
    if n_pred == 0:
        return 1.0, 0.0
    if n_gt == 0:
        return 0.0, 1.0
    se = disk(bound_pixels(p.shape, bound_th))
    pred_dil = cv2.dilate(pred_b.astype(np.uint8), se) > 0
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), se) > 0
    precision = np.count_nonzero(pred_b & gt_dil) / n_pred
    recall = np.count_nonzero(gt_b & pred_dil) / n_gt
    return precision, recall


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Boundary accuracy F = 2PR / (P + R) (0 when P + R = 0)."""
    precision, recall = boundary_precision_recall(pred, gt, bound_th)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


@dataclass
class SequenceScore:
    """Per-frame J and F of one sequence and their means."""

    name: str
    frames: list[str]
    j_frames: list[float]
    f_frames: list[float]

    @property
    def j(self) -> float:
        return float(np.mean(self.j_frames)) if self.j_frames else float("nan")

    @property
    def f(self) -> float:
        return float(np.mean(self.f_frames)) if self.f_frames else float("nan")

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2

    def to_dict(self, per_frame: bool = False) -> dict:
        d = {"J": self.j, "F": self.f, "J&F": self.jf, "n_frames": len(self.frames)}
        if per_frame:
            d["frames"] = {n: {"J": j, "F": f} for n, j, f in zip(self.frames, self.j_frames, self.f_frames)}
        return d


def score_sequence(name: str, pairs: Iterable[tuple[str, np.ndarray, np.ndarray]],
                   bound_th: float = BOUND_TH) -> SequenceScore:
    """Score ``(frame name, prediction, annotation)`` triples of one sequence."""
    score = SequenceScore(name, [], [], [])
    for frame, pred, gt in pairs:
        score.frames.append(frame)
        score.j_frames.append(jaccard(pred, gt))
        score.f_frames.append(boundary_f(pred, gt, bound_th))
    return score


@dataclass
class BenchmarkScore:
    """Scores of several sequences; the means are over sequences, as DAVIS reports them."""

    sequences: Sequence[SequenceScore]

    @property
    def j(self) -> float:
        return float(np.mean([s.j for s in self.sequences]))

    @property
    def f(self) -> float:
        return float(np.mean([s.f for s in self.sequences]))

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2

    def to_dict(self, per_frame: bool = False) -> dict:
        return {
            "sequences": {s.name: s.to_dict(per_frame) for s in self.sequences},
            "mean": {"J": self.j, "F": self.f, "J&F": self.jf},
        }

    def table(self) -> str:
        """A plain-text table: one row per sequence, then the mean."""
        width = max([len(s.name) for s in self.sequences] + [8])
        rows = [f"{'sequence':<{width}}  {'frames':>6}  {'J':>6}  {'F':>6}  {'J&F':>6}"]
        for s in self.sequences:
            rows.append(f"{s.name:<{width}}  {len(s.frames):>6}  {s.j:6.3f}  {s.f:6.3f}  {s.jf:6.3f}")
        rows.append(f"{'mean':<{width}}  {'':>6}  {self.j:6.3f}  {self.f:6.3f}  {self.jf:6.3f}")
        return "\n".join(rows)


def _frame_pngs(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.glob("*.png"))}


def sequence_folders(gt: Path, pred: Path) -> list[tuple[str, Path, Path]]:
    """(name, prediction folder, annotation folder) pairs.

    ``gt`` is either one sequence (a folder of PNGs) or a folder of sequence folders; ``pred``
    mirrors it. A sequence missing from ``pred`` is an error naming it.
    """
    gt, pred = Path(gt), Path(pred)
    for folder, what in ((gt, "annotation"), (pred, "prediction")):
        if not folder.is_dir():
            raise InputError(f"{folder}: {what} folder not found")
    if any(gt.glob("*.png")):
        return [(gt.name, pred, gt)]
    names = sorted(p.name for p in gt.iterdir() if p.is_dir() and any(p.glob("*.png")))
    if not names:
        raise InputError(f"{gt}: no annotation PNGs, neither in it nor in its sub-folders")
    missing = [n for n in names if not (pred / n).is_dir()]
    if missing:
        raise InputError(f"{pred}: no prediction folder for sequence(s) {', '.join(missing)}")
    return [(n, pred / n, gt / n) for n in names]


def evaluate_folders(pred: str | Path, gt: str | Path, skip_first: bool = True,
                     bound_th: float = BOUND_TH) -> BenchmarkScore:
    """Score prediction PNGs against annotation PNGs, frames matched by file name.

    ``skip_first`` leaves out each sequence's first annotated frame (the semi-supervised
    protocol: it is the given mask). A prediction missing for an annotated frame is an error
    naming the frames.
    """
    scores = []
    for name, pred_dir, gt_dir in sequence_folders(Path(gt), Path(pred)):
        gt_frames = _frame_pngs(gt_dir)
        pred_frames = _frame_pngs(pred_dir)
        frames = sorted(gt_frames)[1 if skip_first else 0:]
        missing = [f for f in frames if f not in pred_frames]
        if missing:
            shown = ", ".join(f"{f}.png" for f in missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
            raise InputError(f"{pred_dir}: {len(missing)} prediction frame(s) missing for sequence {name}: {shown}")
        pairs = ((f, *_read_pair(pred_frames[f], gt_frames[f])) for f in frames)
        scores.append(score_sequence(name, pairs, bound_th))
    return BenchmarkScore(scores)


def _read_pair(pred_path: Path, gt_path: Path) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = read_mask(pred_path), read_mask(gt_path)
    if pred.shape != gt.shape:
        raise InputError(f"{pred_path}: size {pred.shape[1]}x{pred.shape[0]} differs from the annotation's "
                         f"{gt.shape[1]}x{gt.shape[0]} ({gt_path})")
    return pred, gt
