"""Chat-UniVi spatial token clustering (DPC-KNN), as VISA runs it on every frame.

Each frame's patch tokens go through three chained DPC-KNN levels (64, 32, 16 clusters,
k = 5, 3, 3); each level outputs the plain average of the previous level's tokens per
cluster. The 112 tokens of a frame are ``[level 0 | level 1 | level 2]`` in cluster order.
The module has no parameters and is written with batched tensor ops only (top-k,
gather, comparisons, matmul) so that it exports to ONNX/TensorRT in one graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .visa_config import ClusterConfig

NOISE_SCALE = 1e-6


@dataclass
class ClusterLevel:
    """One DPC-KNN level for a batch: inputs to outputs plus the quantities that decide it."""

    density: torch.Tensor  # [B,N] local density incl. tie-break noise
    dist_to_denser: torch.Tensor  # [B,N] delta
    score: torch.Tensor  # [B,N] delta * density
    centers: torch.Tensor  # [B,K] token index of each cluster centre, by descending score
    assign: torch.Tensor  # [B,N] cluster index of each token
    merged: torch.Tensor  # [B,K,C] mean of each cluster's tokens


def pairwise_distance(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances [B,N,N] via the matmul expansion (as torch.cdist does for N > 25)."""
    sq = (x * x).sum(-1)
    d2 = sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * (x @ x.transpose(-1, -2))
    return d2.clamp_min(0.0).sqrt()


def dpc_knn(x: torch.Tensor, n_clusters: int, k: int, noise: torch.Tensor | None = None) -> ClusterLevel:
    """Cluster tokens x [B,N,C] into ``n_clusters`` by density-peaks with a k-NN density.

    ``noise`` ([N] or [B,N], U[0,1)) is added to the density times 1e-6 to break ties, as
    the original does with ``torch.rand``.
    """
    x = x.float()
    b, n, c = x.shape
    dist = pairwise_distance(x) / (c**0.5)
    nearest = torch.topk(dist, k, dim=-1, largest=False).values
    density = torch.exp(-(nearest**2).mean(-1))
    if noise is not None:
        density = density + noise * NOISE_SCALE
    denser = density.unsqueeze(1) > density.unsqueeze(2)  # [b, i, j]: rho_j > rho_i
    dist_max = dist.flatten(1).max(-1).values.reshape(b, 1, 1)
    delta = torch.where(denser, dist, dist_max).min(-1).values
    score = delta * density
    centers = torch.topk(score, n_clusters, dim=-1).indices  # [b,K]
    center_rows = torch.gather(dist, 1, centers.unsqueeze(-1).expand(b, n_clusters, n))  # [b,K,N]
    assign = center_rows.argmin(1)  # [b,N]
    is_center = torch.arange(n, device=x.device).reshape(1, n, 1) == centers.unsqueeze(1)  # [b,N,K]
    assign = torch.where(is_center.any(-1), is_center.to(torch.int32).argmax(-1), assign)
    onehot = (assign.unsqueeze(-1) == torch.arange(n_clusters, device=x.device)).to(x.dtype)  # [b,N,K]
    counts = onehot.sum(1).unsqueeze(-1)  # [b,K,1]
    merged = (onehot.transpose(1, 2) @ x) / (counts + 1e-6)
    return ClusterLevel(density, delta, score, centers, assign, merged)


class TokenClustering(nn.Module):
    """Patch tokens [B,N,C] -> clustered tokens [B, sum(clusters), C].

    The tie-break noise is a fixed per-position vector (seeded), not a fresh draw per call,
    so that a frame clusters identically whenever and on whichever backend it is encoded.
    """

    def __init__(self, cfg: ClusterConfig, num_tokens: int, seed: int = 0):
        super().__init__()
        self.clusters = tuple(cfg.clusters)
        self.knn = tuple(cfg.knn)
        gen = torch.Generator().manual_seed(seed)
        sizes = (num_tokens,) + self.clusters[:-1]
        for level, size in enumerate(sizes):
            self.register_buffer(f"noise{level}", torch.rand(size, generator=gen), persistent=False)

    def levels(self, x: torch.Tensor) -> list[ClusterLevel]:
        out = []
        for level, (n_clusters, k) in enumerate(zip(self.clusters, self.knn)):
            lv = dpc_knn(x, n_clusters, k, getattr(self, f"noise{level}"))
            out.append(lv)
            x = lv.merged
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([lv.merged for lv in self.levels(x)], dim=1).to(x.dtype)
