"""The VISA reasoning step as a streaming ``Reasoner`` (one or several queries), with per-frame visual-token caching."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch

from ..reasoning_networks import MAX_FRAMES
from ..reasoning import ReasoningStep, StageTimer, as_queries
from ..reasoner_protocol import ReasonOutput
from ..frames import Frame


class VisaReasoner:
    """Runs ``ReasoningStep`` on stream frames; each frame's CLIP+clustering tokens are computed
    once and kept in a bounded LRU cache keyed by frame index (windows overlap heavily)."""

    def __init__(self, step: ReasoningStep, cache_frames: int = 64):
        self.step = step
        self.cache_frames = cache_frames
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.encoded = 0  # frames encoded so far (cache misses)

    def reset(self) -> None:
        """Forget cached tokens (a new stream restarts frame indices)."""
        with self._lock:
            self._cache.clear()

    def tokens(self, frames: Sequence[Frame]) -> torch.Tensor:
        """Visual tokens [N,112,H] of ``frames``, encoding only the ones not cached."""
        with self._lock:
            missing = list({f.index: f for f in frames if f.index not in self._cache}.values())
        if missing:
            fresh = self.step.visual_tokens([f.image for f in missing])
            with self._lock:
                for f, t in zip(missing, fresh):
                    self._cache[f.index] = t
                self.encoded += len(missing)
        with self._lock:
            out = []
            for f in frames:
                self._cache.move_to_end(f.index)
                out.append(self._cache[f.index])
            while len(self._cache) > self.cache_frames:
                self._cache.popitem(last=False)
        return torch.stack(out)

    def check_query(self, query_or_queries: str | Sequence[str], n_frames: int = MAX_FRAMES) -> None:
        """Raise InputError unless every query is one the step can run on ``n_frames`` frames
        (1..MAX_QUERIES strings whose prompts fit the LLM's positions)."""
        for query in as_queries(query_or_queries):
            self.step.model.check_query(query, n_frames)

    def __call__(self, frames: Sequence[Frame], queries: str | Sequence[str]) -> ReasonOutput:
        """The target frame's mask for each query: ``mask`` is the first query's, ``masks`` all [Q,H,W]."""
        timer = StageTimer(self.step.device)  # synchronises CUDA, so GPU encoding is counted
        with timer.stage("visual_tokens"):
            tokens = self.tokens(frames)
        result = self.step([f.image for f in frames], queries, frame_tokens=tokens)
        return ReasonOutput(result.mask, {**timer.timings, **result.timings}, masks=result.masks)
