"""The streaming runtime: tracking at camera rate, reasoning re-run asynchronously.

Every frame gets exactly one ``FrameResult``. The live tracker runs on the caller's thread; the
reasoning step runs on one worker thread (at most one step in flight, at most one request
pending). Its result for frame t0 arrives later: the worker anchors a fresh tracker at t0 with
the mask and steps it through the frames the live tracker has already tracked since t0
("catch-up", every step with ``index=frame.index`` so it reuses the per-frame features the live
tracker cached in the factory's ``FeatureCache``), then swaps it in, in O(1) under the tracker
lock, as soon as it has seen every frame the live tracker has. Only the newest
``catchup_full_steps`` frames of a pass are full tracker steps; the older ones are bridged
(``Tracker.bridge``: the flow tracker only warps its labels along the cached consecutive flow),
so a catch-up costs a fraction of live tracking. A pass steps at most ``catchup_max_steps``
frames (a longer backlog is subsampled, evenly, ending at the newest); after ``catchup_passes``
passes (default 1: straight to the present) the tracker is swapped in anyway (counted as
forced; the live tracker then jumps over the frames that arrived meanwhile, a step of a few
frames, rather than publish the older anchor for longer). Each swap records its lag, the frames
the live path tracked between the result's arrival and the swap (``catchup_lag``). While a
query is set, the live path also fills the cache for every frame it buffers before any tracker
steps it (the factory's ``precompute``, when it has one), also while no tracker exists yet: the
first result of a stream or query catches up on cached features too. For a live source, a
catch-up whose steps through uncached frames each take a camera period or more cannot converge
(the CPU is short): it is abandoned and the published tracker kept. Steps through cached frames
never count as too slow: the live path buffers frames no faster than it tracks them, and a
cached step does less than a live one. While nothing is published yet (stream start, new query)
the result is first pasted on the newest frame ("naive"), then replaced once caught up.

The live path never waits behind a catch-up: the worker steps without holding the lock. For
a live source (``process(..., live=True)``) a frame that would be published more than
``max_delay_periods`` camera periods after its capture is not tracked: it gets a result with
mask_source "dropped" (the last published mask, counted in ``dropped_late``).

Triggers: a new query, every ``every_frames`` frames or ``every_seconds`` seconds, and
``confidence_patience`` consecutive frames with tracker confidence below ``min_confidence``;
cadence triggers wait while a step or its catch-up is running (a query change does not). A
failing step (an exception of any kind, or a result that is not a 0/1 mask of the frame's
size) is counted and retried after ``retry_delay_s``; a reasoner call running longer than
``step_timeout_s`` is reported as hung and its worker abandoned (a daemon thread; a fresh
one takes the next request). Frame indices must increase; ``reset()`` restarts a stream.

Several queries: each query has a stable id (1..255, never reused by a runtime; ``add_query``,
``remove_query``, ``set_queries``; ``set_query`` replaces them all by one). One reasoning step
serves every current query (the reasoner gets the list, or the plain string when there is one);
a new query requests a step at once and joins the published objects when its result is swapped
in; a removed one leaves the next frame's labels. The tracker is anchored with a label image of
the step's masks (slots 1..K in query order, mapped back to the ids on output; an empty mask is
still an object); where masks overlap the smaller mask wins (an object inside another, a hat on
a person, survives), equal areas going to the older query.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
import traceback
import typing
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from ..errors import InputError
from ..reasoning_networks import MAX_QUERIES
from ..tracking import Tracker, TrackOutput
from ..tracking.base import MAX_OBJECT_ID
from ..frames import Frame, sample_references
from ..reasoner_protocol import Reasoner
from .window import FrameBuffer

MASK_SOURCES = ("reasoning", "tracked", "none", "paused", "dropped")
OPTIONAL_OFF = 0  # a None-able parameter given as 0 means "off" (CLI, ROS)


def _param(default: Any, help: str, lo: float | None = None, hi: float | None = None):
    """A StreamConfig field with its help text and bounds (the CLI and ROS parameters are generated from them)."""
    return field(default=default, metadata={"help": help, "min": lo, "max": hi})


@dataclass(frozen=True)
class StreamConfig:
    """Scheduling parameters of the streaming runtime: the one table the CLI options and ROS parameters come from.

    A None-able field is off when None (0 on the CLI and in ROS); its bounds apply otherwise, and 0 is not allowed.
    """

    window: int = _param(22, "frames in the reasoning window; the newest is the target", 1)
    references: int = _param(11, "reference frames sampled from the window", 1, 11)
    every_frames: int | None = _param(30, "rerun reasoning every K frames", 0)
    every_seconds: float | None = _param(None, "rerun reasoning every T seconds", 0)
    min_confidence: float = _param(0.3, "tracker confidence under this counts as low", 0, 1)
    confidence_patience: int = _param(3, "consecutive low-confidence frames that trigger reasoning", 1)
    buffer_frames: int = _param(300, "frames kept for reasoning windows and catch-up (bounds memory)", 1)
    catchup_max_steps: int = _param(64, "tracker steps per catch-up pass; a longer backlog is subsampled", 1)
    catchup_passes: int = _param(1, "catch-up passes before the caught-up tracker is swapped in even with frames "
                                 "still behind (the live tracker then jumps them)", 1)
    catchup_full_steps: int | None = _param(1, "catch-up bridging: only the newest N frames of a pass are full tracker "
                                            "steps, the older ones are bridged (the tracker's cheap propagation on "
                                            "cached features; off: every frame a full step)", 0)
    max_delay_periods: float = _param(2.0, "live sources: a frame that would be published more than this many camera "
                                      "periods after capture is dropped instead of tracked (0: never drop)", 0)
    step_timeout_s: float = _param(60.0, "a reasoner call running longer, s, is reported as hung and its worker "
                                   "abandoned; a fresh worker takes the next request (0: never)", 0)
    retry_delay_s: float = _param(0.5, "wait before retrying a failed reasoning step, s", 0)
    blocking: bool = _param(False, "wait for each reasoning result before the next frame (offline, deterministic; "
                            "not real-time)")

    def __post_init__(self):
        for p in stream_parameters():
            value = getattr(self, p.name)
            if not (p.optional and value is None or _within(value, p)):
                raise InputError(f"stream parameter {p.name}={value!r}: expected {describe_bounds(p)}")
        if self.buffer_frames < self.window:
            raise InputError(f"buffer_frames={self.buffer_frames} < window={self.window}: the buffer must hold a window")


@dataclass(frozen=True)
class StreamParameter:
    """One StreamConfig field as a CLI option or ROS parameter sees it."""

    name: str
    type: type  # int, float or bool
    default: Any  # None-able fields: OPTIONAL_OFF when None
    help: str
    optional: bool  # None-able: OPTIONAL_OFF means None (off)
    lo: float | None = None  # smallest allowed value (inclusive; OPTIONAL_OFF for a None-able field)
    hi: float | None = None  # largest allowed value (inclusive)


def _within(value: Any, p: StreamParameter) -> bool:
    """Whether ``value`` has ``p``'s type (an int is a float too) and lies within its bounds."""
    if p.type is bool or isinstance(value, bool):
        return p.type is bool and isinstance(value, bool)
    kind = numbers.Integral if p.type is int else numbers.Real
    if not isinstance(value, kind) or not math.isfinite(value):
        return False
    if p.optional:
        return value > 0 and (p.hi is None or value <= p.hi)
    return (p.lo is None or value >= p.lo) and (p.hi is None or value <= p.hi)


def describe_bounds(p: StreamParameter) -> str:
    """What values ``p`` accepts, for error messages."""
    if p.type is bool:
        return "true or false"
    what = "an integer" if p.type is int else "a finite number"
    if p.lo is not None and p.hi is not None and not p.optional:
        return f"{p.name} in {p.lo}..{p.hi} ({what})"
    if p.optional:
        return f"{what} > 0, or None/0 (off)" + (f" and <= {p.hi}" if p.hi is not None else "")
    return what + (f" >= {p.lo}" if p.lo is not None else "") + (f" and <= {p.hi}" if p.hi is not None else "")


def stream_parameters() -> Iterator[StreamParameter]:
    """Every StreamConfig field with its type, default, help text and bounds, in declaration order."""
    hints = typing.get_type_hints(StreamConfig)
    for f in fields(StreamConfig):
        kind = hints[f.name]
        args = typing.get_args(kind)
        optional = type(None) in args
        base = next(a for a in args if a is not type(None)) if optional else kind
        default = base(OPTIONAL_OFF) if optional and f.default is None else f.default
        yield StreamParameter(f.name, base, default, f.metadata["help"] + (" (0: off)" if optional else ""), optional,
                              f.metadata["min"], f.metadata["max"])


def stream_config_from(values: dict[str, Any]) -> StreamConfig:
    """StreamConfig from parameter values keyed by field name (OPTIONAL_OFF turns a None-able field off)."""
    kw = {}
    for p in stream_parameters():
        if p.name in values:
            v = values[p.name]
            kw[p.name] = None if p.optional and v == OPTIONAL_OFF else v
    return StreamConfig(**kw)


@dataclass(frozen=True)
class ObjectResult:
    """One query's object in a frame: its pixels are ``FrameResult.labels == id``."""

    id: int  # the query's stable id (1..255)
    query: str
    confidence: float  # the tracker's for this object (0 before its first reasoning result)
    mask_source: str  # one of MASK_SOURCES ("none": no reasoning result for it yet)
    anchor_index: int | None  # frame its mask was reasoned on
    mask_fraction: float  # share of the frame's pixels


@dataclass
class FrameResult:
    """The published masks of one frame and their metadata.

    ``mask``, ``confidence``, ``mask_source``, ``anchor_index`` and ``query`` are the first
    (oldest) current query's; ``labels`` and ``objects`` hold every query's.
    """

    frame: Frame
    mask: np.ndarray  # uint8 [H,W] 0/1
    confidence: float
    mask_source: str  # one of MASK_SOURCES ("dropped": not tracked, the last published mask)
    anchor_index: int | None  # frame the current mask was reasoned on
    query: str
    arrival: float  # time.monotonic() when the runtime received the frame
    ready: float  # time.monotonic() when its mask was ready
    track_s: float  # tracker time for this frame
    anchor_latency: dict[str, float] | None = None  # seconds per stage of the reasoning step behind the anchor
    delay_s: float | None = None  # live sources: capture -> ready, on the runtime's clock (see process())
    pasted: bool = False  # the anchor's mask was pasted on a later frame (its catch-up still running)
    labels: np.ndarray | None = None  # uint8 [H,W]: 0 background, k = query id k (None: built from ``mask``)
    objects: tuple[ObjectResult, ...] = ()  # one per current query, in id order

    def __post_init__(self):
        if self.labels is None:
            first = self.objects[0].id if self.objects else 1
            self.labels = self.mask.astype(np.uint8) * np.uint8(first)

    @property
    def anchor_age(self) -> int | None:
        """Frames between this frame and the frame its anchor was reasoned on."""
        return None if self.anchor_index is None else self.frame.index - self.anchor_index

    @property
    def dropped(self) -> bool:
        """Whether the frame was dropped (late, live source) instead of tracked."""
        return self.mask_source == "dropped"

    def metadata(self) -> dict:
        return {
            "index": self.frame.index,
            "name": self.frame.name,
            "timestamp": self.frame.timestamp,
            "mask_source": self.mask_source,
            "anchor_index": self.anchor_index,
            "anchor_age": self.anchor_age,
            "pasted": self.pasted,
            "confidence": round(float(self.confidence), 4),
            "mask_fraction": round(float(self.mask.mean()), 5),
            "query": self.query,
            "staleness_ms": round((self.ready - self.arrival) * 1000, 3),
            "delay_ms": None if self.delay_s is None else round(self.delay_s * 1000, 3),
            "track_ms": round(self.track_s * 1000, 3),
            "anchor_latency_ms": None if self.anchor_latency is None
            else {k: round(v * 1000, 3) for k, v in self.anchor_latency.items()},
            "objects": [{"id": o.id, "query": o.query, "mask_source": o.mask_source, "anchor_index": o.anchor_index,
                         "anchor_age": None if o.anchor_index is None else self.frame.index - o.anchor_index,
                         "confidence": round(float(o.confidence), 4), "mask_fraction": round(o.mask_fraction, 5)}
                        for o in self.objects],
        }


@dataclass
class RuntimeStats:
    """Counters and recent latencies of a streaming session."""

    frames: int = 0
    dropped: int = 0  # frames a live source dropped before the runtime saw them
    dropped_late: int = 0  # frames the runtime received too late to track (mask_source "dropped")
    reasoning_requested: int = 0
    reasoning_coalesced: int = 0  # pending requests replaced by a newer one
    reasoning_started: int = 0
    reasoning_completed: int = 0
    reasoning_failed: int = 0  # raised (anything, SystemExit included) or returned an invalid mask
    reasoning_invalid: int = 0  # of the failures: results that are not a 0/1 mask of the frame's size
    reasoning_hung: int = 0  # steps that ran past step_timeout_s (their worker abandoned)
    workers_abandoned: int = 0  # worker threads left running (hung step, or close() timed out)
    results_discarded: int = 0  # results for an old query or stream, or whose frame left the buffer
    catchup_frames: int = 0  # frames re-tracked after re-anchoring
    catchup_forced: int = 0  # swaps with frames still behind (out of passes, or nothing published yet)
    catchup_abandoned: int = 0  # catch-ups given up: their steps were slower than the camera (live sources)
    catchup_bridged: int = 0  # of catchup_frames: bridged (Tracker.bridge) instead of stepped in full
    catchup_step_s: float = 0.0  # time in catch-up tracker steps and bridges (/ catchup_frames: cost per frame)
    pasted: int = 0  # first masks published as a naive paste while their catch-up ran
    resets: int = 0
    last_error: str | None = None
    reasoning_s: deque = field(default_factory=lambda: deque(maxlen=256))
    catchup_s: deque = field(default_factory=lambda: deque(maxlen=256))
    catchup_lag: deque = field(default_factory=lambda: deque(maxlen=256))  # frames tracked live from arrival to swap

    def snapshot(self) -> dict:
        """Plain values (safe to call while the runtime runs: deques are copied, not iterated in Python)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("reasoning_s", "catchup_s", "catchup_lag"):
            values = list(getattr(self, key))
            d[key] = {"count": len(values), "last": values[-1] if values else None,
                      "p50": float(np.percentile(values, 50)) if values else None}
        return d


def check_reason_output(result: Any, shape: tuple[int, int], where: str) -> np.ndarray:
    """The uint8 0/1 mask of a reasoner's ``result`` for a frame of ``shape``, or InputError saying what is wrong."""
    mask = getattr(result, "mask", None)
    if not isinstance(mask, np.ndarray):
        raise InputError(f"{where}: reasoner returned {type(result).__name__} with mask {type(mask).__name__}; "
                         "expected a ReasonOutput with a numpy mask")
    if mask.shape != tuple(shape):
        raise InputError(f"{where}: mask of shape {mask.shape}; expected the frame's {tuple(shape)}")
    if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.integer):
        raise InputError(f"{where}: mask of dtype {mask.dtype}; expected uint8 or bool 0/1")
    if mask.size and (mask.min() < 0 or mask.max() > 1):
        raise InputError(f"{where}: mask values in [{mask.min()}, {mask.max()}]; expected 0/1")
    return mask.astype(np.uint8)


def check_reason_masks(result: Any, count: int, shape: tuple[int, int], where: str) -> np.ndarray:
    """The uint8 0/1 masks [count,H,W] of a reasoner's ``result`` (``mask`` alone for one query), or InputError."""
    if count == 1:
        return check_reason_output(result, shape, where)[None]
    masks = getattr(result, "masks", None)
    if not isinstance(masks, np.ndarray) or masks.shape != (count, *shape):
        found = masks.shape if isinstance(masks, np.ndarray) else type(masks).__name__
        raise InputError(f"{where}: reasoner returned masks {found}; expected a numpy array {(count, *shape)}, "
                         f"one mask per query")
    if masks.dtype != np.bool_ and not np.issubdtype(masks.dtype, np.integer) or masks.size and (
            masks.min() < 0 or masks.max() > 1):
        raise InputError(f"{where}: masks of dtype {masks.dtype}; expected uint8 or bool 0/1 values")
    return masks.astype(np.uint8)


def label_image(masks: np.ndarray) -> np.ndarray:
    """uint8 [H,W] label image of 0/1 ``masks`` [K,H,W]: 0 background, k = masks[k-1].

    Overlaps go to the smaller mask (an object inside another keeps its pixels); equal areas to the lower k.
    """
    labels = np.zeros(masks.shape[1:], np.uint8)
    areas = masks.reshape(len(masks), -1).sum(1, dtype=np.int64)
    for k in sorted(range(len(masks)), key=lambda k: (-areas[k], -k)):  # largest first, the winners paint last
        labels[masks[k] > 0] = k + 1
    return labels


def publish_objects(out: TrackOutput | None, slots: tuple[int, ...], queries: dict[int, str], source: str,
                    anchor: int | None, shape: tuple[int, int]) -> tuple[np.ndarray, tuple[ObjectResult, ...]]:
    """The label image (query ids) and per-query results of tracker output ``out``, whose object
    slot k is query ``slots[k-1]``: removed queries are left out; a query not in the tracker yet
    is empty, with source "none"."""
    lut, confidences = np.zeros(MAX_OBJECT_ID + 1, np.uint8), {}
    if out is not None:
        for slot, conf in zip(out.objects, out.object_confidences):
            if 1 <= slot <= len(slots) and slots[slot - 1] in queries:
                lut[slot], confidences[slots[slot - 1]] = slots[slot - 1], float(conf)
    if out is None:
        labels = np.zeros(shape, np.uint8)
    elif len(out.objects) == 1:  # the common case, without the argmax: p > 1 - p
        labels = (out.prob > 0.5).astype(np.uint8) * lut[out.objects[0]]
    else:  # TrackOutput.labels as a running maximum (several times faster than its argmax; same ties)
        probs = out.object_probs
        labels, top = np.zeros(shape, np.uint8), 1.0 - probs.sum(0)
        for obj, plane in zip(out.objects, probs):
            wins = plane > top
            labels[wins] = lut[obj]
            np.maximum(top, plane, out=top)
    counts = np.bincount(labels.ravel(), minlength=MAX_OBJECT_ID + 1) / max(labels.size, 1)
    return labels, tuple(
        ObjectResult(qid, text, confidences.get(qid, 0.0), source if qid in confidences else "none",
                     anchor if qid in confidences else None, float(counts[qid]))
        for qid, text in queries.items())


class StreamingRuntime:
    """Publishes one mask per frame while the reasoning step reruns on a sliding window.

    Locks: ``_lock`` guards the published tracker and what the live path reads (the live step
    runs under it; the worker takes it only for the O(1) swap); ``_cond`` guards the worker
    state (``_pending``, ``_busy``, ``_epoch``, ``_stop``).
    """

    def __init__(self, reasoner: Reasoner, tracker_factory: Callable[[], Tracker], config: StreamConfig = StreamConfig(),
                 query: str | Sequence[str] = ""):
        self.reasoner = reasoner
        self.tracker_factory = tracker_factory
        self._precompute: Callable[[np.ndarray, int], None] | None = getattr(tracker_factory, "precompute", None)
        self._precomputed_from: int | None = None  # first frame of the current unbroken run of precomputed frames
        self.config = config
        self.stats = RuntimeStats()
        self.buffer = FrameBuffer(config.buffer_frames)
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._tracker: Tracker | None = None
        self._tracker_upto = -1  # newest frame the published tracker has seen
        self._tracker_out: TrackOutput | None = None  # its output for that frame
        self._live_upto = -1  # newest frame the live path tracked
        self._anchor: int | None = None
        self._pasted = False  # the published tracker is a naive paste of the anchor's mask (see _catch_up)
        self._anchor_latency: dict[str, float] | None = None
        self._queries: dict[int, str] = {}  # current queries by stable id, in id order
        self._next_id = 1
        self._tracker_ids: tuple[int, ...] = ()  # the query id of each object slot (1..K) of the published tracker
        self.query_log: list[dict] = []  # every query: id, query, added_frame, removed_frame (None: not yet)
        self._unstamped: list[tuple[dict, str]] = []  # log entries whose frame is the next one processed
        self._last_labels: np.ndarray | None = None
        self._last_objects: tuple[ObjectResult, ...] = ()
        self._generation = 0  # bumped by set_query or reset: older results are discarded
        self._pending: tuple[int, int, tuple[tuple[int, str], ...]] | None = None  # (generation, target, (id, query)s)
        self._busy = False
        self._step_started: float | None = None  # when the running reasoner call began (None: none running)
        self._epoch = 0  # the current worker's; an abandoned worker sees another value and exits
        self._stop = False
        self._last_index: int | None = None
        self._last_request_index: int | None = None
        self._last_request_time = 0.0
        self._low_streak = 0
        self._retry_at: float | None = None
        self._last_mask: np.ndarray | None = None
        self._last_conf = 0.0
        self._clock_offset: float | None = None  # min(arrival - timestamp) over live frames
        self._previous_live: Frame | None = None
        self._periods: deque[float] = deque(maxlen=32)  # camera periods from timestamps
        self._track_times: deque[float] = deque(maxlen=16)  # recent live tracker steps
        self._start_worker()
        if isinstance(query, str):
            if query:
                self.set_query(query)
        else:
            self.set_queries(query)

    @property
    def query(self) -> str:
        """The first (oldest) current query; "" when paused."""
        with self._lock:
            return next(iter(self._queries.values()), "")

    @property
    def queries(self) -> dict[int, str]:
        """The current queries by stable id, in id order."""
        with self._lock:
            return dict(self._queries)

    def query_table(self) -> dict[str, dict]:
        """Every query this runtime has had, by id (a JSON object key): its text and the first frame
        index processed after it was added / removed (None: not yet, or still current)."""
        with self._lock:
            return {str(e["id"]): {"query": e["query"], "added_frame": e["added_frame"],
                                   "removed_frame": e["removed_frame"], "current": e["id"] in self._queries}
                    for e in self.query_log}

    @property
    def feature_cache(self):
        """The tracker factory's shared FeatureCache (None when it has none)."""
        return getattr(self.tracker_factory, "cache", None)

    def set_query(self, query: str) -> None:
        """Set or replace the query (takes effect with its first reasoning result); "" pauses.

        The reasoner's ``check_query`` (if it has one) validates it first; on InputError the
        previous query stays active.
        """
        texts = self._checked([query] if query.strip() else [], 1)
        with self._lock:
            for qid in list(self._queries):
                self._remove(qid)
            for text in texts:
                self._add(text)
            self._forget_tracking()
        with self._cond:
            self._pending = None

    def add_query(self, query: str) -> int:
        """Add a query (checked like ``set_query``) and return its id; it joins the next reasoning step,
        requested at once. A query already current keeps its id."""
        texts = self._checked([query], 1)
        if not texts:
            raise InputError("add_query(''): empty query; expected text (set_query('') pauses)")
        text = texts[0]
        with self._lock:
            known = {t: qid for qid, t in self._queries.items()}
            if text in known:
                return known[text]
            if len(known) >= MAX_QUERIES:
                raise InputError(f"query {text!r}: {len(known)} queries already; expected at most {MAX_QUERIES}")
            qid = self._add(text)
            self._last_request_index = None
            return qid

    def remove_query(self, query_id: int) -> None:
        """Remove the query ``query_id``: its object leaves the next frame's labels; none left pauses."""
        with self._lock:
            if query_id not in self._queries:
                raise InputError(f"query id {query_id!r}: not a current query; current ids {list(self._queries)}")
            self._remove(query_id)
            paused = not self._queries
            if paused:
                self._forget_tracking()
        if paused:
            with self._cond:
                self._pending = None

    def set_queries(self, queries: Sequence[str]) -> list[int]:
        """Make ``queries`` the current ones: those already current keep their ids, the others are
        removed, new ones added (a step requested at once). Returns their ids in the given order."""
        if isinstance(queries, str):
            raise InputError(f"queries {queries!r}: expected a list of strings, got one string")
        fresh = {self._normal(q) for q in queries if isinstance(q, str)} - set(self.queries.values())
        texts = self._checked(queries, len(fresh))
        with self._lock:
            known = {t: qid for qid, t in self._queries.items()}
            for qid, text in list(self._queries.items()):
                if text not in texts:
                    self._remove(qid)
            ids = [known.get(t) or self._add(t) for t in dict.fromkeys(texts)]
            if any(t not in known for t in texts):
                self._last_request_index = None
            paused = not self._queries
            if paused:
                self._forget_tracking()
            by_text = dict(zip(dict.fromkeys(texts), ids))
        if paused:
            with self._cond:
                self._pending = None
        return [by_text[t] for t in texts]

    @staticmethod
    def _normal(query: str) -> str:
        return " ".join(query.split())

    def _checked(self, queries: Sequence[str], new: int) -> list[str]:
        """``queries`` normalised, each checked by the reasoner's ``check_query`` (if it has one);
        InputError for a non-string, an empty query, too many queries or ids used up (``new``: how
        many would get a new id)."""
        bad = [type(q).__name__ for q in queries if not isinstance(q, str)]
        if bad:
            raise InputError(f"queries: expected strings, got {bad}")
        texts = [self._normal(q) for q in queries]
        if len(texts) > 1 and "" in texts:
            raise InputError(f"queries {list(queries)!r}: an empty query among several; expected non-empty queries")
        if len(set(texts)) > MAX_QUERIES:
            raise InputError(f"queries: {len(set(texts))} given; expected at most {MAX_QUERIES} per reasoning step")
        if self._next_id + new - 1 > MAX_OBJECT_ID:
            raise InputError(f"query ids 1..{MAX_OBJECT_ID} are used up in this runtime (ids are never reused); "
                             "start a new runtime")
        check = getattr(self.reasoner, "check_query", None)
        for text in texts:
            if check is not None and text:
                check(text)
        return [t for t in texts if t]

    def _add(self, text: str) -> int:
        """Give ``text`` the next id (holding ``_lock``)."""
        qid, self._next_id = self._next_id, self._next_id + 1
        self._queries[qid] = text
        entry = {"id": qid, "query": text, "added_frame": None, "removed_frame": None}
        self.query_log.append(entry)
        self._unstamped.append((entry, "added_frame"))
        return qid

    def _remove(self, qid: int) -> None:
        """Drop query ``qid`` (holding ``_lock``)."""
        del self._queries[qid]
        entry = next(e for e in self.query_log if e["id"] == qid)
        self._unstamped.append((entry, "removed_frame"))

    def reset(self) -> None:
        """Restart the stream: frame indices may start again; clears buffer, trackers, caches and the reasoner's."""
        with self._lock:
            self._forget_tracking()
            self.buffer.clear()
            self._last_index = None
            self._clock_offset, self._previous_live = None, None
            self._periods.clear()
            self._last_mask = None
            self._precomputed_from = None
        with self._cond:
            self._pending = None
        if self.feature_cache is not None:
            self.feature_cache.clear()
        if hasattr(self.reasoner, "reset"):
            self.reasoner.reset()
        self.stats.resets += 1

    def _forget_tracking(self) -> None:
        """Drop the tracker and anchor and start a new generation (holding ``_lock``)."""
        self._generation += 1
        self._tracker, self._tracker_upto, self._tracker_out, self._tracker_ids = None, -1, None, ()
        self._anchor, self._anchor_latency, self._pasted = None, None, False
        self._last_request_index = None
        self._retry_at = None

    @property
    def reasoning_busy(self) -> bool:
        """Whether a reasoning step is running or waiting to run (for diagnostics)."""
        with self._cond:
            return self._busy or self._pending is not None

    def request_reasoning(self) -> None:
        """Force a reasoning step on the next frame (e.g. a ROS service call)."""
        self._last_request_index = None

    def process(self, frame: Frame, arrival: float | None = None, *, live: bool = False) -> FrameResult:
        """Track one frame (triggering reasoning as configured) and return its result.

        ``live``: the frame comes from a live source (camera, paced replay). Its capture time on
        the runtime's clock is ``timestamp + offset``, the offset being the smallest
        ``arrival - timestamp`` seen so far (the least-delayed frame); a frame more than half a
        camera period late whose tracking would end more than ``max_delay_periods`` periods
        after capture is dropped (not tracked, not buffered, counted).
        """
        arrival = time.monotonic() if arrival is None else arrival
        if self._last_index is not None and frame.index <= self._last_index:
            raise InputError(f"frame {frame.name!r} has index {frame.index} after index {self._last_index}: "
                             "frame indices must increase (call reset() to restart a stream)")
        self._last_index = frame.index
        self.stats.frames += 1
        with self._lock:
            for entry, key in self._unstamped:
                entry[key] = frame.index
            self._unstamped.clear()
        self._check_hung()
        due = self._capture_time(frame, arrival) if live else None
        if due is not None and self._late(due):
            return self._drop(frame, arrival, due)
        self.buffer.add(frame)
        t0 = time.monotonic()
        self._precompute_features(frame)  # before a request on this frame: its catch-up then finds it cached
        precompute_s = time.monotonic() - t0
        if self._queries and self._should_reason(frame.index):
            self._submit(frame.index)
            if self.config.blocking:
                self._wait_idle()
        t0 = time.monotonic()
        with self._lock:
            queries, anchor, latency, tracker, pasted, slots = (dict(self._queries), self._anchor, self._anchor_latency,
                                                                self._tracker, self._pasted, self._tracker_ids)
            if tracker is None:
                out = None
            elif self._tracker_upto == frame.index:  # anchored on this very frame (a request made with it)
                out = self._tracker_out
            else:
                out = tracker.step(frame.image, index=frame.index)
            self._live_upto = frame.index
        track_s = precompute_s + time.monotonic() - t0
        if out is not None:
            self._track_times.append(track_s)
        source = "reasoning" if anchor == frame.index else "tracked"
        labels, objects = publish_objects(out, slots, queries, source, anchor, frame.image.shape[:2])
        first = objects[0] if objects else None
        mask = (labels == first.id).astype(np.uint8) if first else labels
        conf = first.confidence if first else 0.0
        tracked = [o.confidence for o in objects if o.mask_source == "tracked"]
        low = bool(tracked) and min(tracked) < self.config.min_confidence  # a fresh reasoning mask is not "low"
        self._low_streak = self._low_streak + 1 if low else 0
        self._last_mask, self._last_conf, self._last_labels, self._last_objects = mask, conf, labels, objects
        ready = time.monotonic()
        return FrameResult(frame, mask, conf, first.mask_source if first else "paused",
                           first.anchor_index if first else None, first.query if first else "", arrival, ready,
                           track_s, latency, None if due is None else ready - due, pasted and out is not None,
                           labels, objects)

    def _precompute_features(self, frame: Frame) -> None:
        """While a query is set, cache the buffered ``frame``'s per-frame features (factories with ``precompute``)."""
        if self._precompute is None or not self._queries:
            self._precomputed_from = None
            return
        self._precompute(frame.image, frame.index)
        if self._precomputed_from is None:
            self._precomputed_from = frame.index

    def _features_cached(self, index: int) -> bool:
        """Whether the live path precomputed frame ``index``'s features and the cache still holds them
        (it evicts the oldest frames first; every frame touched is a buffered one)."""
        cache, start = self.feature_cache, self._precomputed_from
        return (cache is not None and start is not None and start <= index
                and self._live_upto - index < getattr(cache, "max_frames", 0))

    def _capture_time(self, frame: Frame, arrival: float) -> float:
        """The frame's capture time on the monotonic clock; updates the camera-period estimate."""
        offset = arrival - frame.timestamp
        self._clock_offset = offset if self._clock_offset is None else min(self._clock_offset, offset)
        prev = self._previous_live
        if prev is not None and frame.index > prev.index and frame.timestamp > prev.timestamp:
            self._periods.append((frame.timestamp - prev.timestamp) / (frame.index - prev.index))
        self._previous_live = frame
        return frame.timestamp + self._clock_offset

    def _late(self, due: float) -> bool:
        if self.config.max_delay_periods <= 0 or len(self._periods) < 2:
            return False
        period = float(np.median(self._periods))
        now = time.monotonic()
        track = float(np.median(self._track_times)) if self._track_times else 0.0
        return now - due > 0.5 * period and now + track - due > self.config.max_delay_periods * period

    def _drop(self, frame: Frame, arrival: float, due: float) -> FrameResult:
        self.stats.dropped_late += 1
        shape = frame.image.shape[:2]
        last = self._last_mask
        labels = self._last_labels if last is not None and last.shape == shape else np.zeros(shape, np.uint8)
        queries = self.queries  # the last published objects still current, their pixels kept
        objects = tuple(replace(o, mask_source="dropped") for o in self._last_objects if o.id in queries)
        labels = np.where(np.isin(labels, [o.id for o in objects]), labels, 0).astype(np.uint8)
        first = objects[0] if objects else None
        mask = (labels == first.id).astype(np.uint8) if first else np.zeros(shape, np.uint8)
        ready = time.monotonic()
        return FrameResult(frame, mask, first.confidence if first else 0.0, "dropped", self._anchor, self.query,
                           arrival, ready, 0.0, self._anchor_latency, ready - due, self._pasted, labels, objects)

    def run(self, frames: Iterable[Frame], sinks: Sequence = (), on_result: Callable[[FrameResult], None] | None = None,
            live: bool | None = None) -> RuntimeStats:
        """Process every frame of ``frames``, writing each result to ``sinks``.

        ``live`` (default: the source's ``live`` attribute) lets late frames be dropped.
        """
        live = bool(getattr(frames, "live", False)) if live is None else live
        source_dropped = getattr(frames, "dropped", None)
        for frame in frames:
            result = self.process(frame, live=live)
            for sink in sinks:
                sink.write(result)
            if on_result is not None:
                on_result(result)
            if source_dropped is not None:
                self.stats.dropped = frames.dropped
        return self.stats

    def close(self, timeout: float | None = None) -> bool:
        """Stop the worker; returns whether it ended within ``timeout`` seconds (None: wait for an
        in-flight step). A worker still running is abandoned (a daemon thread) and counted."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._worker.join(timeout)
        if self._worker.is_alive():
            self.stats.workers_abandoned += 1
            self.stats.last_error = f"close(timeout={timeout}): the reasoning worker was still running; abandoned"
            return False
        return True

    def __enter__(self) -> "StreamingRuntime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start_worker(self) -> None:
        """A fresh worker thread for the current epoch (holding ``_cond`` or before any thread runs)."""
        self._worker = threading.Thread(target=self._work, args=(self._epoch,), name=f"reasoning-{self._epoch}", daemon=True)
        self._worker.start()

    def _check_hung(self) -> None:
        """Abandon a step running past ``step_timeout_s``: report it and start a fresh worker."""
        limit = self.config.step_timeout_s
        if not limit:
            return
        with self._cond:
            if not self._busy or self._step_started is None or time.monotonic() - self._step_started <= limit:
                return
            running = time.monotonic() - self._step_started
            self._step_started = None
            self._epoch += 1
            self._busy = False
            self.stats.reasoning_hung += 1
            self.stats.workers_abandoned += 1
            self.stats.last_error = (f"reasoning step hung: running {running:.1f} s > step_timeout_s={limit:g}; "
                                     "its worker was abandoned, a fresh one takes the next request")
            self._retry_at = time.monotonic() + self.config.retry_delay_s
            self._start_worker()
            self._cond.notify_all()

    def _should_reason(self, index: int) -> bool:
        cfg, now = self.config, time.monotonic()
        if self._retry_at is not None:
            return now >= self._retry_at
        if self._last_request_index is None:
            return True  # first frame, new query or forced: even while a step runs
        if self.reasoning_busy:
            return False  # cadence waits for the running step and its catch-up
        if cfg.every_frames and index - self._last_request_index >= cfg.every_frames:
            return True
        if cfg.every_seconds and now - self._last_request_time >= cfg.every_seconds:
            return True
        return self._low_streak >= cfg.confidence_patience

    def _submit(self, index: int) -> None:
        self._last_request_index, self._last_request_time = index, time.monotonic()
        self._low_streak, self._retry_at = 0, None
        self.stats.reasoning_requested += 1
        with self._cond:
            if self._pending is not None:
                self.stats.reasoning_coalesced += 1
            self._pending = (self._generation, index, tuple(self.queries.items()))
            self._cond.notify_all()

    def _wait_idle(self) -> None:
        """Blocking mode: wait for the step (a hung one is abandoned after ``step_timeout_s``)."""
        limit = self.config.step_timeout_s or None
        while True:
            with self._cond:
                if self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout=limit):
                    return
            self._check_hung()

    def _work(self, epoch: int) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or self._epoch != epoch or self._pending is not None)
                if self._stop or self._epoch != epoch:
                    return
                request, self._pending, self._busy = self._pending, None, True
            error = None
            try:
                self._reason_and_anchor(epoch, *request)
            except BaseException as e:  # anything a reasoner raises, SystemExit included, is reported and retried
                error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
            with self._cond:
                if self._epoch != epoch:
                    return  # abandoned while it ran (already reported as hung)
                if error is not None:
                    self.stats.reasoning_failed += 1
                    self.stats.last_error = error
                    self._retry_at = time.monotonic() + self.config.retry_delay_s
                self._busy = False
                self._cond.notify_all()

    def _current(self, epoch: int, generation: int) -> bool:
        return epoch == self._epoch and generation == self._generation

    def _reason_and_anchor(self, epoch: int, generation: int, target: int,
                           queries: tuple[tuple[int, str], ...]) -> None:
        ids, texts = tuple(q[0] for q in queries), [q[1] for q in queries]
        window = self.buffer.window(target, self.config.window)
        if not window or window[-1].index != target:
            self.stats.results_discarded += 1
            return
        refs = [window[i] for i in sample_references(len(window), len(window) - 1, self.config.references)]
        self.stats.reasoning_started += 1
        with self._cond:
            t0 = self._step_started = time.monotonic()
        try:
            result = self.reasoner(refs + [window[-1]], texts[0] if len(texts) == 1 else texts)
        finally:
            with self._cond:
                if epoch == self._epoch:
                    self._step_started = None
        if not self._current(epoch, generation):
            self.stats.results_discarded += 1
            return
        try:
            masks = check_reason_masks(result, len(texts), window[-1].image.shape[:2],
                                       f"reasoning result for frame {target}")
        except InputError:
            self.stats.reasoning_invalid += 1
            raise
        self.stats.reasoning_s.append(time.monotonic() - t0)
        self.stats.reasoning_completed += 1
        latency = {**result.timings, "reasoning": self.stats.reasoning_s[-1]}
        outcome = self._catch_up(epoch, generation, window[-1], label_image(masks), ids, latency)
        if outcome == "swapped":
            self.stats.catchup_s.append(latency["catchup"])
        elif outcome == "abandoned":
            self.stats.catchup_abandoned += 1
        else:
            self.stats.results_discarded += 1

    def _catch_up(self, epoch: int, generation: int, anchor: Frame, labels: np.ndarray, ids: tuple[int, ...],
                  latency: dict[str, float]) -> str:
        """Anchor a fresh tracker at ``anchor`` with ``labels`` (slot k = query ``ids[k-1]``), step it
        through the frames the live tracker has tracked since, and swap it in once it has seen all of
        them (see the module docstring). ``latency`` (the step's stage timings) gains ``catchup`` and
        is published with the anchor. Returns "swapped", "abandoned" (it could not keep up with the
        camera) or "discarded".
        """
        start = time.monotonic()
        with self._lock:
            arrived = self._live_upto
        self._paste_if_nothing_published(epoch, generation, anchor.index, labels, ids, latency)
        shadow = self.tracker_factory()
        upto = anchor.index
        out = shadow.anchor(anchor.image, labels, objects=tuple(range(1, len(ids) + 1)), index=anchor.index)
        steps: deque[float] = deque(maxlen=3)
        for passes in range(1, self.config.catchup_passes + 1):
            with self._lock:
                if not self._current(epoch, generation):
                    return "discarded"
                live_upto = self._live_upto
            if self.buffer.last_evicted > upto:
                return "discarded"  # frames after the anchor left the buffer: cannot catch up
            todo = [f for f in self.buffer.after(upto) if f.index <= live_upto]
            picks = subsample(todo, self.config.catchup_max_steps)
            bridged = len(picks) - (self.config.catchup_full_steps or len(picks))
            for k, frame in enumerate(picks):
                t0 = time.monotonic()
                bridge = k < bridged  # the newest frames get full steps: the swapped-in output is a full step's
                out, upto = (shadow.bridge if bridge else shadow.step)(frame.image, index=frame.index), frame.index
                took = time.monotonic() - t0
                self.stats.catchup_bridged += int(bridge)
                self.stats.catchup_step_s += took
                if len(picks) < len(todo) or not self._features_cached(frame.index):  # subsampled: new flows
                    steps.append(took)  # only uncached steps can be too slow to converge
                self.stats.catchup_frames += 1
                if self._cannot_keep_up(steps):
                    with self._lock:
                        if self._tracker is not None:
                            return "abandoned"  # keep tracking from the published anchor
                    break
            with self._lock:
                if not self._current(epoch, generation) or not self._anchor_moves_on(anchor.index):
                    return "discarded"  # a newer stream, query or anchor: anchors never go back in time
                behind = sum(1 for f in self.buffer.after(upto) if f.index <= self._live_upto)
                if behind == 0 or passes == self.config.catchup_passes or self._tracker is None:
                    if behind:
                        self.stats.catchup_forced += 1
                    latency["catchup"] = time.monotonic() - start
                    self.stats.catchup_lag.append(self._live_upto - arrived)
                    self._tracker, self._tracker_upto, self._tracker_out, self._tracker_ids = shadow, upto, out, ids
                    self._anchor, self._anchor_latency, self._pasted = anchor.index, latency, False
                    return "swapped"
        return "discarded"

    def _cannot_keep_up(self, steps: Sequence[float]) -> bool:
        """Live sources: the last catch-up steps each took a camera period or more (the CPU is short)."""
        if len(steps) < steps.maxlen or len(self._periods) < 2:
            return False
        return min(steps) >= float(np.median(self._periods))

    def _anchor_moves_on(self, index: int) -> bool:
        """Whether an anchor at ``index`` may replace the published one (holding ``_lock``): a newer
        frame, or the same frame replacing its naive paste."""
        return self._anchor is None or index > self._anchor or index == self._anchor and self._pasted

    def _paste_if_nothing_published(self, epoch: int, generation: int, index: int, labels: np.ndarray,
                                    ids: tuple[int, ...], latency: dict[str, float]) -> None:
        """With no tracker published yet (stream start, new query), publish the mask of frame ``index``
        pasted on the newest tracked frame at once; the caught-up tracker replaces it (a stale mask
        beats none while the catch-up runs)."""
        with self._lock:
            if self._tracker is not None or not self._current(epoch, generation):
                return
            newest = self.buffer.get(self._live_upto)
        if newest is None or newest.index <= index:
            return
        paste = self.tracker_factory()
        out = paste.anchor(newest.image, labels, objects=tuple(range(1, len(ids) + 1)), index=newest.index)
        with self._lock:  # frames tracked meanwhile are jumped over by the live tracker's next step
            if self._tracker is None and self._current(epoch, generation):
                self._tracker, self._tracker_upto, self._tracker_out, self._tracker_ids = paste, newest.index, out, ids
                self._anchor, self._anchor_latency, self._pasted = index, dict(latency), True
                self.stats.pasted += 1


def subsample(frames: list[Frame], n: int) -> list[Frame]:
    """At most ``n`` of ``frames``, evenly spaced, always ending with the newest."""
    if len(frames) <= n:
        return frames
    picks = np.linspace(len(frames) - 1, 0, n, endpoint=False)[::-1]
    return [frames[int(round(p))] for p in picks]
