"""The flow tracker with several objects (a label image) and its shared per-frame feature cache."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from visa_edge.runtime.errors import InputError
from visa_edge.runtime.tracking.cache import FeatureCache
from visa_edge.runtime.tracking.factory import tracker_factory
from visa_edge.runtime.tracking.flow import FlowTracker
from visa_edge.runtime.vos_metrics import jaccard

from .test_flow_tracker import synthetic_clip, texture


def two_object_clip(n: int = 12, h: int = 120, w: int = 160, seed: int = 1):
    """Label images with a reddish disc (id 1) moving right/down and a bluish disc (id 4) moving
    left/up over green texture; they never overlap."""
    rng = np.random.default_rng(seed)
    background = texture(rng, h, w, 4, (40, 90, 40), (140, 200, 120))
    red = texture(rng, h, w, 2, (170, 40, 40), (250, 120, 90))
    blue = texture(rng, h, w, 2, (30, 40, 170), (90, 120, 250))
    frames, labels = [], []
    for i in range(n):
        lab = np.zeros((h, w), np.uint8)
        cv2.circle(lab, (35 + 3 * i, 30 + 2 * i), 16, 1, -1)
        cv2.circle(lab, (125 - 3 * i, 95 - 2 * i), 14, 4, -1)
        f = background.copy()
        f[lab == 1] = red[lab == 1]
        f[lab == 4] = blue[lab == 4]
        frames.append(f)
        labels.append(lab)
    return frames, labels


@pytest.fixture(scope="module")
def two():
    return two_object_clip()


def test_tracks_two_objects_from_a_label_image(two):
    frames, labels = two
    tracker = FlowTracker()
    first = tracker.step(frames[0], labels[0])
    assert first.objects == (1, 4) and first.object_probs.shape == (2, *labels[0].shape)
    assert np.array_equal(first.labels, labels[0]) and first.object_confidences == (1.0, 1.0)
    for frame, lab in zip(frames[1:], labels[1:]):
        out = tracker.step(frame)
        assert out.objects == (1, 4) and out.probs.dtype == np.float32
        assert out.probs.sum(0).max() <= 1.0 + 1e-5  # the objects share each pixel's probability
        for obj in (1, 4):
            assert jaccard(out.object_mask(obj), lab == obj) >= 0.95  # measured 0.99-1.0
        assert min(out.object_confidences) >= 0.6  # measured 0.75-0.89
        assert np.array_equal(out.mask, out.object_mask(1))  # .mask is the first object's


def test_single_object_label_keeps_the_single_object_output(two):
    frames, labels = two
    only = (labels[0] == 4).astype(np.uint8) * 4
    tracker = FlowTracker()
    first = tracker.step(frames[0], only)
    assert first.objects == (4,) and first.probs is None and first.confidences is None
    out = tracker.step(frames[1])
    assert out.probs is None and jaccard(out.mask, labels[1] == 4) >= 0.95


def test_one_object_of_a_label_image_equals_its_binary_mask(two):
    """Object 1 tracked alone gives the same planes whether given as 0/1 or as label 1 of a label image."""
    frames, labels = two
    binary = (labels[0] == 1).astype(np.uint8)
    a, b = FlowTracker(), FlowTracker()
    a.step(frames[0], binary)
    b.step(frames[0], labels[0], objects=(1,))
    for frame in frames[1:6]:
        assert np.array_equal(a.step(frame).prob, b.step(frame).prob)


def test_objects_absent_from_a_new_reference_keep_their_prediction(two):
    frames, labels = two
    tracker = FlowTracker()
    tracker.step(frames[0], labels[0])
    for frame in frames[1:5]:
        tracker.step(frame)
    only_4 = np.where(labels[5] == 4, 4, 0).astype(np.uint8)
    out = tracker.step(frames[5], only_4, objects=(4,))
    assert out.objects == (4, 1)  # the given object first, then the kept one
    assert np.array_equal(out.object_mask(4), (labels[5] == 4).astype(np.uint8))
    assert jaccard(out.object_mask(1), labels[5] == 1) >= 0.95  # measured 0.99: predicted, not forgotten
    later = tracker.step(frames[6])
    for obj in (1, 4):
        assert jaccard(later.object_mask(obj), labels[6] == obj) >= 0.95


def test_labels_out_of_range_are_clear_errors(two):
    frames, labels = two
    with pytest.raises(InputError, match="expected object ids 0..255"):
        FlowTracker().step(frames[0], labels[0].astype(np.int32) * 100)


def test_factory_trackers_share_one_cache():
    factory = tracker_factory("flow")
    a, b = factory(), factory()
    assert isinstance(factory.cache, FeatureCache) and a.cache is factory.cache and b.cache is factory.cache


def test_catch_up_reuses_the_live_features_and_equals_full_computation():
    """A catch-up tracker anchored at frame 3 re-steps frames 4..11 after the live tracker stepped
    them: every frame's preparation and flow to the previous frame come from the cache, and its
    output equals that of a tracker computing everything itself."""
    frames, masks, _ = synthetic_clip()
    factory = tracker_factory("flow")
    live = factory()
    live.step(frames[0], masks[0], index=0)
    for i in range(1, len(frames)):
        live.step(frames[i], index=i)
    assert factory.cache.hits == 0 and factory.cache.misses == 2 * len(frames) - 1

    catch_up, alone = factory(), FlowTracker()
    got = [catch_up.anchor(frames[3], masks[3], index=3)]
    want = [alone.anchor(frames[3], masks[3])]
    for i in range(4, len(frames)):
        got.append(catch_up.step(frames[i], index=i))
        want.append(alone.step(frames[i]))
    assert factory.cache.hits == 1 + 2 * (len(frames) - 4)  # anchor: preparation; then preparation + flow
    assert factory.cache.misses == 2 * len(frames) - 1  # nothing recomputed
    for g, w in zip(got, want):
        assert np.array_equal(g.prob, w.prob) and g.confidence == w.confidence


def test_subsampled_catch_up_computes_the_flows_it_lacks():
    """Stepping every 2nd frame needs flows between frames 2 apart: computed, not taken from the
    consecutive ones; the frames' preparations are still reused."""
    frames, masks, _ = synthetic_clip()
    factory = tracker_factory("flow")
    live = factory()
    live.step(frames[0], masks[0], index=0)
    for i in range(1, 9):
        live.step(frames[i], index=i)
    misses = factory.cache.misses
    skipper, alone = factory(), FlowTracker()
    skipper.step(frames[0], masks[0], index=0)
    alone.step(frames[0], masks[0])
    for i in (2, 4, 6, 8):
        assert np.array_equal(skipper.step(frames[i], index=i).prob, alone.step(frames[i]).prob)
    assert factory.cache.misses == misses + 4  # one flow per step; preparations were hits
    assert factory.cache.hits == 1 + 4


def test_bounded_cache_evicts_old_frames():
    frames, masks, _ = synthetic_clip()
    tracker = FlowTracker(cache=FeatureCache(max_frames=3))
    tracker.step(frames[0], masks[0], index=0)
    for i in range(1, len(frames)):
        tracker.step(frames[i], index=i)
    assert len(tracker.cache) == 3


def test_six_objects_each_keep_their_own_label():
    """More objects than an image has channels (OpenCV warps planes as channels)."""
    rng = np.random.default_rng(2)
    h, w = 120, 160
    background = texture(rng, h, w, 4, (40, 90, 40), (140, 200, 120))
    colours = [((170, 40, 40), (250, 120, 90)), ((30, 40, 170), (90, 120, 250)), ((200, 200, 40), (250, 250, 120)),
               ((120, 40, 160), (180, 90, 220)), ((40, 170, 170), (110, 240, 240)), ((230, 230, 230), (255, 255, 255))]
    textures = [texture(rng, h, w, 2, lo, hi) for lo, hi in colours]
    tracker = FlowTracker()
    for i in range(8):
        labels = np.zeros((h, w), np.uint8)
        for k in range(6):
            cv2.circle(labels, (25 + 50 * (k % 3) + 2 * i, 30 + 60 * (k // 3) + (i if k % 2 else -i) // 2), 11, k + 1, -1)
        frame = background.copy()
        for k in range(6):
            frame[labels == k + 1] = textures[k][labels == k + 1]
        out = tracker.step(frame, labels if i == 0 else None)
    assert out.objects == (1, 2, 3, 4, 5, 6) and out.probs.shape == (6, h, w)
    for k in range(1, 7):
        assert jaccard(out.object_mask(k), labels == k) >= 0.95  # measured 1.0 for each
    assert min(out.object_confidences) >= 0.6  # measured 0.81-0.99
