"""The streaming benchmarks' own logic: the oracle policies' request schedule and a short soak."""

from __future__ import annotations

import numpy as np

from visa_edge.benchmarks.stream_oracle import OracleReasoner, schedule
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


def test_a_short_soak_reports_every_fault_and_publishes_every_frame():
    result = soak(SoakSettings(frames=400, fps=200.0, warmup_frames=100, rss_every=50, hang_step=2, hang_s=1.5,
                               step_timeout_s=0.5, every_frames=10), log=lambda _: None)
    checks = result["checks"]
    assert checks["mask_for_every_frame"] and checks["every_failure_reported"] and checks["hang_reported"], result["faults"]
    assert result["results"] == 400 and result["faults"]["injected_failures"] >= 1
    assert result["faults"]["close_returned"]
