"""Chat-UniVi DPC-KNN clustering on its own: golden per-level decisions and structural properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visa_edge.runtime.clustering import TokenClustering, dpc_knn, pairwise_distance
from visa_edge.runtime.visa_config import ClusterConfig

LEVELS = ((64, 5), (32, 3), (16, 3))


@pytest.fixture(scope="module")
def vision(golden_visa):
    return np.load(golden_visa / "vision.npz")


@pytest.mark.parametrize("level", [0, 1, 2])
def test_level_matches_original_with_its_noise(vision, level):
    """Fed the recorded inputs and tie-break noise, every quantity and decision matches."""
    tokens = vision["clustered_tokens"]
    inputs = [vision["clip_patch_features"], tokens[:, :64], tokens[:, 64:96]][level]
    n_clusters, k = LEVELS[level]
    lv = dpc_knn(torch.from_numpy(inputs), n_clusters, k, torch.from_numpy(vision[f"l{level}_noise"]))
    for name, ours in (("density", lv.density), ("dist_to_denser", lv.dist_to_denser), ("score", lv.score)):
        assert np.abs(ours.numpy() - vision[f"l{level}_{name}"]).max() < 1e-5, name
    assert np.array_equal(lv.centers.numpy(), vision[f"l{level}_centers"])
    assert np.array_equal(lv.assign.numpy(), vision[f"l{level}_assign"])
    start = sum(c for c, _ in LEVELS[:level])
    assert np.abs(lv.merged.numpy() - tokens[:, start : start + n_clusters]).max() < 1e-5


def test_module_reproduces_all_112_tokens_with_its_own_noise(vision):
    module = TokenClustering(ClusterConfig(), num_tokens=256)
    out = module(torch.from_numpy(vision["clip_patch_features"]))
    assert out.shape == (12, 112, 32)
    assert np.abs(out.numpy() - vision["clustered_tokens"]).max() < 1e-5


def test_composed_patch_assignment_matches_idx_token(vision):
    module = TokenClustering(ClusterConfig(), num_tokens=256)
    levels = module.levels(torch.from_numpy(vision["clip_patch_features"]))
    idx = levels[0].assign
    for level, lv in enumerate(levels):
        if level:
            idx = torch.gather(lv.assign, 1, idx)
        assert np.array_equal(idx.numpy(), vision[f"l{level}_idx_token"])


def test_structure_on_random_tokens():
    x = torch.randn(3, 256, 8, generator=torch.Generator().manual_seed(1))
    lv = dpc_knn(x, 64, 5)
    assert lv.centers.shape == (3, 64) and lv.assign.shape == (3, 256)
    for b in range(3):
        assert len(set(lv.centers[b].tolist())) == 64
        assert torch.equal(lv.assign[b, lv.centers[b]], torch.arange(64))  # every centre owns its cluster
        assert set(lv.assign[b].tolist()) == set(range(64))
        for c in (0, 17, 63):
            members = x[b, lv.assign[b] == c]
            assert torch.allclose(lv.merged[b, c], members.mean(0), atol=1e-5)
    assert torch.all(lv.score[torch.arange(3)[:, None], lv.centers].diff(dim=1) <= 0)  # descending score order


def test_frames_cluster_independently_of_the_batch():
    x = torch.randn(4, 256, 16, generator=torch.Generator().manual_seed(2))
    module = TokenClustering(ClusterConfig(), num_tokens=256)
    together = module(x)
    alone = torch.cat([module(x[i : i + 1]) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-6)


def test_pairwise_distance_matches_cdist():
    x = torch.randn(2, 50, 7, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(pairwise_distance(x), torch.cdist(x, x), atol=1e-4)
