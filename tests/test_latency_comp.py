"""Latency compensation: catch-up reuses the live tracker's cached features, equals stepping every frame,
never makes the live path wait, swaps without going back in time; live sources drop late frames; the live
path precomputes every buffered frame's features, so the first catch-up of a stream gets only cache hits."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import torch

from visa_edge.runtime.streaming import Frame, ReasonOutput, StreamConfig, StreamingRuntime
from visa_edge.runtime.streaming.sources import FrameListSource, Paced
from visa_edge.runtime.tracking import Tracker, TrackOutput
from visa_edge.runtime.tracking.cache import FeatureCache
from visa_edge.runtime.tracking.factory import TrackerFactory, tracker_factory
from visa_edge.runtime.tracking.flow import FlowTracker
from visa_edge.runtime.tracking.xmem import XMemConfig, XMemModel, XMemTracker, xmem_torch_engines

H, W = 8, 64


def frames(n: int, fps: float = 30.0) -> list[Frame]:
    return [Frame(i, i / fps, np.full((H, W, 3), i % 256, np.uint8), f"{i:05d}") for i in range(n)]


def anchor_mask(index: int) -> np.ndarray:
    """The reasoner's mask for frame ``index``: one column, at a position that encodes the frame."""
    m = np.zeros((H, W), np.uint8)
    m[:, (7 * index) % W] = 1
    return m


def expected(anchor: int, index: int) -> np.ndarray:
    """What a tracker anchored at ``anchor`` and stepped through every frame up to ``index`` publishes."""
    return np.roll(anchor_mask(anchor), index - anchor, axis=1)


class ShiftTracker(Tracker):
    """Moves the mask one column right per step; its per-frame feature comes from the shared cache.

    Raises if a frame is skipped or repeated, so a catch-up that subsamples or a live path
    that jumps cannot go unnoticed.
    """

    computed: Counter = Counter()
    consecutive = True  # frames must come one by one (False: a live source may drop some)

    def __init__(self, cache: FeatureCache):
        self.cache, self.mask, self.last = cache, None, None

    def reset(self):
        self.mask = self.last = None

    def step(self, frame, mask=None, *, objects=None, index=None):
        feature = self.cache.get_or_compute(index, "mean", lambda: self._compute(index, frame))
        assert feature == float(index % 256)
        if mask is not None:
            self.mask = mask.copy()
        else:
            assert index == self.last + 1 or not self.consecutive and index > self.last, f"frame {index} after {self.last}"
            self.mask = np.roll(self.mask, 1, axis=1)
        self.last = index
        return TrackOutput(self.mask.astype(np.float32), 0.9)

    def _compute(self, index, frame):
        type(self).computed[index] += 1
        return float(frame.mean())


def factory_with_cache(cls=ShiftTracker, **kw):
    cache = FeatureCache(512)
    cls.computed = Counter()

    def factory():
        return cls(cache, **kw)

    factory.cache = cache
    return factory


class Oracle:
    """Sleeps ``delay`` s and returns the mask of the frame asked about."""

    def __init__(self, delay: float):
        self.delay, self.calls = delay, []

    def __call__(self, frames, query):
        self.calls.append(frames[-1].index)
        time.sleep(self.delay)
        return ReasonOutput(anchor_mask(frames[-1].index))


def paced_run(rt: StreamingRuntime, n: int, fps: float, live: bool = False) -> list:
    out = []
    rt.run(Paced(FrameListSource(frames(n, fps)), fps), on_result=out.append, live=live)
    rt.close(timeout=5.0)
    return out


def test_catchup_reuses_cached_features_and_equals_stepping_every_frame():
    factory = factory_with_cache()
    rt = StreamingRuntime(Oracle(0.15), factory, StreamConfig(every_frames=10, catchup_passes=8), query="q")
    out = paced_run(rt, 90, fps=60.0)
    assert rt.stats.reasoning_failed == 0, rt.stats.last_error  # no skipped or repeated frame anywhere
    assert rt.stats.catchup_forced == 0 and rt.stats.reasoning_completed >= 3
    # every frame's feature was computed once; every other use (catch-up steps, anchors) was a cache hit
    assert max(ShiftTracker.computed.values()) == 1 and factory.cache.misses == len(ShiftTracker.computed)
    assert factory.cache.hits >= rt.stats.catchup_frames - 15  # bar the frames before the first anchor
    tracked = [r for r in out if r.anchor_index is not None]
    assert tracked and all(np.array_equal(r.mask, expected(r.anchor_index, r.frame.index)) for r in tracked)
    anchors = [r.anchor_index for r in tracked]
    assert anchors == sorted(anchors) and len(set(anchors)) >= 3  # anchors never go back in time
    assert len(rt.buffer) <= rt.config.buffer_frames


class BridgingShiftTracker(ShiftTracker):
    """Logs each propagation: ("bridge" or "step", frame index), per tracker; a bridge moves the mask as a step does."""

    trackers: list = []

    def __init__(self, cache: FeatureCache):
        super().__init__(cache)
        self.log = []
        type(self).trackers.append(self)

    def bridge(self, frame, *, index=None):
        self.log.append(("bridge", index))
        return super().step(frame, index=index)

    def step(self, frame, mask=None, *, objects=None, index=None):
        if mask is None:
            self.log.append(("step", index))
        return super().step(frame, mask, objects=objects, index=index)


def test_catchup_bridges_all_but_the_newest_frames_and_reports_its_lag():
    """A 0.15 s step at 60 fps leaves a ~9-frame backlog: all but the newest ``catchup_full_steps`` (3)
    are bridged; without bridging every catch-up frame is a full step. Each swap records its lag
    (frames the live path tracked from the result's arrival to the swap)."""
    for full_steps in (3, None):
        BridgingShiftTracker.trackers = []
        factory = factory_with_cache(BridgingShiftTracker)
        config = StreamConfig(every_frames=10, catchup_full_steps=full_steps, catchup_passes=8)  # no live jumps
        rt = StreamingRuntime(Oracle(0.15), factory, config, query="q")
        out = paced_run(rt, 90, fps=60.0)
        assert rt.stats.reasoning_failed == 0, rt.stats.last_error
        bridges = [e for t in BridgingShiftTracker.trackers for e in t.log if e[0] == "bridge"]
        assert len(bridges) == rt.stats.catchup_bridged
        swaps = len(rt.stats.catchup_s)
        assert swaps >= 3 and len(rt.stats.catchup_lag) == swaps and min(rt.stats.catchup_lag) >= 0
        if full_steps is None:
            assert not bridges
            continue
        assert rt.stats.catchup_bridged >= 3 * swaps  # ~9-frame backlogs, 3 of them stepped in full
        assert rt.stats.catchup_bridged <= rt.stats.catchup_frames - 3 * swaps
        for tracker in BridgingShiftTracker.trackers:
            if any(kind == "bridge" for kind, _ in tracker.log):
                last = max(i for i, (kind, _) in enumerate(tracker.log) if kind == "bridge")
                after = tracker.log[last + 1 : last + 4]  # the newest frames of its catch-up: full steps
                assert [kind for kind, _ in after] == ["step"] * 3, tracker.log
        tracked = [r for r in out if r.anchor_index is not None]
        assert all(np.array_equal(r.mask, expected(r.anchor_index, r.frame.index)) for r in tracked)


def test_cadence_waits_for_the_running_step_and_catchup():
    reasoner = Oracle(0.2)
    rt = StreamingRuntime(reasoner, factory_with_cache(), StreamConfig(every_frames=3), query="q")
    paced_run(rt, 60, fps=60.0)
    assert rt.stats.reasoning_coalesced == 0 and rt.stats.results_discarded == 0
    # each request targets the first frame after the previous step ended: ~12 frames apart, not 3
    gaps = np.diff(reasoner.calls)
    assert len(reasoner.calls) >= 2 and min(gaps) >= 6, reasoner.calls


def test_a_new_query_is_requested_while_a_step_runs():
    reasoner = Oracle(0.2)
    rt = StreamingRuntime(reasoner, factory_with_cache(), StreamConfig(every_frames=1000), query="q")
    out = []
    for f in frames(40, fps=60.0):
        if f.index == 5:
            rt.set_query("another")
        out.append(rt.process(f))
        time.sleep(1 / 60)
    rt.close(timeout=5.0)
    assert reasoner.calls[:2] == [0, 5]  # the new query did not wait for the step of frame 0
    assert rt.stats.results_discarded == 1  # the old query's result
    assert all(r.anchor_index in (None, 5) for r in out)


class GatedTracker(ShiftTracker):
    """A catch-up step (on the reasoning worker) blocks until the test opens the gate."""

    entered = threading.Event()
    gate = threading.Event()

    def step(self, frame, mask=None, *, objects=None, index=None):
        if mask is None and threading.current_thread().name.startswith("reasoning"):
            GatedTracker.entered.set()
            GatedTracker.gate.wait(10)
        return super().step(frame, mask, objects=objects, index=index)


def test_the_live_path_never_waits_for_a_catchup():
    GatedTracker.entered.clear()
    GatedTracker.gate.clear()
    factory = factory_with_cache(GatedTracker)
    config = StreamConfig(every_frames=1000, catchup_passes=8)  # passes until caught up: as if stepped all along
    rt = StreamingRuntime(Oracle(0.05), factory, config, query="q")
    source = iter(frames(250))
    GatedTracker.gate.set()  # the first anchor goes through
    out = [rt.process(next(source))]
    while out[-1].anchor_index is None:
        out.append(rt.process(next(source)))
        time.sleep(0.005)
    GatedTracker.gate.clear()
    GatedTracker.entered.clear()
    rt.request_reasoning()
    out.append(rt.process(next(source)))  # the second request: its result comes 0.05 s later
    while not GatedTracker.entered.wait(0.01):  # then its catch-up blocks inside a tracker step
        out.append(rt.process(next(source)))
    t0 = time.monotonic()
    for _ in range(30):
        out.append(rt.process(next(source)))  # the live tracker runs on meanwhile
    live_s = time.monotonic() - t0
    assert not GatedTracker.gate.is_set() and live_s < 5.0
    first = out[-1].anchor_index
    GatedTracker.gate.set()
    while out[-1].anchor_index == first:
        out.append(rt.process(next(source)))
        time.sleep(0.005)
    rt.close(timeout=5.0)
    assert rt.stats.reasoning_failed == 0, rt.stats.last_error
    tracked = [r for r in out if r.anchor_index is not None and not r.pasted]  # a paste (slow first catch-up) is
    assert tracked and all(np.array_equal(r.mask, expected(r.anchor_index, r.frame.index)) for r in tracked)  # tested below


class SlowBridges(BridgingShiftTracker):
    """Every catch-up propagation costs 30 ms; the live tracker may jump frames."""

    consecutive = False

    def bridge(self, frame, *, index=None):
        time.sleep(0.03)
        return super().bridge(frame, index=index)

    def step(self, frame, mask=None, *, objects=None, index=None):
        if mask is None and threading.current_thread().name.startswith("reasoning"):
            time.sleep(0.03)
        return super().step(frame, mask, objects=objects, index=index)


def test_by_default_a_catchup_makes_one_pass_and_the_live_tracker_jumps_the_frames_left():
    """A 0.2 s step at 60 fps: ~12 frames to catch up at 30 ms each, during which ~20 more arrive.
    One pass (``catchup_passes=1``), then the swap; the live tracker's next step jumps to the newest frame."""
    BridgingShiftTracker.trackers = []
    rt = StreamingRuntime(Oracle(0.2), factory_with_cache(SlowBridges), StreamConfig(every_frames=1000), query="q")
    out = paced_run(rt, 90, fps=60.0)
    assert rt.stats.reasoning_failed == 0, rt.stats.last_error
    assert rt.stats.pasted == 1 and rt.stats.catchup_forced == 1 and len(rt.stats.catchup_s) == 1
    caught = next(t for t in BridgingShiftTracker.trackers if any(kind == "bridge" for kind, _ in t.log))
    indices = [i for _, i in caught.log]
    pass_end = next(k for k in range(1, len(indices)) if indices[k] != indices[k - 1] + 1)  # the jump
    assert rt.stats.catchup_frames == pass_end  # one pass: the frames the live path had tracked at arrival
    assert [kind for kind, _ in caught.log[:pass_end]] == ["bridge"] * (pass_end - 1) + ["step"]
    lag = rt.stats.catchup_lag[0]
    assert indices[pass_end] - indices[pass_end - 1] - 1 >= lag - 2 > 5  # the jump: the frames that arrived meanwhile
    assert out[-1].anchor_index == 0 and not out[-1].pasted


class SlowCatchup(ShiftTracker):
    """Catch-up steps through frames whose features nobody computed yet cost 30 ms each."""

    def step(self, frame, mask=None, *, objects=None, index=None):
        if mask is None and index not in self.computed and threading.current_thread().name.startswith("reasoning"):
            time.sleep(0.03)
        return super().step(frame, mask, objects=objects, index=index)


def test_the_first_result_is_pasted_at_once_then_replaced_by_its_catchup():
    reasoner = Oracle(0.2)
    config = StreamConfig(every_frames=1000, catchup_passes=8)  # passes until caught up: as if stepped all along
    rt = StreamingRuntime(reasoner, factory_with_cache(SlowCatchup), config, query="q")
    out = paced_run(rt, 60, fps=60.0)
    assert rt.stats.pasted == 1 and rt.stats.reasoning_failed == 0, rt.stats.last_error
    pasted = [r for r in out if r.pasted]
    first = pasted[0].frame.index
    # the paste anchors on the newest tracked frame when the result arrives: the mask moves from there
    assert all(np.array_equal(r.mask, np.roll(anchor_mask(0), r.frame.index - first + 1, axis=1)) for r in pasted[1:])
    caught_up = [r for r in out if r.anchor_index is not None and not r.pasted]
    assert caught_up and caught_up[0].frame.index > first and all(r.anchor_index == 0 for r in caught_up)
    assert all(np.array_equal(r.mask, expected(0, r.frame.index)) for r in caught_up)  # as if stepped all along
    assert all(r.anchor_index is None for r in out[:first])


class SlowTracker(ShiftTracker):
    """Each step costs 1.5 camera periods at 10 fps."""

    def step(self, frame, mask=None, *, objects=None, index=None):
        if mask is None:
            time.sleep(0.15)
        return super().step(frame, mask, objects=objects, index=index)


class DroppingSlowTracker(SlowTracker):
    consecutive = False


def test_a_live_source_drops_late_frames_instead_of_lagging():
    fps, n = 10.0, 30
    rt = StreamingRuntime(Oracle(0.0), factory_with_cache(DroppingSlowTracker), StreamConfig(every_frames=1000), query="q")
    out = paced_run(rt, n, fps, live=True)
    dropped = [r for r in out if r.dropped]
    assert [r.frame.index for r in out] == list(range(n))  # a result (and a frames.jsonl line) for every frame
    assert len(dropped) == rt.stats.dropped_late >= 5
    assert all(r.mask_source == "dropped" and r.track_s == 0.0 for r in dropped)
    assert all(rt.buffer.get(r.frame.index) is None for r in dropped)  # never tracked nor buffered
    tracked = [r for r in out if not r.dropped and r.frame.index > 2]
    # camera period 0.1 s, tracker 0.15 s: a tracked frame is ready within 2 periods of capture (+ scheduling slack)
    assert max(r.delay_s for r in tracked) < 0.2 + 0.15, [round(r.delay_s, 3) for r in tracked]
    assert all(r.metadata()["mask_source"] == "dropped" for r in dropped)


def test_a_recorded_source_is_never_dropped():
    rt = StreamingRuntime(Oracle(0.0), factory_with_cache(SlowTracker), StreamConfig(every_frames=1000, blocking=True),
                          query="q")
    out = paced_run(rt, 10, 30.0, live=False)
    assert rt.stats.dropped_late == 0 and all(r.delay_s is None for r in out)
    assert all(np.array_equal(r.mask, expected(0, r.frame.index)) for r in out)


# --- features precomputed by the live path, also before the first tracker ---------------------------


class PrecomputingShiftTracker(ShiftTracker):
    def precompute(self, frame, index):
        self.cache.get_or_compute(index, "mean", lambda: self._compute(index, frame))


class GatedOracle(Oracle):
    """Returns the mask of the frame asked about once the test opens ``gate``."""

    def __init__(self):
        super().__init__(0.0)
        self.gate = threading.Event()

    def __call__(self, frames, query):
        self.gate.wait(10)
        return super().__call__(frames, query)


def test_the_first_catchup_gets_only_cache_hits_from_the_live_paths_precompute():
    PrecomputingShiftTracker.computed = Counter()
    factory = TrackerFactory(PrecomputingShiftTracker, FeatureCache(512))
    reasoner = GatedOracle()
    rt = StreamingRuntime(reasoner, factory, StreamConfig(every_frames=1000), query="q")
    source = iter(frames(40))
    pending = [rt.process(next(source)) for _ in range(20)]  # no tracker yet: the result of frame 0 is pending
    assert all(r.anchor_index is None for r in pending)
    assert PrecomputingShiftTracker.computed == Counter(range(20))  # every buffered frame once, by the live path
    assert factory.cache.misses == 20 and factory.cache.hits == 0
    reasoner.gate.set()
    deadline = time.monotonic() + 10
    while not rt.stats.catchup_s and time.monotonic() < deadline:
        time.sleep(0.005)
    assert rt.stats.reasoning_failed == 0, rt.stats.last_error
    assert rt.stats.catchup_frames == 19 and rt.stats.catchup_abandoned == 0 and rt.stats.catchup_forced == 0
    # only hits: the paste's anchor on frame 19, the catch-up's anchor on frame 0 and its 19 steps
    assert factory.cache.misses == 20 and factory.cache.hits == 1 + 1 + 19
    out = [rt.process(f) for f in source]
    rt.close(timeout=5.0)
    assert all(r.anchor_index == 0 and not r.pasted for r in out)
    assert all(np.array_equal(r.mask, expected(0, r.frame.index)) for r in out)  # as if stepped every frame
    assert max(PrecomputingShiftTracker.computed.values()) == 1 and factory.cache.misses == 40


def test_no_precompute_without_a_query():
    PrecomputingShiftTracker.computed = Counter()
    factory = TrackerFactory(PrecomputingShiftTracker, FeatureCache(512))
    rt = StreamingRuntime(Oracle(0.0), factory, StreamConfig(every_frames=1000))
    for f in frames(5):
        rt.process(f)
    rt.close(timeout=5.0)
    assert factory.cache.misses == 0 and not PrecomputingShiftTracker.computed


def square_clip(n: int, h: int = 48, w: int = 64):
    """A red square moving over fixed noise: RGB uint8 frames and the first frame's 0/1 mask."""
    background = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    clip = []
    for t in range(n):
        frame = background.copy()
        frame[8 + t : 24 + t, 8 + 2 * t : 24 + 2 * t] = (230, 40, 40)
        clip.append(frame)
    mask = np.zeros((h, w), np.uint8)
    mask[8:24, 8:24] = 1
    return clip, mask


def test_flow_precompute_fills_what_a_catchup_steps_through():
    factory = tracker_factory("flow")
    clip, mask = square_clip(6)
    for i, frame in enumerate(clip):
        factory.precompute(frame, i)
    assert factory.cache.misses == 6 + 5 and factory.cache.hits == 0  # preparations + flows to the previous frame
    catch_up, plain = factory(), FlowTracker()
    outs = [catch_up.anchor(clip[0], mask, index=0)] + [catch_up.step(f, index=i) for i, f in enumerate(clip) if i]
    assert factory.cache.misses == 11 and factory.cache.hits == 1 + 2 * 5  # nothing recomputed
    ref = [plain.anchor(clip[0], mask)] + [plain.step(f) for f in clip[1:]]
    assert all(np.array_equal(a.prob, b.prob) and a.confidence == b.confidence for a, b in zip(outs, ref))
    assert outs[-1].mask.sum() > 0


def test_xmem_precompute_fills_the_key_features_a_catchup_steps_through():
    torch.manual_seed(0)
    small = XMemConfig(shorter_side=None)  # 48x64 frames as they are: a test in seconds
    engines = xmem_torch_engines(XMemModel().eval())
    factory = tracker_factory("xmem", engines=engines, config=small)
    clip, mask = square_clip(4)
    for i, frame in enumerate(clip):
        factory.precompute(frame, i)
    assert factory.cache.misses == 4 and factory.cache.hits == 0
    catch_up, plain = factory(), XMemTracker(engines, small)
    outs = [catch_up.anchor(clip[0], mask, index=0)] + [catch_up.step(f, index=i) for i, f in enumerate(clip) if i]
    assert factory.cache.misses == 4 and factory.cache.hits == 4
    ref = [plain.anchor(clip[0], mask)] + [plain.step(f) for f in clip[1:]]
    assert all(np.allclose(a.prob, b.prob, atol=1e-6) for a, b in zip(outs, ref))


class CostlyFeatures(ShiftTracker):
    """Live source at 10 fps: a frame's feature costs 0.08 s, a step 0.12 s (more than a camera
    period even when its feature is cached)."""

    consecutive = False

    def step(self, frame, mask=None, *, objects=None, index=None):
        if mask is None:
            time.sleep(0.12)
        return super().step(frame, mask, objects=objects, index=index)

    def _compute(self, index, frame):
        time.sleep(0.08)
        return super()._compute(index, frame)


class PrecomputingCostlyFeatures(CostlyFeatures):
    precompute = PrecomputingShiftTracker.precompute


def test_a_catchup_through_precomputed_frames_is_not_abandoned_as_too_slow():
    """The live path (feature + step, 2 periods) buffers a frame every 2 periods or more; a catch-up
    step (1.2 periods) then converges. Without precompute the old rule gives it up; with it, the
    catch-up knows its frames are cached and swaps in every result."""
    counts = {}
    for cls in (CostlyFeatures, PrecomputingCostlyFeatures):
        factory = factory_with_cache(cls) if cls is CostlyFeatures else TrackerFactory(cls, FeatureCache(512))
        rt = StreamingRuntime(Oracle(0.5), factory, StreamConfig(every_frames=5), query="q")
        out = paced_run(rt, 45, 10.0, live=True)
        assert rt.stats.reasoning_failed == 0, rt.stats.last_error
        assert any(r.anchor_index == 0 for r in out)
        counts[cls.__name__] = (rt.stats.catchup_abandoned, rt.stats.reasoning_completed, len(rt.stats.catchup_s))
    abandoned, completed, _ = counts["CostlyFeatures"]
    assert abandoned >= 1, counts
    abandoned, completed, swapped = counts["PrecomputingCostlyFeatures"]
    assert abandoned == 0 and swapped == completed >= 2, counts  # every result's catch-up swapped in
