"""Reduced precision on the same code path as fp32: the LLM in NF4 4-bit (bitsandbytes), bf16.

Measured on the golden checkpoint and frames, share of target-frame pixels agreeing with
fp32: NF4 LLM 99.26 % ([SEG] state moves by up to ~1.0 absolute), all-bf16 99.66 %.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from .conftest import golden_visa_frames, golden_visa_model
from visa_edge.runtime.model import warn_slow_cpu_dtype
from visa_edge.runtime.reasoning import ReasoningStep  # noqa: E402

QUERY = "the red ball moving to the right"


@pytest.fixture(scope="module")
def frames(golden_visa):
    return golden_visa_frames(golden_visa)


def load(golden_visa, quantization, dtype=torch.float32):
    return golden_visa_model(golden_visa, quantization=quantization, dtype=dtype)


@pytest.fixture(scope="module")
def fp32(golden_visa, frames):
    return ReasoningStep(load(golden_visa, None))(frames, QUERY)


def test_nf4_quantizes_only_the_llm_linears(golden_visa):
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes not installed (extra [quant])")

    model = load(golden_visa, "nf4")
    layer = model.llm.model.layers[0]
    assert isinstance(layer.self_attn.q_proj, bnb.nn.Linear4bit) and isinstance(layer.mlp.down_proj, bnb.nn.Linear4bit)
    assert layer.mlp.up_proj.weight.quant_state.quant_type == "nf4"
    assert type(model.mm_projector) is torch.nn.Linear and model.mm_projector.weight.dtype == torch.float32
    assert type(model.text_hidden_fcs[0]) is torch.nn.Linear
    assert model.sam["image_encoder"].neck[0].weight.dtype == torch.float32
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.vision_tower.modules())


def test_nf4_mask_agrees_with_fp32(golden_visa, frames, fp32):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes not installed (extra [quant])")
    nf4 = ReasoningStep(load(golden_visa, "nf4"))(frames, QUERY)
    agreement = float((nf4.mask == fp32.mask).mean())
    assert agreement >= 0.985, agreement  # measured 0.9926
    assert 0.0 < float((nf4.seg_hidden - fp32.seg_hidden).abs().max()) < 2.0  # quantized, yet close


@pytest.mark.filterwarnings("ignore:dtype bfloat16 on this CPU:RuntimeWarning")
def test_bf16_mask_agrees_with_fp32(golden_visa, frames, fp32):
    bf16 = ReasoningStep(load(golden_visa, None, torch.bfloat16))(frames, QUERY)
    agreement = float((bf16.mask == fp32.mask).mean())
    assert agreement >= 0.99, agreement  # measured 0.9966


@pytest.mark.parametrize("dtype, name", [(torch.bfloat16, "bfloat16"), (torch.float16, "float16")])
def test_reduced_precision_without_cpu_kernels_warns(golden_visa, monkeypatch, dtype, name):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_fp16_supported", lambda: False)
    with pytest.warns(RuntimeWarning, match=f"dtype {name} on this CPU .*use float32"):
        load(golden_visa, None, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_slow_cpu_dtype(torch.device("cpu"), torch.float32)
        warn_slow_cpu_dtype(torch.device("cuda"), dtype)
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_fp16_supported", lambda: True)
        warn_slow_cpu_dtype(torch.device("cpu"), dtype)
