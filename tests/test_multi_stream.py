"""Several queries in one stream: stable ids, queries added and removed mid-stream, label images, outputs."""

from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest

from visa_edge.runtime import synthetic
from visa_edge.runtime.cli import main
from visa_edge.runtime.errors import InputError
from visa_edge.runtime.io import write_rgb
from visa_edge.runtime.streaming import Frame, ReasonOutput, StreamConfig, StreamingRuntime
from visa_edge.runtime.streaming.scheduler import label_image, publish_objects
from visa_edge.runtime.streaming.sinks import JsonlSink, LabelSink, PngSink
from visa_edge.runtime.tracking import Tracker, TrackOutput
from visa_edge.runtime.tracking.base import mask_objects

from .test_cli_stream import model_args

H, W = 24, 36
COLUMNS = {"left": 0, "middle": 1, "right": 2}  # the query's word -> a third of the frame


def frames(n: int, start: int = 0) -> list[Frame]:
    return [Frame(i, i / 30, np.full((H, W, 3), i % 256, np.uint8), f"{i:05d}") for i in range(start, start + n)]


def third(word: str) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    c = COLUMNS[word]
    m[:, c * W // 3:(c + 1) * W // 3] = 1
    return m


class ThirdsReasoner:
    """One mask per query: the third of the frame its word names; ``gate`` (if set) holds each call."""

    def __init__(self, gate: threading.Event | None = None):
        self.calls, self.gate = [], gate

    def __call__(self, frames, queries):
        self.calls.append((frames[-1].index, queries))
        if self.gate is not None:
            self.gate.wait(10)
        texts = [queries] if isinstance(queries, str) else list(queries)
        masks = np.stack([third(next(w for w in COLUMNS if w in q)) for q in texts])
        return ReasonOutput(masks[0], masks=masks if len(texts) > 1 else None)

    def check_query(self, query: str) -> None:
        if not any(w in query for w in COLUMNS):
            raise InputError(f"query {query!r}: names no column")


class LabelTracker(Tracker):
    """Propagates the anchor's label image unchanged, one plane per object it was given."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.labels, self.objects = None, ()

    def step(self, frame, mask=None, *, objects=None, index=None) -> TrackOutput:
        if mask is not None:
            self.labels, self.objects = mask.astype(np.uint8), mask_objects(mask, objects)
        probs = np.stack([(self.labels == o).astype(np.float32) for o in self.objects])
        return TrackOutput(probs[0], 0.9, self.objects, probs, (0.9,) * len(self.objects))


BLOCKING = StreamConfig(window=4, references=2, every_frames=None, blocking=True)


def test_queries_added_and_removed_mid_stream_keep_stable_ids():
    reasoner = ThirdsReasoner()
    with StreamingRuntime(reasoner, LabelTracker, BLOCKING, query=["the left one", "the middle one"]) as rt:
        assert rt.queries == {1: "the left one", 2: "the middle one"}
        out = {}
        for f in frames(12):
            if f.index == 4:
                assert rt.add_query("the right one") == 3
            if f.index == 7:
                rt.remove_query(1)
            if f.index == 9:
                assert rt.set_queries(["the right one", "the left one"]) == [3, 4]  # 3 kept, 1 never reused
            out[f.index] = rt.process(f)
    assert reasoner.calls == [(0, ["the left one", "the middle one"]), (4, ["the left one", "the middle one",
                              "the right one"]), (9, ["the right one", "the left one"])]
    assert [o.id for o in out[0].objects] == [1, 2] and out[0].mask_source == "reasoning"
    assert np.array_equal(out[3].labels, third("left") + 2 * third("middle"))
    assert np.array_equal(out[4].labels, third("left") + 2 * third("middle") + 3 * third("right"))
    assert [(o.id, o.mask_source, o.anchor_index) for o in out[6].objects] == [(1, "tracked", 4), (2, "tracked", 4),
                                                                              (3, "tracked", 4)]
    assert set(np.unique(out[7].labels)) == {0, 2, 3}  # removed on the very next frame, no step needed
    assert [o.id for o in out[7].objects] == [2, 3] and out[7].query == "the middle one"
    assert np.array_equal(out[7].mask, third("middle"))  # the compat mask is the first current query's
    assert np.array_equal(out[9].labels, 3 * third("right") + 4 * third("left"))
    assert out[11].query == "the right one" and out[11].anchor_age == 2
    assert rt.query_table() == {
        "1": {"query": "the left one", "added_frame": 0, "removed_frame": 7, "current": False},
        "2": {"query": "the middle one", "added_frame": 0, "removed_frame": 9, "current": False},
        "3": {"query": "the right one", "added_frame": 4, "removed_frame": None, "current": True},
        "4": {"query": "the left one", "added_frame": 9, "removed_frame": None, "current": True}}


def wait_idle(rt: StreamingRuntime, timeout: float = 20.0) -> None:
    """Wait (bounded) until no reasoning step or catch-up is running or pending."""
    deadline = time.monotonic() + timeout
    while rt.reasoning_busy:
        assert time.monotonic() < deadline, f"reasoning still busy after {timeout} s"
        time.sleep(0.005)


def test_a_new_query_appears_after_its_first_reasoning_result():
    gate = threading.Event()
    reasoner = ThirdsReasoner(gate)
    config = StreamConfig(window=4, references=2, every_frames=None)
    with StreamingRuntime(reasoner, LabelTracker, config, query="the left one") as rt:
        source = iter(frames(12))
        gate.set()
        rt.process(next(source))
        wait_idle(rt)
        assert rt.process(next(source)).mask_source == "tracked"
        gate.clear()
        assert rt.add_query("the right one") == 2
        waiting = [rt.process(next(source)) for _ in range(3)]  # the step for both queries is held
        assert all(r.objects[1].mask_source == "none" and r.objects[1].mask_fraction == 0 for r in waiting)
        assert all(set(np.unique(r.labels)) == {0, 1} and r.objects[0].mask_source == "tracked" for r in waiting)
        gate.set()
        wait_idle(rt)
        result = rt.process(next(source))
    assert reasoner.calls == [(0, "the left one"), (2, ["the left one", "the right one"])]
    assert np.array_equal(result.labels, third("left") + 2 * third("right"))
    assert [(o.id, o.mask_source, o.anchor_index) for o in result.objects] == [(1, "tracked", 2), (2, "tracked", 2)]


def test_label_image_overlaps_go_to_the_smaller_mask_then_the_older_query():
    big, small, twin = np.zeros((3, 4, 6), np.uint8)
    big[:, :4], small[1:3, 2:4] = 1, 1
    twin[1:3, 2:4] = 1
    labels = label_image(np.stack([big, small, twin]))
    assert labels[0].tolist() == [1, 1, 1, 1, 0, 0]
    assert labels[1].tolist() == [1, 1, 2, 2, 0, 0]  # small (2) beats big; twin (3) ties small and loses


def test_published_labels_equal_the_trackers_own_with_slots_mapped_to_ids():
    rng = np.random.default_rng(0)
    for k in (1, 2, 3, 5):
        probs = rng.random((k, 20, 30), dtype=np.float32) / k
        probs[:, :4] = 1 / (k + 1)  # ties with the background and between objects
        out = TrackOutput(probs[0], 0.9, tuple(range(1, k + 1)), probs if k > 1 else None, (0.9,) * k)
        ids = tuple(range(11, 11 + k))
        labels, objects = publish_objects(out, ids, {i: f"q{i}" for i in ids[1:]}, "tracked", 3, (20, 30))
        lut = np.array([0, 0, *ids[1:]], np.uint8)  # the first id was removed: its pixels are background
        assert np.array_equal(labels, lut[out.labels]), k
        assert [(o.id, o.anchor_index) for o in objects] == [(i, 3) for i in ids[1:]]
        assert [o.mask_fraction for o in objects] == [float((labels == i).mean()) for i in ids[1:]]


def test_an_empty_mask_is_still_an_object():
    class EmptyForMiddle(ThirdsReasoner):
        def __call__(self, frames, queries):
            out = super().__call__(frames, queries)
            out.masks[1] = 0
            return out

    trackers = []

    def factory():
        trackers.append(LabelTracker())
        return trackers[-1]

    with StreamingRuntime(EmptyForMiddle(), factory, BLOCKING, query=["the left one", "the middle one"]) as rt:
        result = rt.process(frames(1)[0])
    assert trackers[-1].objects == (1, 2)
    assert [(o.id, o.mask_source, o.mask_fraction) for o in result.objects] == [(1, "reasoning", 1 / 3),
                                                                                (2, "reasoning", 0.0)]


def test_query_changes_are_checked():
    with StreamingRuntime(ThirdsReasoner(), LabelTracker, BLOCKING, query=["the left one"]) as rt:
        with pytest.raises(InputError, match="names no column"):
            rt.add_query("the blue one")
        with pytest.raises(InputError, match="empty query"):
            rt.add_query("  ")
        with pytest.raises(InputError, match="not a current query"):
            rt.remove_query(7)
        with pytest.raises(InputError, match="expected a list"):
            rt.set_queries("the left one")
        with pytest.raises(InputError, match=r"expected strings, got \['int'\]"):
            rt.set_queries(["the left one", 3])
        with pytest.raises(InputError, match="at most 8"):
            rt.set_queries([f"the left one {i}" for i in range(9)])
        assert rt.add_query("the  left one") == 1  # already current (normalised): same id
        assert rt.queries == {1: "the left one"}
        rt.remove_query(1)
        assert rt.query == "" and rt.process(frames(1)[0]).mask_source == "paused"


def test_a_result_without_one_mask_per_query_is_invalid():
    class OneMask(ThirdsReasoner):
        def __call__(self, frames, queries):
            return ReasonOutput(third("left"))

    with StreamingRuntime(OneMask(), LabelTracker, BLOCKING, query=["the left one", "the right one"]) as rt:
        result = rt.process(frames(1)[0])
    assert rt.stats.reasoning_invalid == 1 and "one mask per query" in rt.stats.last_error
    assert result.mask_source == "none" and not result.labels.any()


def test_sinks_write_labels_per_query_masks_and_per_object_records(tmp_path):
    sinks = [JsonlSink(tmp_path / "frames.jsonl"), LabelSink(tmp_path / "labels"),
             PngSink(tmp_path / "masks", per_query=True)]
    with StreamingRuntime(ThirdsReasoner(), LabelTracker, BLOCKING, query=["the left one", "the right one"]) as rt:
        rt.run(frames(3), sinks)
    for sink in sinks:
        sink.close()
    labels = cv2.imread(str(tmp_path / "labels" / "00002.png"), cv2.IMREAD_UNCHANGED)
    assert labels.dtype == np.uint8 and np.array_equal(labels, third("left") + 2 * third("right"))
    right = cv2.imread(str(tmp_path / "masks" / "2" / "00002.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(right, 255 * third("right"))
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["1", "2"]
    record = json.loads((tmp_path / "frames.jsonl").read_text().splitlines()[2])
    assert record["objects"] == [
        {"id": 1, "query": "the left one", "mask_source": "tracked", "anchor_index": 0, "anchor_age": 2,
         "confidence": 0.9, "mask_fraction": round(1 / 3, 5)},
        {"id": 2, "query": "the right one", "mask_source": "tracked", "anchor_index": 0, "anchor_age": 2,
         "confidence": 0.9, "mask_fraction": round(1 / 3, 5)}]


def test_cli_run_with_three_queries(tiny_checkpoint, tmp_path):
    source = tmp_path / "frames"
    for i in range(6):
        write_rgb(source / f"f{i:03d}.jpg", synthetic.frame(i))
    out = tmp_path / "out"
    queries = ["the red ball", "the blue square", "the background"]
    rc = main(["run", *model_args(tiny_checkpoint), "--source", str(source), *[a for q in queries for a in
               ("--query", q)], "--out", str(out), "--blocking", "--every-frames", "3", "--window", "4",
               "--references", "2", "--no-overlay"])
    assert rc == 0
    names = [f"f{i:03d}.png" for i in range(6)]
    assert sorted(p.name for p in (out / "labels").iterdir()) == names
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["1", "2", "3"]
    assert all(sorted(p.name for p in (out / "masks" / d).iterdir()) == names for d in "123")
    table = json.loads((out / "queries.json").read_text())
    assert {k: v["query"] for k, v in table.items()} == {"1": queries[0], "2": queries[1], "3": queries[2]}
    assert all(v["added_frame"] == 0 and v["removed_frame"] is None for v in table.values())
    records = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert [[o["id"] for o in r["objects"]] for r in records] == [[1, 2, 3]] * 6
    assert [r["objects"][0]["mask_source"] for r in records] == ["reasoning", "tracked", "tracked"] * 2
    for i, name in enumerate(names):
        labels = cv2.imread(str(out / "labels" / name), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(labels)) <= {0, 1, 2, 3}
        for k in (1, 2, 3):  # each query's mask file is its label pixels
            mask = cv2.imread(str(out / "masks" / str(k) / name), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(mask > 0, labels == k)
            assert records[i]["objects"][k - 1]["mask_fraction"] == round(float((labels == k).mean()), 5)
