"""The streaming benchmarks' own logic: the oracle policies' request schedule, the catch-up figures of the
oracle report, and a short soak."""

from __future__ import annotations

import json

import numpy as np

from visa_edge.benchmarks.stream_oracle import OracleReasoner, schedule, table
from visa_edge.runtime import cli
from visa_edge.benchmarks.stream_soak import SoakSettings, soak
from visa_edge.runtime.streaming import Frame


def test_offline_policies_follow_the_runtime_cadence():
    assert schedule(50, 10, 15) == [(0, 10), (15, 25), (30, 40)]  # L = 1 s at 10 fps, every 15 frames
    assert schedule(50, 20, 15) == [(0, 20), (20, 40)]  # one step in flight: the next waits for the result
    assert schedule(50, 0, 15) == [(0, 0), (15, 15), (30, 30), (45, 45)]
    assert schedule(8, 10, 15) == []  # no result arrives within the sequence


def test_the_oracle_returns_the_mask_of_the_frame_asked_about():
    masks = [np.full((2, 3), i % 2, np.uint8) for i in range(4)]
    frames = [Frame(i, i / 10, np.zeros((2, 3, 3), np.uint8), str(i)) for i in (0, 3)]
    out = OracleReasoner(masks, 0.0)(frames, "oracle")
    assert np.array_equal(out.mask, masks[3]) and out.timings == {"oracle_sleep": 0.0}


def test_the_oracle_report_measures_the_catchup(davis, tmp_path):
    """`visa-edge bench --config stream-oracle --unbridged` on 16 frames of blackswan, L = 0.5 s (5 frames):
    one result, arriving at frame ~5, caught up bridged (all but the newest of the ~5 frames behind) and
    unbridged, side by side."""
    args = ["bench", "--config", "stream-oracle", "--out", str(tmp_path), "--davis", str(davis), "--sequences",
            "blackswan", "--latencies", "0.5", "--frames", "16", "--unbridged"]
    assert cli.main(args) == 0
    result = json.loads((tmp_path / "stream-oracle.json").read_text())
    bridged, unbridged = result["policies"]["runtime@0.5"], result["policies"]["runtime_unbridged@0.5"]
    for r in (bridged, unbridged):
        assert r["ideal_anchors"] == 1 and r["anchors_published"] == 1 and r["frames_late"] == 0
        assert r["catchup_lag_frames"]["p50"] >= 0 and r["catchup_lag_frames"]["p99"] <= 15
        assert r["catchup_ms_per_frame"] > 0 and r["live_step_ms_p50"] > 0
    assert bridged["catchup_bridged"] >= 3 and unbridged["catchup_bridged"] == 0
    assert bridged["J&F"] > result["policies"]["naive@0.5"]["J&F"]
    text = table(result)
    assert "catch-up lag p50 / p99 / max" in text and "| unbridged, 0.5 s |" in text


def test_a_short_soak_reports_every_fault_and_publishes_every_frame():
    result = soak(SoakSettings(frames=400, fps=200.0, warmup_frames=100, rss_every=50, hang_step=2, hang_s=1.5,
                               step_timeout_s=0.5, every_frames=10), log=lambda _: None)
    checks = result["checks"]
    assert checks["mask_for_every_frame"] and checks["every_failure_reported"] and checks["hang_reported"], result["faults"]
    assert result["results"] == 400 and result["faults"]["injected_failures"] >= 1
    assert result["faults"]["close_returned"]
