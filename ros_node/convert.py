"""Between ROS image messages and arrays (duck-typed on the message fields: no rclpy import)."""

from __future__ import annotations

import numpy as np

from ..runtime.streaming.images import decode_compressed, decode_raw


def decode_image(msg, compressed: bool) -> np.ndarray:
    """A sensor_msgs/Image or CompressedImage -> RGB uint8 [H,W,3]; InputError if unsupported or inconsistent."""
    if compressed:
        return decode_compressed(msg.format, msg.data)
    return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, big_endian=bool(msg.is_bigendian))


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x, y, width, height) of the mask's nonzero pixels; all zero for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0, 0, 0, 0
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def mono8(mask: np.ndarray) -> bytes:
    """A 0/1 mask as mono8 0/255 bytes (row-major, step = width)."""
    return np.where(mask > 0, np.uint8(255), np.uint8(0)).tobytes()


def box_corners(box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    """The four pixel corners (x, y) of a (x, y, w, h) box, clockwise from the top left; none if empty."""
    x, y, w, h = box
    if not w:
        return []
    return [(float(x), float(y)), (float(x + w), float(y)), (float(x + w), float(y + h)), (float(x), float(y + h))]


def scale_intrinsics(k, p, sx: float, sy: float) -> tuple[list[float], list[float]]:
    """CameraInfo K (3x3) and P (3x4), row-major, for an image scaled by ``sx`` along x and ``sy`` along y."""
    scale = np.array([[sx], [sy], [1.0]])
    return ((np.asarray(k, float).reshape(3, 3) * scale).ravel().tolist(),
            (np.asarray(p, float).reshape(3, 4) * scale).ravel().tolist())


def pixel_rays(corners: list[tuple[float, float]], k) -> list[tuple[float, float, float]]:
    """Points at depth 1 (camera optical frame: x right, y down, z forward) through pixel ``corners``."""
    fx, _, cx, _, fy, cy = np.asarray(k, float)[:6]
    return [((u - cx) / fx, (v - cy) / fy, 1.0) for u, v in corners]
