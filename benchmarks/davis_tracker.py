"""Weight-free tracker on DAVIS 2016: J, F, J&F per sequence and mean, and tracking speed.

Semi-supervised protocol: the first frame's annotation is given, frames 1..N-1 are scored
(DAVIS metrics, :mod:`visa_edge.runtime.vos_metrics`). Speed counts ``Tracker.step`` only
(frames are decoded beforehand), at the data's resolution (854x480 for 480p).

    python -m visa_edge.benchmarks.davis_tracker [--davis DIR] [--threads 2] [--json OUT]
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
from visa_edge.runtime.tracking.flow import FlowTracker, FlowTrackerConfig
from visa_edge.runtime.vos_metrics import BenchmarkScore, SequenceScore, score_sequence

DEFAULT_DAVIS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis2016"


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


def load_sequence(davis: Path, name: str, resolution: str = "480p", max_frames: int | None = None):
    """(frame names, RGB frames, binary annotations) of one sequence, in order."""
    paths = sorted((davis / "JPEGImages" / resolution / name).glob("*.jpg"))[:max_frames]
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
        max_frames: int | None = None) -> tuple[BenchmarkScore, list[SequenceRun]]:
    """The flow tracker on each sequence; the score and the per-sequence runs."""
    tracker = FlowTracker(config)
    runs = []
    for name in sequences or sequence_names(davis):
        names, frames, masks = load_sequence(davis, name, max_frames=max_frames)
        runs.append(run_sequence(tracker, name, names, frames, masks))
    return BenchmarkScore([r.score for r in runs]), runs


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
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if args.threads:
        cv2.setNumThreads(args.threads)
    before = machine()
    config = FlowTrackerConfig()
    score, runs = run(args.davis, args.sequences, config, args.max_frames)
    frames = sum(r.tracked_frames for r in runs)
    seconds = sum(r.seconds for r in runs)
    print(score.table())
    print(f"speed: {frames / seconds:.1f} fps ({frames} frames, {seconds:.1f} s in Tracker.step; "
          f"{before['cpu']}, {before['cores']} cores, OpenCV threads {before['opencv_threads']}, "
          f"load average at start {before['load_average']})")
    if args.json:
        report = {
            "tracker": "flow", "config": asdict(config), "data": str(args.davis),
            "protocol": "first-frame annotation given; frames 1..N-1 scored",
            "scores": score.to_dict(),
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
