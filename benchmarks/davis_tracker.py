"""Weight-free tracker on DAVIS 2016: J, F, J&F per sequence, per hold-out group and mean, and speed.

Semi-supervised protocol: the first frame's annotation is given, frames 1..N-1 are scored
(DAVIS metrics, :mod:`visa_edge.runtime.vos_metrics`). Speed counts ``Tracker.step`` only
(frames are decoded beforehand), at the data's resolution (854x480 for 480p). ``--stride 3``
keeps every 3rd frame: 3x faster motion, the fast-motion check. The tracker's defaults were
chosen on ``TUNED`` only; ``HELD_OUT`` sequences are reported separately. ``--catch-up`` also
re-steps each sequence with a second tracker of the same factory (as the streaming runtime's
catch-up does) and reports its time against live stepping and whether its masks are equal.
``--procedural`` also scores synthetic stress clips (:func:`procedural_clip`: fast motion up to
twice the object's size per frame, scale change, deformation, each also with look-alike discs in
the background): tuning data that can be generated freely, never a substitute for held-out video.

    python -m visa_edge.benchmarks.davis_tracker [--davis DIR] [--threads 2] [--stride 3] [--catch-up]
        [--procedural] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from visa_edge.runtime.io import read_mask, read_rgb
from visa_edge.runtime.tracking.base import Tracker
from visa_edge.runtime.tracking.cache import FeatureCache
from visa_edge.runtime.tracking.flow import FlowTracker, FlowTrackerConfig
from visa_edge.runtime.vos_metrics import BenchmarkScore, SequenceScore, jaccard, score_sequence

DEFAULT_DAVIS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis2016"
TUNED = ("blackswan", "car-shadow", "dog")  # the only sequences the defaults were chosen on
HELD_OUT = ("bmx-trees", "kite-surf")  # reported, never used to choose anything


@dataclass
class SequenceRun:
    """A sequence's score and the time the tracker spent on it."""

    score: SequenceScore
    tracked_frames: int
    seconds: float


def sequence_names(davis: Path, resolution: str = "480p") -> list[str]:
    """Sequences that have both frames and annotations."""
    frames = davis / "JPEGImages" / resolution
    if not frames.is_dir():
        raise FileNotFoundError(f"{frames}: DAVIS frames folder not found")
    return sorted(p.name for p in frames.iterdir() if (davis / "Annotations" / resolution / p.name).is_dir())


def load_sequence(davis: Path, name: str, resolution: str = "480p", max_frames: int | None = None, stride: int = 1):
    """(frame names, RGB frames, binary annotations) of one sequence, in order: every ``stride``-th
    frame, then the first ``max_frames`` of those."""
    paths = sorted((davis / "JPEGImages" / resolution / name).glob("*.jpg"))[::stride][:max_frames]
    frames = [read_rgb(p) for p in paths]
    masks = [read_mask(davis / "Annotations" / resolution / name / f"{p.stem}.png") for p in paths]
    return [p.stem for p in paths], frames, masks


def run_sequence(tracker: Tracker, name: str, names: list[str], frames: list[np.ndarray],
                 masks: list[np.ndarray]) -> SequenceRun:
    """Track from the first annotation and score frames 1..N-1."""
    tracker.reset()
    preds = []
    t0 = time.perf_counter()
    tracker.step(frames[0], masks[0])
    for frame in frames[1:]:
        preds.append(tracker.step(frame).mask)
    seconds = time.perf_counter() - t0
    score = score_sequence(name, zip(names[1:], preds, masks[1:]))
    return SequenceRun(score, len(frames), seconds)


def run(davis: Path, sequences: list[str] | None = None, config: FlowTrackerConfig | None = None,
        max_frames: int | None = None, stride: int = 1) -> tuple[BenchmarkScore, list[SequenceRun]]:
    """The flow tracker on each sequence; the score and the per-sequence runs."""
    tracker = FlowTracker(config)
    runs = []
    for name in sequences or sequence_names(davis):
        names, frames, masks = load_sequence(davis, name, max_frames=max_frames, stride=stride)
        runs.append(run_sequence(tracker, name, names, frames, masks))
    return BenchmarkScore([r.score for r in runs]), runs


@dataclass
class CatchUpRun:
    """Live stepping (features computed) against a catch-up tracker re-stepping the same frames
    from the same anchor with the live tracker's features cached."""

    live_seconds: float
    catch_up_seconds: float
    cache_hits: int
    equal: bool  # the catch-up tracker's probabilities equal the live tracker's


def catch_up(frames: list[np.ndarray], first_mask: np.ndarray, config: FlowTrackerConfig | None = None) -> CatchUpRun:
    """Time a live tracker stepping ``frames`` (stream indices 0..N-1) and a second tracker of the
    same cache re-stepping them from the same anchor."""
    cache = FeatureCache(len(frames))
    timings, outputs = [], []
    for _ in range(2):
        tracker = FlowTracker(config, cache=cache)
        hits = cache.hits
        t0 = time.perf_counter()
        probs = [tracker.step(frames[0], first_mask, index=0).prob]
        probs += [tracker.step(f, index=i).prob for i, f in enumerate(frames[1:], 1)]
        timings.append(time.perf_counter() - t0)
        outputs.append(probs)
    equal = all(np.array_equal(a, b) for a, b in zip(*outputs))
    return CatchUpRun(timings[0], timings[1], cache.hits - hits, equal)


PROCEDURAL = (("fast", 16), ("fast", 32), ("fast", 48), ("bounce", 30), ("scale", 20), ("deform", 28))


def _texture(rng: np.random.Generator, h: int, w: int, sigma: float, lo, hi) -> np.ndarray:
    t = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), sigma)
    t = (t - t.min()) / (t.max() - t.min())
    return (np.asarray(lo) + t * (np.asarray(hi) - np.asarray(lo))).astype(np.uint8)


def procedural_clip(kind: str, speed: int, look_alikes: bool = False, n: int = 16, h: int = 240, w: int = 427,
                    seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A reddish textured disc over green texture panning 3 px/frame left; (RGB frames, 0/1 masks).

    ``fast``: ``speed`` px/frame right with a y jitter; ``bounce``: back and forth across the
    frame; ``scale``: half the speed, radius 15 + 3 px per frame (approaching); ``deform``: an
    ellipse turning 30 degrees and changing its axes every frame. ``look_alikes``: three static
    discs of the object's colours in the background from the first frame on.
    """
    if kind not in {k for k, _ in PROCEDURAL}:
        raise ValueError(f"procedural_clip: kind {kind!r}; expected one of {sorted({k for k, _ in PROCEDURAL})}")
    rng = np.random.default_rng(seed)
    background = _texture(rng, h, w, 4, (40, 90, 40), (140, 200, 120))
    foreground = _texture(rng, h, w, 2, (170, 40, 40), (250, 120, 90))
    alike = np.zeros((h, w), bool)
    if look_alikes:
        place = np.random.default_rng(seed + 1)
        others = np.zeros((h, w), np.uint8)
        for _ in range(3):
            centre = (int(place.integers(30, w - 30)), int(place.integers(30, h - 30)))
            cv2.circle(others, centre, int(place.integers(12, 22)), 1, -1)
        alike = others > 0
    frames, masks = [], []
    for i in range(n):
        x, y, r = 40 + speed * i, 120 + (speed // 3) * (i % 3), 25
        if kind == "bounce":
            p = (40 + speed * i) % (2 * (w - 80))
            x, y = 40 + (p if p < w - 80 else 2 * (w - 80) - p), 120 + 30 * np.sin(i)
        elif kind == "scale":
            x, y, r = 60 + speed * i // 2, 120, 15 + 3 * i
        m = np.zeros((h, w), np.uint8)
        if kind == "deform":
            axes = (int(25 + 12 * np.sin(i)), int(25 - 12 * np.sin(i)))
            cv2.ellipse(m, (int(x), 120), axes, 30 * i, 0, 360, 1, -1)
        else:
            cv2.circle(m, (int(x), int(y)), r, 1, -1)
        f = np.roll(background, -3 * i, axis=1)
        f[alike] = foreground[alike]
        f[m > 0] = np.roll(foreground, int(x) - 40, axis=1)[m > 0]  # the object's texture moves with it
        frames.append(f)
        masks.append(m)
    return frames, masks


def run_procedural(config: FlowTrackerConfig | None = None, look_alikes: bool = False) -> dict[str, float]:
    """Mean J over frames 1..N-1 of each procedural clip (a frame where both masks are empty scores 1)."""
    means = {}
    for kind, speed in PROCEDURAL:
        frames, masks = procedural_clip(kind, speed, look_alikes)
        tracker = FlowTracker(config)
        tracker.step(frames[0], masks[0])
        scores = []
        for frame, mask in zip(frames[1:], masks[1:]):
            pred = tracker.step(frame).mask
            scores.append(1.0 if not mask.any() and not pred.any() else jaccard(pred, mask))
        means[f"{kind} {speed}"] = float(np.mean(scores))
    return means


def group_means(runs: list[SequenceRun]) -> dict[str, float]:
    """Mean J&F over the tuned and the held-out sequences present in ``runs``."""
    means = {}
    for group, names in (("tuned", TUNED), ("held_out", HELD_OUT)):
        scores = [r.score.jf for r in runs if r.score.name in names]
        if scores:
            means[group] = float(np.mean(scores))
    return means


def machine() -> dict:
    """What the speed was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "opencv_threads": cv2.getNumThreads(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--davis", type=Path, default=DEFAULT_DAVIS, help=f"DAVIS 2016 folder (default {DEFAULT_DAVIS})")
    p.add_argument("--sequences", nargs="+", help="sequence names (default: all)")
    p.add_argument("--threads", type=int, help="OpenCV threads (default: OpenCV's choice)")
    p.add_argument("--max-frames", type=int, help="track only the first N frames of each sequence")
    p.add_argument("--stride", type=int, default=1, help="keep every N-th frame (N x faster motion; default 1)")
    p.add_argument("--catch-up", action="store_true", help="also time a catch-up tracker re-stepping from cached features")
    p.add_argument("--procedural", action="store_true",
                   help="also score the procedural stress clips (fast motion, scale, deformation; with look-alikes)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if args.threads:
        cv2.setNumThreads(args.threads)
    before = machine()
    config = FlowTrackerConfig()
    score, runs = run(args.davis, args.sequences, config, args.max_frames, args.stride)
    frames = sum(r.tracked_frames for r in runs)
    seconds = sum(r.seconds for r in runs)
    print(score.table())
    groups = group_means(runs)
    print("  ".join(f"{g} J&F {v:.3f}" for g, v in groups.items()) + f"  (stride {args.stride})")
    catch_ups = {}
    if args.catch_up:
        for r in runs:
            _, seq_frames, masks = load_sequence(args.davis, r.score.name, max_frames=args.max_frames, stride=args.stride)
            c = catch_up(seq_frames, masks[0], config)
            catch_ups[r.score.name] = asdict(c)
            print(f"catch-up {r.score.name}: {c.catch_up_seconds / c.live_seconds:.2f} x live time, "
                  f"{c.cache_hits} cache hits, masks equal: {c.equal}")
    procedural = {}
    if args.procedural:
        procedural = {"plain": run_procedural(config), "look_alikes": run_procedural(config, look_alikes=True)}
        print("procedural clips, mean J:  " + "  ".join(procedural["plain"]))
        for name, means in procedural.items():
            print(f"  {name:>11}: " + "  ".join(f"{v:.2f}" for v in means.values()) + f"  mean {np.mean(list(means.values())):.3f}")
    print(f"speed: {frames / seconds:.1f} fps ({frames} frames, {seconds:.1f} s in Tracker.step; "
          f"{before['cpu']}, {before['cores']} cores, OpenCV threads {before['opencv_threads']}, "
          f"load average at start {before['load_average']})")
    if args.json:
        report = {
            "tracker": "flow", "config": asdict(config), "data": str(args.davis),
            "protocol": "first-frame annotation given; frames 1..N-1 scored",
            "stride": args.stride, "tuned_on": list(TUNED), "held_out": list(HELD_OUT),
            "scores": score.to_dict(), "group_means": groups, "catch_up": catch_ups, "procedural": procedural,
            "speed": {"fps": frames / seconds, "frames": frames, "seconds": seconds,
                      "per_sequence_fps": {r.score.name: r.tracked_frames / r.seconds for r in runs}},
            "machine": {**before, "load_average_end": machine()["load_average"]},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
