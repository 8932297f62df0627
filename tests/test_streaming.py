"""Streaming runtime: one mask per frame, cadence, async reasoning, re-anchoring, queries, failures."""

from __future__ import annotations

import time

import numpy as np
import pytest

from visa_edge.runtime import synthetic
from visa_edge.runtime.errors import InputError
from visa_edge.runtime.streaming import Frame, PushSource, ReasonOutput, StreamConfig, StreamingRuntime
from visa_edge.runtime.streaming.sources import FrameListSource, Paced
from visa_edge.runtime.frames import sample_references
from visa_edge.runtime.streaming.window import FrameBuffer
from visa_edge.runtime.tracking import Tracker, TrackOutput

H, W = 24, 32


def frames(n: int) -> list[Frame]:
    """Frames whose pixel value encodes their index (so trackers can check the order they see)."""
    return [Frame(i, i / 30, np.full((H, W, 3), i % 256, np.uint8), f"{i:05d}") for i in range(n)]


def half(side: str) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    if side == "left":
        m[:, : W // 2] = 1
    else:
        m[:, W // 2 :] = 1
    return m


class OrderCheckingTracker(Tracker):
    """Propagates the anchor mask unchanged; raises if it sees a frame not newer than the last one."""

    def __init__(self, confidence: float = 0.9):
        self.mask, self.last, self.confidence = None, None, confidence

    def reset(self) -> None:
        self.mask = self.last = None

    def step(self, frame, mask=None, *, objects=None, index=None) -> TrackOutput:
        index = int(frame[0, 0, 0])
        if mask is not None:
            self.mask = mask.astype(np.float32)
        elif self.last is not None and index <= self.last:
            raise AssertionError(f"tracker saw frame {index} after {self.last}")
        self.last = index
        return TrackOutput(self.mask, self.confidence)


class FakeReasoner:
    """Returns the left or right half depending on the query word, after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0, fail_first: int = 0):
        self.delay, self.fail_first, self.calls = delay, fail_first, []

    def __call__(self, frames, query):
        self.calls.append((frames[-1].index, query, len(frames)))
        if len(self.calls) <= self.fail_first:
            raise RuntimeError("injected failure")
        time.sleep(self.delay)
        return ReasonOutput(half("right" if "right" in query else "left"))


def run(reasoner, config, n, query="the left thing", fps=None, events=None):
    with StreamingRuntime(reasoner, OrderCheckingTracker, config, query=query) as rt:
        source = frames(n)
        out = []
        start = time.monotonic()
        for f in (Paced(FrameListSource(source), fps) if fps else source):
            if events and f.index in events:
                events[f.index](rt)
            out.append(rt.process(f))
        elapsed = time.monotonic() - start
    return rt, out, elapsed


def test_every_frame_gets_exactly_one_mask_in_order():
    rt, out, _ = run(FakeReasoner(), StreamConfig(every_frames=5, blocking=True), 40)
    assert [r.frame.index for r in out] == list(range(40))
    assert all(r.mask.shape == (H, W) and r.mask.dtype == np.uint8 for r in out)
    assert rt.stats.frames == 40 and rt.stats.reasoning_failed == 0


def test_blocking_cadence_and_fresh_reasoning_masks():
    reasoner = FakeReasoner()
    rt, out, _ = run(reasoner, StreamConfig(every_frames=10, window=22, references=11, blocking=True), 35)
    assert [c[0] for c in reasoner.calls] == [0, 10, 20, 30]
    assert [r.mask_source for r in out if r.frame.index in (0, 10, 20, 30)] == ["reasoning"] * 4
    assert all(r.mask_source == "tracked" for r in out if r.frame.index % 10)
    assert max(r.anchor_age for r in out) == 9
    assert reasoner.calls[-1][2] == 12  # 11 references (window of 22 full) + target
    assert np.array_equal(out[-1].mask, half("left"))


def test_slow_reasoning_never_reduces_the_output_rate():
    fps, n = 60.0, 90
    _, fast, t_fast = run(FakeReasoner(0.0), StreamConfig(every_frames=10), n, fps=fps)
    rt, slow, t_slow = run(FakeReasoner(0.4), StreamConfig(every_frames=10), n, fps=fps)
    assert len(slow) == len(fast) == n
    assert t_slow < 1.1 * t_fast + 0.05  # the source pace, not the 0.4 s steps, sets the rate
    staleness = [r.ready - r.arrival for r in slow]
    assert max(staleness) < 0.1  # no frame waited for a reasoning step
    # cadence requests wait for the running step (and its catch-up) instead of queueing behind it
    assert rt.stats.reasoning_completed >= 2 and rt.stats.reasoning_coalesced == 0
    assert rt.stats.reasoning_requested == rt.stats.reasoning_completed + (1 if rt.reasoning_busy else 0)


def test_reanchoring_catches_up_to_the_newest_frame():
    delay, fps = 0.25, 60.0
    rt, out, _ = run(FakeReasoner(delay), StreamConfig(every_frames=20, catchup_max_steps=4), 100, fps=fps)
    assert rt.stats.reasoning_failed == 0, rt.stats.last_error  # the order-checking tracker never raised
    # ~15 frames arrive during a step; a pass steps at most 4 of them, so catch-up subsamples
    assert 0 < rt.stats.catchup_frames < 100 - 20
    anchored = [r for r in out if r.anchor_index is not None]
    assert anchored and all(r.mask_source == "tracked" for r in anchored)
    ages = [r.anchor_age for r in anchored]
    # anchor age <= cadence + frames arriving during one step (+ one coalesced wait), with slack
    assert max(ages) <= 20 + 2 * int(delay * fps) + 10, max(ages)
    anchors = sorted({r.anchor_index for r in anchored})
    assert len(anchors) >= 3 and all(a % 20 == 0 for a in anchors)


def test_time_cadence_and_anchor_latency_metadata():
    reasoner = FakeReasoner()
    with StreamingRuntime(reasoner, OrderCheckingTracker, StreamConfig(every_frames=None, every_seconds=0.1, blocking=True),
                          query="the left thing") as rt:
        out = []
        for f in frames(16):
            out.append(rt.process(f))
            time.sleep(0.03)
    calls = [c[0] for c in reasoner.calls]
    assert calls[0] == 0 and 3 <= len(calls) <= 6  # 16 frames x ~30 ms = ~0.5 s at one step per 0.1 s
    assert all(b - a >= 3 for a, b in zip(calls, calls[1:]))  # never more often than every 0.1 s
    meta = out[-1].metadata()
    assert set(meta["anchor_latency_ms"]) == {"reasoning", "catchup"}
    assert meta["anchor_latency_ms"]["reasoning"] >= 0 and out[0].metadata()["anchor_latency_ms"] is not None


def test_a_new_query_mid_stream_takes_effect():
    events = {30: lambda rt: rt.set_query("the right thing")}
    reasoner = FakeReasoner()
    _, out, _ = run(reasoner, StreamConfig(every_frames=100, blocking=True), 50, events=events)
    assert np.array_equal(out[29].mask, half("left")) and out[29].query == "the left thing"
    assert out[30].mask_source == "reasoning" and np.array_equal(out[30].mask, half("right"))
    assert all(np.array_equal(r.mask, half("right")) for r in out[30:])
    assert [c[1] for c in reasoner.calls] == ["the left thing", "the right thing"]


def test_empty_query_pauses():
    events = {10: lambda rt: rt.set_query("")}
    reasoner = FakeReasoner()
    _, out, _ = run(reasoner, StreamConfig(every_frames=3, blocking=True), 20, events=events)
    assert all(r.mask_source == "paused" and not r.mask.any() for r in out[10:])
    assert max(c[0] for c in reasoner.calls) < 10


def test_failing_step_is_reported_and_retried_while_tracking_continues():
    reasoner = FakeReasoner(fail_first=2)
    rt, out, _ = run(reasoner, StreamConfig(every_frames=1000, retry_delay_s=0.0, blocking=True), 12)
    assert rt.stats.reasoning_failed == 2 and "injected failure" in rt.stats.last_error
    assert [c[0] for c in reasoner.calls] == [0, 1, 2]
    assert [r.mask_source for r in out[:3]] == ["none", "none", "reasoning"]
    assert len(out) == 12 and all(r.mask.any() for r in out[2:])


def test_low_confidence_triggers_reasoning():
    reasoner = FakeReasoner()
    with StreamingRuntime(reasoner, lambda: OrderCheckingTracker(confidence=0.1),
                          StreamConfig(every_frames=None, min_confidence=0.3, confidence_patience=4, blocking=True),
                          query="the left thing") as rt:
        for f in frames(20):
            rt.process(f)
    # frame 0 (query), then 4 low-confidence frames later each time: 5, 10, 15
    assert [c[0] for c in reasoner.calls] == [0, 5, 10, 15]


def test_result_for_an_evicted_frame_is_discarded():
    rt = StreamingRuntime(FakeReasoner(0.3), OrderCheckingTracker, StreamConfig(window=4, buffer_frames=5, every_frames=1000),
                          query="the left thing")
    for f in frames(30):
        rt.process(f)
        time.sleep(0.02)
    rt.close()
    assert rt.stats.reasoning_completed >= 1 and rt.stats.results_discarded >= 1


def test_push_source_drops_the_oldest_when_full():
    src = PushSource(maxsize=2)
    for i in range(10):
        src.push(np.zeros((2, 2, 3), np.uint8), timestamp=float(i))
    src.close()
    got = list(src)
    assert [f.index for f in got] == [8, 9] and src.dropped == 8


def test_catchup_subsampling_keeps_the_newest_frame():
    from visa_edge.runtime.streaming.scheduler import subsample

    assert subsample(list(range(5)), 8) == [0, 1, 2, 3, 4]
    picked = subsample(list(range(20)), 8)
    assert len(picked) == 8 and picked[-1] == 19 and picked == sorted(set(picked))
    assert max(b - a for a, b in zip(picked, picked[1:])) <= 3


def test_frame_buffer_is_bounded():
    buf = FrameBuffer(5)
    for f in frames(12):
        buf.add(f)
    assert len(buf) == 5 and buf.latest() == 11 and buf.evicted == 7 and buf.last_evicted == 6
    assert [f.index for f in buf.window(10, 3)] == [8, 9, 10]
    assert [f.index for f in buf.after(9)] == [10, 11]


def test_reference_sampling_is_visas():
    assert sample_references(22, 7) == list(range(1, 22, 2))  # the golden fixture's selection
    assert sample_references(22, 21) == list(range(1, 22, 2))
    assert sample_references(5, 4) == [0, 1, 2, 3, 4]
    assert sample_references(30, 29, 11) == [2, 5, 8, 11, 14, 17, 20, 23, 26, 29]
    assert sample_references(10, 9, 1) == [9]


def test_config_validation():
    with pytest.raises(InputError, match="buffer_frames=5 < window=10"):
        StreamConfig(window=10, buffer_frames=5)
    with pytest.raises(InputError, match=r"references=12: expected references in 1..11 \(an integer\)"):
        StreamConfig(references=12)
    with pytest.raises(InputError, match=r"every_frames=0: expected an integer > 0, or None/0 \(off\)"):
        StreamConfig(every_frames=0)
    with pytest.raises(InputError, match="min_confidence=nan: expected min_confidence in 0..1"):
        StreamConfig(min_confidence=float("nan"))
    with pytest.raises(InputError, match="blocking=1: expected true or false"):
        StreamConfig(blocking=1)


def test_streaming_with_the_tiny_visa_checkpoint(tiny_checkpoint):
    from visa_edge.runtime.model import VisaModel
    from visa_edge.runtime.reasoning import ReasoningStep
    from visa_edge.runtime.streaming.visa_reasoner import VisaReasoner

    reasoner = VisaReasoner(ReasoningStep(VisaModel.from_pretrained(tiny_checkpoint.checkpoint, clip=tiny_checkpoint.clip)))
    video = [Frame(i, i / 10, synthetic.frame(i), f"{i:05d}") for i in range(16)]

    class Copy(Tracker):
        def reset(self):
            pass

        def step(self, frame, mask=None, *, objects=None, index=None):
            if mask is not None:
                self.mask = mask.astype(np.float32)
            return TrackOutput(self.mask, 1.0)

    with StreamingRuntime(reasoner, Copy, StreamConfig(every_frames=8, window=8, references=4, blocking=True),
                          query="the red ball") as rt:
        out = [rt.process(f) for f in video]
    assert [r.frame.index for r in out] == list(range(16))
    assert [r.mask_source for r in out].count("reasoning") == 2 and rt.stats.reasoning_completed == 2
    assert out[0].mask.shape == (240, 320) and out[0].mask.any()
    # frame 0 alone, then frames 2, 4, 6, 8 (references of the window 1..8): each encoded once
    assert reasoner.encoded == 5


def test_the_cli_has_one_option_per_stream_parameter():
    import argparse
    from dataclasses import fields

    from visa_edge.runtime.commands.stream_args import add_stream_args, option_name
    from visa_edge.runtime.streaming.scheduler import stream_config_from, stream_parameters

    parser = argparse.ArgumentParser()
    add_stream_args(parser)
    options = {o for a in parser._actions for o in a.option_strings}
    assert {option_name(f.name) for f in fields(StreamConfig)} <= options
    assert [p.name for p in stream_parameters()] == [f.name for f in fields(StreamConfig)]
    assert all(p.help for p in stream_parameters())
    defaults = vars(parser.parse_args([]))
    assert stream_config_from(defaults) == StreamConfig()
    args = vars(parser.parse_args(["--every-frames", "0", "--every-seconds", "2.5", "--blocking", "--window", "8",
                                   "--references", "4", "--max-delay-periods", "1.5", "--step-timeout-s", "0"]))
    assert stream_config_from(args) == StreamConfig(every_frames=None, every_seconds=2.5, blocking=True, window=8,
                                                    references=4, max_delay_periods=1.5, step_timeout_s=0.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["--window", "0"])  # the field's bounds reach the CLI
