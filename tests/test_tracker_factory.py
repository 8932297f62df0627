"""Tracker factories: fresh trackers sharing one feature cache, for both tracker kinds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visa_edge.runtime.errors import InputError
from visa_edge.runtime.tracking.factory import tracker_factory
from visa_edge.runtime.tracking.flow import FlowTracker
from visa_edge.runtime.tracking.xmem import XMemConfig, XMemModel, XMemTracker, xmem_torch_engines


def square_clip(n: int, h: int = 48, w: int = 64, seed: int = 0):
    """A red square moving over fixed noise: RGB uint8 frames and 0/1 masks."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    frames, masks = [], []
    for t in range(n):
        frame, mask = background.copy(), np.zeros((h, w), np.uint8)
        frame[8 + t : 24 + t, 8 + 2 * t : 24 + 2 * t] = (230, 40, 40)
        mask[8 + t : 24 + t, 8 + 2 * t : 24 + 2 * t] = 1
        frames.append(frame)
        masks.append(mask)
    return frames, masks


def test_flow_factory_gives_fresh_trackers_sharing_its_cache():
    factory = tracker_factory("flow")
    a, b = factory(), factory()
    assert isinstance(a, FlowTracker) and a is not b
    assert a.cache is factory.cache and b.cache is factory.cache


def test_xmem_factory_shares_key_features_between_its_trackers():
    torch.manual_seed(0)
    small = XMemConfig(shorter_side=None)  # 48x64 frames as they are: a test in seconds
    factory = tracker_factory("xmem", engines=xmem_torch_engines(XMemModel().eval()), config=small)
    frames, masks = square_clip(6)
    live = factory()
    assert isinstance(live, XMemTracker) and live.cache is factory.cache and live.config is small
    live.step(frames[0], masks[0], index=0)
    for i in range(1, 6):
        live.step(frames[i], index=i)
    misses = factory.cache.misses
    catch_up = factory()
    catch_up.anchor(frames[2], masks[2], index=2)
    for i in range(3, 6):
        catch_up.step(frames[i], index=i)
    assert factory.cache.misses == misses  # every frame's key features were computed by the live tracker
    assert factory.cache.hits == 4


def test_unknown_kind_and_xmem_without_weights_are_clear_errors():
    with pytest.raises(InputError, match="expected one of"):
        tracker_factory("sam2")
    with pytest.raises(InputError, match="needs --xmem"):
        tracker_factory("xmem")
