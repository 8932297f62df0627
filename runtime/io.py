"""Reading frames and masks from disk and writing masks, with clear errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import InputError


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 [H,W,3] (decoded with OpenCV, as VISA's datasets do)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: frame not found")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"{path}: not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path) -> np.ndarray:
    """A binary mask PNG (0 = background, anything else = object) as uint8 0/1 [H,W].

    Grey or palette PNGs with values other than 0 and one foreground value are rejected:
    a mask with several object ids is ambiguous for a single-object tracker.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: mask not found")
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise InputError(f"{path}: not a readable image")
    if m.ndim == 3:
        if not (np.all(m[..., :1] == m[..., 1:3])):
            raise InputError(f"{path}: colour mask; expected a grey 0/255 (or 0/1) PNG")
        m = m[..., 0]
    values = np.unique(m)
    if len(values[values > 0]) > 1:
        raise InputError(f"{path}: non-binary mask with values {values[:8].tolist()}; expected 0 and one foreground value")
    return (m > 0).astype(np.uint8)


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a 0/255 grey PNG (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), (np.asarray(mask) > 0).astype(np.uint8) * 255):
        raise InputError(f"{path}: could not write the mask")


def write_rgb(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB uint8 image (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise InputError(f"{path}: could not write the image")
