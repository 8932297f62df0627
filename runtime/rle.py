"""COCO run-length encoding (the ``{"size": [h, w], "counts": str}`` masks of ReVOS/MeViS JSONs).

Masks are flattened in column-major order; runs alternate background/foreground starting
with background. ``counts`` strings use COCO's 6-bit character coding: 5 payload bits per
character, bit 0x20 = more characters follow, sign from bit 0x10 of the last character,
and from the third run on each value is stored as the difference to the run two before.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError


def _decode_counts(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise InputError(f"RLE counts string ends inside a value: {s[:40]!r}")
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _encode_counts(counts: list[int]) -> str:
    out = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = not ((c & 0x10) == 0 and x == 0 or (c & 0x10) and x == -1)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def decode(rle: dict) -> np.ndarray:
    """uint8 [h,w] 0/1 mask of a COCO RLE dict (compressed string or list counts)."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"not a COCO RLE (expected {{'size': [h, w], 'counts': ...}}): {str(rle)[:80]}") from e
    runs = _decode_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if sum(runs) != h * w or min(runs, default=0) < 0:
        raise InputError(f"RLE runs sum to {sum(runs)}; expected h*w = {h}*{w} = {h * w}")
    values = np.arange(len(runs)) % 2
    return np.repeat(values.astype(np.uint8), runs).reshape(w, h).T.copy()


def encode(mask: np.ndarray) -> dict:
    """COCO RLE dict (compressed counts string) of a binary mask [h,w]."""
    flat = (np.asarray(mask) > 0).T.reshape(-1).astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        runs = [0] + runs
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": _encode_counts(runs)}
