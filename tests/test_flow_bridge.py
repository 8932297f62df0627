"""The flow tracker's catch-up bridge: what it computes (counted) and how close its caught-up mask
comes to stepping every frame in full (IoU on synthetic clips)."""

from __future__ import annotations

import numpy as np
import pytest

from visa_edge.runtime.tracking.factory import tracker_factory
from visa_edge.runtime.tracking.flow import FlowTracker
from visa_edge.runtime.vos_metrics import jaccard

from .test_flow_tracker import texture

# IoU between the final mask of a catch-up that bridges every frame but the newest 3 (memory frames
# are full steps) and that of full steps on every frame, as measured. A camera pan (uniform flow) is
# bridged exactly; an object moving over a still background is not: DIS smooths the flow across the
# object's edge, the warped labels spill onto the background, and the later votes keep the spill
# (on the DAVIS sequences the bridge costs 0.003-0.005 J&F, benchmarks/RESULTS.md).
PAN_IOU = 0.99
MOVING_OBJECT_IOU = 0.65


def translating_clip(n: int, pan: int, move: int, h: int = 120, w: int = 160, seed: int = 0):
    """A reddish textured 40x50 box moving ``move`` px right per frame (and 1 px down when it moves)
    over green texture panning ``pan`` px left per frame: RGB uint8 frames and 0/1 masks."""
    rng = np.random.default_rng(seed)
    background = texture(rng, h, w + pan * n, 3, (30, 80, 30), (150, 210, 130))
    box = texture(rng, 40, 50, 2, (160, 30, 30), (250, 130, 100))
    frames, masks = [], []
    for i in range(n):
        frame, mask = background[:, pan * i : pan * i + w].copy(), np.zeros((h, w), np.uint8)
        y, x = 30 + (i if move else 0), 20 + max(pan - move, 0) * n + (move - pan) * i
        frame[y : y + 40, x : x + 50] = box
        mask[y : y + 40, x : x + 50] = 1
        frames.append(frame)
        masks.append(mask)
    return frames, masks


def catch_up(factory, frames, masks, full_steps: int | None):
    """A factory tracker anchored at frame 0 and brought to the last frame: bridged but for the newest
    ``full_steps`` frames (None: every frame a full step)."""
    tracker = factory()
    out = tracker.anchor(frames[0], masks[0], index=0)
    n = len(frames)
    for i in range(1, n):
        bridge = full_steps is not None and i < n - full_steps
        out = tracker.bridge(frames[i], index=i) if bridge else tracker.step(frames[i], index=i)
    return tracker, out


def precomputed(frames):
    factory = tracker_factory("flow")
    for i, frame in enumerate(frames):
        factory.precompute(frame, i)
    return factory


def test_a_bridge_reuses_cached_features_and_computes_no_anchor_dependent_flow():
    frames, masks = translating_clip(8, pan=2, move=3)
    factory = precomputed(frames)
    misses = factory.cache.misses
    assert misses == 8 + 7  # each frame's preparation and its flow to the previous frame
    tracker = factory()
    tracker.anchor(frames[0], masks[0], index=0)
    outs = [tracker.bridge(frames[i], index=i) for i in range(1, 5)]
    assert tracker.counts == {"bridge": 4}  # no flow to the reference or memory, no vote
    assert factory.cache.misses == misses and factory.cache.hits == 1 + 2 * 4  # features and flows reused
    assert [o.confidence for o in outs] == [1.0] * 4  # the last full step's (the anchor's)
    tracker.bridge(frames[5], index=5)  # joins the memory (every 5th frame): a full step
    assert tracker.counts == {"bridge": 4, "memory_flow": 1, "vote": 1}  # flow to the reference only
    stepped = factory()
    stepped.anchor(frames[0], masks[0], index=0)
    for i in range(1, 6):
        stepped.step(frames[i], index=i)
    assert stepped.counts == {"memory_flow": 4, "vote": 5}  # to the reference from frame 2 on (1's previous is it)
    assert factory.cache.misses == misses


@pytest.mark.parametrize(("pan", "move", "least_iou"), [(2, 0, PAN_IOU), (0, 3, MOVING_OBJECT_IOU)])
def test_a_bridged_catchup_ends_near_full_stepping(pan, move, least_iou):
    frames, masks = translating_clip(21, pan=pan, move=move)
    factory = precomputed(frames)
    bridged, out = catch_up(factory, frames, masks, full_steps=3)
    stepped, full = catch_up(factory, frames, masks, full_steps=None)
    assert jaccard(full.mask, masks[-1]) > 0.98  # full stepping tracks the box
    assert jaccard(out.mask, full.mask) >= least_iou
    assert bridged.counts["bridge"] == 14 and bridged.counts["vote"] == 6  # 3 memory frames + the newest 3
    assert stepped.counts["vote"] == 20
    assert (bridged.counts["memory_flow"], stepped.counts["memory_flow"]) == (15, 44)  # anchor-dependent DIS calls


def test_bridge_before_a_reference_and_with_an_empty_one_gives_empty_outputs():
    frames, _ = translating_clip(3, pan=2, move=3)
    tracker = FlowTracker()
    assert tracker.bridge(frames[0]).mask.sum() == 0 and tracker.bridge(frames[0]).confidence == 0.0
    tracker.anchor(frames[0], np.zeros(frames[0].shape[:2], np.uint8))
    out = tracker.bridge(frames[1])
    assert out.mask.sum() == 0 and out.confidence == 0.0 and tracker.counts["bridge"] == 0


def test_bridge_keeps_every_objects_label():
    frames, masks = translating_clip(6, pan=2, move=0)
    labels = masks[0].copy()
    labels[90:110, 100:140] = 7  # a second object: a background patch
    tracker = FlowTracker()
    tracker.anchor(frames[0], labels, index=None)
    out = tracker.bridge(frames[1])
    assert out.objects == (1, 7)
    assert jaccard(out.object_mask(7), np.roll(labels == 7, -2, axis=1)) > 0.9
    assert jaccard(out.object_mask(1), np.roll(labels == 1, -2, axis=1)) > 0.9
