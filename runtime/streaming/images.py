"""Decoding ROS image messages (sensor_msgs/Image, CompressedImage) to RGB uint8 arrays.

Shared by the rosbag2 source and the ROS 2 node. Raw encodings: 8-bit rgb/bgr/rgba/bgra/mono,
YUV 4:2:2 (``yuv422``/``uyvy``: UYVY, ``yuv422_yuy2``/``yuyv``: YUYV), 8-bit Bayer mosaics
(demosaiced by OpenCV as cv_bridge does) and 16-bit rgb/bgr/mono (byte order from
``is_bigendian``, scaled to 8 bits). Compressed: jpeg/png. Anything else is rejected, as are
messages whose step, size and data length disagree: each with an InputError saying what was
expected.
"""

from __future__ import annotations

import re

import cv2
import numpy as np

from ..errors import InputError

# encoding -> (channels, bytes per channel, OpenCV conversion to RGB or None)
_RAW = {
    "rgb8": (3, 1, None),
    "bgr8": (3, 1, cv2.COLOR_BGR2RGB),
    "mono8": (1, 1, cv2.COLOR_GRAY2RGB),
    "rgba8": (4, 1, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, 1, cv2.COLOR_BGRA2RGB),
    "yuv422": (2, 1, cv2.COLOR_YUV2RGB_UYVY),
    "uyvy": (2, 1, cv2.COLOR_YUV2RGB_UYVY),
    "yuv422_yuy2": (2, 1, cv2.COLOR_YUV2RGB_YUYV),
    "yuyv": (2, 1, cv2.COLOR_YUV2RGB_YUYV),
    # OpenCV names a Bayer pattern by its second row: ROS rggb is OpenCV's BG (as in cv_bridge)
    "bayer_rggb8": (1, 1, cv2.COLOR_BayerBG2RGB),
    "bayer_bggr8": (1, 1, cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg8": (1, 1, cv2.COLOR_BayerGR2RGB),
    "bayer_grbg8": (1, 1, cv2.COLOR_BayerGB2RGB),
    "rgb16": (3, 2, None),
    "bgr16": (3, 2, cv2.COLOR_BGR2RGB),
    "mono16": (1, 2, cv2.COLOR_GRAY2RGB),
}
RAW_ENCODINGS = tuple(_RAW)
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")


def decode_raw(encoding: str, height: int, width: int, step: int, data, big_endian: bool = False) -> np.ndarray:
    """A sensor_msgs/Image payload -> RGB uint8 [H,W,3] (a copy, independent of ``data``).

    ``big_endian`` (the message's ``is_bigendian``) gives the byte order of 16-bit encodings.
    """
    if encoding not in _RAW:
        raise InputError(f"image encoding {encoding!r} not supported; expected one of {RAW_ENCODINGS}")
    channels, depth, conversion = _RAW[encoding]
    if height <= 0 or width <= 0:
        raise InputError(f"image size {width}x{height}: expected positive width and height")
    if channels == 2 and width % 2:
        raise InputError(f"image width {width} is odd: {encoding} (YUV 4:2:2) needs an even width")
    row_bytes = width * channels * depth
    if step < row_bytes:
        raise InputError(f"image step {step} < width*bytes per pixel = {row_bytes} for {encoding}")
    buf = np.frombuffer(memoryview(data), dtype=np.uint8)
    if buf.size != step * height:
        raise InputError(f"image data has {buf.size} bytes; expected step*height = {step}*{height} = {step * height}")
    rows = buf.reshape(height, step)[:, :row_bytes]
    if depth == 2:
        wide = np.ascontiguousarray(rows).view(">u2" if big_endian else "<u2").astype(np.uint32)
        rows = ((wide * 255 + 32767) // 65535).astype(np.uint8)  # 16 -> 8 bits, rounded
    img = np.ascontiguousarray(rows).reshape(height, width, channels)
    return img.copy() if conversion is None else cv2.cvtColor(img, conversion)


def decode_compressed(fmt: str, data) -> np.ndarray:
    """A sensor_msgs/CompressedImage payload (jpeg or png) -> RGB uint8 [H,W,3].

    ``fmt`` is either a bare "jpeg"/"png" or image_transport's "rgb8; jpeg compressed bgr8".
    """
    words = set(re.findall(r"[a-z]+", fmt.lower()))
    kind = next((k for k in COMPRESSED_FORMATS if k in words), None)
    if kind is None:
        raise InputError(f"compressed image format {fmt!r} not supported; expected jpeg or png")
    try:
        bgr = cv2.imdecode(np.frombuffer(memoryview(data), dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:  # OpenCV 5 raises (instead of returning None) over its pixel limit
        raise InputError(f"compressed image ({kind}, {len(data)} bytes) could not be decoded (OpenCV: {e.err})") from e
    if bgr is None:
        raise InputError(f"compressed image ({kind}, {len(data)} bytes) could not be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
