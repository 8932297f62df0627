"""Held-out figures of a tiny trained checkpoint: reasoning-step J per query kind, streaming J&F.

Scenes from seed ``HELD_OUT_SEED0`` on are never drawn by training (it draws seeds below it).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from visa_edge.runtime import scenes
from visa_edge.runtime.reasoning_networks import MAX_QUERIES
from visa_edge.runtime.reasoning import ReasoningStep
from visa_edge.runtime.streaming import Frame, StreamConfig, StreamingRuntime
from visa_edge.runtime.vos_metrics import boundary_f, jaccard

from .samples import HELD_OUT_SEED0, WindowSpec, answerable, frame_indices


@dataclass
class StepFigures:
    """Mean J on the target frame per query kind, over every answerable query."""

    per_kind: dict[str, float]
    counts: dict[str, int]

    @property
    def mean(self) -> float:
        total = sum(self.counts.values())
        return sum(self.per_kind[k] * self.counts[k] for k in self.per_kind) / total


def reasoning_figures(step: ReasoningStep, n_scenes: int, targets: tuple[int, ...] = (11, 23),
                      spec: WindowSpec = WindowSpec(), kinds: tuple[str, ...] = scenes.KINDS,
                      seed0: int = HELD_OUT_SEED0) -> StepFigures:
    """J of the reasoning step on held-out scenes, at target frames ``targets`` with full windows."""
    js: dict[str, list[float]] = defaultdict(list)
    for seed in range(seed0, seed0 + n_scenes):
        scene = scenes.generate(seed, spec.n_frames, spec.size)
        for t in targets:
            frames = [scene.frames[i] for i in frame_indices(t, spec)]
            tokens = step.visual_tokens(frames)
            asked = [q for q in scenes.queries(scene) if q.kind in kinds and answerable(scene, q, t)]
            for i in range(0, len(asked), MAX_QUERIES):
                chunk = asked[i : i + MAX_QUERIES]
                masks = step(frames, [q.text for q in chunk], frame_tokens=tokens).masks
                for q, mask in zip(chunk, masks):
                    js[q.kind].append(jaccard(mask, scene.target_mask(q, t)))
    return StepFigures({k: float(np.mean(v)) for k, v in js.items()}, {k: len(v) for k, v in js.items()})


def stream_clip(runtime: StreamingRuntime, scene: scenes.Scene, fps: float = 10.0) -> list[np.ndarray]:
    """Masks the runtime publishes for every frame of ``scene`` (frames fed in order)."""
    return [runtime.process(Frame(i, i / fps, f, f"{i:05d}")).mask for i, f in enumerate(scene.frames)]


def clip_jf(masks: list[np.ndarray], scene: scenes.Scene, query: scenes.Query, skip: int = 0) -> tuple[float, float]:
    """Mean J and F of ``masks`` against the query's ground truth, from frame ``skip`` on."""
    j = [jaccard(m, scene.target_mask(query, t)) for t, m in enumerate(masks) if t >= skip]
    f = [boundary_f(m, scene.target_mask(query, t)) for t, m in enumerate(masks) if t >= skip]
    return float(np.mean(j)), float(np.mean(f))


def stream_config(spec: WindowSpec = WindowSpec(), every_frames: int = 6) -> StreamConfig:
    """The streaming settings the tiny model was trained for (window, references), blocking for determinism."""
    return StreamConfig(window=spec.window, references=spec.references, every_frames=every_frames, blocking=True)
