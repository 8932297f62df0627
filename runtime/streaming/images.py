"""Decoding ROS image messages (sensor_msgs/Image, CompressedImage) to RGB uint8 arrays.

Shared by the rosbag2 source and the ROS 2 node. Any encoding other than rgb8, bgr8 and
mono8 (raw) or jpeg/png (compressed) is rejected, as are messages whose step, size and
data length disagree: each with an InputError saying what was expected.
"""

from __future__ import annotations

import re

import cv2
import numpy as np

from ..errors import InputError

RAW_ENCODINGS = ("rgb8", "bgr8", "mono8")
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")


def decode_raw(encoding: str, height: int, width: int, step: int, data, big_endian: bool = False) -> np.ndarray:
    """A sensor_msgs/Image payload -> RGB uint8 [H,W,3] (a copy, independent of ``data``)."""
    channels = {"rgb8": 3, "bgr8": 3, "mono8": 1}.get(encoding)
    if channels is None:
        raise InputError(f"image encoding {encoding!r} not supported; expected one of {RAW_ENCODINGS}")
    if height <= 0 or width <= 0:
        raise InputError(f"image size {width}x{height}: expected positive width and height")
    if step < width * channels:
        raise InputError(f"image step {step} < width*channels = {width * channels} for {encoding}")
    buf = np.frombuffer(memoryview(data), dtype=np.uint8)
    if buf.size != step * height:
        raise InputError(f"image data has {buf.size} bytes; expected step*height = {step}*{height} = {step * height}")
    rows = buf.reshape(height, step)[:, : width * channels]
    if encoding == "mono8":
        return np.repeat(rows.reshape(height, width, 1), 3, axis=2)
    img = rows.reshape(height, width, 3)
    return np.ascontiguousarray(img[..., ::-1] if encoding == "bgr8" else img)


def decode_compressed(fmt: str, data) -> np.ndarray:
    """A sensor_msgs/CompressedImage payload (jpeg or png) -> RGB uint8 [H,W,3].

    ``fmt`` is either a bare "jpeg"/"png" or image_transport's "rgb8; jpeg compressed bgr8".
    """
    words = set(re.findall(r"[a-z]+", fmt.lower()))
    kind = next((k for k in COMPRESSED_FORMATS if k in words), None)
    if kind is None:
        raise InputError(f"compressed image format {fmt!r} not supported; expected jpeg or png")
    bgr = cv2.imdecode(np.frombuffer(memoryview(data), dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"compressed image ({kind}, {len(data)} bytes) could not be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
