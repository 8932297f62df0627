"""``visa-edge export``: progress display, manifest with the rebuild command, clear errors."""

from __future__ import annotations

import shlex

import pytest

from visa_edge.runtime.backends import load_engines, read_manifest
from visa_edge.runtime.cli import main


def test_export_one_network(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "engines"
    argv = ["export", "--checkpoint", str(tiny_checkpoint.checkpoint), "--clip", str(tiny_checkpoint.clip),
            "--out", str(out), "--networks", "visual_tokens"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "[1/5] hash checkpoints ... done" in captured.err
    assert "[5/5] visual_tokens: parity ONNX Runtime CPU vs PyTorch ... done" in captured.err
    assert f"wrote {out / 'manifest.json'} (onnx, fp32)" in captured.out
    manifest = read_manifest(out)
    assert list(manifest.networks) == ["visual_tokens"]
    assert shlex.split(manifest.rebuild_command()) == [
        "visa-edge", "export", "--checkpoint", str(tiny_checkpoint.checkpoint.resolve()), "--clip", str(tiny_checkpoint.clip.resolve()),
        "--out", str(out.resolve()), "--backend", "onnx", "--precision", "fp32", "--networks", "visual_tokens"]
    assert set(manifest.sources) == {"checkpoint", "clip"}
    assert list(load_engines(out)) == ["visual_tokens"]


@pytest.mark.parametrize("extra, message", [
    (["--backend", "onnx", "--precision", "fp16"], "--backend onnx exports fp32 graphs only"),
    (["--backend", "tensorrt", "--precision", "fp16"], "TensorRT is not installed"),
    (["--networks", "visual_tokens,tracker"], "--networks: unknown ['tracker']"),
    (["--frame-size", "480by640"], "--frame-size '480by640': expected HxW"),
    (["--frame-size", "480x640"], "--frame-size: only the XMem engines depend on the frame size; give it with --xmem"),
    (["--xmem", "XMem.pth"], "--xmem: also give --frame-size HxW"),
    (["--xmem", "missing/XMem.pth", "--frame-size", "480x640"], "missing/XMem.pth: not found; expected a checkpoint file or folder"),
])
def test_errors_exit_2_with_a_message(tiny_checkpoint, tmp_path, capsys, extra, message):
    argv = ["export", "--checkpoint", str(tiny_checkpoint.checkpoint), "--clip", str(tiny_checkpoint.clip), "--out", str(tmp_path / "e"), *extra]
    assert main(argv) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("visa-edge export: error: ") and message in last
    assert not (tmp_path / "e" / "manifest.json").exists()
