"""Inference settings of the XMem tracker (VISA's evaluation defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import InputError


@dataclass(frozen=True)
class XMemConfig:
    """XMem inference settings; the defaults are those VISA evaluates with (XMem's eval.py).

    ``enable_long_term_count_usage``: the original derives it per video from its length
    (:meth:`original_count_usage`). A stream has no known length, so it is a field here and
    defaults to True: the original's formula turns it on for every video of 391 frames or more
    with these defaults, and without usage counts long-term memory has nothing to rank its
    elements by when it is full (see ``XMemMemory``).
    """

    shorter_side: int | None = 480  # resize so the shorter side is this; None keeps the frame size
    mem_every: int = 5
    top_k: int = 30
    deep_update_every: int = -1  # < 0: deep (value-encoder) hidden update exactly on memory frames
    enable_long_term: bool = True
    enable_long_term_count_usage: bool = True
    min_mid_term_frames: int = 5
    max_mid_term_frames: int = 10
    num_prototypes: int = 128
    max_long_term_elements: int = 10000

    def __post_init__(self) -> None:
        checks = {
            "shorter_side": self.shorter_side is None or self.shorter_side >= 16,
            "mem_every": self.mem_every >= 1,
            "top_k": self.top_k >= 1,
            "min_mid_term_frames": self.min_mid_term_frames >= 1,
            "max_mid_term_frames": self.max_mid_term_frames > self.min_mid_term_frames,
            "num_prototypes": self.num_prototypes >= 1,
            "max_long_term_elements": self.max_long_term_elements > self.num_prototypes,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise InputError(
                f"XMemConfig: invalid {bad} in {self}; expected shorter_side None or >= 16, mem_every >= 1, "
                "top_k >= 1, 1 <= min_mid_term_frames < max_mid_term_frames, num_prototypes >= 1 and "
                "max_long_term_elements > num_prototypes"
            )

    def original_count_usage(self, video_length: int) -> bool:
        """What XMem's eval.py sets ``enable_long_term_count_usage`` to for a video of this many frames."""
        mid_term_span = self.max_mid_term_frames - self.min_mid_term_frames
        return self.enable_long_term and (
            video_length / mid_term_span * self.num_prototypes >= self.max_long_term_elements
        )
