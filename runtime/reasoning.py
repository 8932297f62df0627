"""The reasoning step: reference frames + target frame + 1..8 queries -> one target-frame mask per query.

CLIP+clustering tokens per frame -> LLaMA prefill -> [SEG] state per query -> ``text_hidden_fcs``
-> SAM encoder on the target (once) -> [SEG]-prompted mask decoder (all queries in one call)
-> logits at frame size. Several queries share the prefill of the system text and images
(``llm.query_seg_states``). The heavy networks run behind ``Engine``s, so the same step runs
on PyTorch, ONNX Runtime or TensorRT.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from . import sam
from .backends import Engine
from .errors import InputError
from .llm import query_seg_states
from .model import VisaModel
from .reasoning_networks import MAX_QUERIES, REASONING_NETWORKS, torch_engines
from .prompt import MAX_REFERENCES


@dataclass
class ReasoningResult:
    """Outputs of one reasoning step for the target frame: row q belongs to ``queries[q]``.

    ``mask``, ``logits`` and ``iou`` are the first query's (what single-query callers read).
    """

    queries: tuple[str, ...]
    masks: np.ndarray  # uint8 [Q,H,W], 1 = object (logits > 0)
    mask_logits: np.ndarray  # float32 [Q,H,W] mask logits at frame size
    low_res_logits: torch.Tensor  # [Q,1,256,256]
    seg_hidden: torch.Tensor  # [Q,H] LLM state before [SEG]
    seg_embedding: torch.Tensor  # [Q,256] text_hidden_fcs output
    ious: np.ndarray  # float32 [Q] predicted IoU
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, all queries together

    @property
    def mask(self) -> np.ndarray:
        return self.masks[0]

    @property
    def logits(self) -> np.ndarray:
        return self.mask_logits[0]

    @property
    def iou(self) -> float:
        return float(self.ious[0])


def as_queries(query_or_queries: str | Sequence[str]) -> tuple[str, ...]:
    """One query or a sequence of 1..MAX_QUERIES queries as a tuple; InputError otherwise."""
    queries = (query_or_queries,) if isinstance(query_or_queries, str) else tuple(query_or_queries)
    if not 1 <= len(queries) <= MAX_QUERIES:
        raise InputError(f"queries: {len(queries)} given; expected 1 to {MAX_QUERIES} per reasoning step")
    bad = [type(q).__name__ for q in queries if not isinstance(q, str)]
    if bad:
        raise InputError(f"queries: expected strings, got {bad}")
    return queries


class StageTimer:
    """Wall-clock seconds per named stage (synchronising CUDA so GPU work is counted)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.timings: dict[str, float] = {}

    def stage(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                self.t0 = timer.now()

            def __exit__(self, *exc):
                timer.timings[name] = timer.timings.get(name, 0.0) + timer.now() - self.t0

        return _Stage()

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


class ReasoningStep:
    """Runs VISA's reasoning on frames with the networks behind ``engines`` (PyTorch by default)."""

    def __init__(self, model: VisaModel, engines: Mapping[str, Engine] | None = None):
        """``engines`` (e.g. from ``load_engines``) replace the PyTorch network of the same name;
        names that are not reasoning networks (the tracker's) are left to their users."""
        if model.llm is None:
            raise InputError("ReasoningStep: the model was loaded without its LLM (load_llm=False)")
        self.model = model
        given = {k: v for k, v in (engines or {}).items() if k in REASONING_NETWORKS}
        self.engines = {**torch_engines(model), **given}
        self.device = model.device
        self.dtype = model.mm_projector.weight.dtype

    def clip_pixels(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.stack([self.model.clip_preprocess(f) for f in frames]).to(self.device, self.dtype)

    def visual_tokens(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """Projected visual tokens [N,112,H] of each frame (cacheable per frame)."""
        pixels = self.clip_pixels(frames)
        return self.engines["visual_tokens"].run({"pixel_values": pixels})["visual_tokens"]

    def __call__(
        self,
        frames: Sequence[np.ndarray],
        query_or_queries: str | Sequence[str],
        frame_tokens: torch.Tensor | None = None,
    ) -> ReasoningResult:
        """Reason on ``frames`` = references in temporal order followed by the target, for one
        query or a sequence of up to MAX_QUERIES queries about the same window.

        With a single frame it is both the only reference and the target (VISA with one
        image token). ``frame_tokens`` ([N,112,H], one per frame) skips the visual encoder.
        """
        queries = as_queries(query_or_queries)
        if not frames:
            raise InputError("frames: none given; expected 1 to 12 frames (references..., target)")
        if len(frames) > MAX_REFERENCES + 1:
            raise InputError(f"frames: {len(frames)} given; expected at most {MAX_REFERENCES} references + 1 target")
        for i, f in enumerate(frames):
            sam.check_rgb(f, f"frame {i}")
        timer = StageTimer(self.device)
        m = self.model
        with torch.inference_mode():
            if frame_tokens is None:
                with timer.stage("visual_tokens"):
                    frame_tokens = self.visual_tokens(frames)
            elif frame_tokens.shape[0] != len(frames):
                raise InputError(f"frame_tokens: {frame_tokens.shape[0]} rows for {len(frames)} frames")
            refs = frame_tokens[:-1] if len(frames) > 1 else frame_tokens
            image_tokens = torch.cat([refs, frame_tokens[-1:]], 0)
            with timer.stage("llm_prefill"):
                prompts = [m.prompt(q, image_tokens.shape[0] - 1) for q in queries]
                hidden = query_seg_states(m.llm, prompts, image_tokens, m.prompt.seg_token_id)
            with timer.stage("seg_head"):
                seg = m.text_hidden_fcs(hidden.to(self.dtype))
            target = frames[-1]
            with timer.stage("sam_encoder"):
                image, resized = sam.preprocess(target)
                emb = self.engines["sam_encoder"].run({"image": image[None].to(self.device, self.dtype)})["image_embeddings"]
            with timer.stage("mask_decoder"):
                out = self.engines["mask_decoder"].run({"image_embeddings": emb, "seg_embeddings": seg})
            with timer.stage("postprocess"):
                logits = sam.postprocess(out["low_res_logits"], resized, target.shape[:2]).cpu().numpy()
        return ReasoningResult(
            queries=queries,
            masks=(logits > 0).astype(np.uint8),
            mask_logits=logits,
            low_res_logits=out["low_res_logits"].float().cpu(),
            seg_hidden=hidden.float().cpu(),
            seg_embedding=seg.float().cpu(),
            ious=out["iou"].float().cpu().numpy().reshape(-1),
            timings=timer.timings,
        )
