"""The whole reasoning step on ONNX Runtime engines reproduces the original VISA's golden mask.

The golden checkpoint's networks are exported to ONNX (CPU, fp32) and loaded with
``load_engines``; the LLM stays in PyTorch. Binary mask identical where |logit| > 1e-4,
logits within 1e-4 (see ../shared/golden/visa_tiny/README.md). Several queries in one step
(shared prefill, batched ONNX mask decoder) give each query's single-query result.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from .conftest import golden_visa_frames, golden_visa_model
from visa_edge.export.manifest_writer import hash_source
from visa_edge.export.registry import reasoning_networks
from visa_edge.export.pipeline import ExportOptions, Progress, export_networks
from visa_edge.runtime.backends import load_engines
from visa_edge.runtime.reasoning import ReasoningStep

QUERY = "the red ball moving to the right"
OTHER_QUERY = "which object moves fastest in the video?"
TOL = 1e-4


@pytest.fixture(scope="module")
def golden_step(golden_visa, tmp_path_factory):
    checkpoint, clip = golden_visa / "hf_model", golden_visa / "clip_vision_tower"
    model = golden_visa_model(golden_visa)
    out = tmp_path_factory.mktemp("golden_engines")
    sources = {"checkpoint": hash_source(checkpoint), "clip": hash_source(clip)}
    export_networks(reasoning_networks(model), out, ExportOptions(), sources, ["visa-edge", "export"], Progress(9, io.StringIO()))
    engines = load_engines(out, backend="onnxruntime", device="cpu")
    frames = golden_visa_frames(golden_visa)
    step = ReasoningStep(model, engines)
    return step(frames, QUERY), engines, step, frames


def test_reasoning_step_on_onnxruntime_reproduces_golden_mask(golden_step, golden_visa):
    result, engines, _, _ = golden_step
    assert {e.backend for e in engines.values()} == {"onnxruntime"}
    ref = np.load(golden_visa / "sam.npz")
    logits, binary = ref["mask_logits"][0], ref["mask_binary"][0]
    confident = np.abs(logits) > TOL
    assert np.array_equal(result.mask[confident], binary[confident])
    assert float(np.abs(result.logits - logits).max()) <= TOL
    assert float(np.abs(result.low_res_logits.numpy() - ref["low_res_masks"]).max()) <= TOL
    assert abs(result.iou - float(ref["iou_predictions"].reshape(-1)[0])) <= TOL


def test_several_queries_on_onnxruntime_equal_single_query_steps(golden_step):
    result, _, step, frames = golden_step
    other = step(frames, OTHER_QUERY)
    multi = step(frames, [QUERY, OTHER_QUERY])
    assert multi.masks.shape == (2, *frames[-1].shape[:2])
    for q, one in enumerate((result, other)):
        assert float((multi.seg_embedding[q] - one.seg_embedding[0]).abs().max()) <= TOL
        assert float(np.abs(multi.mask_logits[q] - one.logits).max()) <= TOL
        assert np.array_equal(multi.masks[q], one.mask)
