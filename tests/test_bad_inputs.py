"""Fuzz suite: every bad file or argument the runtime reads gives the project's error naming it.

Each case corrupts a copy of a small file (a config, an index, a shard, an image, a video, a
bag, a manifest) or passes a bad argument, then asserts the error type and that the message
names the input. A representative subset goes through the CLI in-process: exit code, one
line on stderr, no traceback.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch

from visa_edge.runtime import synthetic
from visa_edge.runtime.checkpoint import load_state_dict
from visa_edge.runtime.cli import main
from visa_edge.runtime.clip import ClipPreprocess, load_clip
from visa_edge.runtime.visa_config import VisaConfig
from visa_edge.runtime.errors import CheckpointError, InputError, VisaEdgeError
from visa_edge.runtime.io import read_mask, read_rgb, write_mask
from visa_edge.runtime.model import VisaModel
from visa_edge.runtime.streaming.sources import PushSource, RosbagSource, VideoFileSource, open_source
from visa_edge.runtime.validate import parse_device

BAD_INTS = ["abc", None, -1, 0, 1.5, True, [64], {"n": 64}, 10**12]
INT_FIELDS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "mm_hidden_size"]

CONFIG_EDITS = [
    *[(f, v) for f in INT_FIELDS for v in BAD_INTS],
    ("max_position_embeddings", "abc"), ("max_position_embeddings", -5), ("max_position_embeddings", 0),
    ("max_position_embeddings", None), ("max_position_embeddings", 1 << 30),
    ("rms_norm_eps", "x"), ("rms_norm_eps", 0), ("rms_norm_eps", -1e-6), ("rms_norm_eps", None), ("rms_norm_eps", float("nan")),
    ("rope_theta", 0), ("rope_theta", "big"), ("rope_theta", -1.0), ("rope_theta", float("inf")),
    ("out_dim", 0), ("out_dim", "256"), ("out_dim", -256),
    ("mm_vision_select_layer", "last"), ("mm_vision_select_layer", 1.5), ("mm_vision_select_layer", 5000),
    ("bos_token_id", -1), ("bos_token_id", 10**6), ("bos_token_id", "one"), ("bos_token_id", None),
    ("eos_token_id", -2), ("eos_token_id", 10**6), ("pad_token_id", -1), ("pad_token_id", "pad"),
    ("tie_word_embeddings", "yes"), ("tie_word_embeddings", 1), ("tie_word_embeddings", None),
    ("num_key_value_heads", 3), ("num_key_value_heads", 0), ("num_key_value_heads", 8), ("num_key_value_heads", "four"),
    ("rope_scaling", "linear"), ("rope_scaling", [1, 2]), ("rope_scaling", 2.0), ("rope_scaling", True),
    ("rope_scaling", {"type": "bogus", "factor": 2.0}), ("rope_scaling", {"type": "linear"}),
    ("rope_scaling", {"type": "linear", "factor": -1}), ("rope_scaling", {"type": "linear", "factor": "2"}),
    ("rope_scaling", {"factor": 2.0}), ("rope_scaling", {"type": "llama3", "factor": 8.0}),
    ("rope_scaling", {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}),
    ("rope_scaling", {"type": "longrope", "short_factor": "1", "long_factor": [1.0] * 8}),
    ("rope_scaling", {"type": "yarn", "factor": 2.0, "beta_fast": "x"}), ("rope_scaling", {"type": 2, "factor": 2.0}),
    ("config", "abc"), ("config", [1]), ("config", {"use_cluster": "yes"}), ("config", {"use_cluster": False}),
    ("config", {"spatial_cluster_rate0": 0}), ("config", {"spatial_cluster_rate0": 16, "spatial_cluster_rate1": 32}),
    ("config", {"spatial_cluster_rate2": 0}), ("config", {"spatial_cluster_rate1": "x"}),
    ("config", {"spatial_cluster_rate0": 10**7}),
    ("mm_vision_select_feature", "cls"),
]

# Edits of several fields at once: sizes that are each valid but not together.
CONFIG_COMBOS = [
    {"hidden_size": 64, "num_attention_heads": 3},  # heads do not divide the hidden size
    {"hidden_size": 64, "num_attention_heads": 64},  # head size 1: odd, no rotary pairs
    {"hidden_size": 66, "num_attention_heads": 2},  # head size 33
    {"vocab_size": 2_000_000, "hidden_size": 65536, "num_attention_heads": 512},  # 262B parameters
    {"num_hidden_layers": 1000, "hidden_size": 32768, "intermediate_size": 131072, "num_attention_heads": 256},
    {"vocab_size": 2, "bos_token_id": 1, "eos_token_id": 2},  # eos outside the vocabulary
]

CONFIG_FILES = {
    "truncated": b'{"vocab_size": 321, "hidden',
    "empty": b"",
    "array": b"[1, 2, 3]",
    "null": b"null",
    "number": b"42",
    "string": b'"config"',
    "latin1": '{"vocab_size": 321, "name": "caf\u00e9"}'.encode("latin-1"),
    "utf16": '{"vocab_size": 321}'.encode("utf-16"),
    "binary": bytes(range(256)),
    "trailing": b'{"vocab_size": 321} {"more": 1}',
    "nested": b"[" * 100_000 + b"]" * 100_000,
    "single_quotes": b"{'vocab_size': 321}",
}


@pytest.fixture(scope="module")
def config_dict(tiny_checkpoint) -> dict:
    return json.loads((tiny_checkpoint.checkpoint / "config.json").read_text())


def _load_config_folder(folder, clip):
    """The Python API entry point: the config is read (and must fail) before anything else."""
    return VisaModel.from_pretrained(folder, clip=clip)


@pytest.mark.parametrize("field, value", CONFIG_EDITS, ids=[f"{f}={v!r}"[:60] for f, v in CONFIG_EDITS])
def test_config_field(tiny_checkpoint, config_dict, tmp_path, field, value):
    (tmp_path / "config.json").write_text(json.dumps({**config_dict, field: value}))
    with pytest.raises(CheckpointError) as e:
        _load_config_folder(tmp_path, tiny_checkpoint.clip)
    assert str(tmp_path / "config.json") in str(e.value) and field in str(e.value)


@pytest.mark.parametrize("edit", CONFIG_COMBOS, ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()))
def test_config_sizes_that_do_not_fit_together(tiny_checkpoint, config_dict, tmp_path, edit):
    (tmp_path / "config.json").write_text(json.dumps({**config_dict, **edit}))
    with pytest.raises(CheckpointError) as e:
        _load_config_folder(tmp_path, tiny_checkpoint.clip)
    assert str(tmp_path / "config.json") in str(e.value)


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_config_file_that_is_not_a_json_object(tiny_checkpoint, tmp_path, name):
    (tmp_path / "config.json").write_bytes(CONFIG_FILES[name])
    with pytest.raises(CheckpointError, match="config.json: ") as e:
        _load_config_folder(tmp_path, tiny_checkpoint.clip)
    assert str(tmp_path / "config.json") in str(e.value)


def test_config_permission_denied(tiny_checkpoint, config_dict, tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_dict))
    real = pathlib.Path.read_bytes

    def denied(self):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", denied)
    with pytest.raises(CheckpointError, match=f"{path}: permission denied"):
        _load_config_folder(tmp_path, tiny_checkpoint.clip)


def test_config_that_is_a_folder(tiny_checkpoint, tmp_path):
    (tmp_path / "config.json").mkdir()
    with pytest.raises(CheckpointError, match="config.json: not found"):
        _load_config_folder(tmp_path, tiny_checkpoint.clip)


def test_good_config_still_parses(config_dict, tiny_checkpoint):
    cfg = VisaConfig.from_file(tiny_checkpoint.checkpoint / "config.json")
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.cluster.clusters) == (64, 4, (64, 32, 16))
    assert cfg.vocab_size == config_dict["vocab_size"] and cfg.llm_parameters() > 0


@pytest.mark.parametrize("scaling", [
    None, {"type": "linear", "factor": 2.0}, {"rope_type": "dynamic", "factor": 2.0}, {"type": "yarn", "factor": 2.0},
    {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
    {"type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8},
], ids=lambda s: (s or {}).get("type", (s or {}).get("rope_type", "none")))
def test_accepted_rope_scaling_builds_in_transformers(tiny_checkpoint, config_dict, tmp_path, scaling):
    """What the config check lets through, transformers builds (head size 16: 8 longrope factors)."""
    from transformers import LlamaForCausalLM

    from visa_edge.runtime.llm import llama_config

    cfg = VisaConfig.from_dict({**config_dict, "rope_scaling": scaling})
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(cfg))
    assert model.config.num_attention_heads == 4


# --- CLIP folder ---------------------------------------------------------------------------

PREPROCESSOR_EDITS = [
    ("size", "abc"), ("size", -1), ("size", 0), ("size", {"shortest_edge": "x"}), ("size", {}), ("size", None),
    ("size", 100_000), ("crop_size", 300), ("crop_size", {"height": 224, "width": 200}), ("crop_size", {"height": 224}),
    ("crop_size", [224, 224]), ("image_mean", [1, 2]), ("image_mean", "abc"), ("image_mean", [0, 0, "x"]),
    ("image_mean", None), ("image_std", [0, 1, 1]), ("image_std", [-1, 1, 1]), ("image_std", [0.2, 0.2, float("inf")]),
    ("resample", 7), ("resample", "bicubic"), ("resample", None),
]

CLIP_CONFIG_EDITS = [
    ("image_size", "abc"), ("image_size", 0), ("image_size", 100_000), ("image_size", 336), ("patch_size", 0),
    ("patch_size", 500), ("patch_size", None), ("hidden_size", 30), ("hidden_size", -32), ("num_channels", 1),
    ("num_hidden_layers", -1), ("num_hidden_layers", 10_000), ("intermediate_size", "big"), ("num_attention_heads", 0),
]


@pytest.fixture
def clip_copy(tiny_checkpoint, tmp_path):
    dst = tmp_path / "clip"
    shutil.copytree(tiny_checkpoint.clip, dst)
    return dst


def _edit_json(path, field, value):
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("field, value", PREPROCESSOR_EDITS, ids=[f"{f}={v!r}"[:60] for f, v in PREPROCESSOR_EDITS])
def test_clip_preprocessor_field(clip_copy, field, value):
    path = clip_copy / "preprocessor_config.json"
    _edit_json(path, field, value)
    with pytest.raises(CheckpointError) as e:
        ClipPreprocess.from_folder(clip_copy)
    assert str(path) in str(e.value) and field in str(e.value)


@pytest.mark.parametrize("field, value", CLIP_CONFIG_EDITS, ids=[f"{f}={v!r}"[:60] for f, v in CLIP_CONFIG_EDITS])
def test_clip_config_field(clip_copy, field, value):
    _edit_json(clip_copy / "config.json", field, value)
    with pytest.raises(CheckpointError) as e:
        load_clip(clip_copy, torch.float32, -2)
    assert str(clip_copy) in str(e.value) and (field in str(e.value) or "image_size" in str(e.value))


@pytest.mark.parametrize("name", ["config.json", "preprocessor_config.json"])
@pytest.mark.parametrize("content", [b"{", b"\xff\xfe\x00", b"[]"], ids=["truncated", "not-utf8", "array"])
def test_clip_json_files(clip_copy, name, content):
    (clip_copy / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=str(clip_copy / name)):
        load_clip(clip_copy, torch.float32, -2)


@pytest.mark.parametrize("content", [b"", b"garbage" * 10], ids=["empty", "garbage"])
def test_clip_corrupt_weights(clip_copy, content):
    weights = next(p for p in clip_copy.iterdir() if p.suffix in (".bin", ".safetensors"))
    weights.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(clip_copy)):
        load_clip(clip_copy, torch.float32, -2)


@pytest.mark.parametrize("layer", [3, 100, -4, -100])
def test_clip_select_layer_outside_the_tower(clip_copy, layer):
    with pytest.raises(CheckpointError, match=f"mm_vision_select_layer={layer}: the CLIP tower has 2 layers"):
        load_clip(clip_copy, torch.float32, layer)


def test_clip_weights_of_another_shape(clip_copy):
    weights = next(p for p in clip_copy.iterdir() if p.suffix in (".bin", ".safetensors"))
    sd = torch.load(weights, weights_only=True) if weights.suffix == ".bin" else None
    if sd is None:
        from safetensors.torch import load_file

        sd = load_file(str(weights))
    key = next(k for k in sd if k.endswith("position_embedding.weight"))
    sd[key] = torch.zeros(sd[key].shape[0] + 3, sd[key].shape[1])
    weights.unlink()
    torch.save(sd, clip_copy / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=str(clip_copy)):
        load_clip(clip_copy, torch.float32, -2)


# --- weight index and state dicts ------------------------------------------------------------

INDEX_FILES = {
    "truncated": b'{"weight_map": {',
    "not-utf8": b"\xff\xfe\xfd",
    "array": b"[]",
    "no-map": b'{"metadata": {}}',
    "map-is-list": b'{"weight_map": ["a.bin"]}',
    "map-empty": b'{"weight_map": {}}',
    "shard-not-string": b'{"weight_map": {"a": 5}}',
    "shard-outside": b'{"weight_map": {"a": "../x.bin"}}',
    "shard-absolute": b'{"weight_map": {"a": "/etc/passwd"}}',
    "shard-empty-name": b'{"weight_map": {"a": ""}}',
    "shard-missing": b'{"weight_map": {"a": "pytorch_model-00009-of-00009.bin"}}',
}


@pytest.fixture
def ckpt_copy(tiny_checkpoint, tmp_path):
    dst = tmp_path / "visa"
    shutil.copytree(tiny_checkpoint.checkpoint, dst)
    return dst


@pytest.mark.parametrize("name", sorted(INDEX_FILES))
def test_weight_index(ckpt_copy, name):
    index = ckpt_copy / "pytorch_model.bin.index.json"
    index.write_bytes(INDEX_FILES[name])
    with pytest.raises(CheckpointError, match=str(index)):
        load_state_dict(ckpt_copy)


def _shard(folder):
    return sorted(folder.glob("pytorch_model-*.bin"))[0]


STATE_DICTS = {
    "list": [torch.zeros(2)],
    "int-value": {"model.norm.weight": 3},
    "str-value": {"model.norm.weight": "weights"},
    "none-value": {"model.norm.weight": None},
    "int-key": {0: torch.zeros(2)},
    "nested": {"model": {"norm.weight": torch.zeros(2)}},
    "tensor": torch.zeros(3),
}


@pytest.mark.parametrize("name", sorted(STATE_DICTS))
def test_state_dict_of_the_wrong_form(ckpt_copy, name):
    shard = _shard(ckpt_copy)
    torch.save(STATE_DICTS[name], shard)
    with pytest.raises(CheckpointError, match=str(shard)):
        load_state_dict(ckpt_copy)


@pytest.mark.parametrize("how", ["empty", "random", "truncated", "text"])
def test_corrupt_shard(ckpt_copy, how):
    shard = _shard(ckpt_copy)
    data = shard.read_bytes()
    shard.write_bytes({"empty": b"", "random": np.random.default_rng(0).bytes(4096),
                       "truncated": data[: len(data) // 2], "text": b"version https://git-lfs.github.com/spec/v1\n"}[how])
    with pytest.raises(CheckpointError, match=str(shard)):
        load_state_dict(ckpt_copy)


@pytest.mark.parametrize("how", ["random", "truncated"])
def test_corrupt_safetensors(ckpt_copy, how):
    from safetensors.torch import save_file

    sd = load_state_dict(ckpt_copy)
    for f in ckpt_copy.glob("pytorch_model*"):
        f.unlink()
    path = ckpt_copy / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    data = path.read_bytes()
    path.write_bytes(np.random.default_rng(1).bytes(4096) if how == "random" else data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=str(path)):
        load_state_dict(ckpt_copy)


# --- images and masks ----------------------------------------------------------------------


def _png_header(path, w, h):
    """A PNG whose header says w x h (no real pixel data): cheap stand-in for a huge image."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def _image_case(path, how):
    if how == "missing":
        return
    if how == "folder":
        path.mkdir()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "random":
        path.write_bytes(np.random.default_rng(2).bytes(2048))
    elif how == "text":
        path.write_text("not an image")
    elif how == "truncated":
        ok, buf = cv2.imencode(".png", synthetic.frame(0, 64, 64))
        path.write_bytes(buf.tobytes()[:120])
    elif how == "huge":
        _png_header(path, 40000, 40000)
    elif how.startswith("size"):
        h, w = (int(v) for v in how[4:].split("x"))
        cv2.imwrite(str(path), np.zeros((h, w, 3), np.uint8))


IMAGE_CASES = ["missing", "folder", "empty", "random", "text", "truncated", "huge", "size1x1", "size5x5", "size15x200",
               "size200x15", "size11x11"]


@pytest.mark.parametrize("how", IMAGE_CASES)
def test_bad_frame_file(tmp_path, how):
    path = tmp_path / "frame.png"
    _image_case(path, how)
    with pytest.raises(InputError, match=str(path)):
        read_rgb(path)


@pytest.mark.parametrize("how", IMAGE_CASES + ["colour", "multi-object"])
def test_bad_mask_file(tmp_path, how):
    path = tmp_path / "mask.png"
    if how == "colour":
        cv2.imwrite(str(path), synthetic.frame(0, 32, 32))
    elif how == "multi-object":
        m = np.zeros((32, 32), np.uint8)
        m[:8], m[-8:] = 1, 2
        cv2.imwrite(str(path), m)
    else:
        _image_case(path, how)
    with pytest.raises(InputError, match=str(path)):
        read_mask(path)


@pytest.mark.parametrize("how", ["folder", "bad-extension", "no-extension", "under-a-file", "unwritable"])
def test_bad_mask_output(tmp_path, how):
    (tmp_path / "file").write_text("x")
    path = {"folder": tmp_path, "bad-extension": tmp_path / "m.xyz", "no-extension": tmp_path / "mask",
            "under-a-file": tmp_path / "file" / "m.png", "unwritable": pathlib.Path("/proc/visa-edge-test/m.png")}[how]
    with pytest.raises(InputError, match=str(path.parent if how in ("under-a-file", "unwritable") else path)):
        write_mask(path, np.ones((16, 16), np.uint8))


# --- videos, rosbags, live sources ---------------------------------------------------------


def _write_video(path, frames=4, size=(48, 64)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size[::-1])
    for t in range(frames):
        writer.write(cv2.cvtColor(synthetic.frame(t, *size), cv2.COLOR_RGB2BGR))
    writer.release()


@pytest.mark.parametrize("how", ["empty", "random", "truncated", "text", "audio-only", "tiny-frames"])
def test_bad_video(tmp_path, how):
    av = pytest.importorskip("av", reason="PyAV not installed (extra [video])")
    path = tmp_path / ("clip.mkv" if how == "audio-only" else "clip.mp4")
    if how == "empty":
        path.write_bytes(b"")
    elif how == "random":
        path.write_bytes(np.random.default_rng(3).bytes(8192))
    elif how == "text":
        path.write_text("a video, allegedly")
    elif how == "truncated":
        _write_video(path, frames=20)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "tiny-frames":
        _write_video(path, size=(8, 8))
    elif how == "audio-only":
        with av.open(str(path), "w") as container:
            stream = container.add_stream("pcm_s16le", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
            frame.sample_rate = 8000
            for packet in stream.encode(frame):
                container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
    with pytest.raises(InputError, match=str(path)):
        list(VideoFileSource(path))


@pytest.mark.parametrize("how", ["random-mcap", "empty-db3", "garbage-metadata", "binary-metadata", "empty-folder-metadata"])
def test_bad_rosbag(tmp_path, how):
    pytest.importorskip("rosbags", reason="rosbags not installed (extra [bag])")
    bag = tmp_path / "bag"
    bag.mkdir()
    if how == "random-mcap":
        path = bag / "bag.mcap"
        path.write_bytes(np.random.default_rng(4).bytes(4096))
    elif how == "empty-db3":
        path = bag / "bag.db3"
        path.write_bytes(b"")
    else:
        path = bag
        content = {"garbage-metadata": b"rosbag2_bagfile_information: [1, 2", "binary-metadata": bytes(range(256)),
                   "empty-folder-metadata": b""}[how]
        (bag / "metadata.yaml").write_bytes(content)
    with pytest.raises(InputError, match=str(path)):
        list(open_source(str(path)))


@pytest.mark.parametrize("maxsize", [0, -1, "4", 2.5, None])
def test_push_source_queue_size(maxsize):
    with pytest.raises(InputError, match="queue size"):
        PushSource(maxsize=maxsize)


def test_push_never_raises_when_the_consumer_wins_the_race():
    """queue_size=1 and a consumer draining as fast as it can: every push returns, nothing is lost uncounted."""
    import threading

    src = PushSource(maxsize=1)
    image = np.zeros((16, 16, 3), np.uint8)
    got, errors = [], []
    consumer = threading.Thread(target=lambda: got.extend(f.index for f in src))
    consumer.start()
    try:
        for _ in range(20_000):
            src.push(image, 0.0)
    except Exception as e:  # noqa: BLE001 - the assertion below reports it
        errors.append(e)
    src.close()
    consumer.join(timeout=10)
    assert errors == [] and not consumer.is_alive()
    assert len(got) + src.dropped == 20_000 and got == sorted(got)


def test_rosbag_source_rejects_a_missing_bag(tmp_path):
    with pytest.raises(InputError, match="nobag.mcap: rosbag not found"):
        RosbagSource(tmp_path / "nobag.mcap")


# --- devices ---------------------------------------------------------------------------------

BAD_DEVICES = ["bogus", "cuda:99", "gpu", "", "cpu:x", "tpu", "cuda:-1"]


@pytest.mark.parametrize("spec", BAD_DEVICES + ([] if torch.cuda.is_available() else ["cuda", "cuda:0"]))
def test_bad_device(spec):
    with pytest.raises(InputError) as e:
        parse_device(spec, "--device")
    assert f"--device {spec!r}" in str(e.value)


# --- engine manifests ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint):
    pytest.importorskip("onnx", reason="export needs onnx (extra [export])")
    from torch import nn

    from visa_edge.export.manifest_writer import hash_source
    from visa_edge.export.registry import ExportNetwork
    from visa_edge.export.pipeline import ExportOptions, Progress, export_networks
    from visa_edge.runtime.backends import DimRange
    from visa_edge.runtime.reasoning_networks import NetworkSpec

    import io as _io

    torch.manual_seed(0)
    spec = NetworkSpec(("x",), ("y",), axes={"x": {0: "rows"}, "y": {0: "rows"}}, dims={"rows": DimRange(1, 2, 4)})
    net = ExportNetwork("affine", nn.Sequential(nn.Linear(3, 2), nn.ReLU()), spec, {"x": torch.randn(2, 3)}, ("checkpoint",))
    out = tmp_path_factory.mktemp("engines")
    command = ["visa-edge", "export", "--checkpoint", str(tiny_checkpoint.checkpoint), "--out", str(out)]
    export_networks([net], out, ExportOptions(), {"checkpoint": hash_source(tiny_checkpoint.checkpoint)}, command,
                    Progress(3, _io.StringIO()))
    return out


MANIFEST_EDITS = {
    "no-networks": lambda d: d.update(networks={}),
    "networks-list": lambda d: d.update(networks=[]),
    "networks-null": lambda d: d.update(networks=None),
    "other-input-shape": lambda d: d["networks"]["affine"]["inputs"][0].update(shape=["rows", 5]),
    "other-input-rank": lambda d: d["networks"]["affine"]["inputs"][0].update(shape=["rows", 3, 1]),
    "other-input-name": lambda d: d["networks"]["affine"]["inputs"][0].update(name="z"),
    "static-where-dynamic": lambda d: d["networks"]["affine"]["inputs"][0].update(shape=[2, 3]),
}


@pytest.mark.parametrize("name", sorted(MANIFEST_EDITS))
def test_manifest_that_does_not_describe_the_engines(exported, tmp_path, name):
    pytest.importorskip("onnxruntime", reason="needs onnxruntime (extra [ort])")
    from visa_edge.runtime.backends import ManifestError, load_engines

    folder = tmp_path / "engines"
    shutil.copytree(exported, folder)
    data = json.loads((folder / "manifest.json").read_text())
    MANIFEST_EDITS[name](data)
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError) as e:
        load_engines(folder, backend="onnxruntime")
    assert str(folder) in str(e.value)


@pytest.mark.parametrize("content", [b"{", b"\xff\xfe", b"[]"], ids=["truncated", "not-utf8", "array"])
def test_unreadable_manifest(exported, tmp_path, content):
    from visa_edge.runtime.backends import ManifestError, load_engines

    folder = tmp_path / "engines"
    shutil.copytree(exported, folder)
    (folder / "manifest.json").write_bytes(content)
    with pytest.raises(ManifestError, match=str(folder / "manifest.json")):
        load_engines(folder, backend="onnxruntime")


def test_engines_from_another_checkpoint_are_refused(exported, ckpt_copy, tiny_checkpoint):
    pytest.importorskip("onnxruntime", reason="needs onnxruntime (extra [ort])")
    from visa_edge.runtime.backends import ManifestError, load_engines

    assert set(load_engines(exported, backend="onnxruntime", sources={"checkpoint": tiny_checkpoint.checkpoint})) == {"affine"}
    _edit_json(ckpt_copy / "config.json", "rms_norm_eps", 1e-5)
    with pytest.raises(ManifestError) as e:
        load_engines(exported, backend="onnxruntime", sources={"checkpoint": ckpt_copy})
    assert str(ckpt_copy) in str(e.value) and str(tiny_checkpoint.checkpoint.resolve()) in str(e.value)


# --- the CLI: one line, no traceback, non-zero exit ----------------------------------------


def run_cli(capsys, argv):
    """(exit code, stderr) of ``visa-edge argv`` run in-process; argparse exits are caught."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    return code, err


def assert_one_line(err: str, *names: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    for t in range(3):
        cv2.imwrite(str(folder / f"{t:05d}.png"), cv2.cvtColor(synthetic.frame(t, 48, 64), cv2.COLOR_RGB2BGR))
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:40] = 255
    cv2.imwrite(str(folder.parent / "mask.png"), mask)
    return folder


def _model(tiny_checkpoint):
    return ["--checkpoint", tiny_checkpoint.checkpoint, "--clip", tiny_checkpoint.clip]


CLI_ARG_CASES = {
    "device-bogus": (["reason", "--device", "bogus"], "argument --device: device 'bogus'"),
    "device-cuda-index": (["reason", "--device", "cuda:99"], "argument --device: device 'cuda:99'"),
    "shards-zero": (["tiny", "--shards", "0"], "--shards"),
    "shards-negative": (["tiny", "--shards", "-1"], "--shards"),
    "shards-text": (["tiny", "--shards", "two"], "--shards"),
    "rate-zero": (["run", "--rate", "0"], "--rate"),
    "rate-nan": (["run", "--rate", "nan"], "--rate"),
    "window-zero": (["run", "--window", "0"], "--window"),
    "min-confidence": (["run", "--min-confidence", "2"], "--min-confidence"),
    "track-device": (["track", "--device", "bogus"], "--device"),
}


@pytest.mark.parametrize("name", sorted(CLI_ARG_CASES))
def test_cli_bad_argument(capsys, tmp_path, tiny_checkpoint, frames_dir, name):
    argv, named = CLI_ARG_CASES[name]
    command, extra = argv[0], argv[1:]
    base = {
        "reason": [*_model(tiny_checkpoint), "--frames", frames_dir / "00000.png", "--query", "q", "--out", tmp_path / "m.png"],
        "tiny": ["--out", tmp_path / "tiny"],
        "run": [*_model(tiny_checkpoint), "--source", frames_dir, "--query", "q", "--out", tmp_path / "out"],
        "track": ["--frames", frames_dir, "--init-mask", frames_dir.parent / "mask.png", "--out", tmp_path / "out"],
    }[command]
    code, err = run_cli(capsys, [command, *base, *extra])
    assert code == 2
    assert_one_line(err, named)
    assert not (tmp_path / "tiny").exists() and not (tmp_path / "out").exists()


def test_cli_device_cuda_without_cuda(capsys, tmp_path, tiny_checkpoint, frames_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, err = run_cli(capsys, ["reason", *_model(tiny_checkpoint), "--device", "cuda", "--frames", frames_dir / "00000.png",
                                 "--query", "q", "--out", tmp_path / "m.png"])
    assert code == 2
    assert_one_line(err, "argument --device: device 'cuda'", "CUDA is not available")


def _out_case(tmp_path, how):
    (tmp_path / "file").write_text("x")
    return {"is-a-file": tmp_path / "file", "under-a-file": tmp_path / "file" / "out",
            "unwritable": pathlib.Path("/proc/visa-edge-test/out")}[how]


@pytest.mark.parametrize("how", ["is-a-file", "under-a-file", "unwritable"])
@pytest.mark.parametrize("command", ["run", "track"])
def test_cli_bad_out_folder(capsys, tmp_path, tiny_checkpoint, frames_dir, command, how):
    out = _out_case(tmp_path, how)
    argv = {
        "run": ["run", *_model(tiny_checkpoint), "--source", frames_dir, "--query", "q", "--out", out],
        "track": ["track", "--frames", frames_dir, "--init-mask", frames_dir.parent / "mask.png", "--out", out],
    }[command]
    code, err = run_cli(capsys, argv)
    assert code == 2
    assert_one_line(err, f"visa-edge {command}: error:", out if how == "is-a-file" else out.parent if how == "unwritable" else out)


@pytest.mark.parametrize("out", ["m.xyz", "folder", "file/m.png"])
def test_cli_reason_bad_mask_path(capsys, tmp_path, tiny_checkpoint, frames_dir, out):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    code, err = run_cli(capsys, ["reason", *_model(tiny_checkpoint), "--frames", frames_dir / "00000.png", "--query", "q",
                                 "--out", tmp_path / out])
    assert code == 2
    assert_one_line(err, "visa-edge reason: error:", tmp_path / out.split("/")[0])


@pytest.mark.parametrize("how", ["random", "huge", "size5x5", "missing"])
def test_cli_reason_bad_frame(capsys, tmp_path, tiny_checkpoint, how):
    frame = tmp_path / "frame.png"
    _image_case(frame, how)
    code, err = run_cli(capsys, ["reason", *_model(tiny_checkpoint), "--frames", frame, "--query", "q", "--out", tmp_path / "m.png"])
    assert code == 2
    assert_one_line(err, frame)


@pytest.mark.parametrize("field, value", [("vocab_size", "abc"), ("hidden_size", None), ("num_attention_heads", 3),
                                          ("rope_scaling", [1])])
def test_cli_bad_config(capsys, tmp_path, tiny_checkpoint, config_dict, frames_dir, field, value):
    folder = tmp_path / "visa"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**config_dict, field: value}))
    code, err = run_cli(capsys, ["reason", "--checkpoint", folder, "--clip", tiny_checkpoint.clip, "--frames",
                                 frames_dir / "00000.png", "--query", "q", "--out", tmp_path / "m.png"])
    assert code == 2
    assert_one_line(err, folder / "config.json", field)


@pytest.mark.parametrize("how", ["random-mp4", "empty-mp4", "random-mcap", "unknown"])
def test_cli_run_bad_source(capsys, tmp_path, tiny_checkpoint, how):
    pytest.importorskip("av")
    pytest.importorskip("rosbags")
    source = {"random-mp4": tmp_path / "c.mp4", "empty-mp4": tmp_path / "e.mp4", "random-mcap": tmp_path / "b.mcap",
              "unknown": tmp_path / "x.txt"}[how]
    source.write_bytes(b"" if how == "empty-mp4" else np.random.default_rng(5).bytes(2048))
    code, err = run_cli(capsys, ["run", *_model(tiny_checkpoint), "--source", source, "--query", "q", "--out", tmp_path / "out"])
    assert code == 2
    assert_one_line(err, source)


def test_cli_track_with_tiny_frames(capsys, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.png"), np.zeros((10, 10, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "mask.png"), np.full((10, 10), 255, np.uint8))
    code, err = run_cli(capsys, ["track", "--frames", frames, "--init-mask", tmp_path / "mask.png", "--out", tmp_path / "out"])
    assert code == 2
    assert_one_line(err, "mask.png", ">= 16 px")


def test_cli_eval_vos_json_into_a_folder(capsys, tmp_path, frames_dir):
    code, err = run_cli(capsys, ["eval-vos", "--pred", frames_dir, "--gt", frames_dir, "--json", tmp_path])
    assert code == 2
    assert_one_line(err, tmp_path, "--json")


def test_cli_unexpected_exception_is_one_line_with_command_and_type(capsys, tmp_path, monkeypatch):
    from visa_edge.runtime import tiny

    def boom(*a, **k):
        raise TypeError("something deep went wrong\nsecond line")

    monkeypatch.setattr(tiny, "write_tiny_checkpoint", boom)
    code, err = run_cli(capsys, ["tiny", "--out", tmp_path / "t"])
    assert code == 1
    assert_one_line(err, "visa-edge tiny: unexpected TypeError: something deep went wrong second line", "--debug")


def test_cli_debug_shows_the_traceback(capsys, tmp_path):
    frame = tmp_path / "frame.png"
    frame.write_bytes(b"junk")
    code, err = run_cli(capsys, ["--debug", "track", "--frames", tmp_path, "--init-mask", frame, "--out", tmp_path / "o"])
    assert code == 2
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("visa-edge track: error:")


def test_error_types_share_the_cli_base():
    assert issubclass(CheckpointError, VisaEdgeError) and issubclass(InputError, VisaEdgeError)


def test_cli_run_whose_every_reasoning_step_failed_exits_non_zero(capsys, tmp_path, tiny_checkpoint, frames_dir, monkeypatch):
    from visa_edge.runtime.streaming.visa_reasoner import VisaReasoner

    def fail(self, frames, queries):
        raise RuntimeError("injected reasoning failure")

    monkeypatch.setattr(VisaReasoner, "__call__", fail)
    out = tmp_path / "out"
    code, err = run_cli(capsys, ["run", *_model(tiny_checkpoint), "--source", frames_dir, "--query", "q", "--out", out,
                                 "--no-overlay", "--window", "2", "--references", "1", "--every-frames", "1", "--blocking"])
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("visa-edge run:")]
    assert len(lines) == 1 and "reasoning steps failed" in lines[0] and "injected reasoning failure" in lines[0]
    assert "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 3 and summary["stats"]["reasoning_completed"] == 0 and summary["stats"]["reasoning_failed"] >= 1


def test_cli_tiny_out_is_a_file(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    code, err = run_cli(capsys, ["tiny", "--out", tmp_path / "file"])
    assert code == 2
    assert_one_line(err, tmp_path / "file", "--out is an existing file")


def test_cli_camera_that_cannot_be_opened_is_one_line_even_at_the_fd_level(capfd, tmp_path, tiny_checkpoint):
    """OpenCV's own warnings about the missing device would go straight to fd 2."""
    code = main(["run", *map(str, _model(tiny_checkpoint)), "--source", "camera:97", "--query", "q", "--out", str(tmp_path / "o")])
    assert code == 2
    assert_one_line(capfd.readouterr().err, "camera 97: could not be opened")


def test_cli_command_whose_module_fails_to_import(capsys, monkeypatch):
    """A broken plugin is reported when its command runs; the other commands keep working."""
    import visa_edge.runtime.cli as cli

    class Broken:
        name = "broken"

        def load(self):
            raise ImportError("No module named 'missing_dependency'")

    real = cli.entry_points
    monkeypatch.setattr(cli, "entry_points", lambda group: [*real(group=group), Broken()])
    code, err = run_cli(capsys, ["broken", "--anything"])
    assert code == 2
    assert_one_line(err, "command 'broken' is unavailable", "ImportError: No module named 'missing_dependency'")
    code, err = run_cli(capsys, ["tiny", "--shards", "0", "--out", "x"])
    assert code == 2 and "--shards" in err


@pytest.mark.parametrize("how", ["huge-png", "random", "empty"])
def test_compressed_ros_image_that_cannot_be_decoded(tmp_path, how):
    from visa_edge.runtime.streaming.images import decode_compressed

    path = tmp_path / "msg.png"
    _png_header(path, 40000, 40000)
    data = {"huge-png": path.read_bytes(), "random": np.random.default_rng(6).bytes(512), "empty": b""}[how]
    with pytest.raises(InputError, match=r"compressed image \(png, \d+ bytes\) could not be decoded"):
        decode_compressed("png", data)


@pytest.mark.parametrize("fps", [0, -1, float("nan"), float("inf"), "30", None])
@pytest.mark.parametrize("where", ["folder", "paced"])
def test_bad_frame_rate(frames_dir, fps, where):
    from visa_edge.runtime.streaming.sources import ImageFolderSource, Paced

    with pytest.raises(InputError) as e:
        ImageFolderSource(frames_dir, fps=fps) if where == "folder" else Paced(ImageFolderSource(frames_dir), fps)
    assert (str(frames_dir) if where == "folder" else "rate") in str(e.value) and "frame rate" in str(e.value)


@pytest.mark.parametrize("device", ["bogus", "cuda:7", "tpu"])
def test_bad_device_through_the_python_api(tiny_checkpoint, exported, device):
    """Devices are checked by the API entry points too, not only by the CLI's argument parser."""
    from visa_edge.runtime.backends import load_engines

    with pytest.raises(InputError, match=repr(device)):
        VisaModel.from_pretrained(tiny_checkpoint.checkpoint, clip=tiny_checkpoint.clip, device=device)
    with pytest.raises(InputError, match=f"engine device {device!r}"):
        load_engines(exported, backend="onnxruntime", device=device)


def test_more_clusters_than_clip_patches(tiny_checkpoint, ckpt_copy, config_dict):
    config = {**config_dict, "config": {**config_dict["config"], "spatial_cluster_rate0": 300, "spatial_cluster_rate1": 32}}
    (ckpt_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"spatial_cluster_rate0=300 clusters from 256 CLIP patches"):
        VisaModel.from_pretrained(ckpt_copy, clip=tiny_checkpoint.clip)
