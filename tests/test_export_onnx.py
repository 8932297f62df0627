"""Export of the reasoning-step networks to ONNX: parity with PyTorch, dynamic dims, manifest.

The tiny checkpoint's networks are exported once per module (ONNX backend) and every test
runs the folder through ``load_engines``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from visa_edge.export.manifest_writer import hash_source
from visa_edge.export.registry import reasoning_networks
from visa_edge.export.onnx_export import torch_outputs
from visa_edge.export.pipeline import ExportOptions, Progress, export_networks
from visa_edge.runtime import sam, synthetic
from visa_edge.runtime.backends import Engine, load_engines, read_manifest
from visa_edge.runtime.backends.manifest import sha256_file
from visa_edge.runtime.errors import InputError
from visa_edge.runtime.model import VisaModel

TOL = 1e-4


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    model = VisaModel.from_pretrained(tiny_checkpoint.checkpoint, clip=tiny_checkpoint.clip)
    networks = {n.name: n for n in reasoning_networks(model)}
    out = tmp_path_factory.mktemp("engines")
    sources = {"checkpoint": hash_source(tiny_checkpoint.checkpoint), "clip": hash_source(tiny_checkpoint.clip)}
    command = ["visa-edge", "export", "--checkpoint", str(tiny_checkpoint.checkpoint), "--out", str(out)]
    export_networks(list(networks.values()), out, ExportOptions(), sources, command, Progress(9, stream=io.StringIO()))
    return model, networks, out


@pytest.fixture(scope="module")
def engines(exported) -> dict[str, Engine]:
    return load_engines(exported[2])


def max_abs(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].shape == ref[k].shape, k
    return max(float((got[k] - ref[k]).abs().max()) for k in ref)


def test_engines_are_onnxruntime_behind_the_engine_interface(engines):
    assert set(engines) == {"visual_tokens", "sam_encoder", "mask_decoder"}
    for engine in engines.values():
        assert isinstance(engine, Engine)
        assert engine.backend == "onnxruntime"
    assert engines["mask_decoder"].output_names == ("low_res_logits", "iou")


@pytest.mark.parametrize("n_frames", [1, 3, 12])
def test_visual_tokens_match_torch_for_any_batch(exported, engines, n_frames):
    """CLIP + clustering + projector in one graph; dynamic batch from 1 to MAX_FRAMES."""
    model, networks, _ = exported
    pixels = torch.stack([model.clip_preprocess(synthetic.frame(t)) for t in range(n_frames)])
    got = engines["visual_tokens"].run({"pixel_values": pixels})
    ref = torch_outputs(networks["visual_tokens"], {"pixel_values": pixels})
    assert got["visual_tokens"].shape == (n_frames, 112, 64)
    assert max_abs(got, ref) <= TOL


def test_sam_encoder_matches_torch(exported, engines):
    _, networks, _ = exported
    image = sam.preprocess(synthetic.frame(15))[0][None]
    ref = torch_outputs(networks["sam_encoder"], {"image": image})
    got = engines["sam_encoder"].run({"image": image})
    assert got["image_embeddings"].shape == (1, 256, 64, 64)
    assert max_abs(got, ref) <= TOL


@pytest.mark.parametrize("queries", [1, 3])
def test_mask_decoder_matches_torch_for_any_query_count(exported, engines, queries):
    """Dynamic number of [SEG] queries; low-res logits and IoU match."""
    _, networks, _ = exported
    gen = torch.Generator().manual_seed(queries)
    inputs = {"image_embeddings": torch.randn(1, 256, 64, 64, generator=gen), "seg_embeddings": torch.randn(queries, 256, generator=gen)}
    ref = torch_outputs(networks["mask_decoder"], inputs)
    got = engines["mask_decoder"].run(inputs)
    assert got["low_res_logits"].shape == (queries, 1, 256, 256)
    assert got["iou"].shape == (queries, 1)
    assert max_abs(got, ref) <= TOL


def test_dims_outside_the_exported_range_are_rejected(engines):
    with pytest.raises(InputError, match=r"queries=9; the engine was exported for queries in 1\.\.8"):
        engines["mask_decoder"].run({"image_embeddings": torch.zeros(1, 256, 64, 64), "seg_embeddings": torch.zeros(9, 256)})
    with pytest.raises(InputError, match=r"input 'image' has shape \[1, 3, 512, 512\]; expected \[1, 3, 1024, 1024\]"):
        engines["sam_encoder"].run({"image": torch.zeros(1, 3, 512, 512)})


def test_manifest_records_files_signatures_and_sources(exported, tiny_checkpoint):
    _, _, out = exported
    manifest = read_manifest(out)
    assert (manifest.backend, manifest.precision) == ("onnx", "fp32")
    assert manifest.sources["checkpoint"].sha256 == hash_source(tiny_checkpoint.checkpoint).sha256
    vt, dec = manifest.networks["visual_tokens"], manifest.networks["mask_decoder"]
    assert [(t.name, t.shape, t.dtype) for t in vt.inputs] == [("pixel_values", ("frames", 3, 224, 224), "float32")]
    assert [(t.name, t.shape) for t in vt.outputs] == [("visual_tokens", ("frames", 112, 64))]
    assert [(t.name, t.shape) for t in dec.outputs] == [
        ("low_res_logits", ("queries", 1, 256, 256)), ("iou", ("queries", 1))]
    assert (vt.dims["frames"].min, vt.dims["frames"].max) == (1, 12)
    assert (dec.dims["queries"].min, dec.dims["queries"].opt, dec.dims["queries"].max) == (1, 1, 8)
    assert set(vt.sources) == {"checkpoint", "clip"} and set(dec.sources) == {"checkpoint"}
    for record in manifest.networks.values():
        assert record.opset == 17 and record.precision == "fp32"
        assert record.files["onnx"].sha256 == sha256_file(out / record.files["onnx"].file)
        assert record.environment["torch"] == torch.__version__
        assert 0 <= record.parity["onnxruntime-cpu"] <= TOL


def test_exported_graph_has_clustering_folded_in(exported):
    """The visual-token graph holds the DPC-KNN clustering (TopK/GatherElements/ArgMin), not just CLIP."""
    import onnx

    graph = onnx.load(str(exported[2] / "visual_tokens.onnx")).graph
    ops = {n.op_type for n in graph.node if n.name.startswith("/clustering/")}
    assert {"TopK", "GatherElements", "ArgMin", "MatMul"} <= ops
    assert not {"Tile", "OneHot", "Loop", "NonZero"} & {n.op_type for n in graph.node}


def test_real_frames_cluster_like_torch(exported, engines):
    """Discrete clustering decisions agree: per-frame tokens match to float precision."""
    model, networks, _ = exported
    frames = synthetic.video(22)[1::2]
    pixels = torch.stack([model.clip_preprocess(f) for f in frames])
    got = engines["visual_tokens"].run({"pixel_values": pixels})["visual_tokens"]
    ref = torch_outputs(networks["visual_tokens"], {"pixel_values": pixels})["visual_tokens"]
    per_frame = (got - ref).abs().amax(dim=(1, 2)).numpy()
    assert np.all(per_frame <= TOL), per_frame
