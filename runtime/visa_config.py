"""VISA checkpoint configuration (the fields of a VISA ``config.json`` the runtime uses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .validate import Fields, read_json_object

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # CLI/config names

REQUIRED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "mm_hidden_size",
)
# Bounds that reject corrupt or hand-edited sizes before anything is allocated from them.
MAX_VOCAB = 1 << 21
MAX_HIDDEN = 1 << 16
MAX_INTERMEDIATE = 1 << 18
MAX_HEADS = 1024
MAX_LAYERS = 1024
MAX_POSITIONS = 1 << 20
MAX_CLUSTERS = 4096
MAX_PARAMETERS = 200_000_000_000  # 2e11: 400 GB in bf16, far above any VISA (7B, 13B)
# rope_scaling types and the fields each needs (numbers > 0, or lists of them for longrope),
# and the optional numeric fields transformers reads.
ROPE_NUMBERS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings", "beta_fast",
                "beta_slow", "attention_factor", "mscale", "mscale_all_dim")
ROPE_FIELDS = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor",),
    "longrope": ("short_factor", "long_factor"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
}


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
        """Parse a config dict; every field's type and range is checked before anything is built."""
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: top level is {type(d).__name__}; expected a JSON object (a VISA config)")
        missing = [k for k in REQUIRED_FIELDS if k not in d]
        if missing:
            raise CheckpointError(f"{source}: missing required field(s) {missing}; expected a VISA (ChatUniVi/LLaMA) config")
        f = Fields(d, source, CheckpointError)
        select = d.get("mm_vision_select_feature", "patch")
        if select != "patch":
            raise CheckpointError(f"{source}: mm_vision_select_feature={select!r}; expected 'patch' (CLS dropped)")
        vocab = f.integer("vocab_size", lo=1, hi=MAX_VOCAB)
        hidden = f.integer("hidden_size", lo=1, hi=MAX_HIDDEN)
        heads = f.integer("num_attention_heads", lo=1, hi=MAX_HEADS)
        if hidden % heads or (hidden // heads) % 2:
            raise CheckpointError(
                f"{source}: hidden_size {hidden} / num_attention_heads {heads} is not an even integer head size; "
                "expected heads that divide the hidden size into even (rotary) head sizes"
            )
        kv_heads = heads if d.get("num_key_value_heads") is None else f.integer("num_key_value_heads", lo=1, hi=heads)
        if heads % kv_heads:
            raise CheckpointError(f"{source}: num_key_value_heads {kv_heads} does not divide num_attention_heads {heads}")
        config = cls(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=f.integer("intermediate_size", lo=1, hi=MAX_INTERMEDIATE),
            num_hidden_layers=f.integer("num_hidden_layers", lo=1, hi=MAX_LAYERS),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            mm_hidden_size=f.integer("mm_hidden_size", lo=1, hi=MAX_HIDDEN),
            rms_norm_eps=f.number("rms_norm_eps", 1e-6, positive=True),
            max_position_embeddings=f.integer("max_position_embeddings", 2048, lo=1, hi=MAX_POSITIONS),
            rope_theta=f.number("rope_theta", 10000.0, positive=True),
            rope_scaling=_rope_scaling(f, hidden // heads),
            out_dim=f.integer("out_dim", 256, lo=1, hi=MAX_HIDDEN),
            mm_vision_select_layer=f.integer("mm_vision_select_layer", -2, lo=-MAX_LAYERS, hi=MAX_LAYERS),
            bos_token_id=f.integer("bos_token_id", 1, lo=0, hi=vocab - 1),
            eos_token_id=f.integer("eos_token_id", 2, lo=0, hi=vocab - 1),
            pad_token_id=0 if d.get("pad_token_id") is None else f.integer("pad_token_id", lo=0, hi=vocab - 1),
            tie_word_embeddings=f.boolean("tie_word_embeddings", False),
            cluster=_cluster_config(f),
        )
        params = config.llm_parameters()
        if params > MAX_PARAMETERS:
            raise CheckpointError(
                f"{source}: the sizes describe a {params / 1e9:.0f}B-parameter LLM; expected at most "
                f"{MAX_PARAMETERS / 1e9:.0f}B (check vocab_size, hidden_size, intermediate_size, num_hidden_layers)"
            )
        return config

    def llm_parameters(self) -> int:
        """Parameters of the LLaMA these sizes describe (embeddings, attention, MLP, norms, head)."""
        head_dim = self.hidden_size // self.num_attention_heads
        attention = 2 * self.hidden_size * self.hidden_size + 2 * self.hidden_size * head_dim * self.num_key_value_heads
        layer = attention + 3 * self.hidden_size * self.intermediate_size + 2 * self.hidden_size
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return embeddings + self.num_hidden_layers * layer + self.hidden_size

    @classmethod
    def from_file(cls, path: str | Path) -> "VisaConfig":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: not found; a VISA checkpoint folder must contain config.json")
        return cls.from_dict(read_json_object(path, "a VISA config.json", CheckpointError), source=str(path))


def _rope_scaling(f: Fields, head_dim: int) -> dict[str, Any] | None:
    """``rope_scaling``: null, or an object with a known ``type``/``rope_type`` and the numbers it needs."""
    scaling = f.optional_dict("rope_scaling")
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if not isinstance(kind, str) or kind not in ROPE_FIELDS:
        raise f.fail("rope_scaling", scaling, f"an object whose 'type' is one of {list(ROPE_FIELDS)}")
    fields = Fields(scaling, f"{f.source} rope_scaling ({kind})", CheckpointError)
    for name in ROPE_FIELDS[kind]:
        if kind == "longrope":
            value = scaling.get(name)
            if not isinstance(value, list) or len(value) != head_dim // 2:
                raise fields.fail(name, value, f"a list of head_size/2 = {head_dim // 2} positive numbers")
            items = Fields(dict(enumerate(value)), f"{fields.source} {name}", CheckpointError)
            for i in range(len(value)):
                items.number(i, positive=True)
        else:
            fields.number(name, positive=True)
    for name in ROPE_NUMBERS:
        if name in scaling:
            fields.number(name, positive=True)
    return scaling


def _cluster_config(f: Fields) -> ClusterConfig:
    """Chat-UniVi's ``config`` object: clustering on, cluster counts that shrink level by level."""
    sub = f.optional_dict("config") or {}
    sub_fields = Fields(sub, f"{f.source} config", CheckpointError)
    if not sub_fields.boolean("use_cluster", True):
        raise CheckpointError(f"{f.source}: config.use_cluster is false; only the clustered (Chat-UniVi) VISA is supported")
    knn = ClusterConfig().knn
    clusters: list[int] = []
    for i, default in enumerate(ClusterConfig().clusters):
        hi = clusters[-1] if clusters else MAX_CLUSTERS
        lo = knn[i + 1] if i + 1 < len(knn) else 1
        clusters.append(sub_fields.integer(f"spatial_cluster_rate{i}", default, lo=lo, hi=hi))
    return ClusterConfig(clusters=tuple(clusters), knn=knn)
