"""``visa-edge bench``: the quick run's outputs and schema, and the parts that decide what is measured."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
import types

import pytest
import torch

from visa_edge.benchmarks.backends import BACKENDS, NotApplicable, optimize, plan_backends
from visa_edge.benchmarks.models import VICUNA_7B, PrefillNet, cpu_llm_reason, prefill_flops, random_nf4_llama
from visa_edge.benchmarks.report import FILES, SCHEMA, SCHEMA_VERSION, check_finite
from visa_edge.benchmarks.stages import STAGES
from visa_edge.benchmarks.timing import RepeatSettings, measure_interleaved, ratio, summarize
from visa_edge.runtime.cli import main

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
EXPORTED_STAGES = {"visual_tokens", "sam_encoder", "mask_decoder", "xmem_step"}
LATENCY_KEYS = {"p50", "p90", "p99", "mean", "min", "max", "n"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One ``visa-edge bench --config tiny --quick`` run (CPU) shared by the tests below."""
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--config", "tiny", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    return out, json.loads((out / FILES["json"]).read_text())


def latency_summaries(value, path=""):
    """Every (path, summary) in ``value`` that is a latency summary (p50/p90/p99/mean/min/max/n)."""
    if isinstance(value, dict):
        if LATENCY_KEYS <= set(value):
            yield path, value
        for k, v in value.items():
            yield from latency_summaries(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from latency_summaries(v, f"{path}[{i}]")


def numbers(value, path=""):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, (int, float)):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from numbers(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from numbers(v, f"{path}[{i}]")


def test_quick_run_writes_every_output(quick):
    out, _ = quick
    for name in FILES.values():
        assert (out / name).stat().st_size > 0, name
    for plot in ("latency_plot", "staleness_plot"):
        assert (out / FILES[plot]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / FILES["markdown"]).read_text()
    assert "| stage | PyTorch eager | PyTorch optimized | ONNX Runtime | TensorRT |" in md
    assert "## Streaming end to end" in md and "## Memory" in md


def test_quick_run_schema(quick):
    _, r = quick
    assert r["schema"] == SCHEMA and r["schema_version"] == SCHEMA_VERSION and r["config"] == "tiny" and r["quick"]
    assert {"cpu", "cores", "ram_gib", "os", "load_average"} <= set(r["machine"])
    assert r["device"]["type"] == "cpu"
    assert {"python", "torch", "transformers", "onnxruntime", "tensorrt", "visa-edge"} <= set(r["versions"])
    assert "random" in r["note"] and "latency" in r["note"] and "not on weight values" in r["note"]
    assert [s["stage"] for s in r["stages"]["stages"]] == list(STAGES)
    assert set(r["stages"]["backends"]) == set(BACKENDS)
    for stage in r["stages"]["stages"]:
        assert list(stage["results"]) == list(BACKENDS), stage["stage"]
        eager_p50 = stage["results"]["torch-eager"]["latency_ms"]["p50"]
        for backend, res in stage["results"].items():
            assert res["status"] in ("ok", "n/a"), (stage["stage"], backend, res)
            if res["status"] == "n/a":
                assert res["reason"], (stage["stage"], backend)
            else:  # the speed-up is the ratio of the p50s the report lists
                assert res["latency_ms"]["n"] >= 1, (stage["stage"], backend)
                assert res["speedup_vs_eager_p50"] == pytest.approx(eager_p50 / res["latency_ms"]["p50"]), backend
    for key in ("streaming", "memory", "quality", "phases_s"):
        assert key in r


def test_quick_run_backends_on_cpu(quick):
    _, r = quick
    results = {s["stage"]: s["results"] for s in r["stages"]["stages"]}
    for stage, res in results.items():
        assert res["torch-eager"]["status"] == "ok" and res["torch-eager"]["speedup_vs_eager_p50"] == 1.0
        assert res["torch-optimized"]["status"] == "ok", stage
        assert res["tensorrt"]["status"] == "n/a" and "CUDA" in res["tensorrt"]["reason"]
        if HAS_ORT:
            assert res["onnxruntime"]["status"] == ("ok" if stage in EXPORTED_STAGES else "n/a"), stage
        if res["onnxruntime"]["status"] == "ok":
            assert res["onnxruntime"]["max_abs_diff_vs_eager"] < 1e-3, stage  # the same network, fp32
    assert "not exported" in results["llm_prefill"]["onnxruntime"]["reason"]
    assert "not exported" in results["seg_head"]["onnxruntime"]["reason"]
    assert r["stages"]["flow_tracker"]["status"] == "ok"


def test_quick_run_figures_are_positive_and_finite(quick):
    _, r = quick
    assert check_finite(r) == []
    negative = [p for p, v in numbers(r) if v < 0]
    assert negative == [], negative  # counts may be zero, nothing is negative
    summaries = list(latency_summaries(r))
    assert len(summaries) > 20
    for path, s in summaries:
        assert all(s[k] > 0 for k in LATENCY_KEYS), path
        assert s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"], path


def test_quick_run_streaming_and_quality(quick):
    _, r = quick
    s = r["streaming"]
    assert s["frames_out"] > 0 and s["frames_pushed"] == s["frames_out"] + s["dropped"]
    assert s["output_fps"] == pytest.approx(s["frames_out"] / s["wall_s"])
    ages = [a for a in s["series"]["anchor_age"] if a is not None]
    assert s["reasoning_ms"]["n"] >= 1 and s["frames_with_reasoned_mask"] == len(ages) > 0
    assert s["anchor_age_frames"]["max"] == max(ages) and s["anchor_age_frames"]["n"] == len(ages)
    assert len(s["series"]["t_s"]) == len(s["series"]["staleness_ms"]) == s["frames_out"]
    phases = r["memory"]["phases"].values()  # the peak so far is at least every snapshot's RSS (both rounded to 0.1)
    assert r["memory"]["peak_rss_mib"] == max(p["peak_rss_mib"] for p in phases)
    assert r["memory"]["peak_rss_mib"] + 0.1 >= max(p["rss_mib"] for p in phases)
    q = r["quality"]
    if q["status"] == "ok":
        assert 0 <= q["JF"] <= 1 and q["scored_frames"] > 0
    else:
        assert q["status"] == "skipped" and "DAVIS" in q["reason"]


def test_cpu_plan_uses_torchscript_and_no_tensorrt():
    plans = plan_backends(torch.device("cpu"))
    assert plans["torch-eager"].available and "fp32" in plans["torch-eager"].variant
    assert "TorchScript" in plans["torch-optimized"].variant
    assert not plans["tensorrt"].available and "CUDA" in plans["tensorrt"].reason


def test_cuda_plan_selects_fp16_cuda_graphs_and_tensorrt(monkeypatch):
    """On a CUDA device the GPU variants are chosen (verifiable here only up to the CUDA check)."""
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.9.0"))
    plans = plan_backends(torch.device("cuda"))
    assert "fp16" in plans["torch-optimized"].variant and "CUDA graph" in plans["torch-optimized"].variant
    assert plans["tensorrt"].available and "10.9.0" in plans["tensorrt"].variant
    if HAS_ORT and "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        assert not plans["onnxruntime"].available and "onnxruntime-gpu" in plans["onnxruntime"].reason


def test_cuda_plan_without_tensorrt_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    plans = plan_backends(torch.device("cuda"))
    assert not plans["tensorrt"].available and "TensorRT is not installed" in plans["tensorrt"].reason


def test_backends_option_marks_others_not_requested():
    plans = plan_backends(torch.device("cpu"), ["torch-eager"])
    assert plans["torch-eager"].available
    assert all(plans[b].reason == "not requested (--backends)" for b in BACKENDS[1:])
    with pytest.raises(ValueError, match="bogus"):
        plan_backends(torch.device("cpu"), ["bogus"])


def test_torchscript_optimization_matches_eager_or_says_why_not():
    lin = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()).eval()
    x = torch.randn(2, 8)
    fn, variant = optimize(lin, [x], torch.device("cpu"))
    assert "TorchScript" in variant and torch.allclose(fn(x), lin(x))

    class Untraceable(torch.nn.Module):
        def forward(self, x):
            return {"rows": int(x.shape[0])}  # not a tensor: the tracer refuses it

    with pytest.raises(NotApplicable, match="TorchScript trace failed"):
        optimize(Untraceable(), [x], torch.device("cpu"))


def test_7b_prefill_cost_and_cpu_reason():
    flops = prefill_flops(VICUNA_7B, 1607)
    assert 2.0e13 < flops < 2.4e13  # 2 x 6.5e9 linear params x 1607 tokens + attention
    reason = cpu_llm_reason(VICUNA_7B, 1607)
    assert "2.2e+13 FLOPs" in reason and "CUDA only" in reason


def test_random_nf4_llama_is_built_layer_by_layer():
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes not installed (extra [quant])")
    cfg = dataclasses.replace(VICUNA_7B, vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=4)
    llm = random_nf4_llama(cfg, torch.device("cpu"), torch.bfloat16)
    assert len(llm.model.layers) == llm.model.config.num_hidden_layers == 3
    proj = llm.model.layers[2].mlp.down_proj
    assert isinstance(proj, bnb.nn.Linear4bit) and proj.weight.quant_state.quant_type == "nf4"
    with torch.inference_mode():
        seg = PrefillNet(llm, [5])(torch.randn(1, 20, 64, dtype=torch.bfloat16))
    assert seg.shape == (1, 64) and bool(torch.isfinite(seg).all())


def test_summary_percentiles():
    s = summarize([0.004, 0.001, 0.003, 0.002])
    assert s["n"] == 4 and s["min"] == pytest.approx(1.0) and s["max"] == pytest.approx(4.0)
    assert s["p50"] == pytest.approx(2.5) and s["mean"] == pytest.approx(2.5)
    assert ratio(10.0, 2.5) == 4.0 and ratio(None, 1.0) is None and ratio(1.0, math.inf) is None


def test_interleaved_rounds_rotate_and_respect_the_budget():
    calls = []
    runners = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    samples = measure_interleaved(runners, RepeatSettings(warmup=0, repeats=4, min_repeats=4), lambda: None)
    assert calls == list("abc" "cba" "bca" "acb")  # each position, and each predecessor, over the rounds
    assert {k: len(v) for k, v in samples.items()} == {"a": 4, "b": 4, "c": 4}
    calls.clear()
    samples = measure_interleaved(runners, RepeatSettings(warmup=0, repeats=50, min_repeats=2, budget_s=1e-9),
                                  lambda: None)
    assert len(samples["a"]) == 2  # stops after min_repeats once the budget is spent
