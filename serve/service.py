"""The server's reasoning work, without Ray: per-stream token caches and batched steps.

``ReasonService.handle`` takes the requests that arrived together (``@serve.batch``), encodes
the visual tokens of every frame they lack in one call, then runs the rest of the step for all
of them in one ``ReasoningStep.batch`` (one right-padded LLM prefill over the one-query windows,
the SAM encoder on every target in one call where the engine allows). Failures stay per request:
a request whose window cannot be assembled is answered alone, and if the batched step raises,
each request is retried alone (counted as ``batch_fallbacks``) so one bad request cannot fail
the others.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from visa_edge.runtime.errors import VisaEdgeError
from visa_edge.runtime.reasoning import ReasoningResult, ReasoningStep, Window
from visa_edge.runtime.remote_reasoner import ReasonRequest, encode_masks


@dataclass
class Answer:
    """What one request gets: HTTP status and JSON body."""

    status: int
    body: dict


@dataclass
class ServiceMetrics:
    """Counters a replica reports at ``/metrics``."""

    requests: int = 0  # requests that reached the service (authorised, within the size limit, parsed)
    answered: int = 0  # 200 answers
    missing_answers: int = 0  # 409 answers (frames the server lacked)
    failed: int = 0  # 400/500 answers from the step
    batch_fallbacks: int = 0  # batched steps that raised, so each of their requests was retried alone
    refused_unauthorized: int = 0  # 401
    refused_too_large: int = 0  # 413
    bad_requests: int = 0  # 400 before the step (unparsable bodies)
    batches: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)  # size -> batches of that size
    cache_hits: int = 0  # window frames whose tokens were cached
    cache_misses: int = 0  # window frames encoded here
    frames_received: int = 0  # images decoded
    evicted_streams: int = 0

    def snapshot(self) -> dict:
        d = dict(self.__dict__)
        d["batch_sizes"] = {str(k): v for k, v in sorted(self.batch_sizes.items())}
        d["max_batch_size"] = max(self.batch_sizes, default=0)
        return d


class ReasonService:
    """Answers reasoning requests from many streams with one ``ReasoningStep``.

    Keeps visual tokens per stream in an LRU of ``cache_frames`` frames, for at most
    ``max_streams`` streams (the least recently used stream is dropped).
    """

    def __init__(self, step: ReasoningStep, cache_frames: int = 64, max_streams: int = 64):
        self.step = step
        self.cache_frames, self.max_streams = cache_frames, max_streams
        self.metrics = ServiceMetrics()
        self._caches: OrderedDict[str, OrderedDict[int, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def streams(self) -> int:
        return len(self._caches)

    def _cache(self, stream: str) -> OrderedDict[int, torch.Tensor]:
        cache = self._caches.setdefault(stream, OrderedDict())
        self._caches.move_to_end(stream)
        while len(self._caches) > self.max_streams:
            self._caches.popitem(last=False)
            self.metrics.evicted_streams += 1
        return cache

    def handle(self, requests: list[ReasonRequest]) -> list[Answer]:
        """One answer per request, in order; all frames to encode across the batch are encoded together."""
        with self._lock:
            m = self.metrics
            m.batches += 1
            m.batch_sizes[len(requests)] = m.batch_sizes.get(len(requests), 0) + 1
            m.requests += len(requests)
            answers: list[Answer | None] = [None] * len(requests)
            todo: list[tuple[int, ReasonRequest]] = []
            for k, req in enumerate(requests):
                cache = self._cache(req.stream)
                m.frames_received += len(req.images)
                missing = sorted({i for i in req.frames if i not in cache and i not in req.images})
                if missing:
                    m.missing_answers += 1
                    answers[k] = Answer(409, {"status": "missing", "missing": missing})
                else:
                    todo.append((k, req))
            t0 = time.perf_counter()
            encoded = self._encode_missing(todo)
            encode_s = time.perf_counter() - t0
            windows: list[tuple[int, Window]] = []
            for k, req in todo:
                window = self._window(req)
                if isinstance(window, Answer):
                    answers[k] = window
                else:
                    windows.append((k, window))
            extra = {"timings": {"visual_tokens_batch": encode_s}, "encoded_in_batch": encoded}
            for (k, _), answer in zip(windows, self._step([w for _, w in windows], extra)):
                answers[k] = answer
        return answers

    def _encode_missing(self, todo: list[tuple[int, ReasonRequest]]) -> int:
        """Encode, in one visual-token call, every frame of ``todo`` not cached yet; returns how many."""
        jobs: list[tuple[str, int, np.ndarray]] = []
        for _, req in todo:
            cache = self._caches[req.stream]
            seen = set()
            for i in req.frames:
                if i in cache or i in seen:
                    self.metrics.cache_hits += i in cache
                    continue
                seen.add(i)
                self.metrics.cache_misses += 1
                jobs.append((req.stream, i, req.images[i]))
        if jobs:
            with torch.inference_mode():
                tokens = self.step.visual_tokens([image for _, _, image in jobs])
            for (stream, i, _), t in zip(jobs, tokens):
                self._caches[stream][i] = t
        return len(jobs)

    def _window(self, req: ReasonRequest) -> Window | Answer:
        """The request's window on its cached tokens (and its stream's cache trimmed), or its error answer."""
        cache = self._caches[req.stream]
        try:
            tokens = torch.stack([cache[i] for i in req.frames])
            for i in req.frames:
                cache.move_to_end(i)
            while len(cache) > self.cache_frames:
                cache.popitem(last=False)
            # Only the target's pixels are used (SAM); the references are placeholders of the frame's shape.
            blank = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (*req.shape, 3))
            images = [blank] * (len(req.frames) - 1) + [req.images[req.frames[-1]]]
        except Exception as e:  # one request's failure must not fail the others in its batch
            return self._failed(e)
        return Window(images, req.queries, tokens)

    def _step(self, windows: list[Window], extra: dict) -> list[Answer]:
        """Answers for ``windows`` from one batched step, or, if it raises, from one step per window.

        ``extra`` holds what the batch shares (``timings`` of its token encoding, ``encoded_in_batch``)."""
        if not windows:
            return []
        size = len(windows)
        try:
            with torch.inference_mode():
                results: list[ReasoningResult | Exception] = list(self.step.batch(windows))
        except Exception as e:
            if size == 1:
                results = [e]
            else:
                self.metrics.batch_fallbacks += 1
                results, size = [self._alone(w) for w in windows], 1
        answers = []
        for result in results:
            if isinstance(result, Exception):
                answers.append(self._failed(result))
                continue
            self.metrics.answered += 1
            body = {"status": "ok", **encode_masks(result.masks), "timings": {**extra["timings"], **result.timings},
                    "encoded_in_batch": extra["encoded_in_batch"], "step_batch": size}
            answers.append(Answer(200, body))
        return answers

    def _alone(self, window: Window) -> ReasoningResult | Exception:
        """The window's own one-window step, or the error it raised."""
        try:
            with torch.inference_mode():
                return self.step.batch([window])[0]
        except Exception as e:
            return e

    def _failed(self, error: Exception) -> Answer:
        """400 for the project's errors (bad input), 500 for anything else; counted as failed."""
        self.metrics.failed += 1
        if isinstance(error, VisaEdgeError):
            return Answer(400, {"error": str(error)})
        return Answer(500, {"error": f"{type(error).__name__}: {error}"})
