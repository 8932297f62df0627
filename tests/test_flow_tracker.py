"""The weight-free flow tracker: DAVIS quality, API behaviour, bad inputs, and the CLI round trip."""

from __future__ import annotations

import json
import warnings

import cv2
import numpy as np
import pytest

from visa_edge.benchmarks.davis_tracker import group_means, procedural_clip, run_procedural
from visa_edge.benchmarks.davis_tracker import run as run_davis
from visa_edge.runtime.cli import main
from visa_edge.runtime.errors import InputError
from visa_edge.runtime.io import read_mask
from visa_edge.runtime.tracking.base import Tracker
from visa_edge.runtime.tracking.flow import FlowTracker, FlowTrackerConfig
from visa_edge.runtime.vos_metrics import jaccard

# Measured J&F over the first 20 frames of the shared DAVIS 2016 sequences (frames 1..19 scored),
# separately on the sequences the defaults were chosen on (blackswan, car-shadow, dog) and on the
# held-out ones (bmx-trees, kite-surf); full sequences in benchmarks/RESULTS.md. The margin
# absorbs OpenCV version differences in DIS flow.
DAVIS_FIRST_20_TUNED_JF = 0.857
DAVIS_FIRST_20_HELD_OUT_JF = 0.630
DAVIS_MARGIN = 0.03


def texture(rng: np.random.Generator, h: int, w: int, sigma: float, lo, hi) -> np.ndarray:
    t = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), sigma)
    t = (t - t.min()) / (t.max() - t.min())
    return (np.asarray(lo) + t * (np.asarray(hi) - np.asarray(lo))).astype(np.uint8)


def synthetic_clip(n: int = 12, h: int = 120, w: int = 160, seed: int = 0):
    """A reddish textured disc (radius 18) moving 3 px right and 2 px down per frame over green texture."""
    rng = np.random.default_rng(seed)
    background = texture(rng, h, w, 4, (40, 90, 40), (140, 200, 120))
    foreground = texture(rng, h, w, 2, (170, 40, 40), (250, 120, 90))
    frames, masks = [], []
    for i in range(n):
        m = np.zeros((h, w), np.uint8)
        cv2.circle(m, (40 + 3 * i, 35 + 2 * i), 18, 1, -1)
        f = background.copy()
        f[m > 0] = foreground[m > 0]
        frames.append(f)
        masks.append(m)
    return frames, masks, background


@pytest.fixture(scope="module")
def clip():
    return synthetic_clip()


def test_is_a_tracker():
    assert isinstance(FlowTracker(), Tracker)


def test_follows_a_moving_object_with_high_confidence(clip):
    frames, masks, _ = clip
    tracker = FlowTracker()
    first = tracker.step(frames[0], masks[0])
    assert first.prob.dtype == np.float32 and first.prob.shape == masks[0].shape
    assert jaccard(first.mask, masks[0]) == 1.0 and first.confidence == 1.0
    for frame, mask in zip(frames[1:], masks[1:]):
        out = tracker.step(frame)
        assert out.prob.dtype == np.float32 and 0.0 <= out.prob.min() and out.prob.max() <= 1.0
        assert jaccard(out.mask, mask) >= 0.95  # measured 1.0
        assert 0.6 <= out.confidence <= 1.0  # measured 0.78-0.81


def test_confidence_collapses_when_the_object_vanishes(clip):
    frames, masks, background = clip
    tracker = FlowTracker()
    tracker.step(frames[0], masks[0])
    tracked = [tracker.step(f).confidence for f in frames[1:6]]
    gone = tracker.step(background)  # the disc is no longer in the frame
    assert gone.mask.sum() < 0.1 * masks[0].sum()  # measured 40 px of 1,009
    assert gone.confidence < 0.2 < min(tracked)  # measured 0.04 against ~0.79


def test_reset_forgets_the_reference(clip):
    frames, masks, _ = clip
    tracker = FlowTracker()
    tracker.step(frames[0], masks[0])
    tracker.step(frames[1])
    tracker.reset()
    out = tracker.step(frames[2])  # nothing to propagate: empty, confidence 0
    assert not out.mask.any() and out.confidence == 0.0
    tracker.step(frames[2], masks[2])
    assert jaccard(tracker.step(frames[3]).mask, masks[3]) >= 0.95


def test_anchor_replaces_a_wrong_reference(clip):
    frames, masks, _ = clip
    tracker = FlowTracker()
    tracker.step(frames[0], np.roll(masks[0], (60, 80), axis=(0, 1)))  # a patch of background
    for frame, mask in zip(frames[1:5], masks[1:5]):
        assert jaccard(tracker.step(frame).mask, mask) < 0.1  # measured 0.0: it follows the wrong patch
    anchored = tracker.anchor(frames[5], masks[5])
    assert jaccard(anchored.mask, masks[5]) == 1.0
    for frame, mask in zip(frames[6:10], masks[6:10]):
        assert jaccard(tracker.step(frame).mask, mask) >= 0.95  # measured 1.0


def test_empty_reference_mask_gives_empty_outputs(clip):
    frames, masks, _ = clip
    tracker = FlowTracker()
    first = tracker.step(frames[0], np.zeros_like(masks[0]))
    assert not first.mask.any() and first.confidence == 0.0
    for frame in frames[1:4]:
        out = tracker.step(frame)
        assert out.prob.shape == masks[0].shape and not out.mask.any() and out.confidence == 0.0


def test_frame_of_another_size_is_resized_with_a_warning(clip):
    frames, masks, _ = clip
    tracker = FlowTracker()
    tracker.step(frames[0], masks[0])
    for frame in frames[1:6]:
        tracker.step(frame)
    big = cv2.resize(frames[6], (320, 240), interpolation=cv2.INTER_LINEAR)
    with pytest.warns(RuntimeWarning, match="resized to the session size"):
        out = tracker.step(big)
    assert out.prob.shape == (240, 320)  # output at the frame's own size
    big_mask = cv2.resize(masks[6], (320, 240), interpolation=cv2.INTER_NEAREST)
    assert jaccard(out.mask, big_mask) >= 0.9  # measured 0.99
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # back at the session size: no warning, tracking goes on
        assert jaccard(tracker.step(frames[7]).mask, masks[7]) >= 0.95


def test_bad_inputs_are_clear_errors(clip, tmp_path):
    frames, masks, _ = clip
    tracker = FlowTracker()
    with pytest.raises(InputError, match="RGB uint8"):
        tracker.step(frames[0][..., 0], masks[0])
    with pytest.raises(InputError, match="RGB uint8"):
        tracker.step(frames[0].astype(np.float32), masks[0])
    with pytest.raises(InputError, match="differs from its frame"):
        tracker.step(frames[0], masks[0][:-1])
    with pytest.raises(InputError, match=r"48x12 px; expected both sides >= 16"):  # DIS would abort the process
        tracker.step(np.zeros((12, 48, 3), np.uint8), np.ones((12, 48), np.uint8))
    two_objects = masks[0] * 1 + np.roll(masks[0], 70, axis=1) * 2
    path = tmp_path / "two.png"
    cv2.imwrite(str(path), two_objects.astype(np.uint8))
    with pytest.raises(InputError, match="non-binary"):
        read_mask(path)


def fast_clip(speed: int, n: int = 10, h: int = 240, w: int = 427, seed: int = 0):
    """A reddish textured disc (radius 25) moving ``speed`` px right per frame while the green
    background pans 3 px left: an object moving about its size per frame (drift, motocross)."""
    rng = np.random.default_rng(seed)
    background = texture(rng, h, w, 4, (40, 90, 40), (140, 200, 120))
    foreground = texture(rng, h, w, 2, (170, 40, 40), (250, 120, 90))
    frames, masks = [], []
    for i in range(n):
        m = np.zeros((h, w), np.uint8)
        cv2.circle(m, (40 + speed * i, 120 + (speed // 3) * (i % 3)), 25, 1, -1)
        f = np.roll(background, -3 * i, axis=1).copy()
        f[m > 0] = np.roll(foreground, speed * i, axis=1)[m > 0]
        frames.append(f)
        masks.append(m)
    return frames, masks


def test_fast_motion_is_recovered_by_colour_re_detection():
    frames, masks = fast_clip(32)
    scores = {}
    for redetect in (0.5, 0.0):
        tracker = FlowTracker(FlowTrackerConfig(redetect_below=redetect))
        tracker.step(frames[0], masks[0])
        scores[redetect] = np.mean([jaccard(tracker.step(f).mask, m) for f, m in zip(frames[1:], masks[1:])])
    assert scores[0.0] < 0.1  # measured 0.05: the flow loses the disc after one frame
    assert scores[0.5] >= 0.7  # measured 0.80: found again by its colours near its last mask


def test_procedural_stress_clips():
    """The benchmark's synthetic stress clips: plain ones are tracked (re-detection recovers the
    fast ones); look-alike discs in the background capture the mask, a limitation pinned here by
    its numbers (benchmarks/RESULTS.md, docs/DESIGN.md)."""
    frames, masks = procedural_clip("scale", 20, look_alikes=True)
    assert len(frames) == 16 and masks[15].sum() > 8 * masks[0].sum()  # radius 15 -> 60 px
    plain = run_procedural()
    assert list(plain) == ["fast 16", "fast 32", "fast 48", "bounce 30", "scale 20", "deform 28"]
    assert min(plain.values()) >= 0.65 and np.mean(list(plain.values())) >= 0.82  # measured 0.72-1.00, mean 0.875
    alike = run_procedural(look_alikes=True)
    assert alike["scale 20"] >= 0.8  # measured 0.85: the look-alikes stay away from its path; mean 0.353
    with pytest.raises(ValueError, match="expected one of"):
        procedural_clip("spin", 10)


def test_davis_first_frames(davis):
    score, runs = run_davis(davis, max_frames=20)
    assert len(score.sequences) == 5
    groups = group_means(runs)
    assert groups["tuned"] >= DAVIS_FIRST_20_TUNED_JF - DAVIS_MARGIN
    assert groups["held_out"] >= DAVIS_FIRST_20_HELD_OUT_JF - DAVIS_MARGIN
    blackswan = next(s for s in score.sequences if s.name == "blackswan")
    assert blackswan.jf >= 0.93  # measured 0.950: a slow object on water must stay near perfect


def write_clip(folder, frames, masks):
    (folder / "frames").mkdir(parents=True)
    (folder / "gt").mkdir()
    for i, (f, m) in enumerate(zip(frames, masks)):
        bgr = cv2.cvtColor(f, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(folder / "frames" / f"{i:05d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(folder / "gt" / f"{i:05d}.png"), m * 255)


def test_cli_track_then_eval_vos(clip, tmp_path, capsys):
    frames, masks, _ = clip
    write_clip(tmp_path, frames, masks)
    out = tmp_path / "pred"
    rc = main(["track", "--frames", str(tmp_path / "frames"), "--init-mask", str(tmp_path / "gt" / "00000.png"),
               "--out", str(out), "--tracker", "flow"])
    assert rc == 0
    assert "fps" in capsys.readouterr().out
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"{i:05d}.png" for i in range(len(frames))]
    values = np.unique(cv2.imread(str(out / "00005.png"), cv2.IMREAD_UNCHANGED))
    assert set(values.tolist()) <= {0, 255}
    scores = tmp_path / "scores.json"
    assert main(["eval-vos", "--pred", str(out), "--gt", str(tmp_path / "gt"), "--json", str(scores)]) == 0
    report = json.loads(scores.read_text())
    assert report["sequences"]["gt"]["n_frames"] == len(frames) - 1
    assert report["mean"]["J"] >= 0.95 and report["mean"]["J&F"] >= 0.95  # measured 1.0 (JPEG frames)


def test_cli_track_errors(clip, tmp_path, capsys):
    frames, masks, _ = clip
    write_clip(tmp_path, frames[:3], masks[:3])
    args = ["track", "--frames", str(tmp_path / "frames"), "--out", str(tmp_path / "pred")]
    assert main(args + ["--init-mask", str(tmp_path / "gt" / "00000.png"), "--tracker", "xmem"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    cv2.imwrite(str(bad), (masks[0] * 1 + np.roll(masks[0], 70, axis=1) * 2).astype(np.uint8))
    assert main(args + ["--init-mask", str(bad)]) == 2
    assert "non-binary" in capsys.readouterr().err
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), masks[0][:60] * 255)
    assert main(args + ["--init-mask", str(small)]) == 2
    assert "first frame" in capsys.readouterr().err
    missing = tmp_path / "gt" / "none"
    assert main(["track", "--frames", str(missing), "--init-mask", str(small), "--out", str(tmp_path / "p")]) == 2
    assert "image folder not found" in capsys.readouterr().err
