"""Soak: 10,000 small synthetic frames (paced at 60 fps) through the streaming runtime with a reasoner that fails every
7th step and hangs once; memory must stay flat, every frame gets a mask, every fault is reported.

    visa-edge bench --config stream-soak --out DIR [--frames 10000]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import psutil

from visa_edge.runtime import synthetic
from visa_edge.runtime.streaming import Frame, ReasonOutput, StreamConfig, StreamingRuntime
from visa_edge.runtime.tracking.factory import tracker_factory


@dataclass(frozen=True)
class SoakSettings:
    frames: int = 10_000
    fps: float = 60.0  # frames are paced at this rate (a camera), so catch-ups can converge
    frame_hw: tuple[int, int] = (60, 80)
    clip: int = 22  # the synthetic clip is looped
    every_frames: int = 30
    fail_every: int = 7  # every 7th reasoning step raises
    hang_step: int = 3  # this step hangs ...
    hang_s: float = 1.5  # ... this long, past the step timeout
    step_timeout_s: float = 0.5
    reasoning_s: float = 0.01
    warmup_frames: int = 2_000
    rss_every: int = 250  # frames between two RSS samples

    def __post_init__(self):
        if self.frames <= self.warmup_frames or self.hang_s <= self.step_timeout_s:
            raise ValueError(f"{self}: expected frames > warmup_frames and hang_s > step_timeout_s")


class FaultyReasoner:
    """The synthetic clip's true mask after ``reasoning_s``; raises on every ``fail_every``-th call, hangs once."""

    def __init__(self, settings: SoakSettings):
        self.s = settings
        self.calls = 0
        self.injected_failures = 0
        self._lock = threading.Lock()

    def __call__(self, frames: Sequence[Frame], query: str) -> ReasonOutput:
        with self._lock:
            self.calls += 1
            call = self.calls
            if call % self.s.fail_every == 0:
                self.injected_failures += 1
        if call % self.s.fail_every == 0:
            raise RuntimeError(f"injected failure at step {call}")
        time.sleep(self.s.hang_s if call == self.s.hang_step else self.s.reasoning_s)
        h, w = self.s.frame_hw
        return ReasonOutput(synthetic.ellipse_mask(frames[-1].index % self.s.clip, h, w, self.s.clip))


def soak(settings: SoakSettings = SoakSettings(), log: Callable[[str], None] = print) -> dict:
    h, w = settings.frame_hw
    clip = synthetic.video(settings.clip, h, w)
    reasoner = FaultyReasoner(settings)
    config = StreamConfig(window=8, references=4, every_frames=settings.every_frames, retry_delay_s=0.0,
                          step_timeout_s=settings.step_timeout_s, buffer_frames=64)
    process = psutil.Process()
    rss: list[tuple[int, float]] = []
    sources: dict[str, int] = {}
    bad_masks = 0
    t0 = time.monotonic()
    rt = StreamingRuntime(reasoner, tracker_factory("flow"), config, query="the red ellipse")
    try:
        for i in range(settings.frames):
            delay = t0 + i / settings.fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            r = rt.process(Frame(i, i / settings.fps, clip[i % settings.clip], f"{i:05d}"))
            sources[r.mask_source] = sources.get(r.mask_source, 0) + 1
            bad_masks += r.mask.shape != (h, w) or r.mask.dtype != np.uint8
            if i % settings.rss_every == 0:
                rss.append((i, process.memory_info().rss / 2**20))
            if i % 2000 == 0:
                log(f"stream-soak: frame {i}, RSS {rss[-1][1]:.0f} MiB")
    finally:
        closed = rt.close(timeout=5.0)
    wall = time.monotonic() - t0
    after = [m for i, m in rss if i >= settings.warmup_frames]
    base = after[0]
    stats = rt.stats.snapshot()
    return {
        "settings": asdict(settings),
        "frames": stats["frames"], "results": sum(sources.values()), "bad_masks": bad_masks, "mask_sources": sources,
        "wall_s": wall, "fps": settings.frames / wall,
        "rss_mib": {"at_warmup_end": base, "max_after": max(after), "end": after[-1],
                    "growth_pct": 100 * (max(after) - base) / base, "series": rss},
        "faults": {"injected_failures": reasoner.injected_failures, "reasoning_failed": stats["reasoning_failed"],
                   "hangs_injected": int(reasoner.calls >= settings.hang_step), "reasoning_hung": stats["reasoning_hung"],
                   "workers_abandoned": stats["workers_abandoned"], "close_returned": closed},
        "reasoning": {"calls": reasoner.calls, "completed": stats["reasoning_completed"],
                      "discarded": stats["results_discarded"], "catchup_frames": stats["catchup_frames"]},
        "checks": {
            "mask_for_every_frame": sum(sources.values()) == settings.frames and bad_masks == 0,
            "rss_growth_under_5pct": 100 * (max(after) - base) / base < 5.0,
            "every_failure_reported": stats["reasoning_failed"] == reasoner.injected_failures,
            "hang_reported": stats["reasoning_hung"] == 1,
        },
    }


def table(result: dict) -> str:
    r, rss, f = result, result["rss_mib"], result["faults"]
    return "\n".join([
        "| frames | results | fps | RSS after warm-up / max / end MiB | growth | failures injected / reported | "
        "hangs injected / reported | workers abandoned | checks |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {r['frames']} | {r['results']} | {r['fps']:.0f} | {rss['at_warmup_end']:.1f} / {rss['max_after']:.1f} / "
        f"{rss['end']:.1f} | {rss['growth_pct']:.2f} % | {f['injected_failures']} / {f['reasoning_failed']} | "
        f"{f['hangs_injected']} / {f['reasoning_hung']} | {f['workers_abandoned']} | "
        + ("all pass" if all(r["checks"].values()) else "FAILED: " + ", ".join(k for k, v in r["checks"].items() if not v))
        + " |",
    ])
