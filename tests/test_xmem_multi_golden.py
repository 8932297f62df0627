"""Parity of multi-object XMemTracker with the original XMem (../shared/golden/xmem_multi, README 6).

Run A: three objects given on frame 0. Run B: objects 1, 2 on frame 0 and object 3 added on
frame 4 (its own object group, zero hidden state, the other objects' predictions re-aggregated
with the new mask). Each run is tracked once per session through recording engines; the
key-encoder outputs come from the cache shared with tests/test_xmem_golden.py.

Measured on an AMD EPYC (the fixture was made on an Intel AVX-512 Xeon; neither the key
encoder nor anything after it is bit-exact across them), CPU float32, 2 threads, torch 2.13,
against the asserted tolerances (README 6 suggestions):

| tensor | run A | run B | asserted |
| --- | --- | --- | --- |
| logits (1/4 grid), per frame max / mean | 4.9e-3 / 3.0e-5 | 2.8e-3 / 2.3e-5 | 1e-2 / 2e-4 |
| probabilities vs README 3 recipe, per frame max / mean | 3.9e-4 / 1.9e-6 | 6.3e-4 / 4.0e-6 | 5e-3 / 2e-5 |
| label-map pixels differing, per frame | 0-352 | 0-174 | <= 1000 |
| values ch 0-63 / 512-channel stats | 1.2e-4 / 1.9e-6 | 1.3e-4 / 1.2e-6 | 1e-3 / 1e-3 |
| value-encoder P_k padding columns | 1.8e-6 | 3.9e-6 | 5e-3 |
| readouts where top-k margin > 1e-4 (elsewhere up to 0.02) | 1.1e-4 | 4.3e-5 | 1e-3 |
| readout 512-channel stats | 4.1e-5 | 2.1e-5 | 1e-3 |
| hidden after step / given to the value encoder | 4.2e-3 / 1.6e-3 | 4.8e-4 / 1.7e-3 | 1e-2 |
| per-object confidence vs soft IoU of the recipe's planes | 1.3e-10 | 1.3e-10 | 1e-3 |
| schedule, object counts, memory and group sizes | exact | exact | exact |

The differing label pixels are top-2 near-ties of the fixture (gap <= 1e-3 there; README 2.7:
26k-60k px per frame in run A have a gap < 1e-4). The test's rendering of README 3 equals the
stored full frames to 2.4e-7.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from visa_edge.runtime.tracking.base import TrackOutput
from visa_edge.runtime.tracking.xmem import XMemConfig, soft_iou_confidence

from .conftest import SHARED, require_dir
from .xmem_golden_support import checkpoints, recording_tracker
from .xmem_golden_support import video

N_FRAMES = 10
# a golden run (set up by the first test that needs it) takes minutes on a loaded 2-core machine
pytestmark = pytest.mark.timeout(1200)
MARGIN = 1e-4
PAD = 5  # columns of zero padding on each side (854 -> 864)


@pytest.fixture(scope="session")
def golden_multi() -> Path:
    return require_dir(SHARED / "golden" / "xmem_multi", "multi-object XMem golden fixtures")


@dataclass
class MultiRecord:
    """What a multi-object golden run produced, frame by frame."""

    outputs: list[TrackOutput] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)
    logits: dict[int, np.ndarray] = field(default_factory=dict)  # [K,120,216]
    readout: dict[int, np.ndarray] = field(default_factory=dict)  # [K,512,30,54]
    value: dict[int, np.ndarray] = field(default_factory=dict)  # [K,512,30,54]
    value_mask: dict[int, np.ndarray] = field(default_factory=dict)  # [K,480,864] P_k planes given to the value encoder
    hidden_in_venc: dict[int, np.ndarray] = field(default_factory=dict)
    hidden_after: list[np.ndarray] = field(default_factory=list)
    wm_size: list[int] = field(default_factory=list)
    size_at_read: list[int] = field(default_factory=list)
    group_size_at_read: list[list[int]] = field(default_factory=list)
    group_size_after: list[list[int]] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)

    def record(self, name: str, inputs: dict, outputs: dict) -> None:
        frame = len(self.calls) - 1
        self.calls[-1].append(name)
        if name == "xmem_decoder":
            self.readout[frame] = inputs["readout"].numpy().copy()
            self.logits[frame] = outputs["logits"][:, 0].numpy().copy()
        elif name == "xmem_value_encoder":
            self.value_mask[frame] = inputs["mask"][:, 0].numpy().copy()
            self.hidden_in_venc[frame] = inputs["hidden"].numpy().copy()
            self.value[frame] = outputs["value"].numpy().copy()


def group_sizes(store) -> list[int]:
    return [store.value_size(g) for g in range(2)]


def track_multi(checkpoint: Path, frames: tuple[np.ndarray, ...], references: dict[int, np.ndarray]) -> MultiRecord:
    """Step the 10 frames (the last one as the video's end) with the given label images."""
    rec = MultiRecord()
    config = XMemConfig()
    config = replace(config, enable_long_term_count_usage=config.original_count_usage(N_FRAMES))
    tracker = recording_tracker(checkpoint, config, rec.record)
    mem = tracker.memory
    for i, frame in enumerate(frames):
        rec.calls.append([])
        rec.size_at_read.append(mem.size)
        rec.group_size_at_read.append(group_sizes(mem.working))
        rec.outputs.append(tracker.step(frame, references.get(i), index=i, end=i == N_FRAMES - 1))
        rec.hidden_after.append(mem.hidden.numpy().copy())
        rec.wm_size.append(mem.working.size)
        rec.group_size_after.append(group_sizes(mem.working))
    rec.groups = mem.groups
    return rec


@pytest.fixture(scope="module")
def multi_inputs(golden_multi):
    return np.load(golden_multi / "inputs.npz")


@pytest.fixture(scope="module")
def runs(golden_multi, golden_xmem, multi_inputs) -> dict[str, MultiRecord]:
    """Runs A and B, each tracked once (lazily, so a test of one run does not wait for the other)."""
    frames = video(golden_xmem, N_FRAMES)
    pth = checkpoints(golden_xmem)["pth"]
    references = {
        "A": {0: multi_inputs["labels_A_00000"]},
        "B": {0: multi_inputs["labels_B_00000"], 4: multi_inputs["labels_B_00004"]},
    }

    class Runs(dict):
        def __missing__(self, run: str) -> MultiRecord:
            self[run] = track_multi(pth, frames, references[run])
            return self[run]

    return Runs()


@pytest.fixture(scope="module")
def refs(golden_multi) -> dict[str, tuple]:
    return {r: (np.load(golden_multi / f"run{r}_frames.npz"), np.load(golden_multi / f"run{r}_features.npz")) for r in "AB"}


def aggregate(planes: torch.Tensor) -> torch.Tensor:
    """README 2.3: [bg = prod(1 - p), p...] clamped, softmax of the log-odds over the object axis."""
    q = torch.cat([torch.prod(1 - planes, dim=0, keepdim=True), planes]).clamp(1e-7, 1 - 1e-7)
    return torch.softmax(torch.log(q / (1 - q)), dim=0)


def onehot(labels: np.ndarray, ids: list[int]) -> torch.Tensor:
    return F.pad(torch.stack([torch.from_numpy(labels == i).float() for i in ids]), (PAD, PAD))


def reference_probs(ref_frames, inputs, run: str, t: int) -> np.ndarray:
    """README 3: the original's returned probabilities [K+1,480,854] of frame t from the stored logits/labels."""
    if t == 0:
        labels = inputs[f"labels_{run}_00000"]
        return aggregate(onehot(labels, sorted(set(np.unique(labels)) - {0})))[..., PAD:-PAD].numpy()
    n = int(ref_frames["num_objects_segmented"][t])
    logits = torch.from_numpy(ref_frames["pred_logits_q4"][t, :n])[:, None]
    probs = aggregate(torch.sigmoid(F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)[:, 0]))
    if run == "B" and t == 4:
        rect = onehot(inputs["labels_B_00004"], [3])[0]
        pred = probs[1:].clone()
        pred[:, rect > 0.5] = 0
        probs = aggregate(torch.cat([pred, rect[None]]))
    return probs[..., PAD:-PAD].numpy()


@pytest.fixture(scope="module")
def expected_probs(refs, multi_inputs) -> dict[str, list[np.ndarray]]:
    return {r: [reference_probs(refs[r][0], multi_inputs, r, t) for t in range(N_FRAMES)] for r in "AB"}


RUNS = pytest.mark.parametrize("run", ["A", "B"])


def test_recipe_reproduces_the_stored_probabilities(refs, expected_probs):
    """The test's own rendering of README 3 equals the stored full frames (so it can stand in for the others)."""
    for run, frames in (("A", (0, 1)), ("B", (0, 4))):
        for t in frames:
            np.testing.assert_allclose(expected_probs[run][t], refs[run][0][f"prob_{t}"], rtol=0, atol=1e-6)


@RUNS
def test_schedule_objects_and_memory_sizes(runs, refs, run):
    rec, (ref, _) = runs[run], refs[run]
    assert [c[0] for c in rec.calls] == ["xmem_frame_features"] * N_FRAMES
    assert ["xmem_decoder" in c for c in rec.calls] == ref["segmented"].tolist()
    assert ["xmem_value_encoder" in c for c in rec.calls] == ref["is_mem_frame"].tolist()
    assert [len(o.objects) for o in rec.outputs] == ref["num_objects"].tolist()
    assert [o.objects for o in rec.outputs][-1] == (1, 2, 3)
    assert [len(rec.logits[t]) if t in rec.logits else 0 for t in range(N_FRAMES)] == ref["num_objects_segmented"].tolist()
    assert rec.wm_size == ref["work_mem_size"].tolist()
    read = [size if seg else 0 for size, seg in zip(rec.size_at_read, ref["segmented"])]
    assert read == ref["mem_size_at_read"].tolist()
    group_read = [sizes if seg else [0, 0] for sizes, seg in zip(rec.group_size_at_read, ref["segmented"])]
    assert group_read == ref["group_value_size_at_read"].tolist()
    assert rec.group_size_after == ref["group_value_size_after"].tolist()
    expected_groups = [int((row >= 0).sum()) for row in ref["object_groups"] if (row >= 0).any()]
    assert rec.groups == expected_groups


@RUNS
def test_logits(runs, refs, run):
    rec, (ref, _) = runs[run], refs[run]
    for t, logits in rec.logits.items():
        diff = np.abs(logits - ref["pred_logits_q4"][t, : len(logits)])
        assert diff.max() <= 1e-2 and diff.mean() <= 2e-4, f"frame {t}: max {diff.max()}, mean {diff.mean()}"


@RUNS
def test_probabilities_labels_and_confidences(runs, refs, expected_probs, run):
    rec, (ref, _) = runs[run], refs[run]
    for t, out in enumerate(rec.outputs):
        expected = expected_probs[run][t]
        assert out.object_probs.shape == expected[1:].shape and out.object_probs.dtype == np.float32
        diff = np.abs(out.object_probs - expected[1:])
        assert diff.max() <= 5e-3 and diff.mean() <= 2e-5, f"frame {t}: max {diff.max()}, mean {diff.mean()}"
        differ = int((out.labels != ref["label_map"][t]).sum())
        assert differ <= 1000, f"frame {t}: {differ} label pixels differ"
        for k, conf in enumerate(out.object_confidences):
            assert conf == pytest.approx(soft_iou_confidence(torch.from_numpy(expected[k + 1])), abs=1e-3)


@RUNS
def test_values_and_value_encoder_inputs(runs, refs, run):
    rec, (_, feat) = runs[run], refs[run]
    frames = sorted(int(k.split("_")[1]) for k in feat.files if k.startswith("value_") and k.count("_") == 1)
    assert sorted(rec.value) == frames
    for t in frames:
        assert np.abs(rec.value[t][:, :64] - feat[f"value_{t}"]).max() <= 1e-3, f"frame {t}"
        stats = np.stack([rec.value[t].mean((2, 3)), rec.value[t].std((2, 3))], -1)
        assert np.abs(stats - feat[f"value_{t}_chstats"]).max() <= 1e-3, f"frame {t}"
        pad_cols = np.concatenate([rec.value_mask[t][..., :PAD], rec.value_mask[t][..., -PAD:]], -1)
        assert np.abs(pad_cols - feat[f"value_in_pad_cols_{t}"]).max() <= 5e-3, f"frame {t}"
        if t:
            assert np.abs(rec.hidden_in_venc[t] - feat[f"hidden_in_venc_{t}"]).max() <= 1e-2, f"frame {t}"


@RUNS
def test_readouts_where_top_k_is_not_a_near_tie(runs, refs, run):
    rec, (ref, feat) = runs[run], refs[run]
    object_group = {int(o): g for g, row in enumerate(ref["object_groups"]) for o in row if o >= 0}
    for t in (1, 5):
        got = rec.readout[t]
        assert got.shape[0] == feat[f"readout_{t}"].shape[0]
        for k in range(got.shape[0]):
            sure = ref["topk_margin"][t, object_group[k]] > MARGIN
            diff = np.abs(got[k, :64] - feat[f"readout_{t}"][k])
            assert diff[:, sure].max() <= 1e-3, f"frame {t} object {k}: {diff[:, sure].max()}"
        stats = np.stack([got.mean((2, 3)), got.std((2, 3))], -1)
        assert np.abs(stats - feat[f"readout_{t}_chstats"]).max() <= 1e-3, f"frame {t}"


@RUNS
def test_hidden_states(runs, refs, run):
    rec, (_, feat) = runs[run], refs[run]
    for key in (k for k in feat.files if k.startswith("hidden_after_")):
        t = int(key.rsplit("_", 1)[1])
        assert np.abs(rec.hidden_after[t] - feat[key]).max() <= 1e-2, key
