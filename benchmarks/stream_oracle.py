"""Latency compensation measured with an ORACLE reasoner: what the scheduler and the tracker make of a slow step.

A measuring instrument of the streaming runtime's scheduler and tracker, never of model
accuracy: the "reasoner" sleeps L seconds and returns the ground-truth mask of the frame it
was asked about. DAVIS-format sequences are replayed paced in real time (a live camera) through
the ``StreamingRuntime`` with the weight-free flow tracker, re-reasoning every ``every_frames``
frames; its published masks are scored with DAVIS J&F (frames 1..N-1) against the same
policies computed offline on the same frames:

- naive: the t0 mask is pasted at the frame ta where it arrives (no catch-up), tracked on;
- ideal: same requests and arrivals, but the catch-up from t0 to ta costs nothing;
- tracking only: the first request only (frame 0's mask, arriving after L and caught up for free), no
  re-reasoning: what re-reasoning adds is the runtime's gain over it;
- tracking from frame 0: frame 0's mask at frame 0 without any delay, no re-reasoning (a reference: no
  reasoner delivers it);
- blocking L = 0: the ground truth every ``every_frames`` frames, at once (an upper bound).

Requests of the offline policies follow the runtime's cadence: one at frame 0, the next
``every_frames`` frames later or when the previous result arrived, whichever is later.

Where the runtime loses against ideal is reported with it: each swap's catch-up lag (frames the
live path tracked from the result's arrival to the swap of the caught-up tracker; ideal's is 0)
and duration, the catch-up's cost per frame against a live step's, how many catch-up frames were
bridged (``StreamConfig.catchup_full_steps``), and the anchors published against ideal's (the
runtime's next request waits for the catch-up, ideal's does not).
``OracleSettings.unbridged`` also runs the runtime with every catch-up frame a full step
(policy ``runtime_unbridged``), side by side in the same run.

    visa-edge bench --config stream-oracle --out DIR [--davis DIR] [--sequences a,b] [--latencies 0.5,1,2]
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from visa_edge.runtime.streaming import Frame, FrameResult, ReasonOutput, StreamConfig, StreamingRuntime
from visa_edge.runtime.streaming.sources import FrameListSource, Paced
from visa_edge.runtime.tracking.base import Tracker
from visa_edge.runtime.tracking.factory import tracker_factory
from visa_edge.runtime.vos_metrics import BenchmarkScore, score_sequence

from .davis_tracker import load_sequence, sequence_names
from .timing import summarize

POLICIES = ("runtime", "naive", "tracking_only", "ideal", "tracking_from_0", "blocking_l0")
LABEL = ("oracle reasoner (sleeps L s, returns the ground-truth mask of the frame asked about): a measuring "
         "instrument of the scheduler and the tracker, not model accuracy")


@dataclass(frozen=True)
class OracleSettings:
    """What the oracle benchmark replays and how."""

    davis: Path
    sequences: tuple[str, ...] = ()  # empty: every sequence with annotations
    latencies: tuple[float, ...] = (0.5, 1.0, 2.0)
    fps: float = 10.0
    every_frames: int = 15
    max_frames: int | None = None  # per sequence (None: all)
    catchup_full_steps: int | None = StreamConfig.catchup_full_steps  # the runtime's (None: no bridging)
    unbridged: bool = False  # also run the runtime without bridging (policy "runtime_unbridged")

    def __post_init__(self):
        if self.fps <= 0 or self.every_frames < 1 or not self.latencies or min(self.latencies) < 0:
            raise ValueError(f"{self}: expected fps > 0, every_frames >= 1, latencies >= 0")


@dataclass
class Clip:
    """One loaded sequence."""

    name: str
    names: list[str]
    frames: list[np.ndarray]
    masks: list[np.ndarray]  # ground truth, 0/1


class OracleReasoner:
    """Sleeps ``latency`` s and returns the ground-truth mask of the target frame."""

    def __init__(self, masks: Sequence[np.ndarray], latency: float):
        self.masks, self.latency = masks, latency

    def __call__(self, frames: Sequence[Frame], query: str) -> ReasonOutput:
        time.sleep(self.latency)
        return ReasonOutput((self.masks[frames[-1].index] > 0).astype(np.uint8), {"oracle_sleep": self.latency})


def schedule(n: int, delay: int, every: int) -> list[tuple[int, int]]:
    """(request frame t0, arrival frame ta) pairs: one step in flight, cadence ``every`` frames."""
    pairs, t0 = [], 0
    while t0 < n:
        ta = t0 + delay
        if ta < n:
            pairs.append((t0, ta))
        t0 = max(t0 + every, ta)
    return pairs


def offline(seq: Clip, new_tracker: Callable[[], Tracker], anchors: dict[int, tuple[int, bool]]) -> dict:
    """Published masks of an offline policy. ``anchors[ta] = (t0, catch_up)``: at frame ta, re-anchor with
    the ground truth of t0, either at t0 and stepped to ta for free (catch_up) or pasted at ta."""
    tracker: Tracker | None = None
    anchor = None
    masks, ages = [], []
    for i, frame in enumerate(seq.frames):
        if i in anchors:
            t0, catch_up = anchors[i]
            tracker = new_tracker()
            if catch_up:
                out = tracker.anchor(seq.frames[t0], seq.masks[t0])
                for j in range(t0 + 1, i + 1):
                    out = tracker.step(seq.frames[j])
            else:
                out = tracker.anchor(frame, seq.masks[t0])
            anchor = t0
        elif tracker is not None:
            out = tracker.step(frame)
        masks.append(np.zeros(frame.shape[:2], np.uint8) if tracker is None else out.mask)
        ages.append(None if anchor is None else i - anchor)
    return {"masks": masks, "ages": ages}


def runtime_policy(seq: Clip, latency: float, settings: OracleSettings, bridged: bool = True) -> dict:
    """The StreamingRuntime on the sequence paced at ``settings.fps`` as a live source (``bridged``:
    with ``settings.catchup_full_steps``, else every catch-up frame a full step)."""
    trackers = tracker_factory("flow")
    config = StreamConfig(window=1, references=1, every_frames=settings.every_frames,
                          catchup_full_steps=settings.catchup_full_steps if bridged else None)
    rt = StreamingRuntime(OracleReasoner(seq.masks, latency), trackers, config, query="oracle")
    frames = [Frame(i, i / settings.fps, img, name) for i, (img, name) in enumerate(zip(seq.frames, seq.names))]
    results: list[FrameResult] = []
    try:
        rt.run(Paced(FrameListSource(frames, settings.fps), settings.fps), on_result=results.append, live=True)
    finally:
        rt.close(timeout=latency + 30.0)
    period = 1.0 / settings.fps
    cache = getattr(trackers, "cache", None)
    live = [r.track_s for r in results if r.mask_source == "tracked" and r.track_s > 0]
    return {
        "masks": [r.mask for r in results],
        "ages": [r.anchor_age for r in results],
        "process_s": [r.ready - r.arrival for r in results],
        "delay_s": [r.delay_s for r in results if r.delay_s is not None and not r.dropped],
        "late": sum(1 for r in results if r.delay_s is not None and r.delay_s > 2 * period),
        "dropped": rt.stats.dropped_late,
        "sources": Counter(r.mask_source for r in results),
        "stats": {k: v for k, v in rt.stats.snapshot().items() if k not in ("last_error",)},
        "cache": None if cache is None else {"hits": cache.hits, "misses": cache.misses},
        "catchup_lag": list(rt.stats.catchup_lag),
        "catchup_s": list(rt.stats.catchup_s),
        "live_step_s": live,
        "anchors": len({r.anchor_index for r in results if r.anchor_index is not None}),
        "last_error": rt.stats.last_error,
    }


def score(seq: Clip, masks: Sequence[np.ndarray]):
    return score_sequence(seq.name, zip(seq.names[1:], masks[1:], seq.masks[1:]))


def measure(settings: OracleSettings, log: Callable[[str], None] = print) -> dict:
    """Every policy on every sequence at every latency; see the module docstring."""
    names = list(settings.sequences) or sequence_names(settings.davis)
    per: dict[str, dict[str, list]] = {}  # policy key -> {"scores": [...], "ages": [...], ...}

    def add(key: str, seq: Clip, run: dict) -> None:
        entry = per.setdefault(key, {"scores": [], "ages": [], "no_mask": 0, "frames": 0, "runs": []})
        entry["scores"].append(score(seq, run["masks"]))
        entry["ages"] += [a for a in run["ages"][1:] if a is not None]
        entry["no_mask"] += sum(1 for a in run["ages"][1:] if a is None)
        entry["frames"] += len(run["masks"]) - 1
        if "process_s" in run:
            entry["runs"].append(run)

    flow = tracker_factory("flow")
    for name in names:
        names_, frames, masks = load_sequence(settings.davis, name, max_frames=settings.max_frames)
        seq = Clip(name, names_, frames, [(m > 0).astype(np.uint8) for m in masks])
        n = len(frames)
        log(f"stream-oracle: {name} ({n} frames): tracking from frame 0, blocking L=0")
        add("tracking_from_0", seq, offline(seq, flow, {0: (0, True)}))
        add("blocking_l0", seq, offline(seq, flow, {t: (t, True) for t in range(0, n, settings.every_frames)}))
        for latency in settings.latencies:
            delay = math.ceil(latency * settings.fps - 1e-9)
            pairs = schedule(n, delay, settings.every_frames)
            log(f"stream-oracle: {name} L={latency:g} s: naive, ideal, runtime ({n / settings.fps:.0f} s paced)")
            add(f"naive@{latency:g}", seq, offline(seq, flow, {ta: (t0, False) for t0, ta in pairs}))
            add(f"ideal@{latency:g}", seq, offline(seq, flow, {ta: (t0, True) for t0, ta in pairs}))
            add(f"tracking_only@{latency:g}", seq, offline(seq, flow, {ta: (t0, True) for t0, ta in pairs[:1]}))
            add(f"runtime@{latency:g}", seq, {**runtime_policy(seq, latency, settings), "ideal_anchors": len(pairs)})
            if settings.unbridged:
                add(f"runtime_unbridged@{latency:g}", seq,
                    {**runtime_policy(seq, latency, settings, bridged=False), "ideal_anchors": len(pairs)})
    return {"label": LABEL, "settings": {**asdict(settings), "davis": str(settings.davis)}, "sequences": names,
            "policies": {key: summarize_policy(entry, settings) for key, entry in per.items()}}


def summarize_policy(entry: dict, settings: OracleSettings) -> dict:
    bench = BenchmarkScore(entry["scores"])
    ages = entry["ages"]
    out = {"J&F": bench.jf, "J": bench.j, "F": bench.f,
           "per_sequence": {s.name: s.jf for s in entry["scores"]},
           "frames": entry["frames"], "frames_without_mask": entry["no_mask"],
           "anchor_age": {"mean": float(np.mean(ages)), "p50": float(np.median(ages)), "max": int(max(ages))} if ages else None}
    runs = entry["runs"]
    if runs:
        process = [s for r in runs for s in r["process_s"]]
        delays = [s for r in runs for s in r["delay_s"]]
        out.update({
            "process_ms": summarize(process),
            "delay_ms": summarize(delays) if delays else None,
            "frames_late": sum(r["late"] for r in runs),
            "frames_dropped": sum(r["dropped"] for r in runs),
            "mask_sources": dict(sum((r["sources"] for r in runs), Counter())),
            "reasoning_completed": sum(r["stats"]["reasoning_completed"] for r in runs),
            "reasoning_coalesced": sum(r["stats"]["reasoning_coalesced"] for r in runs),
            "catchup_frames": sum(r["stats"]["catchup_frames"] for r in runs),
            "catchup_forced": sum(r["stats"]["catchup_forced"] for r in runs),
            "catchup_abandoned": sum(r["stats"]["catchup_abandoned"] for r in runs),
            "catchup_bridged": sum(r["stats"]["catchup_bridged"] for r in runs),
            "catchup_lag_frames": percentiles([x for r in runs for x in r["catchup_lag"]]),
            "catchup_ms": percentiles([1000 * x for r in runs for x in r["catchup_s"]]),
            "catchup_ms_per_frame": 1000 * sum(r["stats"]["catchup_step_s"] for r in runs)
            / max(sum(r["stats"]["catchup_frames"] for r in runs), 1),
            "live_step_ms_p50": 1000 * float(np.median([x for r in runs for x in r["live_step_s"]] or [np.nan])),
            "anchors_published": sum(r["anchors"] for r in runs),
            "ideal_anchors": sum(r["ideal_anchors"] for r in runs),
            "pasted": sum(r["stats"]["pasted"] for r in runs),
            "feature_cache": None if runs[0]["cache"] is None else
            {k: sum(r["cache"][k] for r in runs) for k in ("hits", "misses")},
            "errors": [r["last_error"] for r in runs if r["last_error"]],
        })
    return out


def percentiles(values: list[float]) -> dict | None:
    """p50 / p99 / max of ``values`` (None when empty)."""
    if not values:
        return None
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)), "max": float(max(values))}


def table(result: dict) -> str:
    """Markdown: J&F per policy and latency, then the runtime's scheduling figures."""
    s = result["settings"]
    lat = [f"{x:g}" for x in s["latencies"]]
    pol = result["policies"]

    def jf(key: str) -> str:
        return f"{pol[key]['J&F']:.3f}" if key in pol else ""

    rows = [f"| policy (J&F, {len(result['sequences'])} sequences, {s['fps']:g} fps, every {s['every_frames']} frames) | "
            + " | ".join(f"L = {x} s" for x in lat) + " |", "|---|" + "---|" * len(lat)]
    names = {"runtime": "streaming runtime (anchor at t0, catch up)", "naive": "naive: paste the t0 mask where it arrives",
             "tracking_only": "tracking only: first result (t0 = 0, after L), no re-reasoning",
             "ideal": "ideal compensation (catch-up for free)",
             "tracking_from_0": "reference: tracking from frame 0's mask without delay",
             "blocking_l0": "upper bound: blocking, L = 0"}
    names["runtime_unbridged"] = "streaming runtime, every catch-up frame a full step (no bridging)"
    for p in ("runtime", "runtime_unbridged", "naive", "tracking_only", "ideal"):
        if any(f"{p}@{x}" in pol for x in lat):
            rows.append(f"| {names[p]} | " + " | ".join(jf(f"{p}@{x}") for x in lat) + " |")
    for p in ("tracking_from_0", "blocking_l0"):
        rows.append(f"| {names[p]} | " + " | ".join([jf(p)] * len(lat)) + " |")
    if all(f"{p}@{x}" in pol for p in ("runtime", "ideal", "tracking_only") for x in lat):
        rows.append("| runtime / ideal | " + " | ".join(
            f"{pol[f'runtime@{x}']['J&F'] / pol[f'ideal@{x}']['J&F']:.2f}" for x in lat) + " |")
        rows.append("| runtime - tracking only | " + " | ".join(
            f"{pol[f'runtime@{x}']['J&F'] - pol[f'tracking_only@{x}']['J&F']:+.3f}" for x in lat) + " |")
    rows += ["", "| runtime at L | frames | without mask | anchor age mean / max | process() p50 / p99 ms | "
             "delay p50 / p99 ms | late (> 2 periods) | dropped | steps | forced / abandoned catch-ups | "
             "cache hits / misses |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in lat:
        r = pol.get(f"runtime@{x}")
        if r is None:
            continue
        age = r["anchor_age"] or {"mean": float("nan"), "max": "-"}
        d = r["delay_ms"] or {"p50": float("nan"), "p99": float("nan")}
        cache = r["feature_cache"]
        rows.append(f"| {x} s | {r['frames']} | {r['frames_without_mask']} | {age['mean']:.1f} / {age['max']} | "
                    f"{r['process_ms']['p50']:.0f} / {r['process_ms']['p99']:.0f} | {d['p50']:.0f} / {d['p99']:.0f} | "
                    f"{r['frames_late']} | {r['frames_dropped']} | {r['reasoning_completed']} | {r['catchup_forced']} / "
                    f"{r['catchup_abandoned']} | "
                    + ("-" if cache is None else f"{cache['hits']} / {cache['misses']}") + " |")
    rows += ["", "| catch-up at L | catch-up lag p50 / p99 / max (frames from arrival to swap) | catch-up p50 / p99 ms | "
             "bridged / catch-up frames | catch-up ms per frame / live step p50 ms | anchors published / ideal's |",
             "|---|---|---|---|---|---|"]
    for p in ("runtime", "runtime_unbridged"):
        for x in lat:
            r = pol.get(f"{p}@{x}")
            if r is None:
                continue
            lag = r["catchup_lag_frames"] or {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
            ms = r["catchup_ms"] or {"p50": float("nan"), "p99": float("nan")}
            rows.append(f"| {'' if p == 'runtime' else 'unbridged, '}{x} s | {lag['p50']:.0f} / {lag['p99']:.0f} / "
                        f"{lag['max']:.0f} | {ms['p50']:.0f} / {ms['p99']:.0f} | {r['catchup_bridged']} / "
                        f"{r['catchup_frames']} | {r['catchup_ms_per_frame']:.1f} / {r['live_step_ms_p50']:.1f} | "
                        f"{r['anchors_published']} / {r['ideal_anchors']} |")
    return "\n".join(rows)
