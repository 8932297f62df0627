"""Frame sources (folder, video, rosbag2 mcap/sqlite3, push) and ROS image decoding."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from visa_edge.runtime import synthetic
from visa_edge.runtime.errors import InputError
from visa_edge.runtime.io import write_rgb
from visa_edge.runtime.streaming.images import decode_compressed, decode_raw
from visa_edge.runtime.streaming.sources import ImageFolderSource, RosbagSource, VideoFileSource, open_source


def test_image_folder_keeps_names_and_order(tmp_path):
    for i in (3, 1, 2):
        write_rgb(tmp_path / f"cam_{i:03d}.png", synthetic.frame(i, 48, 64))
    src = open_source(str(tmp_path), fps=10)
    assert isinstance(src, ImageFolderSource)
    got = list(src)
    assert [f.name for f in got] == ["cam_001", "cam_002", "cam_003"]
    assert [f.index for f in got] == [0, 1, 2] and [f.timestamp for f in got] == [0.0, 0.1, 0.2]
    assert np.array_equal(got[0].image, synthetic.frame(1, 48, 64))


def test_video_file_round_trip(tmp_path):
    pytest.importorskip("av", reason="PyAV not installed (extra [video])")
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for t in range(6):
        writer.write(cv2.cvtColor(synthetic.frame(t, 48, 64), cv2.COLOR_RGB2BGR))
    writer.release()
    src = open_source(str(path))
    assert isinstance(src, VideoFileSource) and src.fps == pytest.approx(10)
    got = list(src)
    assert [f.index for f in got] == list(range(6))
    assert [round(f.timestamp, 3) for f in got] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert np.abs(got[2].image.astype(int) - synthetic.frame(2, 48, 64)).mean() < 12  # lossy codec


def _write_bag(path, storage, messages):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    t = ts.types
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {}
        for i, (topic, kind, fields) in enumerate(messages):
            msgtype = f"sensor_msgs/msg/{kind}"
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=100 + i, nanosec=500_000_000), frame_id="cam")
            msg = t[msgtype](header=header, **fields)
            writer.write(conns[topic], (100 + i) * 10**9, ts.serialize_cdr(msg, msgtype))


def _raw(img, encoding):
    data = {"rgb8": img, "bgr8": img[..., ::-1], "mono8": img[..., :1]}[encoding]
    h, w, c = data.shape
    return {"height": h, "width": w, "encoding": encoding, "is_bigendian": 0, "step": w * c,
            "data": np.ascontiguousarray(data).reshape(-1)}


def _compressed(img, fmt):
    ok, buf = cv2.imencode(f".{fmt}", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return {"format": fmt, "data": buf.reshape(-1)}


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_rosbag_images_and_compressed_images(tmp_path, storage):
    pytest.importorskip("rosbags", reason="rosbags not installed (extra [bag])")
    img = synthetic.frame(3, 48, 64)
    bag = tmp_path / "bag"
    _write_bag(bag, storage, [
        ("/cam/image", "Image", _raw(img, "rgb8")),
        ("/cam/image", "Image", _raw(img, "bgr8")),
        ("/cam/image", "Image", _raw(img, "mono8")),
        ("/cam/compressed", "CompressedImage", _compressed(img, "png")),
        ("/cam/compressed", "CompressedImage", _compressed(img, "jpeg")),
    ])
    with pytest.raises(InputError, match="2 image topics"):
        open_source(str(bag))
    raw = list(RosbagSource(bag, "/cam/image"))
    assert [f.index for f in raw] == [0, 1, 2]
    assert raw[0].timestamp == pytest.approx(100.5)
    assert np.array_equal(raw[0].image, img) and np.array_equal(raw[1].image, img)
    assert np.array_equal(raw[2].image, np.repeat(img[..., :1], 3, axis=2))
    comp = list(open_source(str(bag), topic="/cam/compressed"))
    assert np.array_equal(comp[0].image, img)
    assert np.abs(comp[1].image.astype(int) - img).mean() < 6
    with pytest.raises(InputError, match="no image topic '/nope'"):
        RosbagSource(bag, "/nope")


def test_decode_raw_rejects_bad_messages():
    img = synthetic.frame(1, 4, 5)
    ok = _raw(img, "rgb8")
    with pytest.raises(InputError, match="encoding '32FC1' not supported"):
        decode_raw("32FC1", 4, 5, 15, ok["data"])
    with pytest.raises(InputError, match="step 10 < width\\*bytes per pixel = 15"):
        decode_raw("rgb8", 4, 5, 10, ok["data"])
    with pytest.raises(InputError, match="59 bytes; expected step\\*height = 15\\*4 = 60"):
        decode_raw("rgb8", 4, 5, 15, ok["data"][:-1])
    padded = np.zeros((4, 16), np.uint8)  # step with 1 byte of row padding
    padded[:, :15] = img.reshape(4, 15)
    assert np.array_equal(decode_raw("rgb8", 4, 5, 16, padded.reshape(-1)), img)


def test_decode_compressed_rejects_bad_data():
    with pytest.raises(InputError, match="format 'tiff' not supported"):
        decode_compressed("tiff", b"123")
    with pytest.raises(InputError, match="could not be decoded"):
        decode_compressed("jpeg", b"not a jpeg")
    assert decode_compressed("rgb8; jpeg compressed bgr8", _compressed(synthetic.frame(0, 8, 8), "jpeg")["data"]).shape == (8, 8, 3)


def test_unknown_source_spec(tmp_path):
    with pytest.raises(InputError, match="unknown source"):
        open_source(str(tmp_path / "file.xyz"))
    with pytest.raises(InputError, match="no images"):
        open_source(str(tmp_path))


def test_camera_source_reads_on_its_own_thread(tmp_path):
    """An OpenCV capture (here a video file standing in for a device) feeds a bounded live queue."""
    from visa_edge.runtime.streaming.sources import CameraSource

    path = tmp_path / "cam.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (64, 48))
    for t in range(20):
        writer.write(cv2.cvtColor(synthetic.frame(t, 48, 64), cv2.COLOR_RGB2BGR))
    writer.release()
    src = open_source(f"camera:{path}")
    assert isinstance(src, CameraSource) and src.live
    got = list(src)  # the capture ends with the file: the source closes itself
    src.close()
    assert len(got) + src.dropped == 20 and len(got) >= 4  # queue of 4: the oldest are dropped
    assert [f.index for f in got] == sorted(f.index for f in got) and got[-1].index == 19
    assert got[0].image.shape == (48, 64, 3)
    with pytest.raises(InputError, match="could not be opened"):
        open_source(f"camera:{tmp_path / 'nope.mp4'}")
