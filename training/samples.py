"""Training and evaluation samples: a window of a scene, its reference frames and queries with masks.

A sample is what the streaming runtime hands the reasoning step: the last ``window`` frames
up to the target, ``references`` of them picked by VISA's sampling, then the target frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from visa_edge.runtime import scenes
from visa_edge.runtime.frames import sample_references

HELD_OUT_SEED0 = 1_000_000  # scene seeds from here on are never trained on


@dataclass(frozen=True)
class WindowSpec:
    """How frames are chosen for one reasoning step (the same as ``StreamConfig`` at inference)."""

    window: int = 12
    references: int = 4
    n_frames: int = 24
    size: int = 160


@dataclass
class Sample:
    frames: list[np.ndarray]  # references..., target
    queries: list[scenes.Query]
    masks: list[np.ndarray]  # uint8 [H,W] ground truth of each query on the target frame
    seed: int
    target: int


def frame_indices(target: int, spec: WindowSpec) -> list[int]:
    """Frame indices of the references followed by the target, as the streaming window picks them."""
    n = min(spec.window, target + 1)
    first = target - n + 1
    return [first + p for p in sample_references(n, n - 1, spec.references)] + [target]


def answerable(scene: scenes.Scene, query: scenes.Query, t: int) -> bool:
    """The query names an object that is visible at frame t."""
    k = query.targets[t]
    return k >= 0 and scene.area(k, t) > 0


def draw(seed: int, rng: np.random.Generator, spec: WindowSpec, n_queries: int,
         kinds: tuple[str, ...] = scenes.KINDS) -> tuple[Sample, scenes.Scene]:
    """A random target frame of scene ``seed`` with up to ``n_queries`` queries, and the scene.

    Half the queries (at least one) name objects by colour and shape, for different objects:
    on the same frames they differ only in the words, which is what teaches the model to read
    them. The others are of distinct reasoning kinds.
    """
    scene = scenes.generate(seed, spec.n_frames, spec.size)
    t = int(rng.integers(0, spec.n_frames))
    by_kind: dict[str, list[scenes.Query]] = {}
    for q in scenes.queries(scene):
        if q.kind in kinds and answerable(scene, q, t):
            by_kind.setdefault(q.kind, []).append(q)
    named = by_kind.pop("colour_shape", [])
    share = n_queries if kinds == ("colour_shape",) else max(1, n_queries // 2)
    chosen = [named[i] for i in rng.permutation(len(named))[:share]]
    kinds = [k for k in scenes.KINDS if k in by_kind]
    for i in rng.permutation(len(kinds))[: n_queries - len(chosen)]:
        options = by_kind[kinds[i]]
        chosen.append(options[int(rng.integers(0, len(options)))])
    frames = [scene.frames[i] for i in frame_indices(t, spec)]
    return Sample(frames, chosen, [scene.target_mask(q, t) for q in chosen], seed, t), scene
