"""DAVIS metrics on hand-made masks whose J and F are worked out by hand in the comments."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from visa_edge.runtime.cli import main
from visa_edge.runtime.errors import InputError
from visa_edge.runtime.vos_metrics import (
    BenchmarkScore,
    SequenceScore,
    bound_pixels,
    boundary_f,
    boundary_precision_recall,
    evaluate_folders,
    jaccard,
    seg2bmap,
)


def square(h: int, w: int, y: int, x: int, side: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y : y + side, x : x + side] = 1
    return m


def test_jaccard_of_offset_squares():
    # two 10x10 squares, one shifted 2 px right: overlap 10*8 = 80, union 100 + 100 - 80 = 120
    a, b = square(50, 50, 10, 10, 10), square(50, 50, 10, 12, 10)
    assert jaccard(a, b) == pytest.approx(80 / 120)
    # shifted 2 px right and 2 px down: overlap 8*8 = 64, union 200 - 64 = 136
    assert jaccard(a, square(50, 50, 12, 12, 10)) == pytest.approx(64 / 136)


def test_jaccard_empty_conventions():
    empty, full = np.zeros((5, 5), np.uint8), square(5, 5, 1, 1, 2)
    assert jaccard(empty, empty) == 1.0  # DAVIS: nothing to find and nothing found
    assert jaccard(empty, full) == 0.0
    assert jaccard(full, empty) == 0.0
    assert jaccard(full * 255, full) == 1.0  # any non-zero value is foreground


def test_seg2bmap_sits_half_a_pixel_towards_the_origin():
    # a 3x3 square at rows/cols 2..4: a pixel is boundary when it differs from its east, south or
    # south-east neighbour. Inside the square: its right column (3) and bottom row (3), sharing the
    # corner -> 5. Outside: row 1, cols 1..4 (south or south-east is inside) -> 4; col 1, rows 2..4
    # (east is inside) -> 3. Total 12 = 4 * side.
    b = seg2bmap(square(8, 8, 2, 2, 3))
    inside = {(r, 4) for r in (2, 3, 4)} | {(4, c) for c in (2, 3)}
    outside = {(1, c) for c in (1, 2, 3, 4)} | {(r, 1) for r in (2, 3, 4)}
    expected = inside | outside
    assert set(zip(*np.nonzero(b))) == expected


def test_seg2bmap_image_border_rules():
    # everything foreground: no pixel differs from a neighbour inside the image; the last row and
    # column compare with zero-padding only along the image (east resp. south), so nothing is boundary
    assert not seg2bmap(np.ones((4, 6), np.uint8)).any()
    # foreground touching the right border: the last column is compared with its south neighbour only
    m = np.zeros((4, 4), np.uint8)
    m[:2, 2:] = 1  # rows 0-1, cols 2-3
    b = seg2bmap(m)
    # inside: row 1 (south is background) cols 2,3 -> 2; outside: col 1 rows 0,1 (east inside) -> 2
    assert set(zip(*np.nonzero(b))) == {(1, 2), (1, 3), (0, 1), (1, 1)}


def test_bound_pixels_follow_the_toolkit():
    # 0.008 * hypot(480, 854) = 7.84 -> 8 px; 0.008 * hypot(100, 100) = 1.13 -> 2 px; >= 1 is absolute
    assert bound_pixels((480, 854)) == 8
    assert bound_pixels((100, 100)) == 2
    assert bound_pixels((100, 100), bound_th=3) == 3


def test_boundary_within_tolerance_scores_one_and_beyond_scores_zero():
    # top half foreground: the boundary is the single row 19 (60 px). Growing the mask by k rows
    # moves it to row 19 + k. With a 3 px tolerance (disk radius 3): k <= 3 matches every pixel.
    a = np.zeros((40, 60), np.uint8)
    a[:20] = 1
    for k, expected in ((1, 1.0), (3, 1.0), (4, 0.0), (10, 0.0)):
        b = np.zeros_like(a)
        b[: 20 + k] = 1
        assert boundary_f(b, a, bound_th=3) == expected, k
    # at 854x480 the tolerance is 8 px: a 10x10 square shifted 5 px still has F = 1 while J = 50/150
    c, d = square(480, 854, 100, 100, 10), square(480, 854, 100, 105, 10)
    assert boundary_f(d, c) == 1.0
    assert jaccard(d, c) == pytest.approx(50 / 150)


def test_boundary_precision_recall_with_one_of_two_objects_found():
    # ground truth: two 10x10 squares far apart (boundary 40 px each); prediction: one of them.
    # Every predicted boundary pixel matches (P = 1), half the true boundary is found (R = 0.5):
    # F = 2 * 1 * 0.5 / 1.5 = 2/3; J = 100 / 200.
    gt = square(100, 100, 10, 10, 10) | square(100, 100, 60, 60, 10)
    pred = square(100, 100, 10, 10, 10)
    p, r = boundary_precision_recall(pred, gt)
    assert (p, r) == (1.0, 0.5)
    assert boundary_f(pred, gt) == pytest.approx(2 / 3)
    assert jaccard(pred, gt) == 0.5
    # the other way round: P = 0.5, R = 1
    assert boundary_precision_recall(gt, pred) == (0.5, 1.0)


def test_boundary_empty_conventions():
    empty, obj = np.zeros((50, 50), np.uint8), square(50, 50, 10, 10, 10)
    assert boundary_f(empty, empty) == 1.0  # P = R = 1
    assert boundary_precision_recall(empty, obj) == (1.0, 0.0)  # nothing predicted: F = 0
    assert boundary_f(empty, obj) == 0.0
    assert boundary_precision_recall(obj, empty) == (0.0, 1.0)  # something predicted on nothing: F = 0
    assert boundary_f(obj, empty) == 0.0


def test_shapes_must_match():
    with pytest.raises(ValueError, match="differ in size"):
        jaccard(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="2-D"):
        boundary_f(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)))


def test_means_are_over_sequences_not_frames():
    # sequence a: one perfect frame; sequence b: three frames with J = 0, F = 0.5
    a = SequenceScore("a", ["1"], [1.0], [1.0])
    b = SequenceScore("b", ["1", "2", "3"], [0.0] * 3, [0.5] * 3)
    bench = BenchmarkScore([a, b])
    assert (bench.j, bench.f) == (0.5, 0.75)  # not (0.25, 0.625) as a mean over the 4 frames
    assert bench.jf == pytest.approx(0.625)
    assert b.jf == 0.25
    d = bench.to_dict()
    assert d["mean"]["J&F"] == pytest.approx(0.625) and d["sequences"]["b"]["n_frames"] == 3
    assert "mean" in bench.table().splitlines()[-1]


def write_sequence(folder, masks: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, m in masks.items():
        cv2.imwrite(str(folder / f"{name}.png"), m.astype(np.uint8) * 255)


def test_evaluate_folders_single_and_multi_sequence(tmp_path):
    obj = square(40, 40, 5, 5, 10)
    half = square(40, 40, 5, 5, 10)
    half[:, 10:] = 0  # left half of the square: J = 50/100
    gt = {"00000": obj, "00001": obj, "00002": obj}
    write_sequence(tmp_path / "gt" / "s1", gt)
    write_sequence(tmp_path / "pred" / "s1", {"00000": np.zeros_like(obj), "00001": obj, "00002": half})
    write_sequence(tmp_path / "gt" / "s2", {"00000": obj, "00001": obj})
    write_sequence(tmp_path / "pred" / "s2", {"00001": obj})  # the first frame is not needed by default

    one = evaluate_folders(tmp_path / "pred" / "s1", tmp_path / "gt" / "s1")
    assert one.sequences[0].frames == ["00001", "00002"]  # the first frame is skipped
    assert one.sequences[0].j_frames == [1.0, 0.5]
    both = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    assert [s.name for s in both.sequences] == ["s1", "s2"]
    assert both.j == pytest.approx((0.75 + 1.0) / 2)
    with_first = evaluate_folders(tmp_path / "pred" / "s1", tmp_path / "gt" / "s1", skip_first=False)
    assert with_first.sequences[0].j_frames == [0.0, 1.0, 0.5]
    with pytest.raises(InputError, match=r"missing for sequence s2: 00000\.png"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt", skip_first=False)


def test_eval_vos_command(tmp_path, capsys):
    obj = square(30, 30, 5, 5, 10)
    write_sequence(tmp_path / "gt", {"a": obj, "b": obj, "c": obj})
    write_sequence(tmp_path / "pred", {"b": obj, "c": np.zeros_like(obj)})
    out = tmp_path / "scores.json"
    assert main(["eval-vos", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    # frame b: J = F = 1; frame c: nothing predicted, J = F = 0 -> means 0.5
    assert report["mean"] == {"J": 0.5, "F": 0.5, "J&F": 0.5}
    assert report["sequences"]["gt"]["frames"]["c"] == {"J": 0.0, "F": 0.0}
    assert "0.500" in capsys.readouterr().out
    # with the first frame: its prediction is missing -> an error naming it, exit code 2
    assert main(["eval-vos", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--no-skip-first"]) == 2
    assert "a.png" in capsys.readouterr().err
