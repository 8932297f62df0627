"""Reading frames and masks from disk and writing masks, with clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .errors import InputError
from .validate import MAX_FRAME_PIXELS, check_frame_size

IMAGE_FORMATS = "JPEG, PNG or BMP"


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 [H,W,3] (decoded with OpenCV, as VISA's datasets do)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected a frame image file")
    if not path.is_file():
        raise InputError(f"{path}: frame not found")
    bgr = _imread(path, cv2.IMREAD_COLOR)
    check_frame_size(bgr, str(path))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path) -> np.ndarray:
    """A binary mask PNG (0 = background, anything else = object) as uint8 0/1 [H,W].

    Grey or palette PNGs with values other than 0 and one foreground value are rejected:
    a mask with several object ids is ambiguous for a single-object tracker.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected a mask image file")
    if not path.is_file():
        raise InputError(f"{path}: mask not found")
    m = _imread(path, cv2.IMREAD_UNCHANGED)
    check_frame_size(m, str(path))
    if m.ndim == 3:
        if m.shape[2] < 3 or not np.all(m[..., :1] == m[..., 1:3]):
            raise InputError(f"{path}: colour mask; expected a grey 0/255 (or 0/1) PNG")
        m = m[..., 0]
    values = np.unique(m)
    if len(values[values > 0]) > 1:
        raise InputError(f"{path}: non-binary mask with values {values[:8].tolist()}; expected 0 and one foreground value")
    return (m > 0).astype(np.uint8)


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a 0/255 grey PNG (parent folders created)."""
    path = check_output_file(path, "mask")
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise InputError(f"{path}: mask of shape {mask.shape}; expected a non-empty [H, W] array")
    if not cv2.imwrite(str(path), (mask > 0).astype(np.uint8) * 255):
        raise InputError(f"{path}: could not write the mask")


def write_rgb(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB uint8 image (parent folders created)."""
    path = check_output_file(path, "image")
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise InputError(f"{path}: could not write the image")


def check_output_file(path: str | Path, what: str) -> Path:
    """``path`` once :func:`output_file` accepts it and OpenCV can write its image format."""
    path = output_file(path, what)
    if not cv2.haveImageWriter(str(path)):
        raise InputError(f"{path}: OpenCV cannot write {path.suffix or 'files without an extension'}; "
                         f"expected a {what} file ending in .png, .jpg or .bmp")
    return path


def output_file(path: str | Path, what: str) -> Path:
    """``path`` as a file name that can be written: not a folder, in a writable folder (created if missing)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected a {what} file name")
    output_dir(path.parent, f"folder of {path.name}")
    return path


def output_dir(path: str | Path, what: str = "output folder") -> Path:
    """``path`` as an existing, writable folder (created if missing); InputError if it cannot be."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: {what} is an existing file; expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{path}: {what} cannot be created ({e.strerror or e})") from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"{path}: {what} is not writable")
    return path


def _imread(path: Path, flags: int) -> np.ndarray:
    """``cv2.imread`` whose failures (None, or cv2.error over its pixel limit) become an InputError saying why."""
    try:
        image = cv2.imread(str(path), flags)
    except cv2.error as e:
        if "CV_IO_MAX_IMAGE_PIXELS" in str(e):
            raise InputError(f"{path}: image has more than {MAX_FRAME_PIXELS} px; expected at most that (OpenCV's limit)") from e
        image = None
    if image is None:
        raise _undecodable(path)
    return image


def _undecodable(path: Path) -> InputError:
    """Why OpenCV could not decode ``path``: too large (its header says so) or not an image."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError:  # PIL's own size limit: the header is readable, the size is large
        return InputError(f"{path}: image could not be decoded (corrupt or truncated?)")
    except Exception:
        return InputError(f"{path}: not a readable image; expected a {IMAGE_FORMATS} file")
    if w * h > MAX_FRAME_PIXELS:
        return InputError(f"{path}: image is {w}x{h} = {w * h} px; expected at most {MAX_FRAME_PIXELS} px (OpenCV's limit)")
    return InputError(f"{path}: {w}x{h} image could not be decoded (corrupt or truncated?)")
