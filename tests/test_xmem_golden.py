"""Parity of XMemTracker with the original XMem code (../shared/golden/xmem, README §6 tolerances).

Each golden sequence (``main``: eval.py defaults; ``long_term``: shrunk limits so that
consolidation and eviction run) is tracked once per module through recording engines, and
many checks read the recorded tensors. The main run loads a ``.pth``, the long-term run a
``.safetensors`` file, both written from ``make_weights.py``.

Measured (CPU float32, 2 threads, torch 2.13) on the fixture's Intel AVX-512 Xeon and, where the
kernels round differently, on an AMD EPYC (the long-term run's figures in brackets), against the
asserted tolerances:

| tensor | measured max-abs | asserted |
| --- | --- | --- |
| key / shrinkage / selection | 0 (bit-exact) [EPYC: 7.1e-5 / 1.4e-4 / 2.2e-6] | 1e-4 + 1e-4 rel |
| f4 / f8 windows of frame 1; f16 of frame 1 cast to float16 | 0 (bit-exact) | 1e-4 + 1e-4 rel (f16: 1e-3 rel) |
| f16 / f8 / f4 per-channel mean/std, every frame | 9e-15 | 1e-4 + 1e-4 rel |
| pred logits (1/4 grid) | 3.4e-6 | 1e-2 |
| hidden state after each step | 5.7e-6 | 1e-2 |
| values, readouts (fixtures stored as float16) | 1.96e-3 = float16 rounding, every position | 1e-2 where top-k margin > 1e-4 |
| prob_fg | max 1.4e-6, per-frame mean 1.5e-7 | max 1e-2, mean 1e-4 |
| masks | identical but 1 pixel (main frame 6); IoU >= 0.99998 | IoU >= 0.999, <= 100 px |
| prototype sets / ranking order | exact / exact [EPYC: sets equal; order differs at 0, 2, 11, 0 of 128 positions] | >= 124 of 128 common, the others at a usage near-tie (0.05) of the cut / ranked by own usage |
| prototype keys / shrinkage / values, matched by candidate index | exact / 4.5e-6 / 4.8e-6 [EPYC: 5.4e-5 / 1.7e-5 / 2.6e-4] | 1e-4 + 1e-4 rel / 1e-4 / 1e-2 |
| candidate usage (1620 per consolidation) | 1.9e-6 [EPYC: 3-7 elements 2e-3 to 0.016, the rest <= 7e-5] | <= 20 elements above 1e-4, all <= 0.05 |
| LT usage before eviction, elements matched by identity | 1.8e-5 [EPYC: 3 / 5 elements 1.8e-3 to 0.014, the rest <= 3.7e-5] | as candidate usage |
| memory sizes, schedule (which engines run) | exact | exact |

Usage and prototypes: keys are not bit-exact across CPUs (the fixture README's section 6 says that rounding alone
changes readouts at top-k near-ties), and a near-tie resolved the other way moves one softmax weight
(median 0.022 for the 30th) from one element to another, so a few usages differ by ~1e-2 and
prototypes of nearly equal usage may swap rank. The prototype *set* only changes when such an
element sits at the 128th-usage cut (gaps 2e-3 to 8e-3 here). Long-term elements are compared by
identity (consolidation frame, candidate index), since their order follows the ranking.

Run time: two 12-frame full-size runs, each run once per session; the key-encoder outputs of
the frames come from one cache shared with tests/test_xmem_multi_golden.py (xmem_golden_support).
Under xdist the main run and the long-term run go to different workers (`unit_of` in conftest.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from .xmem_golden_support import recording_tracker
from .xmem_golden_support import checkpoints as golden_checkpoints
from .xmem_golden_support import load_make_weights, video as golden_video, weights as golden_weights

from .conftest import max_abs
from visa_edge.runtime.tracking.xmem import XMemConfig, soft_iou_confidence
from visa_edge.runtime.tracking.xmem import image_ops as xframes
from visa_edge.runtime.tracking.xmem.memory import Consolidation, Removal

N_FRAMES = 12
# a golden run (set up by the first test that needs it) takes minutes on a loaded 2-core machine
pytestmark = pytest.mark.timeout(1200)
ENCODER_TOL = dict(atol=1e-4, rtol=1e-4)
MARGIN = 1e-4
# Usage = affinity mass an element received / reads. A top-k near-tie (README 6) that another CPU
# resolves differently moves one weight (median 0.022 for the 30th) between two elements.
USAGE_SWAP_BOUND = 0.05
USAGE_SWAP_ELEMENTS = 20
PROTO_SWAPS = 4  # prototypes that may differ from the fixture's, each at a usage near-tie at the cut


@pytest.fixture(scope="module")
def make_weights(golden_xmem):
    return load_make_weights(golden_xmem)


@pytest.fixture(scope="module")
def weights(golden_xmem) -> dict[str, np.ndarray]:
    return golden_weights(golden_xmem)


@pytest.fixture(scope="module")
def checkpoints(golden_xmem) -> dict[str, Path]:
    """The generated weights as the official .pth layout and as .safetensors."""
    return golden_checkpoints(golden_xmem)


@pytest.fixture(scope="module")
def video(golden_xmem) -> tuple[np.ndarray, ...]:
    return golden_video(golden_xmem, N_FRAMES)


@pytest.fixture(scope="module")
def inputs(golden_xmem):
    return np.load(golden_xmem / "inputs.npz")


def golden_config(golden_xmem: Path, run: str) -> XMemConfig:
    """XMemConfig from configs.json, count-usage set by the original's video-length rule."""
    c = json.loads((golden_xmem / "configs.json").read_text())[run]
    cfg = XMemConfig(
        shorter_side=c["size"],
        mem_every=c["mem_every"],
        top_k=c["top_k"],
        deep_update_every=c["deep_update_every"],
        enable_long_term=c["enable_long_term"],
        min_mid_term_frames=c["min_mid_term_frames"],
        max_mid_term_frames=c["max_mid_term_frames"],
        num_prototypes=c["num_prototypes"],
        max_long_term_elements=c["max_long_term_elements"],
    )
    return replace(cfg, enable_long_term_count_usage=cfg.original_count_usage(N_FRAMES))


@dataclass
class RunRecord:
    """What a golden run produced, frame by frame (engine calls reduced to what the checks need)."""

    probs: list[np.ndarray] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)
    enc: dict[str, list[np.ndarray]] = field(default_factory=dict)  # key/shrinkage/selection + feature stats
    features1: dict[str, np.ndarray] = field(default_factory=dict)  # f16/f8/f4 of frame 1
    readout: dict[int, np.ndarray] = field(default_factory=dict)
    logits: dict[int, np.ndarray] = field(default_factory=dict)
    value: dict[int, np.ndarray] = field(default_factory=dict)
    value_mask: dict[int, np.ndarray] = field(default_factory=dict)
    hidden_after: list[np.ndarray] = field(default_factory=list)
    wm_size: list[int] = field(default_factory=list)
    lt_size: list[int] = field(default_factory=list)
    size_at_read: list[int] = field(default_factory=list)
    lt_at_read: list[bool] = field(default_factory=list)
    consolidations: dict[int, Consolidation] = field(default_factory=dict)
    removals: dict[int, Removal] = field(default_factory=dict)

    def record(self, name: str, inputs: dict, outputs: dict) -> None:
        frame = len(self.calls) - 1
        self.calls[-1].append(name)
        if name == "xmem_frame_features":
            for k in ("key", "shrinkage", "selection"):
                self.enc.setdefault(k, []).append(outputs[k][0].numpy().copy())
            for k in ("f16", "f8", "f4"):
                x = outputs[k][0].double().flatten(1)
                self.enc.setdefault(f"{k}_stats", []).append(torch.stack([x.mean(1), x.std(1, correction=0)], 1).numpy())
                if frame == 1:
                    self.features1[k] = outputs[k][0].numpy().copy()
        elif name == "xmem_decoder":
            self.readout[frame] = inputs["readout"][0].numpy().copy()
            self.logits[frame] = outputs["logits"][0].numpy().copy()
        elif name == "xmem_value_encoder":
            self.value_mask[frame] = inputs["mask"][0, 0].numpy().copy()
            self.value[frame] = outputs["value"][0].numpy().copy()


def track_golden(checkpoint: Path, config: XMemConfig, video: tuple[np.ndarray, ...], mask0: np.ndarray) -> RunRecord:
    rec = RunRecord()
    tracker = recording_tracker(checkpoint, config, rec.record)
    mem = tracker.memory
    for i, frame in enumerate(video):
        rec.calls.append([])
        rec.size_at_read.append(mem.size if i else 0)
        rec.lt_at_read.append(bool(i) and mem.long_term.size > 0)
        cons, rem = mem.last_consolidation, mem.last_removal
        out = tracker.step(frame, mask0 if i == 0 else None, index=i, end=i == N_FRAMES - 1)
        rec.probs.append(out.prob)
        rec.confidences.append(out.confidence)
        rec.hidden_after.append(mem.hidden[0].numpy().copy())
        rec.wm_size.append(mem.working.size)
        rec.lt_size.append(mem.long_term.size)
        if mem.last_consolidation is not cons:
            rec.consolidations[i] = mem.last_consolidation
        if mem.last_removal is not rem:
            rec.removals[i] = mem.last_removal
    return rec


@pytest.fixture(scope="module")
def main_run(golden_xmem, checkpoints, video, inputs) -> RunRecord:
    return track_golden(checkpoints["pth"], golden_config(golden_xmem, "main"), video, inputs["mask0"])


@pytest.fixture(scope="module")
def lt_run(golden_xmem, checkpoints, video, inputs) -> RunRecord:
    return track_golden(checkpoints["safetensors"], golden_config(golden_xmem, "long_term"), video, inputs["mask0"])


@pytest.fixture(scope="module")
def main_ref(golden_xmem):
    return np.load(golden_xmem / "main_frames.npz")


@pytest.fixture(scope="module")
def main_mem(golden_xmem):
    return np.load(golden_xmem / "main_memory.npz")


@pytest.fixture(scope="module")
def lt_ref(golden_xmem):
    return np.load(golden_xmem / "lt_frames.npz")


# --- inputs -------------------------------------------------------------------------------------


def test_generated_weights_match_recorded_sha256(golden_xmem, weights, make_weights):
    recorded = json.loads((golden_xmem / "xmem_random_weights_sha256.json").read_text())
    assert dict(make_weights.sha256_table(weights)) == recorded
    assert len(weights) == 412


def test_frames_and_normalisation_bit_exact(video, inputs):
    for frame, digest in zip(video, inputs["frame_rgb_sha256"]):
        assert hashlib.sha256(frame.tobytes()).hexdigest() == digest
    image = xframes.normalise(video[0], "cpu")
    assert image.dtype == torch.float32
    np.testing.assert_array_equal(image.numpy(), inputs["image_norm0"])
    assert xframes.processing_size(480, 854, 480) == (480, 854)
    assert xframes.pad_amounts(480, 854) == (5, 5, 0, 0)


def test_configs_follow_the_original(golden_xmem):
    recorded = json.loads((golden_xmem / "configs.json").read_text())
    for run in ("main", "long_term"):
        assert golden_config(golden_xmem, run).enable_long_term_count_usage == recorded[run]["enable_long_term_count_usage"]
    default = XMemConfig()
    assert (default.shorter_side, default.mem_every, default.top_k, default.deep_update_every) == (480, 5, 30, -1)
    assert (default.min_mid_term_frames, default.max_mid_term_frames) == (5, 10)
    assert (default.num_prototypes, default.max_long_term_elements) == (128, 10000)
    assert default.original_count_usage(391) and not default.original_count_usage(390)


# --- main run -----------------------------------------------------------------------------------


def check_masks(probs: list[np.ndarray], ref_masks: np.ndarray) -> None:
    for i, (prob, ref) in enumerate(zip(probs, ref_masks)):
        mask, ref = prob > 0.5, ref.astype(bool)
        iou = (mask & ref).sum() / (mask | ref).sum()
        assert iou >= 0.999, f"frame {i}: IoU {iou}"
        assert (mask != ref).sum() <= 100, f"frame {i}"


def test_main_masks_and_probabilities(main_run, main_ref):
    check_masks(main_run.probs, main_ref["mask"])
    probs = np.stack(main_run.probs)
    assert probs.shape == main_ref["prob_fg"].shape and probs.dtype == np.float32
    diff = np.abs(probs - main_ref["prob_fg"])
    assert diff.max() <= 1e-2
    assert diff.mean(axis=(1, 2)).max() <= 1e-4


def test_main_schedule_and_memory_sizes(main_run, main_ref):
    calls = main_run.calls
    assert [c[0] for c in calls] == ["xmem_frame_features"] * N_FRAMES
    assert ["xmem_value_encoder" in c for c in calls] == main_ref["is_mem_frame"].tolist()
    assert ["xmem_decoder" in c for c in calls] == main_ref["segmented"].tolist()
    assert main_run.wm_size == main_ref["work_mem_size"].tolist()
    assert main_run.lt_size == main_ref["long_mem_size"].tolist()
    assert main_run.size_at_read == main_ref["mem_size_at_read"].tolist()
    assert main_run.lt_at_read == main_ref["lt_engaged_at_read"].tolist()


def test_main_key_encoder(main_run, main_ref, golden_xmem):
    for name in ("key", "shrinkage", "selection"):
        np.testing.assert_allclose(np.stack(main_run.enc[name]), main_ref[name], **ENCODER_TOL)
    for name in ("f16", "f8", "f4"):
        np.testing.assert_allclose(np.stack(main_run.enc[f"{name}_stats"]), main_ref[f"{name}_stats"], **ENCODER_TOL)
    ref1 = np.load(golden_xmem / "main_features_frame1.npz")
    np.testing.assert_allclose(main_run.features1["f16"], ref1["f16"].astype(np.float32), rtol=1e-3, atol=1e-4)
    for name, size in (("f4", 16), ("f8", 8)):
        for corner in ("tl", "c", "br"):
            r, c = ref1[f"{name}_win_{corner}_origin"]
            window = main_run.features1[name][:, r : r + size, c : c + size]
            np.testing.assert_allclose(window, ref1[f"{name}_win_{corner}"], **ENCODER_TOL)


def test_main_decoder_and_hidden(main_run, main_ref):
    for i in range(1, N_FRAMES):
        assert max_abs(main_run.logits[i], main_ref["pred_logits_q4"][i]) <= 1e-2, f"frame {i}"
    # frame 11 is the end frame: no hidden update, so its hidden equals frame 10's
    for i in range(N_FRAMES):
        assert max_abs(main_run.hidden_after[i], main_ref["hidden_after"][i]) <= 1e-2, f"frame {i}"


def test_main_values_and_readouts(main_run, main_ref, main_mem):
    np.testing.assert_array_equal(main_run.value_mask[0], main_mem["value_in_mask0"])
    assert sorted(main_run.value) == main_mem["value_frames"].tolist()
    for j, frame in enumerate(main_mem["value_frames"]):
        assert max_abs(main_run.value[frame], main_mem["value"][j]) <= 1e-2
    for j, frame in enumerate(main_mem["readout_frames"]):
        sure = main_ref["topk_margin"][frame] > MARGIN
        diff = np.abs(main_run.readout[frame] - main_mem["readout"][j].astype(np.float32))
        assert diff[:, sure].max() <= 1e-2


def test_main_confidence_is_soft_iou_of_the_map(main_run, main_ref):
    assert main_run.confidences[0] == pytest.approx(1.0, abs=1e-6)
    for i in range(1, N_FRAMES):
        expected = soft_iou_confidence(torch.from_numpy(main_ref["prob_fg"][i]))
        assert main_run.confidences[i] == pytest.approx(expected, abs=1e-4)
        assert 0.0 < main_run.confidences[i] < 1.0


# --- long-term run ------------------------------------------------------------------------------


def test_lt_masks_logits_and_sizes(lt_run, lt_ref):
    check_masks(lt_run.probs, lt_ref["mask"])
    for i in range(1, N_FRAMES):
        assert max_abs(lt_run.logits[i], lt_ref["pred_logits_q4"][i]) <= 1e-2, f"frame {i}"
    assert ["xmem_value_encoder" in c for c in lt_run.calls] == lt_ref["is_mem_frame"].tolist()
    assert lt_run.wm_size == lt_ref["work_mem_size"].tolist()
    assert lt_run.lt_size == lt_ref["long_mem_size"].tolist()
    assert lt_run.size_at_read == lt_ref["mem_size_at_read"].tolist()
    assert lt_run.lt_at_read == lt_ref["lt_engaged_at_read"].tolist()


def check_usage(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    """Usage within 1e-4 except at a few elements touched by top-k near-tie swaps, and those bounded."""
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64))
    assert diff.max() <= USAGE_SWAP_BOUND, f"{what}: usage differs by {diff.max()}"
    assert (diff > 1e-4).sum() <= USAGE_SWAP_ELEMENTS, f"{what}: {(diff > 1e-4).sum()} usages differ by > 1e-4"


def test_lt_consolidations(lt_run, lt_ref):
    assert sorted(lt_run.consolidations) == [int(lt_ref[f"consolidation{i}_frame"]) for i in range(4)]
    for i in range(4):
        got = lt_run.consolidations[int(lt_ref[f"consolidation{i}_frame"])]
        ref = {k: lt_ref[f"consolidation{i}_{k}"] for k in ("usage", "proto_idx", "proto_key", "proto_shrinkage", "proto_value")}
        usage, indices = got.usage.numpy(), got.indices.numpy()
        check_usage(usage, ref["usage"], f"consolidation {i}")
        assert len(indices) == len(ref["proto_idx"]) == 128
        assert np.all(np.diff(usage[indices]) <= 0), "prototypes are ranked by usage, descending"
        cut = np.sort(ref["usage"])[::-1][127]
        common = np.intersect1d(indices, ref["proto_idx"])
        assert len(common) >= 128 - PROTO_SWAPS
        for c in np.setxor1d(indices, ref["proto_idx"]):  # swapped at the boundary: a near-tie in usage
            assert abs(ref["usage"][c] - cut) <= USAGE_SWAP_BOUND
        mine = {int(c): j for j, c in enumerate(indices)}
        theirs = {int(c): j for j, c in enumerate(ref["proto_idx"])}
        a, b = [mine[int(c)] for c in common], [theirs[int(c)] for c in common]
        np.testing.assert_allclose(got.key.numpy()[:, a], ref["proto_key"][:, b], **ENCODER_TOL)
        assert max_abs(got.shrinkage.numpy()[a], ref["proto_shrinkage"][0, b]) <= 1e-4
        assert max_abs(got.value.numpy()[a].T, ref["proto_value"][:, b]) <= 1e-2


def long_term_identities(prototypes: dict[int, np.ndarray], usages: dict[int, np.ndarray], target: int) -> dict[int, list]:
    """Long-term elements before each removal frame, named (consolidation frame, candidate index).

    Follows the memory's order: at a frame, the removal (keep usage > the n-th smallest, README
    1.9) comes before the consolidation, which appends the prototypes in ranking order.
    """
    ids: list[tuple[int, int]] = []
    before: dict[int, list] = {}
    for frame in range(N_FRAMES):
        if frame in usages:
            before[frame] = list(ids)
            usage = usages[frame]
            threshold = np.sort(usage)[len(usage) - target - 1]
            ids = [e for e, u in zip(ids, usage) if u > threshold]
        ids += [(frame, int(c)) for c in prototypes.get(frame, ())]
    return before


def test_lt_removals(lt_run, lt_ref):
    """Usage before eviction, element by element; prototype order may differ at near-ties so elements are matched by identity."""
    frames = [int(lt_ref[f"removal{j}_frame"]) for j in range(2)]
    assert sorted(lt_run.removals) == frames
    target = int(lt_ref["removal0_sizes"][1])
    mine = long_term_identities(
        {f: c.indices.numpy() for f, c in lt_run.consolidations.items()},
        {f: r.usage_before.numpy() for f, r in lt_run.removals.items()},
        target,
    )
    theirs = long_term_identities(
        {int(lt_ref[f"consolidation{i}_frame"]): lt_ref[f"consolidation{i}_proto_idx"] for i in range(4)},
        {f: lt_ref[f"removal{j}_lt_usage_before"] for j, f in enumerate(frames)},
        target,
    )
    for j, frame in enumerate(frames):
        got = lt_run.removals[frame]
        assert [got.size_before, got.target, got.size_after] == lt_ref[f"removal{j}_sizes"].tolist()
        assert sorted(mine[frame]) == sorted(theirs[frame]), "the same elements are in long-term memory"
        ours = dict(zip(mine[frame], got.usage_before.numpy()))
        ref = dict(zip(theirs[frame], lt_ref[f"removal{j}_lt_usage_before"]))
        keys = sorted(ref)
        check_usage([ours[k] for k in keys], [ref[k] for k in keys], f"removal {j}")


def test_lt_value_hidden_and_first_long_term_readout(lt_run, lt_ref):
    assert sorted(lt_run.value) == lt_ref["value_frames"].tolist()
    assert max_abs(lt_run.value[4], lt_ref["value4"]) <= 1e-2
    assert max_abs(lt_run.hidden_after[4], lt_ref["hidden_after4"]) <= 1e-2
    sure = lt_ref["topk_margin"][5] > MARGIN
    diff = np.abs(lt_run.readout[5] - lt_ref["readout5"].astype(np.float32))
    assert diff[:, sure].max() <= 1e-2
