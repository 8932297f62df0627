"""ReVOS-format offline mode: a fixture made here round-trips through segment and evaluate.

Frames are 20x20; the ground truth of every frame is the square rows/cols 0..9 (100 px).
Hand-computed scores for single-frame predictions:
- identical: J = 1, F = 1, A = 1, R = 1
- left half of the square (50 px): J = 50/100 = 0.5, A = 1 - 50/400 = 0.875, R = 1 (no false positive).
  F: DAVIS boundaries are the pixels that differ from their E/S/SE neighbour, so the ground truth
  has 19 (column 9 and row 9) and the prediction 14 (column 4 and row 9, cols 0..4); with the
  1-pixel tolerance (bound_th 0.008 * diagonal 28.3 -> 1) 6 predicted pixels lie near the truth
  (row 9, cols 0..4, and (8,4)) and 6 true ones near the prediction (row 9, cols 0..5):
  P = 6/14, R = 6/19, F = 2PR/(P+R) = 4/11.
- empty: J = 0, F = 0 (no predicted boundary: P = 1, R = 0), A = 1 - 100/400 = 0.75, R = 1
- disjoint 5x5 square at rows/cols 14..18: J = 0, F = 0 (boundaries > 1 px apart),
  A = 1 - 125/400 = 0.6875, R = max(1 - 25/100, 0) = 0.75 (foreground = the 100 px of truth)
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from visa_edge.runtime import revos, rle
from visa_edge.runtime.errors import InputError
from visa_edge.runtime.io import write_mask, write_rgb
from visa_edge.runtime.streaming import ReasonOutput
from visa_edge.runtime.tracking import Tracker, TrackOutput

N = 5  # frames per video


def square(r0, c0, r1=10, c1=10):
    m = np.zeros((20, 20), np.uint8)
    m[r0 : r0 + r1, c0 : c0 + c1] = 1
    return m


GT = square(0, 0)


def write_dataset(root):
    """The ReVOS-format fixture (two videos of N frames, a referring and a reasoning expression each)."""
    frames = [f"{i:05d}" for i in range(N)]
    videos = {}
    for v in ("vid_a", "vid_b"):
        for i, name in enumerate(frames):
            write_rgb(root / "JPEGImages" / v / f"{name}.jpg", np.full((20, 20, 3), 40 * i, np.uint8))
        videos[v] = {"frames": frames, "expressions": {
            "0": {"exp": "The  square", "type_id": 0, "anno_id": [f"{v}-1"], "obj_id": [1]},
            "1": {"exp": "What could hold a cup?", "type_id": 1, "anno_id": [f"{v}-1"], "obj_id": [1]},
        }}
    (root / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
    masks = {f"{v}-1": [rle.encode(GT)] * N for v in videos}
    (root / "mask_dict.json").write_text(json.dumps(masks))
    fg = {v: {"masks_rle": [rle.encode(GT)] * N} for v in videos}
    (root / "mask_dict_foreground.json").write_text(json.dumps(fg))
    tfs = {"videos": {v: {"expressions": {"0": {"tp": 1.0}, "1": {"tp": 0.2}}} for v in videos}}
    (root / "tfs.json").write_text(json.dumps(tfs))
    return root


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "revos")


class Oracle:
    def __init__(self):
        self.calls = []

    def __call__(self, frames, query):
        self.calls.append((frames[-1].name, query, [f.index for f in frames]))
        return ReasonOutput(GT.copy())


class Copy(Tracker):
    steps = 0

    def reset(self):
        pass

    def step(self, frame, mask=None, *, objects=None, index=None):
        Copy.steps += 1
        if mask is not None:
            self.mask = mask.astype(np.float32)
        return TrackOutput(self.mask, 1.0)


def test_meta_and_target_frames(dataset):
    videos = revos.load_meta(dataset / "meta_expressions.json", dataset / "tfs.json")
    exps = {(e.video, e.exp_id): e for v in videos for e in v.expressions}
    assert exps[("vid_a", "0")].tp == 1.0 and exps[("vid_a", "1")].tp == 0.2
    assert revos.target_index(N, 1.0) == N - 1 and revos.target_index(N, 0.2) == 1 and revos.target_index(N, 0.5) == 2
    assert revos.load_meta(dataset / "meta_expressions.json")[0].expressions[0].tp == 0.5  # default: middle


def test_segment_round_trip_and_resume(dataset, tmp_path):
    videos = revos.load_meta(dataset / "meta_expressions.json", dataset / "tfs.json")
    oracle, out = Oracle(), tmp_path / "pred"
    counts = revos.segment(dataset, videos, out, oracle, Copy)
    assert counts == {"segmented": 4, "skipped": 0}
    assert [c[0] for c in oracle.calls] == ["00004", "00001", "00004", "00001"]
    assert oracle.calls[1][2] == [0, 1, 2, 3, 4, 1]  # VISA's references (all 5 frames) + the target
    for v in ("vid_a", "vid_b"):
        for e in ("0", "1"):
            assert sorted(p.name for p in (out / "Annotations" / v / e).iterdir()) == [f"{i:05d}.png" for i in range(N)]
    scores = revos.evaluate(out, videos, dataset / "mask_dict.json", dataset / "mask_dict_foreground.json")
    assert all((s.j, s.f, s.a, s.r) == (1.0, 1.0, 1.0, 1.0) for s in scores)
    summary = revos.summarize(scores)
    assert summary["overall"] == {"J": 100.0, "F": 100.0, "JF": 100.0, "A": 100.0, "R": 100.0}
    # resumable: complete expressions are skipped, a damaged one is redone
    (out / "Annotations" / "vid_b" / "1" / "00003.png").unlink()
    assert revos.segment(dataset, videos, out, Oracle(), Copy) == {"segmented": 1, "skipped": 3}


def _predict(out, video, exp, masks):
    for i, m in enumerate(masks):
        write_mask(out / "Annotations" / video / exp / f"{i:05d}.png", m)


def test_hand_checked_metric_values(dataset, tmp_path):
    videos = revos.load_meta(dataset / "meta_expressions.json")
    out = tmp_path / "pred"
    # vid_a/0: frames identical, left half, empty, disjoint, identical
    _predict(out, "vid_a", "0", [GT, square(0, 0, 10, 5), np.zeros_like(GT), square(14, 14, 5, 5), GT])
    for v, e in (("vid_a", "1"), ("vid_b", "0"), ("vid_b", "1")):
        _predict(out, v, e, [GT] * N)
    scores = {(s.video, s.exp_id): s for s in revos.evaluate(out, videos, dataset / "mask_dict.json",
                                                             dataset / "mask_dict_foreground.json")}
    s = scores[("vid_a", "0")]
    assert s.j == pytest.approx((1 + 0.5 + 0 + 0 + 1) / 5)
    assert s.f == pytest.approx((1 + 4 / 11 + 0 + 0 + 1) / 5)
    assert s.a == pytest.approx((1 + 0.875 + 0.75 + 0.6875 + 1) / 5)
    assert s.r == pytest.approx((1 + 1 + 1 + 0.75 + 1) / 5)
    summary = revos.summarize(list(scores.values()))
    assert summary["referring"]["J"] == pytest.approx(100 * (0.5 + 1) / 2)
    assert summary["reasoning"]["J"] == 100.0
    assert summary["overall"]["J"] == pytest.approx((summary["referring"]["J"] + 100) / 2)
    compat = {(s.video, s.exp_id): s for s in revos.evaluate(out, videos, dataset / "mask_dict.json",
                                                             dataset / "mask_dict_foreground.json", compat_visa=True)}
    assert compat[("vid_b", "0")].a == pytest.approx(0.75)  # VISA's script: 255 never equals 1
    assert compat[("vid_b", "0")].j == 1.0


def test_missing_prediction_is_named(dataset, tmp_path):
    videos = revos.load_meta(dataset / "meta_expressions.json")
    with pytest.raises(InputError, match="vid_a/0/00000.png: prediction missing"):
        revos.evaluate(tmp_path, videos, dataset / "mask_dict.json")


def test_without_foreground_r_is_none(dataset, tmp_path):
    videos = revos.load_meta(dataset / "meta_expressions.json")
    out = tmp_path / "pred"
    for v in ("vid_a", "vid_b"):
        for e in ("0", "1"):
            _predict(out, v, e, [GT] * N)
    summary = revos.summarize(revos.evaluate(out, videos, dataset / "mask_dict.json"))
    assert summary["overall"]["R"] is None and summary["overall"]["JF"] == 100.0


def test_rle_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = (rng.random(rng.integers(1, 30, 2)) < 0.3).astype(np.uint8)
        assert np.array_equal(rle.decode(rle.encode(m)), m)
    assert rle.encode(np.zeros((2, 2), np.uint8)) == {"size": [2, 2], "counts": "4"}
    # column-major runs 0 x1, 1 x2, 0 x3: columns [0,1], [1,0], [0,0]
    assert rle.decode({"size": [2, 3], "counts": [1, 2, 3]}).tolist() == [[0, 1, 0], [1, 0, 0]]
    with pytest.raises(InputError, match="RLE runs sum to 5; expected h\\*w = 2\\*3 = 6"):
        rle.decode({"size": [2, 3], "counts": [1, 2, 2]})
