"""What the streaming and the offline paths share: a camera frame, and VISA's reference sampling."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One camera frame."""

    index: int  # monotonic, from 0
    timestamp: float  # capture time, seconds
    image: np.ndarray  # RGB uint8 [H,W,3]
    name: str  # output file stem (source file name, else the zero-padded index)


def sample_references(n_frames: int, target: int, max_references: int = 11) -> list[int]:
    """Positions of the reference frames among ``n_frames``, as VISA's evaluation samples them.

    ``step = ceil(n / max_references)``, start at ``target % step``: evenly spread, in
    temporal order, and always containing the target position.
    """
    if not 0 <= target < n_frames:
        raise ValueError(f"target {target} outside 0..{n_frames - 1}")
    if max_references == 1:
        return [target]
    step = math.ceil(n_frames / max_references)
    return list(range(target % step, n_frames, step))
