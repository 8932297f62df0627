"""The reasoning step: reference frames + target frame + 1..8 queries -> one target-frame mask per query.

CLIP+clustering tokens per frame -> LLaMA prefill -> [SEG] state per query -> ``text_hidden_fcs``
-> SAM encoder on the target (once) -> [SEG]-prompted mask decoder (all queries in one call)
-> logits at frame size. Several queries share the prefill of the system text and images
(``llm.query_seg_states``). Windows of several streams run together with
``ReasoningStep.batch`` (one padded prefill, one SAM encoder call on a GPU where the engine batches).
The heavy networks run behind ``Engine``s, so the same step runs on PyTorch, ONNX Runtime or
TensorRT.
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
from .llm import batched_seg_states, query_seg_states
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


@dataclass(frozen=True)
class Window:
    """One reasoning request: frames (references in temporal order, then the target), 1..MAX_QUERIES
    queries, and optionally the frames' cached visual tokens [N,112,H]."""

    frames: Sequence[np.ndarray]
    queries: str | Sequence[str]
    frame_tokens: torch.Tensor | None = None


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
        # ``batch`` runs the SAM encoder on all targets in one call off the CPU only: on a CPU it saves
        # no time (compute-bound: 132 vs 123 ms per window for a batch of 4, benchmarks/RESULTS.md).
        self.batch_sam_encoder = self.device.type != "cpu"

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
        return self.batch([Window(frames, query_or_queries, frame_tokens)])[0]

    def batch(self, windows: Sequence[Window]) -> list[ReasoningResult]:
        """One result per window (e.g. requests of different streams served together), in order.

        Windows with one query share one right-padded LLM prefill (``llm.batched_seg_states``);
        a window with several queries keeps its own shared-prefix prefill (``llm.query_seg_states``:
        batching its queries as rows would prefill its images once per query). The [SEG] head
        runs per window (a tiny MLP; batching its rows would change their float summation
        order for nothing); the SAM encoder runs once on every target where its engine
        takes a batch (PyTorch) and ``batch_sam_encoder`` is set (the default off the CPU), else
        once per target (the exported encoders have a static batch of 1); the mask decoder runs per window (its engines take one image). A single window runs
        exactly the one-window step. Any bad window raises for the whole batch (callers wanting
        per-window isolation retry the windows one by one). Every result's ``timings`` are the
        batch's stage times: each window waited for all of them.
        """
        if not windows:
            raise InputError("windows: none given; expected at least one (frames, queries) window")
        queries = [self._check(f"window {k}: " if len(windows) > 1 else "", w) for k, w in enumerate(windows)]
        timer = StageTimer(self.device)
        m = self.model
        with torch.inference_mode():
            image_tokens = [self._image_tokens(w, timer) for w in windows]
            with timer.stage("llm_prefill"):
                hidden = self._seg_states(queries, image_tokens)
            with timer.stage("seg_head"):
                seg = [m.text_hidden_fcs(h.to(self.dtype)) for h in hidden]
            targets = [w.frames[-1] for w in windows]
            with timer.stage("sam_encoder"):
                embeddings, resized = self._sam_embeddings(targets)
            outs = []
            with timer.stage("mask_decoder"):
                for emb, s in zip(embeddings, seg):
                    outs.append(self.engines["mask_decoder"].run({"image_embeddings": emb, "seg_embeddings": s}))
            with timer.stage("postprocess"):
                logits = [sam.postprocess(o["low_res_logits"], r, t.shape[:2]).cpu().numpy()
                          for o, r, t in zip(outs, resized, targets)]
        return [
            ReasoningResult(
                queries=q,
                masks=(lg > 0).astype(np.uint8),
                mask_logits=lg,
                low_res_logits=o["low_res_logits"].float().cpu(),
                seg_hidden=h.float().cpu(),
                seg_embedding=s.float().cpu(),
                ious=o["iou"].float().cpu().numpy().reshape(-1),
                timings=dict(timer.timings),
            )
            for q, lg, o, h, s in zip(queries, logits, outs, hidden, seg)
        ]

    def _check(self, prefix: str, window: Window) -> tuple[str, ...]:
        """The window's queries, after checking its frames and tokens (InputError starting with ``prefix``)."""
        try:
            queries = as_queries(window.queries)
        except InputError as e:
            raise InputError(f"{prefix}{e}") from None
        frames = window.frames
        if not frames:
            raise InputError(f"{prefix}frames: none given; expected 1 to 12 frames (references..., target)")
        if len(frames) > MAX_REFERENCES + 1:
            raise InputError(f"{prefix}frames: {len(frames)} given; expected at most {MAX_REFERENCES} references + 1 target")
        for i, f in enumerate(frames):
            sam.check_rgb(f, f"{prefix}frame {i}")
        if window.frame_tokens is not None and window.frame_tokens.shape[0] != len(frames):
            raise InputError(f"{prefix}frame_tokens: {window.frame_tokens.shape[0]} rows for {len(frames)} frames")
        return queries

    def _image_tokens(self, window: Window, timer: StageTimer) -> torch.Tensor:
        """The prompt's image tokens [n_images,T,H]: references then target (the one frame twice if alone)."""
        tokens = window.frame_tokens
        if tokens is None:
            with timer.stage("visual_tokens"):
                tokens = self.visual_tokens(window.frames)
        refs = tokens[:-1] if tokens.shape[0] > 1 else tokens
        return torch.cat([refs, tokens[-1:]], 0)

    def _seg_states(self, queries: list[tuple[str, ...]], image_tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        """[SEG] states [Q,H] per window: one-query windows batched together when there are several."""
        m = self.model
        prompts = [[m.prompt(q, t.shape[0] - 1) for q in qs] for qs, t in zip(queries, image_tokens)]
        singles = [k for k, qs in enumerate(queries) if len(qs) == 1] if len(queries) > 1 else []
        states: dict[int, torch.Tensor] = {}
        if len(singles) > 1:
            rows = batched_seg_states(m.llm, [prompts[k][0] for k in singles], [image_tokens[k] for k in singles],
                                      m.prompt.seg_token_id)
            states = {k: rows[j : j + 1] for j, k in enumerate(singles)}
        return [states[k] if k in states else query_seg_states(m.llm, prompts[k], image_tokens[k], m.prompt.seg_token_id)
                for k in range(len(queries))]

    def _sam_embeddings(self, targets: list[np.ndarray]) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        """SAM image embeddings [1,256,64,64] per target and each target's resized size."""
        engine = self.engines["sam_encoder"]
        pre = [sam.preprocess(t) for t in targets]
        images = torch.stack([image for image, _ in pre]).to(self.device, self.dtype)
        if engine.backend == "torch" and self.batch_sam_encoder:
            embeddings = list(engine.run({"image": images})["image_embeddings"].split(1))
        else:
            embeddings = [engine.run({"image": image[None]})["image_embeddings"] for image in images]
        return embeddings, [r for _, r in pre]
