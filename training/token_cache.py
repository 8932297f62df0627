"""Frozen image tokens cached per scene: the reasoner's image-query phase costs only the LLaMA.

With CLIP, clustering and projector frozen, a frame's tokens never change, and they are per
frame (clustering runs frame by frame): a scene's 24 frames are encoded once and any window
is an index into them. A training step is then the tiny LLaMA + [SEG] head on a batch of
prompts (tens of ms instead of seconds), so thousands of steps fit the CPU budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from visa_edge.runtime import prompt as vprompt
from visa_edge.runtime import scenes
from visa_edge.runtime.clustering import ClusterLevel
from visa_edge.runtime.llm import expand_image_tokens
from visa_edge.runtime.model import VisaModel

from .samples import WindowSpec, frame_indices


@dataclass
class CachedScene:
    """One training scene: every frame's projected tokens and every query with its answer per frame."""

    tokens: torch.Tensor  # [n_frames,T,H], no grad
    shares: torch.Tensor  # [n_frames,T,K] share of each object's visible pixels under each token
    queries: list[scenes.Query]
    colours: list[int]  # colour index of each object
    visible: np.ndarray  # bool [n_frames, n_objects]

    def answerable(self, query: scenes.Query, t: int) -> bool:
        k = query.targets[t]
        return k >= 0 and bool(self.visible[t, k])


def frame_tokens(model: VisaModel, frames: list[np.ndarray], masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected tokens [F,T,H] of the frames (as the reasoning step computes them) and the share [F,T,K]
    of each object's visible pixels under each token (``masks``: uint8 [F,K,h,w])."""
    pixels = torch.stack([model.clip_preprocess(f) for f in frames])
    features = model.vision_tower(pixels)
    levels = model.clustering.levels(features)
    tokens = model.mm_projector(torch.cat([lv.merged for lv in levels], dim=1).to(features.dtype))
    return tokens, token_shares(levels, masks)


def token_shares(levels: list[ClusterLevel], masks: np.ndarray) -> torch.Tensor:
    """Share [F,T,K] of each object's pixels under each clustered token: the masks' area fraction per
    CLIP patch, averaged per cluster level after level as the clustering averages the features."""
    side = math.isqrt(levels[0].assign.shape[1])
    share = F.interpolate(torch.from_numpy(masks).float(), (side, side), mode="area").flatten(2).transpose(1, 2)
    out = []
    for lv in levels:
        onehot = (lv.assign.unsqueeze(-1) == torch.arange(lv.centers.shape[1])).float()  # [F,N,C]
        share = (onehot.transpose(1, 2) @ share) / (onehot.sum(1).unsqueeze(-1) + 1e-6)
        out.append(share)
    return torch.cat(out, dim=1)


def cache_scene(model: VisaModel, seed: int, spec: WindowSpec, kinds: tuple[str, ...],
                colour_names: tuple[str, ...]) -> CachedScene:
    """Encode every frame of scene ``seed`` once and keep its queries of ``kinds``."""
    scene = scenes.generate(seed, spec.n_frames, spec.size)
    with torch.no_grad():
        tokens, shares = frame_tokens(model, scene.frames, scene.masks)
    return CachedScene(
        tokens,
        shares,
        [q for q in scenes.queries(scene) if q.kind in kinds],
        [colour_names.index(o.colour) for o in scene.objects],
        scene.masks.reshape(*scene.masks.shape[:2], -1).any(-1),
    )


def draw_queries(scene: CachedScene, t: int, rng: np.random.Generator, n: int) -> list[scenes.Query]:
    """Up to ``n`` queries answerable at ``t``: half (at least one) colour-and-shape, the rest of other
    kinds, each kind at most once (colour-and-shape keeps being trained while the others are learnt)."""
    named = [q for q in scene.queries if q.kind == "colour_shape" and scene.answerable(q, t)]
    others: dict[str, list[scenes.Query]] = {}
    for q in scene.queries:
        if q.kind != "colour_shape" and scene.answerable(q, t):
            others.setdefault(q.kind, []).append(q)
    chosen = [named[i] for i in rng.permutation(len(named))[: max(1, n // 2)]]
    kinds = sorted(others)
    for i in rng.permutation(len(kinds))[: n - len(chosen)]:
        options = others[kinds[i]]
        chosen.append(options[int(rng.integers(0, len(options)))])
    return chosen


def batch_prompts(model: VisaModel, rows: list[tuple[torch.Tensor, list[int], int, int]], attend: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """For prompts ``(window tokens [F,T,H], ids, after_query, answer span)``: [SEG] embeddings [B,out], the
    mean answer cross-entropy, per prompt the head's output from the end of the query words to [SEG], the
    head's output at the target frame's tokens [B,T,out] and, with ``attend``, the last layer's attention
    of the [SEG] position on the target frame's tokens [B,heads,T].
    One right-padded batch: attention is causal, so padding changes no prompt's states."""
    embed = model.llm.get_input_embeddings()
    spliced = [expand_image_tokens(ids, tokens, embed, model.prompt.seg_token_id) for tokens, ids, _, _ in rows]
    length = max(e.shape[1] for e, _ in spliced)
    batch = torch.cat([F.pad(e, (0, 0, 0, length - e.shape[1])) for e, _ in spliced])
    out = model.llm.model(inputs_embeds=batch, use_cache=False, output_hidden_states=attend)
    segs, ces, dense, at_target, attention = [], [], [], [], []
    for i, (h, (e, seg_pos), (tokens, ids, after_query, span)) in enumerate(zip(out.last_hidden_state, spliced, rows)):
        n, per_image = e.shape[1], tokens.shape[1]
        ces.append(F.cross_entropy(model.llm.lm_head(h[n - span - 1 : n - 1]), torch.tensor(ids[-span:])))
        segs.append(model.text_hidden_fcs(h[seg_pos[0]]))
        dense.append(model.text_hidden_fcs(h[after_query : seg_pos[0] + 1]))
        placeholders = [j for j, t in enumerate(ids) if t == vprompt.IMAGE_TOKEN_INDEX]
        start = placeholders[-1] + (len(placeholders) - 1) * (per_image - 1)  # the target frame's first token
        at_target.append(h[start : start + per_image])
        if attend:
            row = seg_attention(model.llm.model, out.hidden_states[-2][i, : seg_pos[0] + 1])
            attention.append(row[:, start : start + per_image])
    return (torch.stack(segs), torch.stack(ces).mean(), dense, model.text_hidden_fcs(torch.stack(at_target)),
            torch.stack(attention) if attend else None)


def seg_attention(llama: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The last layer's attention [heads,L] of the last position over ``hidden`` [L,H] (that layer's input),
    recomputed for that one row as LLaMA's attention computes it: the batch keeps its fast fused attention."""
    layer = llama.layers[-1]
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)[None]  # [1,L,H]
    cos, sin = llama.rotary_emb(x, torch.arange(x.shape[1])[None])
    q = attn.q_proj(x).view(1, x.shape[1], -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(1, x.shape[1], -1, attn.head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = repeat_kv(k, attn.num_key_value_groups)
    return ((q[0, :, -1:] @ k[0].transpose(-1, -2)) * attn.scaling).softmax(-1)[:, 0]


def window(scene: CachedScene, t: int, spec: WindowSpec) -> torch.Tensor:
    """Tokens [references + 1, T, H] of the window ending at target frame ``t``."""
    return scene.tokens[frame_indices(t, spec)]
