"""Offline mode on ReVOS/MeViS-format datasets: VISA's evaluation pipeline, faster.

Layout: ``DATASET/JPEGImages/{video}/{frame}.jpg`` and a ``meta_expressions.json``
(``{"videos": {video: {"frames": [...], "expressions": {exp_id: {"exp", "type_id", "anno_id"}}}}}``).
For every expression: one reasoning step on the target frame (``tp`` of a text-guided
frame sampler JSON like VISA's ``*_llamavid.json``: frame ``int(n * tp)``; default the middle
frame), with VISA's reference sampling over the whole video, then tracking forward and
backward from it. Frames' visual tokens are cached per video, so a video's frames are
encoded once for all of its expressions. Output: ``OUT/Annotations/{video}/{exp_id}/{frame}.png``.

Evaluation follows VISA's ``tools/eval_revos.py`` definitions: per expression J, F (DAVIS),
A (pixel accuracy) and R (robustness: 1 - false-positive area / foreground area, floored
at 0), averaged over frames; then means per type (0 referring, 1 reasoning) and "overall"
= the mean of the two type means. VISA's script compares 0/255 predictions with 0/1 ground
truth in A and R (a predicted-foreground pixel never "equals" the ground truth, and false
positives count 255 times); this implementation binarises both (``compat_visa=True``
reproduces VISA's numbers).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import rle
from .errors import InputError
from .io import read_mask, read_rgb, write_mask
from .frames import Frame, sample_references
from .reasoner_protocol import Reasoner
from .tracking import Tracker
from .vos_metrics import boundary_f, jaccard

TYPES = {0: "referring", 1: "reasoning"}


@dataclass(frozen=True)
class Expression:
    video: str
    exp_id: str
    text: str
    type_id: int
    anno_ids: tuple[str, ...]
    tp: float  # target position in [0, 1]


@dataclass
class Video:
    name: str
    frames: list[str]
    expressions: list[Expression] = field(default_factory=list)


def load_meta(meta: str | Path, tfs: str | Path | None = None) -> list[Video]:
    """Videos and expressions of a meta_expressions JSON, with ``tp`` from a TFS JSON if given."""
    data = _read_json(meta).get("videos")
    if not isinstance(data, dict):
        raise InputError(f"{meta}: expected a JSON object with a 'videos' mapping")
    tps = {}
    if tfs is not None:
        for vid, v in (_read_json(tfs).get("videos") or {}).items():
            for exp_id, e in v.get("expressions", {}).items():
                if "tp" in e:
                    tps[(vid, exp_id)] = float(e["tp"])
    videos = []
    for name, v in data.items():
        try:
            frames = sorted(v["frames"])
            exps = [
                Expression(name, str(exp_id), e["exp"], int(e.get("type_id", 0)), tuple(str(a) for a in e.get("anno_id", ())),
                           tps.get((name, str(exp_id)), 0.5))
                for exp_id, e in v["expressions"].items()
            ]
        except (KeyError, TypeError) as e:
            raise InputError(f"{meta}: video {name!r} lacks {e}; expected 'frames' and 'expressions' with 'exp'") from e
        videos.append(Video(name, frames, exps))
    return videos


def target_index(n_frames: int, tp: float) -> int:
    """VISA's target frame for a position ``tp`` in [0, 1]: ``int(n * tp)``, at most the last frame."""
    return min(int(n_frames * tp), n_frames - 1)


def segment(
    dataset: str | Path,
    videos: list[Video],
    out: str | Path,
    reasoner: Reasoner,
    tracker_factory: Callable[[], Tracker],
    progress: Callable[[Expression], None] | None = None,
) -> dict[str, int]:
    """Segment every expression; expressions whose output folder is complete are skipped (resumable)."""
    root, out = Path(dataset), Path(out) / "Annotations"
    counts = {"segmented": 0, "skipped": 0}
    for video in videos:
        todo = [e for e in video.expressions if not _complete(out / video.name / e.exp_id, video.frames)]
        counts["skipped"] += len(video.expressions) - len(todo)
        if not todo:
            continue
        frames = _VideoFrames(root / "JPEGImages" / video.name, video.frames)
        if hasattr(reasoner, "reset"):
            reasoner.reset()  # token cache keyed by frame position: valid within one video only
        for exp in todo:
            masks = _segment_expression(frames, exp, reasoner, tracker_factory)
            _write_atomically(out / video.name / exp.exp_id, video.frames, masks)
            counts["segmented"] += 1
            if progress is not None:
                progress(exp)
    return counts


def _segment_expression(frames: "_VideoFrames", exp: Expression, reasoner: Reasoner, factory: Callable[[], Tracker]) -> list[np.ndarray]:
    n = len(frames)
    t = target_index(n, exp.tp)
    refs = [frames[i] for i in sample_references(n, t)]
    mask = reasoner(refs + [frames[t]], exp.text).mask
    masks: list[np.ndarray] = [np.zeros_like(mask)] * n
    masks[t] = mask
    if not mask.any():
        return masks  # as VISA: an empty reasoned mask is the answer on every frame
    for order in (range(t + 1, n), range(t - 1, -1, -1)):
        tracker = factory()
        tracker.anchor(frames[t].image, mask)
        for i in order:
            masks[i] = tracker.step(frames[i].image).mask
    return masks


class _VideoFrames:
    """Lazily decoded, memoised frames of one video as stream Frames (index = position)."""

    def __init__(self, folder: Path, names: list[str]):
        self.folder, self.names = folder, names
        self._cache: dict[int, Frame] = {}

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Frame:
        if i not in self._cache:
            path = self.folder / f"{self.names[i]}.jpg"
            if not path.is_file():
                path = path.with_suffix(".png")
            self._cache[i] = Frame(i, float(i), read_rgb(path), self.names[i])
        return self._cache[i]


def _complete(folder: Path, frames: list[str]) -> bool:
    return folder.is_dir() and all((folder / f"{f}.png").is_file() for f in frames)


def _write_atomically(folder: Path, names: list[str], masks: list[np.ndarray]) -> None:
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, mask in zip(names, masks):
        write_mask(tmp / f"{name}.png", mask)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


@dataclass(frozen=True)
class ExpressionScore:
    video: str
    exp_id: str
    type_id: int
    j: float
    f: float
    a: float
    r: float | None

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2


def evaluate(
    pred: str | Path,
    videos: list[Video],
    mask_dict: str | Path,
    foreground: str | Path | None = None,
    compat_visa: bool = False,
) -> list[ExpressionScore]:
    """Score every expression of ``videos`` against ``mask_dict`` (anno_id -> per-frame RLE)."""
    pred = Path(pred)
    pred = pred / "Annotations" if (pred / "Annotations").is_dir() else pred
    annos = _read_json(mask_dict)
    fg = _read_json(foreground) if foreground is not None else None
    scores = []
    for video in videos:
        fg_masks = _foreground(fg, video, foreground) if fg is not None else None
        for exp in video.expressions:
            scores.append(_score_expression(pred / video.name / exp.exp_id, video, exp, annos, fg_masks, compat_visa, mask_dict))
    return scores


def _score_expression(folder, video, exp, annos, fg_masks, compat, source) -> ExpressionScore:
    js, fs, accs, robs = [], [], [], []
    for i, name in enumerate(video.frames):
        path = folder / f"{name}.png"
        if not path.is_file():
            raise InputError(f"{path}: prediction missing for {video.name}/{exp.exp_id} frame {name}")
        p = read_mask(path)
        g = _gt_mask(annos, exp, i, p.shape, source)
        js.append(jaccard(p, g))
        fs.append(boundary_f(p, g))
        scale = 255 if compat else 1  # VISA's script compares 0/255 predictions with 0/1 ground truth
        accs.append(float(np.mean(g == p * scale)))
        if fg_masks is not None:
            false_pos = float(((1 - g) * p).sum()) * scale
            robs.append(max(1 - false_pos / (float(fg_masks[i].sum()) + 1e-6), 0.0))
    r = float(np.mean(robs)) if fg_masks is not None else None
    return ExpressionScore(video.name, exp.exp_id, exp.type_id, float(np.mean(js)), float(np.mean(fs)), float(np.mean(accs)), r)


def _gt_mask(annos: dict, exp: Expression, i: int, shape, source) -> np.ndarray:
    g = np.zeros(shape, np.uint8)
    for anno in exp.anno_ids:
        if anno not in annos:
            raise InputError(f"{source}: no annotation {anno!r} (expression {exp.video}/{exp.exp_id})")
        r = annos[anno][i]
        if r:
            m = rle.decode(r)
            if m.shape != g.shape:
                raise InputError(f"{source}: annotation {anno} frame {i} is {m.shape}, prediction is {g.shape}")
            g |= m
    return g


def _foreground(fg: dict, video: Video, source) -> list[np.ndarray]:
    try:
        return [rle.decode(r) for r in fg[video.name]["masks_rle"]]
    except KeyError as e:
        raise InputError(f"{source}: no foreground masks for video {video.name!r}") from e


def summarize(scores: list[ExpressionScore]) -> dict:
    """Means per type (referring, reasoning) and overall (the mean of the type means), in %."""
    out: dict[str, dict] = {}
    for type_id, name in TYPES.items():
        group = [s for s in scores if s.type_id == type_id]
        if group:
            out[name] = _means(group)
    if out:
        keys = next(iter(out.values())).keys()
        out["overall"] = {k: (None if any(v[k] is None for v in out.values()) else float(np.mean([v[k] for v in out.values()])))
                          for k in keys}
    return out


def _means(group: list[ExpressionScore]) -> dict:
    j = 100 * float(np.mean([s.j for s in group]))
    f = 100 * float(np.mean([s.f for s in group]))
    rs = [s.r for s in group]
    return {"J": j, "F": f, "JF": (j + f) / 2, "A": 100 * float(np.mean([s.a for s in group])),
            "R": None if None in rs else 100 * float(np.mean(rs))}


def _read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e
