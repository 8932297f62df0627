"""XMem tracker behaviour without the golden fixtures: bounded memory, bad input, loader errors,
the NaN guard of the top-k softmax, the network signatures and the confidence signal.

Uses a seeded default-initialised network on small frames (48x64 -> 12 memory elements per
frame) so every test runs in seconds.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from visa_edge.runtime.errors import CheckpointError, InputError
from visa_edge.runtime.tracking.base import Tracker
from visa_edge.runtime.tracking.cache import FeatureCache
from visa_edge.runtime.tracking.xmem import (
    XMEM_NETWORKS,
    XMemConfig,
    XMemMemory,
    XMemModel,
    XMemTracker,
    load_xmem,
    soft_iou_confidence,
    xmem_from_state_dict,
    xmem_torch_engines,
)
from visa_edge.runtime.tracking.xmem import image_ops as xframes
from visa_edge.runtime.tracking.xmem.memory import similarity, topk_softmax

H, W = 48, 64
HW = (H // 16) * (W // 16)
SMALL = dict(
    shorter_side=None, mem_every=1, min_mid_term_frames=2, max_mid_term_frames=3, num_prototypes=4, max_long_term_elements=10
)


@pytest.fixture(scope="module")
def model() -> XMemModel:
    torch.manual_seed(0)
    return XMemModel().eval()


@pytest.fixture(scope="module")
def engines(model):
    return xmem_torch_engines(model)


def clip(n: int, height: int = H, width: int = W, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A square moving over a fixed noise background: frames RGB uint8 and masks 0/1."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    frames, masks = [], []
    for t in range(n):
        frame, mask = background.copy(), np.zeros((height, width), np.uint8)
        r, c = 8 + t % 8, 8 + (2 * t) % 24
        frame[r : r + 16, c : c + 16] = (230, 40, 40)
        mask[r : r + 16, c : c + 16] = 1
        frames.append(frame)
        masks.append(mask)
    return frames, masks


# --- bounded memory -----------------------------------------------------------------------------


def test_memory_stays_bounded_over_a_long_sequence(engines):
    cfg = XMemConfig(**SMALL)
    tracker = XMemTracker(engines, cfg)
    assert isinstance(tracker, Tracker)
    frames, masks = clip(40)
    wm, lt = [], []
    for t, frame in enumerate(frames):
        out = tracker.step(frame, masks[0] if t == 0 else None)
        assert out.prob.shape == (H, W) and out.prob.dtype == np.float32
        assert np.isfinite(out.prob).all() and out.prob.min() >= 0 and out.prob.max() <= 1
        assert 0.0 <= out.confidence <= 1.0
        wm.append(tracker.memory.working.size)
        lt.append(tracker.memory.long_term.size)
    # every frame is a memory frame; from the 3rd on, consolidation keeps the first + newest frame
    assert wm == [HW] + [2 * HW] * 39
    # 4 prototypes per consolidation; at >= 6 elements the least used are evicted down to 6
    assert lt[:5] == [0, 0, 4, 8, 10] and set(lt[4:]) == {10}
    removal = tracker.memory.last_removal
    assert (removal.size_before, removal.target, removal.size_after) == (10, 6, 6)
    assert tracker.memory.last_consolidation.indices.numel() == 4
    assert tracker.memory.hidden.shape == (1, 64, H // 16, W // 16)


def test_long_term_without_usage_counts_evicts_the_oldest(engines):
    cfg = XMemConfig(**SMALL, enable_long_term_count_usage=False)
    tracker = XMemTracker(engines, cfg)
    frames, masks = clip(8)
    for t, frame in enumerate(frames):
        before = None if tracker.memory.long_term.key is None else tracker.memory.long_term.key.clone()
        tracker.step(frame, masks[0] if t == 0 else None)
        lt = tracker.memory.long_term
        if t >= 4:  # 8 or 10 elements before: the 2 or 4 oldest go, then 4 prototypes are appended
            removal = tracker.memory.last_removal
            assert removal.usage_before is None and removal.size_after == 6
            torch.testing.assert_close(lt.key[:, :6], before[:, -6:], rtol=0, atol=0)
        assert lt.size <= 10


def test_working_memory_bounded_with_long_term_off(engines):
    tracker = XMemTracker(engines, XMemConfig(**{**SMALL, "enable_long_term": False}))
    frames, masks = clip(10)
    tracker.step(frames[0], masks[0])
    first_keys = tracker.memory.working.key.clone()
    for frame in frames[1:]:
        tracker.step(frame)
        assert tracker.memory.working.size <= 3 * HW
        assert tracker.memory.long_term.size == 0
    assert tracker.memory.working.size == 3 * HW
    torch.testing.assert_close(tracker.memory.working.key[:, :HW], first_keys, rtol=0, atol=0)


# --- softmax guard ------------------------------------------------------------------------------


def test_topk_softmax_keeps_raw_exp_and_replaces_nan():
    sim = torch.tensor([[-1.0, -90.0, -200.0], [-2.0, -95.0, -210.0], [-3.0, -99.0, -220.0], [-50.0, -300.0, -300.0]])
    weights, indices = topk_softmax(sim, 3)
    top = sim[:3]
    # columns 0 and 1: the original's raw exp / sum (column 1 is subnormal, not max-subtracted)
    for j in (0, 1):
        assert torch.equal(weights[:, j], top[:, j].exp() / top[:, j].exp().sum())
    assert not torch.equal(weights[:, 1], torch.softmax(top[:, 1], 0))
    # column 2: all exps underflow; the original gives 0/0 = NaN, here the stable softmax
    assert top[:, 2].exp().sum() == 0
    torch.testing.assert_close(weights[:, 2], torch.softmax(top[:, 2], 0))
    assert torch.isfinite(weights).all()
    assert indices[:, 0].tolist() == [0, 1, 2]


def test_memory_readout_finite_when_every_similarity_underflows():
    mem = XMemMemory(XMemConfig(top_k=30))
    key = torch.zeros(1, 64, 2, 2)
    value = torch.arange(4 * 512, dtype=torch.float32).view(1, 512, 2, 2)
    mem.add(key, torch.ones(1, 1, 2, 2), torch.ones(1, 64, 2, 2), value)
    query = torch.full((1, 64, 2, 2), 10.0)
    assert similarity(mem.working.key, mem.working.shrinkage, query[0].flatten(1), torch.ones(64, 4)).max() == -800
    readout = mem.read(query, torch.ones(1, 64, 2, 2))
    expected = value.flatten(2).mean(2)[:, :, None, None].expand(1, 512, 2, 2)
    torch.testing.assert_close(readout, expected)
    # usage: every element got a quarter of each of the 4 queries; life is 1 read (+1e-7)
    torch.testing.assert_close(mem.working.usage(), torch.full((4,), 1.0 / (1 + 1e-7)))


# --- bad input ----------------------------------------------------------------------------------


def test_no_reference_and_empty_reference_give_empty_maps(engines):
    tracker = XMemTracker(engines, XMemConfig(**SMALL))
    frames, masks = clip(4)
    out = tracker.step(frames[0])
    assert out.confidence == 0.0 and not out.prob.any() and out.prob.shape == (H, W)
    out = tracker.step(frames[0], np.zeros((H, W), np.uint8))
    assert out.confidence == 0.0 and not out.prob.any() and tracker.memory.size == 0
    out = tracker.step(frames[1])
    assert out.confidence == 0.0 and not out.prob.any() and tracker.memory.size == 0
    out = tracker.step(frames[2], masks[2])
    assert out.confidence == pytest.approx(1.0, abs=1e-6) and tracker.memory.working.size == HW
    np.testing.assert_array_equal(out.mask, masks[2])
    out = tracker.step(frames[3])
    assert np.isfinite(out.prob).all() and tracker.memory.size > 0
    # an empty reference mid-sequence: the object is gone; memory cleared, empty maps follow
    out = tracker.step(frames[3], np.zeros((H, W), bool))
    assert out.confidence == 0.0 and not out.prob.any() and tracker.memory.size == 0 and tracker.session is None


def test_frame_of_another_size_is_resized_with_a_warning(engines):
    tracker = XMemTracker(engines, XMemConfig(**SMALL))
    frames, masks = clip(2)
    tracker.step(frames[0], masks[0])
    other, _ = clip(1, height=60, width=100, seed=1)
    with pytest.warns(RuntimeWarning, match="resized"):
        out = tracker.step(other[0])
    assert out.prob.shape == (60, 100) and np.isfinite(out.prob).all()
    assert tracker.resized_frames == 1
    assert tracker.memory.working.size == 2 * HW  # written at the session's size
    assert tracker.step(frames[1]).prob.shape == (H, W) and tracker.resized_frames == 1


@pytest.mark.parametrize(
    "frame, mask, message",
    [
        (np.zeros((H, W, 3), np.float32), None, "RGB uint8"),
        (np.zeros((H, W), np.uint8), None, "RGB uint8"),
        ([[0]], None, "RGB uint8"),
        (np.zeros((H, W, 3), np.uint8), np.ones((H, W + 1), np.uint8), "like its frame"),
        (np.zeros((H, W, 3), np.uint8), np.ones((H, W, 1), np.uint8), "like its frame"),
    ],
)
def test_malformed_input_is_an_input_error(engines, frame, mask, message):
    with pytest.raises(InputError, match=message):
        XMemTracker(engines, XMemConfig(**SMALL)).step(frame, mask)


def test_missing_or_mismatched_engines_and_bad_config(engines):
    partial = {k: v for k, v in engines.items() if k != "xmem_decoder"}
    with pytest.raises(InputError, match=r"missing engine\(s\) \['xmem_decoder'\]"):
        XMemTracker(partial)
    wrong = dict(engines, xmem_decoder=engines["xmem_value_encoder"])
    with pytest.raises(InputError, match="engine 'xmem_decoder' has inputs"):
        XMemTracker(wrong)
    before_skips = SimpleNamespace(name="xmem_decoder", input_names=("f16", "f8", "f4", "readout", "hidden"),
                                   output_names=("logits", "hidden_out"))  # exported before xmem_skips existed
    with pytest.raises(InputError, match=r"expected inputs \('f16', 's8', 's4'.*export them again"):
        XMemTracker(dict(engines, xmem_decoder=before_skips))
    with pytest.raises(InputError, match="max_mid_term_frames"):
        XMemConfig(min_mid_term_frames=5, max_mid_term_frames=5)
    with pytest.raises(InputError, match="max_long_term_elements"):
        XMemConfig(num_prototypes=128, max_long_term_elements=100)


# --- schedule, anchor, geometry, confidence -----------------------------------------------------


def test_anchor_restarts_and_end_frame_writes_nothing(engines):
    tracker = XMemTracker(engines, XMemConfig(**{**SMALL, "mem_every": 2}))
    frames, masks = clip(6)
    tracker.step(frames[0], masks[0])
    for frame in frames[1:4]:
        tracker.step(frame)
    assert tracker.memory.working.size == 2 * HW and tracker.session.t == 3
    out = tracker.anchor(frames[4], masks[4])
    assert tracker.memory.working.size == HW and tracker.memory.long_term.size == 0 and tracker.session.t == 0
    np.testing.assert_array_equal(out.mask, masks[4])
    hidden = tracker.memory.hidden.clone()
    tracker.step(frames[5], end=True)  # t - last_mem = 1 < 2 anyway; end also skips the hidden update
    assert tracker.memory.working.size == HW
    torch.testing.assert_close(tracker.memory.hidden, hidden, rtol=0, atol=0)
    tracker.session.t = 1  # a would-be memory frame marked as the end is not written either
    tracker.step(frames[5], end=True)
    assert tracker.memory.working.size == HW


def test_mid_sequence_reference_is_added_to_memory(engines):
    tracker = XMemTracker(engines, XMemConfig(**{**SMALL, "mem_every": 5}))
    frames, masks = clip(3)
    tracker.step(frames[0], masks[0])
    tracker.step(frames[1])
    assert tracker.memory.working.size == HW
    out = tracker.step(frames[2], masks[2])
    assert tracker.memory.working.size == 2 * HW
    np.testing.assert_array_equal(out.mask, masks[2])


def test_resize_pipeline_geometry(engines):
    assert xframes.processing_size(1080, 1920, 480) == (480, 853)
    assert xframes.processing_size(1920, 1080, 480) == (853, 480)
    assert xframes.processing_size(40, 72, None) == (40, 72)
    assert xframes.pad_amounts(480, 853) == (5, 6, 0, 0)
    tracker = XMemTracker(engines, XMemConfig(**{**SMALL, "shorter_side": 32}))
    frames, masks = clip(2, height=40, width=72)
    assert tracker.step(frames[0], masks[0]).prob.shape == (40, 72)
    assert tracker.session.size == (32, 57) and tracker.session.pads == (3, 4, 0, 0)
    assert tracker.memory.working.size == 2 * 4  # (32 x 64) / 16
    assert tracker.step(frames[1]).prob.shape == (40, 72)


def test_soft_iou_confidence_values():
    assert soft_iou_confidence(torch.zeros(4, 4)) == 0.0
    crisp = torch.zeros(4, 4)
    crisp[:2] = 1
    assert soft_iou_confidence(crisp) == 1.0
    soft = torch.tensor([0.75] * 4 + [0.25] * 4)
    assert soft_iou_confidence(soft) == pytest.approx(3 / 5)
    assert soft_iou_confidence(torch.full((4,), 0.4)) == 0.0


# --- networks -----------------------------------------------------------------------------------


def test_networks_signatures_with_two_objects(engines):
    assert set(engines) == set(XMEM_NETWORKS) == {"xmem_key_encoder", "xmem_value_encoder", "xmem_skips", "xmem_decoder"}
    for name, engine in engines.items():
        assert engine.input_names == XMEM_NETWORKS[name].inputs and engine.output_names == XMEM_NETWORKS[name].outputs
    h, w = H // 16, W // 16
    enc = engines["xmem_key_encoder"].run({"image": torch.randn(1, 3, H, W)})
    shapes = {k: tuple(v.shape) for k, v in enc.items()}
    assert shapes == {
        "key": (1, 64, h, w), "shrinkage": (1, 1, h, w), "selection": (1, 64, h, w),
        "f16": (1, 1024, h, w), "f8": (1, 512, 2 * h, 2 * w), "f4": (1, 256, 4 * h, 4 * w),
    }  # fmt: skip
    assert enc["shrinkage"].min() >= 1 and 0 < enc["selection"].min() and enc["selection"].max() < 1
    masks = torch.rand(2, 1, H, W)
    hidden = torch.randn(2, 64, h, w)
    val = engines["xmem_value_encoder"].run(
        {"image": torch.randn(1, 3, H, W), "mask": masks, "others": masks.flip(0), "f16": enc["f16"], "hidden": hidden}
    )
    assert val["value"].shape == (2, 512, h, w) and val["hidden_out"].shape == (2, 64, h, w)
    skips = engines["xmem_skips"].run({"f8": enc["f8"], "f4": enc["f4"]})
    assert skips["s8"].shape == (1, 512, 2 * h, 2 * w) and skips["s4"].shape == (1, 256, 4 * h, 4 * w)
    dec = engines["xmem_decoder"].run({"f16": enc["f16"], **skips, "readout": val["value"], "hidden": hidden})
    assert dec["logits"].shape == (2, 1, 4 * h, 4 * w) and dec["hidden_out"].shape == (2, 64, h, w)
    assert dec["hidden_out"].abs().max() <= 1 + hidden.abs().max()  # h' = f*h*(1-u) + u*n is bounded


# --- checkpoint loading -------------------------------------------------------------------------


def test_state_dict_key_errors_are_specific(model):
    sd = model.state_dict()
    missing = {k: v for k, v in sd.items() if k != "decoder.pred.bias"}
    with pytest.raises(CheckpointError, match=r"XMem.pth: .*missing keys \(1\): decoder.pred.bias$"):
        xmem_from_state_dict(missing, "XMem.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): extra.weight$"):
        xmem_from_state_dict({**sd, "extra.weight": torch.zeros(1)}, "XMem.pth")
    single_object = dict(sd, **{"value_encoder.conv1.weight": torch.zeros(64, 4, 7, 7)})
    mismatch = r"shape mismatch \(1\): value_encoder.conv1.weight: checkpoint \(64, 4, 7, 7\) vs model \(64, 5, 7, 7\)"
    with pytest.raises(CheckpointError, match=mismatch):
        xmem_from_state_dict(single_object, "XMem.pth")


def test_checkpoint_file_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_xmem(tmp_path / "XMem.pth")
    (tmp_path / "XMem.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint type '.ckpt'"):
        load_xmem(tmp_path / "XMem.ckpt")
    (tmp_path / "broken.pth").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="broken.pth: could not be read"):
        load_xmem(tmp_path / "broken.pth")
    torch.save({"key_proj.key_proj.weight": torch.zeros(64, 1024, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"partial.pth: .*missing keys \(411\)"):
        load_xmem(tmp_path / "partial.pth")


def test_safetensors_round_trip_and_from_checkpoint(model, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "XMem.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_xmem(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    frames, masks = clip(2)
    tracker = XMemTracker.from_checkpoint(path, XMemConfig(**SMALL))
    reference = XMemTracker(xmem_torch_engines(model), XMemConfig(**SMALL))
    for t in range(2):
        mask = masks[0] if t == 0 else None
        np.testing.assert_array_equal(tracker.step(frames[t], mask).prob, reference.step(frames[t], mask).prob)
    # engines given for every network: the checkpoint is not read at all
    assert XMemTracker.from_checkpoint(tmp_path / "absent.pth", engines=xmem_torch_engines(model)).memory.size == 0


# --- shared feature cache and several objects ---------------------------------------------------


class CountingEngine:
    """An engine that counts its calls."""

    def __init__(self, engine):
        self.engine, self.calls = engine, 0
        self.name, self.input_names, self.output_names = engine.name, engine.input_names, engine.output_names

    def run(self, inputs):
        self.calls += 1
        return self.engine.run(inputs)


def test_catch_up_with_cached_key_features_equals_stepping_every_frame(engines):
    """A catch-up tracker re-anchored on frame 2 re-steps frames 3..7 from the cache: same outputs, bit for bit.
    The per-frame networks (key encoder, the decoder's skip convs) run once per frame, not per tracker."""
    cache = FeatureCache(max_frames=16)
    frames, masks = clip(8)
    counted = {name: CountingEngine(engines[name]) for name in ("xmem_key_encoder", "xmem_skips")}
    engines = {**engines, **counted}
    live = XMemTracker(engines, XMemConfig(**SMALL), "cpu", cache)  # the 3-positional form + cache
    for t, frame in enumerate(frames):
        live.step(frame, masks[0] if t == 0 else None, index=t)
    assert (cache.hits, cache.misses, len(cache)) == (0, 8, 8)
    assert [e.calls for e in counted.values()] == [8, 8]

    def catch_up(tracker: XMemTracker) -> list:
        outs = [tracker.anchor(frames[2], masks[2], index=2)]
        return outs + [tracker.step(frame, index=t) for t, frame in enumerate(frames[3:], 3)]

    cached, computed = XMemTracker(engines, XMemConfig(**SMALL), cache=cache), XMemTracker(engines, XMemConfig(**SMALL))
    cached_outs = catch_up(cached)
    assert (cache.hits, cache.misses) == (6, 8)  # frames 2..7 came from the cache
    assert [e.calls for e in counted.values()] == [8, 8]  # the catch-up ran neither per-frame network
    computed_outs = catch_up(computed)
    assert (cache.hits, cache.misses) == (6, 8)  # a tracker without the cache computes everything
    for a, b in zip(cached_outs, computed_outs):
        np.testing.assert_array_equal(a.prob, b.prob)
        assert a.confidence == b.confidence
    torch.testing.assert_close(cached.memory.hidden, computed.memory.hidden, rtol=0, atol=0)
    torch.testing.assert_close(cached.memory.long_term.key, computed.memory.long_term.key, rtol=0, atol=0)


def labelled_clip(n: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The moving square split into objects 1 (left half) and 2 (right half), plus object 3 (a fixed patch) for frame 3."""
    frames, masks = clip(n)
    labels = masks[0].astype(np.uint8)
    cols = np.nonzero(masks[0].any(0))[0]
    labels[:, cols[len(cols) // 2] :] *= 2
    late = np.zeros((H, W), np.uint8)
    late[32:44, 44:60] = 3
    return frames, labels, late


def test_several_objects_groups_hidden_states_and_outputs(engines):
    frames, labels, late = labelled_clip(8)
    tracker = XMemTracker(engines, XMemConfig(**{**SMALL, "mem_every": 2}))
    out = tracker.step(frames[0], labels)
    assert out.objects == (1, 2) and out.object_probs.shape == (2, H, W) and out.object_confidences == pytest.approx((1, 1), abs=1e-6)
    np.testing.assert_array_equal(out.labels, labels)
    assert tracker.memory.groups == [2] and tracker.memory.hidden.shape[0] == 2
    out = tracker.step(frames[1])
    assert out.objects == (1, 2) and np.all(out.object_probs.sum(0) <= 1 + 1e-6)
    tracker.step(frames[2])
    out = tracker.step(frames[3], late)  # object 3 added: a new group; objects 1, 2 keep their predictions
    assert out.objects == (1, 2, 3) and tracker.memory.groups == [2, 1]
    assert [tracker.memory.working.value_size(g) for g in range(2)] == [2 * HW, HW]
    np.testing.assert_array_equal(out.object_mask(3), late == 3)
    assert out.object_probs[:2].max() > 0.05  # not a paste over an empty map
    assert tracker.memory.hidden.shape[0] == 3
    for t in range(4, 8):
        out = tracker.step(frames[t])
        assert out.objects == (1, 2, 3) and np.isfinite(out.object_probs).all()
        assert tracker.memory.working.value_size(1) <= tracker.memory.working.size
    assert len(out.object_confidences) == 3 and all(0 <= c <= 1 for c in out.object_confidences)
    # consolidations after frame 3 give the new group prototypes too; group 0 covers every element
    lt = tracker.memory.long_term
    assert lt.value_size(0) == lt.size and 0 < lt.value_size(1) < lt.size
    assert all(v.shape[1] == n * 512 for v, n in zip(lt.values, (2, 1)))


def test_single_object_label_image_matches_the_binary_mask(engines):
    """Object 1 given as a label image or a 0/1 bool mask: the same tracker; another id is carried through."""
    frames, masks = clip(3)
    a, b, c = (XMemTracker(engines, XMemConfig(**SMALL)) for _ in range(3))
    for t, frame in enumerate(frames):
        m = masks[0] if t == 0 else None
        oa = a.step(frame, m)
        ob = b.step(frame, None if m is None else m.astype(bool))
        oc = c.step(frame, None if m is None else m * 7)
        np.testing.assert_array_equal(oa.prob, ob.prob)
        np.testing.assert_array_equal(oa.prob, oc.prob)
        assert oa.objects == (1,) and oa.probs is None and oc.objects == (7,)
        np.testing.assert_array_equal(oc.labels, oa.mask * 7)


def test_bad_object_ids_are_input_errors(engines):
    frames, masks = clip(1)
    with pytest.raises(InputError, match=r"object ids \[300\]"):
        XMemTracker(engines, XMemConfig(**SMALL)).step(frames[0], masks[0].astype(np.int64) * 300)
