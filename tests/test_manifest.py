"""Engine manifest: written by the export, checked by ``load_engines`` with errors that say how to rebuild."""

from __future__ import annotations

import io
import json
import shutil
import sys
import types

import pytest
import torch
from torch import nn

from visa_edge.export.registry import ExportNetwork
from visa_edge.export.pipeline import ExportOptions, Progress, export_networks
from visa_edge.runtime.backends import DimRange, ManifestError, load_engines, read_manifest
from visa_edge.runtime.backends.manifest import MANIFEST_NAME, SourceRecord, sha256_file
from visa_edge.runtime.reasoning_networks import NetworkSpec

COMMAND = ["visa-edge", "export", "--checkpoint", "/models/visa", "--clip", "/models/clip", "--out", "/engines",
           "--backend", "onnx", "--precision", "fp32"]
REBUILD = "visa-edge export --checkpoint /models/visa --clip /models/clip --out /engines"


class Affine(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        return self.linear(x).relu()


@pytest.fixture(scope="module")
def exported_once(tmp_path_factory):
    torch.manual_seed(0)
    spec = NetworkSpec(("x",), ("y",), axes={"x": {0: "rows"}, "y": {0: "rows"}}, dims={"rows": DimRange(1, 2, 4)})
    net = ExportNetwork("affine", Affine(), spec, {"x": torch.randn(2, 3)}, ("checkpoint",))
    out = tmp_path_factory.mktemp("affine")
    export_networks([net], out, ExportOptions(), {"checkpoint": SourceRecord("/models/visa", "ab" * 32)}, COMMAND, Progress(3, io.StringIO()))
    return net, out


@pytest.fixture
def folder(exported_once, tmp_path):
    dst = tmp_path / "engines"
    shutil.copytree(exported_once[1], dst)
    return dst


def edit_manifest(folder, change) -> None:
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_roundtrip_and_load(exported_once, folder):
    net, _ = exported_once
    manifest = read_manifest(folder)
    assert json.loads(json.dumps(manifest.to_dict())) == json.loads((folder / MANIFEST_NAME).read_text())
    record = manifest.networks["affine"]
    assert record.files["onnx"].sha256 == sha256_file(folder / "affine.onnx")
    assert record.sources == {"checkpoint": "ab" * 32}
    assert manifest.rebuild_command() == " ".join(COMMAND)
    x = torch.randn(4, 3)
    y = load_engines(folder)["affine"].run({"x": x})["y"]
    with torch.no_grad():
        assert float((y - net.module(x)).abs().max()) <= 1e-6


def test_tampered_file_is_rejected_with_rebuild_command(folder):
    with open(folder / "affine.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match=r"affine\.onnx: sha256 .* does not match the manifest") as err:
        load_engines(folder)
    assert REBUILD in str(err.value)


def test_missing_file(folder):
    (folder / "affine.onnx").unlink()
    with pytest.raises(ManifestError, match=r"affine\.onnx: missing \(onnx of 'affine'\)"):
        load_engines(folder)


def test_missing_network_lists_what_is_there(folder):
    with pytest.raises(ManifestError, match=r"no network 'mask_decoder' \(it has \['affine'\]\)") as err:
        load_engines(folder, networks=["affine", "mask_decoder"])
    assert REBUILD in str(err.value)


def test_missing_manifest_explains_how_to_create_it(tmp_path):
    with pytest.raises(ManifestError, match=r"no manifest\.json; create the engine folder with:\n  visa-edge export --checkpoint DIR"):
        load_engines(tmp_path)


def test_other_schema_version_is_rejected(folder):
    edit_manifest(folder, lambda d: d.update(schema_version=99))
    with pytest.raises(ManifestError, match=r"manifest schema version 99; this visa-edge reads version 1") as err:
        read_manifest(folder)
    assert REBUILD in str(err.value)


def test_not_a_manifest(folder):
    edit_manifest(folder, lambda d: d.update(format="something-else"))
    with pytest.raises(ManifestError, match=r"not a visa-edge engine manifest"):
        read_manifest(folder)


def test_onnx_folder_has_no_tensorrt_engines(folder):
    with pytest.raises(ManifestError, match=r"has no engine file \(exported for backend 'onnx'\)") as err:
        load_engines(folder, backend="tensorrt", device="cuda")
    assert "--backend tensorrt --precision fp32" in str(err.value)


def fake_engine_folder(folder, tensorrt: str, gpu: str) -> None:
    """Turn the folder into a TensorRT export built with ``tensorrt`` on ``gpu``."""
    (folder / "affine.engine").write_bytes(b"serialized engine")
    engine = {"file": "affine.engine", "sha256": sha256_file(folder / "affine.engine")}

    def change(d):
        d["backend"] = "tensorrt"
        record = d["networks"]["affine"]
        record["files"]["engine"] = engine
        record["environment"].update(tensorrt=tensorrt, gpu=gpu, compute_capability="8.7")

    edit_manifest(folder, change)


@pytest.fixture
def this_machine(monkeypatch):
    """A machine with TensorRT 10.3.0 on an 'Orin' GPU (fake module, no CUDA needed)."""
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Orin")


@pytest.mark.parametrize("tensorrt, gpu", [("10.0.1", "Orin"), ("10.3.0", "NVIDIA H100 80GB HBM3")])
def test_engine_for_another_tensorrt_or_gpu_is_rejected(folder, this_machine, tensorrt, gpu):
    fake_engine_folder(folder, tensorrt, gpu)
    with pytest.raises(ManifestError) as err:
        load_engines(folder, device="cuda")
    message = str(err.value)
    assert f"affine.engine: built with TensorRT {tensorrt} on {gpu!r}; this machine has TensorRT 10.3.0 on 'Orin'" in message
    assert "visa-edge export --checkpoint /models/visa --clip /models/clip --out /engines --backend tensorrt" in message


def test_large_graphs_keep_weights_in_one_checked_data_file(exported_once, tmp_path):
    """Graphs over protobuf's 2 GB limit (SAM ViT-H in fp32) store weights in <name>.onnx.data."""
    net, _ = exported_once
    out = tmp_path / "external"
    options = ExportOptions(inline_limit=0)
    export_networks([net], out, options, {"checkpoint": SourceRecord("/models/visa", "ab" * 32)}, COMMAND, Progress(3, io.StringIO()))
    record = read_manifest(out).networks["affine"]
    assert record.files["onnx_data"].file == "affine.onnx.data"
    assert record.files["onnx_data"].sha256 == sha256_file(out / "affine.onnx.data")
    x = torch.randn(3, 3)
    with torch.no_grad():
        assert float((load_engines(out)["affine"].run({"x": x})["y"] - net.module(x)).abs().max()) <= 1e-6
    (out / "affine.onnx.data").write_bytes(b"\0" * 32)
    with pytest.raises(ManifestError, match=r"affine\.onnx\.data: sha256"):
        load_engines(out)
