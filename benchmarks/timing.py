"""Wall-clock measurement: warm-up, interleaved repeats, percentile summaries.

Backends of one stage are timed in interleaved rounds (each round runs every backend once,
in an order that changes per round), so that a change of machine load during the measurement
affects all of them alike and their ratios stay meaningful on a shared machine. Calls follow
each other without idling (an idle gap makes sub-millisecond calls up to 10x slower on a busy
machine); the changing order makes every backend follow each of the others, so the short spin
of ONNX Runtime's worker threads after a run is spread over all of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class RepeatSettings:
    """How often to run: ``warmup`` untimed calls per backend (the caller makes them), then
    ``repeats`` timed rounds, stopping early once ``min_repeats`` rounds are done and
    ``budget_s`` has elapsed."""

    warmup: int = 2
    repeats: int = 20
    min_repeats: int = 5
    budget_s: float = 10.0
    interleave: bool = True  # False: one backend at a time (when several copies of a model do not fit in memory)

    def __post_init__(self):
        if self.warmup < 0 or not 1 <= self.min_repeats <= self.repeats or self.budget_s <= 0:
            raise ValueError(f"{self}: expected warmup >= 0, 1 <= min_repeats <= repeats, budget_s > 0")


def summarize(seconds: Sequence[float]) -> dict[str, float | int]:
    """p50/p90/p99/mean/min/max in milliseconds (linear-interpolated percentiles) and n."""
    if not seconds:
        raise ValueError("summarize: no samples")
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    out: dict[str, float | int] = {f"p{q}": float(np.percentile(ms, q)) for q in PERCENTILES}
    out.update(mean=float(ms.mean()), min=float(ms.min()), max=float(ms.max()), n=int(ms.size))
    return out


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for queued GPU work on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_call(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    """Seconds one call of ``fn`` takes, GPU work included."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def measure_interleaved(
    runners: Mapping[str, Callable[[], object]], settings: RepeatSettings, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Seconds per timed call of each (already warmed-up) runner, in rounds of :func:`round_order`."""
    names = list(runners)
    samples: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(settings.repeats):
        for name in round_order(names, r):
            samples[name].append(time_call(runners[name], sync))
        if r + 1 >= settings.min_repeats and time.perf_counter() - start > settings.budget_s:
            break
    return samples


def round_order(names: Sequence[str], r: int) -> list[str]:
    """Order of round ``r``: rotated by ``r // 2`` and reversed on odd rounds, so that over the rounds each
    runner takes every position and follows each of the others."""
    shift = (r // 2) % len(names) if names else 0
    order = list(names[shift:]) + list(names[:shift])
    return order[::-1] if r % 2 else order


def ratio(reference: float | None, value: float | None) -> float | None:
    """``reference / value`` (a speed-up when both are times), None unless both are positive and finite."""
    if reference is None or value is None or not (math.isfinite(reference) and math.isfinite(value)):
        return None
    return reference / value if reference > 0 and value > 0 else None
