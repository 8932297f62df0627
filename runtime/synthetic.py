"""A synthetic video with a known object: a red ellipse moving over a textured background.

The same construction as the VISA golden fixtures (``shared/golden/visa_tiny``): a colour
gradient, a static blue square, a moving red ellipse, and a texture so that no two
patches are identical (exact ties would make the token clustering depend on noise).
"""

from __future__ import annotations

import numpy as np

TEXTURE_SALT = 9


def ellipse_mask(t: int, height: int = 240, width: int = 320, n_frames: int = 22) -> np.ndarray:
    """uint8 [H,W] 0/1 mask of the red ellipse at frame t."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cx = 50 + 10 * t * (width / 320)
    cy = 120 * (height / 240) + 50 * np.sin(2 * np.pi * t / n_frames)
    return ((((x - cx) / 40) ** 2 + ((y - cy) / 25) ** 2) <= 1).astype(np.uint8)


def frame(t: int, height: int = 240, width: int = 320, n_frames: int = 22) -> np.ndarray:
    """RGB uint8 [H,W,3] frame t of the synthetic video."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.empty((height, width, 3), np.float64)
    img[..., 0] = 30 + 170 * x / (width - 1)
    img[..., 1] = 50 + 140 * y / (height - 1)
    img[..., 2] = 120 + 60 * np.sin(2 * np.pi * (x / 160 + t / n_frames))
    square = (x >= 230 * width / 320) & (x < 280 * width / 320) & (y >= 30 * height / 240) & (y < 80 * height / 240)
    img[square] = (30, 60, 220)
    img[ellipse_mask(t, height, width, n_frames) > 0] = (235, 35, 35)
    for c in range(3):
        img[..., c] += 10 * np.sin(0.11 * x + 0.07 * y + 0.7 * TEXTURE_SALT + 1.3 * c)
        img[..., c] += 6 * np.sin(-0.13 * x + 0.05 * y + 1.9 * TEXTURE_SALT + 2.1 * c)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def video(n_frames: int = 22, height: int = 240, width: int = 320) -> list[np.ndarray]:
    return [frame(t, height, width, n_frames) for t in range(n_frames)]
