"""The report's quality figure: the weight-free tracker's J&F on DAVIS 2016, via ``davis_tracker``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .davis_tracker import DEFAULT_DAVIS, HELD_OUT, TUNED, group_means, run, sequence_names

DAVIS_DEFAULT = DEFAULT_DAVIS


@dataclass(frozen=True)
class QualitySettings:
    """How much of DAVIS to score: the first ``sequences`` sequences (by name), the first ``frames``
    frames of each (None: all)."""

    sequences: int | None = None
    frames: int | None = None


def davis_quality(davis: Path, settings: QualitySettings) -> dict:
    """J, F and J&F per sequence and their mean, with the tracker's speed; skipped with the reason when
    the data is absent."""
    if not (davis / "JPEGImages" / "480p").is_dir():
        return {"status": "skipped", "reason": f"DAVIS 2016 not found at {davis} (expected JPEGImages/480p, Annotations/480p)"}
    names = sequence_names(davis)[: settings.sequences]
    score, runs = run(davis, names, max_frames=settings.frames)
    frames = sum(r.tracked_frames for r in runs)
    seconds = sum(r.seconds for r in runs)
    scope = "all frames" if settings.frames is None else f"the first {settings.frames} frames of each sequence"
    return {
        "status": "ok",
        "tracker": "flow",
        "data": str(davis),
        "protocol": f"DAVIS 2016 val 480p, semi-supervised: the first frame's annotation is given, frames 1..N-1 "
                    f"are scored (J: region IoU, F: boundary F-measure); {len(names)} sequence(s), {scope}.",
        "sequences": {r.score.name: {"scored_frames": len(r.score.frames), "J": r.score.j, "F": r.score.f, "JF": r.score.jf,
                                     "fps": r.tracked_frames / r.seconds} for r in runs},
        "scored_frames": sum(len(r.score.frames) for r in runs),
        "J": score.j,
        "F": score.f,
        "JF": score.jf,
        "JF_by_group": group_means(runs),  # the tracker's defaults were chosen on TUNED only
        "tuned_on": list(TUNED),
        "held_out": list(HELD_OUT),
        "tracker_fps": frames / seconds,
    }
