"""Linear probe: do a model's image tokens carry where an object is and how big it is?

Before training the reasoner on position or size queries, check that the answer is in its
input: per visible object of a frame, the share-weighted mean of the frame's projected tokens
(as the LLaMA receives them), fitted linearly to the object's centre x, y, radius and area.
"""

from __future__ import annotations

import numpy as np
import torch

from visa_edge.runtime import scenes
from visa_edge.runtime.model import VisaModel

from .token_cache import frame_tokens

TARGETS = ("x", "y", "radius", "area")


def object_features(model: VisaModel, seeds: range, size: int = 160, n_frames: int = 24
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Features [N,H] (each object's share-weighted mean token) and targets [N,4] (centre x, y,
    radius as fractions of the frame side, area as a fraction of the frame) at one frame per scene."""
    rng = np.random.default_rng(seeds.start)
    features, targets = [], []
    for seed in seeds:
        scene = scenes.generate(seed, n_frames, size)
        t = int(rng.integers(0, n_frames))
        with torch.no_grad():
            tokens, shares = frame_tokens(model, [scene.frames[t]], scene.masks[[t]])
        for k, obj in enumerate(scene.objects):
            w = shares[0, :, k]
            if w.sum() < 0.5:  # less than half a patch visible
                continue
            features.append(((w[:, None] * tokens[0]).sum(0) / w.sum()).numpy())
            cx, cy = obj.centre(t)
            targets.append([cx / size, cy / size, obj.radius / size, scene.area(k, t) / size**2])
    return np.asarray(features, np.float64), np.asarray(targets, np.float64)


def probe_r2(features: np.ndarray, targets: np.ndarray, fit_share: float = 2 / 3) -> dict[str, float]:
    """R^2 per target of a least-squares linear fit on the first ``fit_share`` of the objects,
    measured on the rest (0: no better than the mean; below 0: worse)."""
    n = int(len(features) * fit_share)
    a = np.c_[features, np.ones(len(features))]
    w, *_ = np.linalg.lstsq(a[:n], targets[:n], rcond=None)
    residual = ((a[n:] @ w - targets[n:]) ** 2).mean(0)
    return {name: float(1 - r / v) for name, r, v in zip(TARGETS, residual, targets[n:].var(0))}
