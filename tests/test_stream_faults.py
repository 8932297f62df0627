"""Fault injection into the streaming runtime: every fault is counted, every frame still gets a mask, close() returns."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from visa_edge.runtime.errors import InputError
from visa_edge.runtime.streaming import Frame, ReasonOutput, StreamConfig, StreamingRuntime
from visa_edge.runtime.tracking import Tracker, TrackOutput
from visa_edge.runtime.tracking.cache import FeatureCache

H, W = 12, 16
GOOD = np.zeros((H, W), np.uint8)
GOOD[:, : W // 2] = 1


def frames(n: int, start: int = 0) -> list[Frame]:
    return [Frame(i, i / 30, np.full((H, W, 3), i % 256, np.uint8), f"{i:05d}") for i in range(start, start + n)]


class Copy(Tracker):
    """Propagates the reference mask unchanged."""

    def reset(self):
        self.mask = None

    def step(self, frame, mask=None, *, objects=None, index=None):
        if mask is not None:
            self.mask = mask.astype(np.float32)
        return TrackOutput(self.mask, 1.0)


class Faulty:
    """Returns ``bad()`` (or raises it) on the calls listed in ``bad_calls``, the good mask otherwise."""

    def __init__(self, bad, bad_calls=(1,)):
        self.bad, self.bad_calls, self.calls = bad, set(bad_calls), 0

    def __call__(self, frames, query):
        self.calls += 1
        if self.calls in self.bad_calls:
            value = self.bad()
            if isinstance(value, BaseException):
                raise value
            return value
        return ReasonOutput(GOOD.copy())


BAD_RESULTS = {
    "raises": lambda: RuntimeError("injected"),
    "system_exit": lambda: SystemExit(3),
    "keyboard_interrupt": lambda: KeyboardInterrupt(),
    "none": lambda: None,
    "mask_none": lambda: ReasonOutput(None),
    "nan": lambda: ReasonOutput(np.full((H, W), np.nan, np.float32)),
    "inf": lambda: ReasonOutput(np.full((H, W), np.inf)),
    "float_dtype": lambda: ReasonOutput(GOOD.astype(np.float32)),
    "wrong_size": lambda: ReasonOutput(np.ones((H + 1, W), np.uint8)),
    "three_d": lambda: ReasonOutput(np.ones((H, W, 1), np.uint8)),
    "values_2": lambda: ReasonOutput(GOOD * 2),
    "negative": lambda: ReasonOutput(-GOOD.astype(np.int16)),
}
INVALID = {"none", "mask_none", "nan", "inf", "float_dtype", "wrong_size", "three_d", "values_2", "negative"}


@pytest.mark.parametrize("kind", sorted(BAD_RESULTS))
def test_a_bad_reasoning_result_is_counted_and_the_stream_goes_on(kind):
    rt = StreamingRuntime(Faulty(BAD_RESULTS[kind]), Copy, StreamConfig(every_frames=10, retry_delay_s=0.0, blocking=True),
                          query="the left thing")
    out = [rt.process(f) for f in frames(25)]
    assert rt.close(timeout=2.0)
    assert [r.frame.index for r in out] == list(range(25))
    assert all(r.mask.shape == (H, W) and r.mask.dtype == np.uint8 for r in out)
    assert rt.stats.reasoning_failed == 1 and rt.stats.reasoning_invalid == (1 if kind in INVALID else 0)
    assert rt.stats.last_error
    # frame 0's step failed; the retry on frame 1 succeeded, then the cadence: 11, 21
    assert [r.frame.index for r in out if r.mask_source == "reasoning"] == [1, 11, 21]
    assert out[0].mask_source == "none" and all(np.array_equal(r.mask, GOOD) for r in out[1:])


def test_an_invalid_mask_error_names_what_was_wrong():
    rt = StreamingRuntime(Faulty(BAD_RESULTS["wrong_size"]), Copy, StreamConfig(blocking=True), query="q")
    rt.process(frames(1)[0])
    rt.close()
    assert "reasoning result for frame 0: mask of shape (13, 16); expected the frame's (12, 16)" in rt.stats.last_error


def test_a_failing_catchup_tracker_is_counted():
    class Breaks(Copy):
        def step(self, frame, mask=None, *, objects=None, index=None):
            if mask is None and threading.current_thread().name.startswith("reasoning"):
                raise ValueError("tracker broke during catch-up")
            return super().step(frame, mask, objects=objects, index=index)

    class Slow:
        def __call__(self, frames, query):
            time.sleep(0.05)
            return ReasonOutput(GOOD.copy())

    rt = StreamingRuntime(Slow(), Breaks, StreamConfig(every_frames=1000, retry_delay_s=10.0), query="q")
    out = []
    for f in frames(20):
        out.append(rt.process(f))
        time.sleep(0.01)
    assert rt.close(timeout=2.0)
    assert len(out) == 20 and rt.stats.reasoning_failed == 1 and "tracker broke" in rt.stats.last_error


class Hangs:
    """Hangs on its first call until ``release`` is set; then returns the good mask."""

    def __init__(self):
        self.release, self.calls = threading.Event(), 0

    def __call__(self, frames, query):
        self.calls += 1
        if self.calls == 1:
            self.release.wait(30)
        return ReasonOutput(GOOD.copy())


def test_a_hung_step_is_detected_and_a_fresh_worker_takes_over():
    reasoner = Hangs()
    rt = StreamingRuntime(reasoner, Copy, StreamConfig(every_frames=1000, step_timeout_s=0.2, retry_delay_s=0.0), query="q")
    out = []
    for f in frames(60):
        out.append(rt.process(f))
        time.sleep(0.01)
        if f.index > 40 and rt.stats.reasoning_completed:
            break
    assert rt.stats.reasoning_hung == 1 and rt.stats.workers_abandoned == 1 and "hung" in rt.stats.last_error
    assert rt.stats.reasoning_completed == 1 and reasoner.calls == 2  # the retry ran on a fresh worker
    assert [r.frame.index for r in out] == list(range(len(out)))
    assert out[-1].mask_source == "tracked" and np.array_equal(out[-1].mask, GOOD)
    anchor = out[-1].anchor_index
    reasoner.release.set()  # the abandoned step returns late: its result is discarded, nothing changes
    time.sleep(0.1)
    after = rt.process(frames(1, start=len(out))[0])
    assert after.anchor_index == anchor and rt.stats.reasoning_completed == 1
    assert rt.close(timeout=2.0)


def test_a_hung_step_does_not_block_the_blocking_mode_forever():
    reasoner = Hangs()
    rt = StreamingRuntime(reasoner, Copy, StreamConfig(every_frames=1000, step_timeout_s=0.2, retry_delay_s=0.0,
                                                       blocking=True), query="q")
    t0 = time.monotonic()
    out = [rt.process(f) for f in frames(3)]
    assert time.monotonic() - t0 < 5.0
    assert rt.stats.reasoning_hung == 1 and [r.mask_source for r in out] == ["none", "reasoning", "tracked"]
    reasoner.release.set()
    assert rt.close(timeout=2.0)


def test_close_returns_within_its_timeout_while_a_step_hangs():
    reasoner = Hangs()
    rt = StreamingRuntime(reasoner, Copy, StreamConfig(step_timeout_s=0.0), query="q")
    out = [rt.process(f) for f in frames(5)]
    time.sleep(0.05)
    t0 = time.monotonic()
    assert rt.close(timeout=0.2) is False
    assert time.monotonic() - t0 < 2.0
    assert len(out) == 5 and rt.stats.workers_abandoned == 1 and "abandoned" in rt.stats.last_error
    reasoner.release.set()


def test_frame_indices_must_increase_unless_reset():
    calls = []

    class Resettable:
        def __call__(self, frames, query):
            return ReasonOutput(GOOD.copy())

        def reset(self):
            calls.append("reset")

    cache = FeatureCache(8)

    def factory():
        return Copy()

    factory.cache = cache
    rt = StreamingRuntime(Resettable(), factory, StreamConfig(blocking=True), query="q")
    for f in frames(5):
        rt.process(f)
    cache.get_or_compute(3, "x", lambda: 1)
    with pytest.raises(InputError, match="index 4 after index 4: frame indices must increase"):
        rt.process(frames(1, start=4)[0])
    with pytest.raises(InputError, match="index 2 after index 4"):
        rt.process(frames(1, start=2)[0])
    rt.reset()
    assert len(rt.buffer) == 0 and len(cache) == 0 and calls == ["reset"] and rt.stats.resets == 1
    out = [rt.process(f) for f in frames(3)]  # the stream restarts at 0: its first frame is reasoned again
    assert [r.mask_source for r in out] == ["reasoning", "tracked", "tracked"]
    assert rt.close(timeout=2.0)


def test_a_refused_query_keeps_the_previous_one():
    class Checks:
        def __call__(self, frames, query):
            return ReasonOutput(GOOD.copy())

        def check_query(self, query):
            if len(query) > 20:
                raise InputError(f"query of {len(query)} characters: expected at most 20")

    rt = StreamingRuntime(Checks(), Copy, StreamConfig(blocking=True), query="short")
    rt.process(frames(1)[0])
    with pytest.raises(InputError, match="expected at most 20"):
        rt.set_query("a query that is far too long for it")
    assert rt.query == "short"
    assert rt.process(frames(1, start=1)[0]).mask_source == "tracked"  # the anchor was kept
    assert rt.close(timeout=2.0)
