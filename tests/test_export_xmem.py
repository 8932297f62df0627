"""Export of the XMem tracker networks: ONNX parity per network and a whole tracker on ONNX Runtime.

A randomly initialised XMem (release sizes) is exported once at a small working size; the
tracker then runs the synthetic clip with ONNX Runtime engines and with PyTorch engines.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from visa_edge.export.registry import tracker_networks, xmem_working_size
from visa_edge.export.onnx_export import torch_outputs
from visa_edge.export.pipeline import ExportOptions, Progress, export_networks
from visa_edge.runtime import synthetic
from visa_edge.runtime.backends import DimRange, load_engines, read_manifest
from visa_edge.runtime.backends.manifest import SourceRecord
from visa_edge.runtime.reasoning_networks import MAX_QUERIES
from visa_edge.runtime.tracking.xmem import XMEM_NETWORKS, XMemConfig, XMemModel, XMemTracker, xmem_torch_engines

SIZE = (64, 96)  # frames already at the working size: no resize, no padding
TOL = 1e-4


@pytest.fixture(scope="module")
def xmem():
    torch.manual_seed(0)
    return XMemModel().eval()


@pytest.fixture(scope="module")
def exported(xmem, tmp_path_factory):
    out = tmp_path_factory.mktemp("xmem_engines")
    networks = tracker_networks(xmem, SIZE)
    export_networks(networks, out, ExportOptions(), {"xmem": SourceRecord("XMem.pth", "cd" * 32)}, ["visa-edge", "export"],
                    Progress(9, io.StringIO()))
    return {n.name: n for n in networks}, out


def test_working_size_follows_the_tracker():
    assert xmem_working_size((480, 854), 480) == (480, 864)  # DAVIS: 5 zero columns each side
    assert xmem_working_size((720, 1280), 480) == (480, 864)
    assert xmem_working_size((64, 96), None) == (64, 96)


@pytest.fixture(scope="module")
def engines(exported):
    return load_engines(exported[1])


def test_each_network_matches_torch_on_new_inputs(exported, engines):
    networks, out = exported
    assert set(engines) == set(XMEM_NETWORKS)
    gen = torch.Generator().manual_seed(1)
    for name, net in networks.items():
        inputs = {k: torch.randn(v.shape, generator=gen) for k, v in net.example_inputs.items()}
        ref = torch_outputs(net, inputs)
        got = engines[name].run(inputs)
        assert engines[name].output_names == XMEM_NETWORKS[name].outputs
        for k, r in ref.items():
            assert got[k].shape == r.shape
            assert float((got[k] - r).abs().max()) <= TOL * max(1.0, float(r.abs().max())), (name, k)
    record = read_manifest(out).networks["xmem_decoder"]
    assert record.sources == {"xmem": "cd" * 32} and record.dims == {"objects": DimRange(1, 1, MAX_QUERIES)}
    assert [(t.name, t.shape) for t in record.outputs] == [("logits", ("objects", 1, 16, 24)), ("hidden_out", ("objects", 64, 4, 6))]


@pytest.mark.parametrize("objects", [1, 3, MAX_QUERIES])
def test_object_axis_is_dynamic(exported, engines, objects):
    """Traced with two objects; the value encoder and decoder run any count up to MAX_QUERIES."""
    networks, _ = exported
    gen = torch.Generator().manual_seed(objects)
    for name in ("xmem_value_encoder", "xmem_decoder"):
        per_object = {k for k, ax in XMEM_NETWORKS[name].axes.items() if k in XMEM_NETWORKS[name].inputs}
        inputs = {k: torch.randn((objects, *v.shape[1:]) if k in per_object else v.shape, generator=gen)
                  for k, v in networks[name].example_inputs.items()}
        ref = torch_outputs(networks[name], inputs)
        got = engines[name].run(inputs)
        for k, r in ref.items():
            assert got[k].shape == r.shape and r.shape[0] == objects
            assert float((got[k] - r).abs().max()) <= TOL * max(1.0, float(r.abs().max())), (name, k, objects)


def test_tracker_on_onnxruntime_engines_matches_torch(xmem, engines):
    """Key/value encoders, decoder and hidden-state updates all go through the engines."""
    config = XMemConfig(shorter_side=None, mem_every=2)
    video = [synthetic.frame(t, *SIZE) for t in range(5)]
    reference = synthetic.ellipse_mask(0, *SIZE)
    trackers = [XMemTracker(engines, config), XMemTracker(xmem_torch_engines(xmem), config)]
    outputs = []
    for tracker in trackers:
        probs = [tracker.step(video[0], reference).prob] + [tracker.step(f).prob for f in video[1:]]
        outputs.append(np.stack(probs))
    assert outputs[0].shape == (5, *SIZE) and outputs[0][1:].max() > 0.5
    assert float(np.abs(outputs[0] - outputs[1]).max()) <= TOL


def test_two_objects_on_onnxruntime_engines_match_torch(xmem, engines):
    """Two labels tracked together: the engines' object axis carries both (soft aggregation on top)."""
    config = XMemConfig(shorter_side=None, mem_every=2)
    video = [synthetic.frame(t, *SIZE) for t in range(4)]
    labels = synthetic.ellipse_mask(0, *SIZE).astype(np.uint8)
    labels[:, : SIZE[1] // 4] = np.where(labels[:, : SIZE[1] // 4] == 0, 2, labels[:, : SIZE[1] // 4])
    outputs = []
    for tracker in (XMemTracker(engines, config), XMemTracker(xmem_torch_engines(xmem), config)):
        outs = [tracker.step(video[0], labels)] + [tracker.step(f) for f in video[1:]]
        assert outs[-1].objects == (1, 2)
        outputs.append(np.stack([o.probs for o in outs]))
    assert outputs[0].shape == (4, 2, *SIZE)
    assert float(np.abs(outputs[0] - outputs[1]).max()) <= TOL

