"""VISA checkpoint configuration (the fields of a VISA ``config.json`` the runtime uses)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # CLI/config names

REQUIRED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "mm_hidden_size",
)


@dataclass(frozen=True)
class ClusterConfig:
    """Chat-UniVi spatial clustering: clusters per level and k of the k-NN density."""

    clusters: tuple[int, ...] = (64, 32, 16)
    knn: tuple[int, ...] = (5, 3, 3)

    @property
    def tokens_per_frame(self) -> int:
        return sum(self.clusters)


@dataclass(frozen=True)
class VisaConfig:
    """The LLaMA, projector and head sizes of a VISA checkpoint.

    Parsed from the checkpoint's ``config.json`` (``model_type`` ``ChatUniVi``, a LLaMA
    subclass). SAM sizes are not in the config; they are read from the weight shapes.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    mm_hidden_size: int
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    out_dim: int = 256
    mm_vision_select_layer: int = -2
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    tie_word_embeddings: bool = False
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config.json") -> "VisaConfig":
        missing = [k for k in REQUIRED_FIELDS if k not in d]
        if missing:
            raise CheckpointError(f"{source}: missing required field(s) {missing}; expected a VISA (ChatUniVi/LLaMA) config")
        sub = d.get("config") or {}
        if sub and not sub.get("use_cluster", True):
            raise CheckpointError(f"{source}: config.use_cluster is false; only the clustered (Chat-UniVi) VISA is supported")
        clusters = tuple(int(sub.get(f"spatial_cluster_rate{i}", c)) for i, c in enumerate((64, 32, 16)))
        select = d.get("mm_vision_select_feature", "patch")
        if select != "patch":
            raise CheckpointError(f"{source}: mm_vision_select_feature={select!r}; expected 'patch' (CLS dropped)")
        return cls(
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=int(d["num_attention_heads"]),
            num_key_value_heads=int(d.get("num_key_value_heads") or d["num_attention_heads"]),
            mm_hidden_size=int(d["mm_hidden_size"]),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            rope_theta=float(d.get("rope_theta", 10000.0)),
            rope_scaling=d.get("rope_scaling"),
            out_dim=int(d.get("out_dim", 256)),
            mm_vision_select_layer=int(d.get("mm_vision_select_layer", -2)),
            bos_token_id=int(d.get("bos_token_id", 1)),
            eos_token_id=int(d.get("eos_token_id", 2)),
            pad_token_id=int(d.get("pad_token_id") or 0),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            cluster=ClusterConfig(clusters=clusters),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "VisaConfig":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: not found; a VISA checkpoint folder must contain config.json")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: not valid JSON ({e})") from e
        return cls.from_dict(d, source=str(path))
