"""Train the tiny VISA on procedural scenes; write it in the real checkpoint format.

The modules are the runtime's own (CLIP tower, token clustering, projector, LLaMA, [SEG]
head, SAM mask decoder), loaded from a tiny random checkpoint written by
``runtime.tiny.write_tiny_checkpoint``. SAM's image encoder, prompt encoder and the mask
decoder's two-way transformer keep their random weights: they are the costliest networks,
and random features keep colour and position.

In a scene every object has its own colour, so the [SEG] embedding only has to say which
colour to segment. Training runs in two stages so that 2 CPU cores suffice:

1. ``decoder``: the mask decoder's output layers (upscaling and mask hypernetwork) learn to
   segment the object of a colour from a fixed random code per colour, with VISA's mask
   loss (2 x BCE + 0.5 x dice) on the target frame's low-resolution logits. The frozen
   transformer's outputs are computed once per pooled frame and code; the upscaling is
   local (2x2 stride-2 transposed convolutions, per-pixel norm), so it trains on crops.
2. ``reasoner``: CLIP tower, projector, LLaMA (re-initialised at std 0.02) and [SEG] head
   learn to answer queries: VISA's text cross-entropy on the answer tokens + the distance of
   the [SEG] embedding (and of the head's output at every position after the query words) to
   the code of the answer's colour (through the frozen decoder that is the mask loss's only
   lever on the [SEG] embedding). Image tokens fade in from 30% to 60% of the steps.
   An optional second phase (``kinds_steps``, off by default: it did not lift the other
   kinds above chance in the CPU budget, see training/reproduce.md) adds queries that need
   the images (``reasoner_kinds``) with two grounding losses: every image token's head output
   to the colour code of the object under it, and the [SEG] position's last-layer attention
   on the answer's tokens. The optional cached phase (``cached_steps``, off by default) trains
   LLaMA + [SEG] head alone with CLIP and projector frozen: each scene's tokens are computed
   once (training.token_cache), so a step costs only the LLaMA and thousands of steps fit.
   ``position_ramp`` adds x/y ramps to CLIP's position embeddings so that tokens carry position.

The stages train disjoint parameters from independent random streams: they run in two
processes (``workers=2``) with the same result as one after the other.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from visa_edge.runtime import prompt as vprompt
from visa_edge.runtime import sam, scenes
from visa_edge.runtime.checkpoint import load_state_dict, quiet_transformers
from visa_edge.runtime.llm import expand_image_tokens
from visa_edge.runtime.model import LLM_PREFIXES, PROJECTOR, SAM, SEG_HEAD, VisaModel
from visa_edge.runtime.sam import SegMaskDecoder
from visa_edge.runtime.tiny import TinyCheckpoint, TinySpec, _write_shards, write_tiny_checkpoint

from . import token_cache
from .samples import HELD_OUT_SEED0, WindowSpec, draw, frame_indices

COLOUR_NAMES = tuple(scenes.COLOURS)
STAGES = ("decoder", "reasoner")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights (with the torch version and thread count)."""

    seed: int = 0
    pool_frames: int = 20  # target frames encoded once (SAM + frozen decoder transformer) for the decoder stage
    decoder_steps: int = 400
    reasoner_steps: int = 500
    decoder_lr: float = 2e-3
    reasoner_lr: float = 4e-3  # from std-0.02 weights, attention needs big steps to find the query words
    warmup: int = 10
    crop: int = 32  # decoder-stage crop of the 64x64 embedding grid (tokens)
    queries_per_step: int = 4
    # Optional second phase of the reasoner stage (0: off, the committed recipe): query kinds
    # that need the images (half of each step's queries stay colour_shape), images in full.
    kinds_steps: int = 0
    kinds_lr: float = 1e-3
    reasoner_kinds: tuple[str, ...] = ("colour_shape", "ordering", "position")
    # Optional cached phase (0: off): CLIP and projector frozen, the tokens of ``cache_scenes`` scenes
    # computed once (training.token_cache), LLaMA + [SEG] head trained on ``reasoner_kinds``.
    cached_steps: int = 0
    cached_lr: float = 2e-3
    cache_scenes: int = 200
    cached_windows: int = 4  # windows per step, ``queries_per_step`` queries each
    cached_grounded: bool = False  # + the grounding losses (``token_weight``, ``attn_weight``) on the target frame
    threads: int = 1  # per stage process (two stages in parallel use the 2 cores)
    position_ramp: float = 0.0  # x and y ramps of this amplitude on two CLIP position-embedding channels (0: none)
    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    code_weight: float = 1.0
    token_weight: float = 4.0  # second phase: the colour code of the object under every image token
    attn_weight: float = 1.0  # second phase: the [SEG] position's last-layer attention on the answer's tokens
    window: WindowSpec = field(default_factory=WindowSpec)
    spec: TinySpec = field(default_factory=TinySpec)


def setup_determinism(seed: int, threads: int) -> None:
    """Fixed seeds, thread count and deterministic kernels: the same run gives the same bits."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)).mean()


def image_weight(step: int, steps: int) -> float:
    """Curriculum of the reasoner stage: image tokens are zero for the first 30% of the steps, then
    fade in linearly to full by 60%. Without images the only thing that varies is the query, and the
    [SEG] state learns to read its words; with varying images from the start it stays at the mean code."""
    return float(np.clip((step / steps - 0.3) / 0.3, 0.0, 1.0))


def query_end(model: VisaModel, query: str, n_references: int) -> int:
    """Index (in the prompt ids, image placeholders counted once) of the first token after the query words."""
    full = vprompt.conversation(query, n_references)
    text = vprompt.normalize_query(query)
    return len(model.prompt.encode(full[: full.rindex(text) + len(text)]))


def n_refs_tokens(tokens: torch.Tensor) -> int:
    """Extra positions the image tokens add once spliced in (each placeholder id becomes T tokens)."""
    return tokens.shape[0] * (tokens.shape[1] - 1)


def answer_span(model: VisaModel, query: str, n_references: int) -> int:
    """Number of answer tokens at the end of the prompt ("It is [SEG].</s>")."""
    full = model.prompt(query, n_references)
    head = f"{vprompt.SYSTEM} USER: {vprompt.question(query, n_references)} ASSISTANT:"
    return len(full) - len(model.prompt.encode(head))


def transformer_outputs(decoder: SegMaskDecoder, emb: torch.Tensor, segs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two-way transformer part of ``SegMaskDecoder.forward``: mask-token states [Q,256], image states [Q,256,h,w]."""
    d = decoder.decoder
    q = segs.shape[0]
    tokens = torch.cat([torch.cat([d.iou_token.weight, d.mask_tokens.weight]).unsqueeze(0).expand(q, -1, -1),
                        segs.unsqueeze(1)], dim=1)
    hs, src = d.transformer((emb + decoder.dense).expand(q, -1, -1, -1), decoder.image_pe.expand(q, -1, -1, -1), tokens)
    return hs[:, 1], src.transpose(1, 2).reshape(q, *emb.shape[1:])


def mask_head(decoder: SegMaskDecoder, mask_states: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """The output part of ``SegMaskDecoder.forward``: upscaling x hypernetwork -> low-res logits [Q,h*4,w*4]."""
    d = decoder.decoder
    up = d.output_upscaling(src)
    hyper = d.output_hypernetworks_mlps[0](mask_states)
    return (hyper.unsqueeze(1) @ up.flatten(2)).reshape(src.shape[0], up.shape[-2], up.shape[-1])


def low_res_mask(mask: np.ndarray) -> torch.Tensor:
    """Ground truth on the decoder's 256x256 low-res grid (square frames fill SAM's whole input)."""
    t = torch.from_numpy(mask).float()[None, None]
    return F.interpolate(t, (4 * sam.IMAGE_SIZE // sam.PATCH_SIZE,) * 2, mode="bilinear", align_corners=False)[0, 0]


@dataclass
class PoolItem:
    mask_states: torch.Tensor  # [Q,256]
    src: torch.Tensor  # [Q,256,64,64]
    masks: torch.Tensor  # [Q,256,256] low-res ground truth


class Trainer:
    """The model, the fixed colour codes and the two stages."""

    def __init__(self, model: VisaModel, cfg: TrainConfig, stage: str, log):
        self.model, self.cfg, self.log = model, cfg, log
        self.decoder = model.mask_decoder_net()
        self.codes = colour_codes(cfg.seed, model.config.out_dim)
        self.rng = np.random.default_rng([cfg.seed, STAGES.index(stage)])  # stages are independent
        self.t0 = time.perf_counter()

    def seg_and_ce(self, tokens: torch.Tensor, queries: list[str], attend: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """[SEG] embeddings [Q,256], the mean answer-token cross-entropy, per query the head's
        output at every position from the end of the query words to the [SEG] position, the
        head's output at every image token [F,T,256] (the images precede the query: the same for
        all) and, with ``attend`` (eager attention), the last layer's attention of the [SEG]
        position over the image tokens [Q,heads,F*T].

        The prompts run as one batch, right-padded: attention is causal, so padding after a
        prompt changes none of its states.
        """
        m = self.model
        n_refs = tokens.shape[0] - 1
        embed = m.llm.get_input_embeddings()
        rows = []
        for q in queries:
            ids = m.prompt(q, n_refs)
            embeds, seg_pos = expand_image_tokens(ids, tokens, embed, m.prompt.seg_token_id)
            after_query = query_end(m, q, n_refs) + n_refs_tokens(tokens)
            rows.append((embeds[0], seg_pos[0], after_query, ids, answer_span(m, q, n_refs)))
        length = max(r[0].shape[0] for r in rows)
        batch = torch.stack([F.pad(e, (0, 0, 0, length - e.shape[0])) for e, *_ in rows])
        out = m.llm.model(inputs_embeds=batch, use_cache=False, output_attentions=attend)
        hidden = out.last_hidden_state
        segs, ces, dense = [], [], []
        for h, (e, seg_pos, after_query, ids, span) in zip(hidden, rows):
            n = e.shape[0]
            ces.append(F.cross_entropy(m.llm.lm_head(h[n - span - 1 : n - 1]), torch.tensor(ids[-span:])))
            segs.append(m.text_hidden_fcs(h[seg_pos]))
            dense.append(m.text_hidden_fcs(h[after_query : seg_pos + 1]))
        ids = rows[0][3]
        placeholders = [j for j, t in enumerate(ids) if t == vprompt.IMAGE_TOKEN_INDEX]
        starts = [p + i * (tokens.shape[1] - 1) for i, p in enumerate(placeholders)]
        at_images = torch.stack([hidden[0, p : p + tokens.shape[1]] for p in starts])
        attention = None
        if attend:
            image_pos = torch.cat([torch.arange(p, p + tokens.shape[1]) for p in starts])
            attention = torch.stack([out.attentions[-1][i, :, r[1]][:, image_pos] for i, r in enumerate(rows)])
        return torch.stack(segs), torch.stack(ces).mean(), dense, m.text_hidden_fcs(at_images), attention

    def colour_index(self, scene: scenes.Scene, k: int) -> int:
        return COLOUR_NAMES.index(scene.objects[k].colour)

    def run_stage(self, name: str, steps: int, lr: float, params: list[nn.Parameter], batches: Iterator) -> None:
        if steps == 0:
            return
        cfg = self.cfg
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps))
        )
        with tqdm(range(steps), desc=f"train-tiny {name}", disable=self.log is None) as bar:
            for step in bar:
                parts = next(batches)
                opt.zero_grad(set_to_none=True)
                parts["loss"].backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                row = {"stage": name, "step": step, **{k: round(v.item(), 6) for k, v in parts.items()},
                       "lr": sched.get_last_lr()[0], "seconds": round(time.perf_counter() - self.t0, 2)}
                if self.log is not None:
                    self.log.write(json.dumps(row) + "\n")
                    self.log.flush()
                bar.set_postfix(loss=f"{row['loss']:.3f}")

    def pool(self) -> list[PoolItem]:
        """Target frames with every visible object: frozen SAM encoder + transformer outputs for its colour code."""
        cfg, items = self.cfg, []
        for _ in tqdm(range(cfg.pool_frames), desc="train-tiny pool", disable=self.log is None):
            scene = scenes.generate(int(self.rng.integers(0, HELD_OUT_SEED0)), cfg.window.n_frames, cfg.window.size)
            t = int(self.rng.integers(0, cfg.window.n_frames))
            ks = [k for k in range(len(scene.objects)) if scene.area(k, t) > 0]
            image, _ = sam.preprocess(scene.frames[t])
            with torch.no_grad():
                emb = self.model.sam["image_encoder"](image[None])
                states, src = transformer_outputs(self.decoder, emb, self.codes[[self.colour_index(scene, k) for k in ks]])
            items.append(PoolItem(states, src, torch.stack([low_res_mask(scene.masks[t, k]) for k in ks])))
        return items

    def decoder_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """A crop of a pooled frame; every visible object decoded from its colour code's transformer outputs."""
        cfg, pool = self.cfg, self.pool()
        while True:
            item = pool[int(self.rng.integers(0, len(pool)))]
            grid, k = item.src.shape[-1], int(self.rng.integers(0, item.masks.shape[0]))
            ys, xs = torch.nonzero(item.masks[k] > 0, as_tuple=True)  # centre the crop on one object
            y, x = (int(np.clip(int(c.float().mean()) // 4 - cfg.crop // 2 + self.rng.integers(-4, 5), 0, grid - cfg.crop))
                    for c in (ys, xs))
            src = item.src[..., y : y + cfg.crop, x : x + cfg.crop]
            gt = item.masks[:, 4 * y : 4 * (y + cfg.crop), 4 * x : 4 * (x + cfg.crop)]
            logits = mask_head(self.decoder, item.mask_states, src)
            bce = F.binary_cross_entropy_with_logits(logits, gt)
            dice = dice_loss(logits, (gt > 0.5).float())
            yield {"bce": bce, "dice": dice, "loss": cfg.bce_weight * bce + cfg.dice_weight * dice}

    def reasoner_batches(self, kinds: tuple[str, ...], steps: int, fade: bool, grounded: bool
                         ) -> Iterator[dict[str, torch.Tensor]]:
        """Queries on a window: answer-token cross-entropy + [SEG] embedding to the answer's colour code.
        ``fade``: image tokens weighted by ``image_weight``. ``grounded``: + the image tokens' colour
        codes and the [SEG] position's attention on the answer's tokens (``token_weight``, ``attn_weight``)."""
        cfg = self.cfg
        step = 0
        while True:
            step += 1
            sample, scene = draw(int(self.rng.integers(0, HELD_OUT_SEED0)), self.rng, cfg.window, cfg.queries_per_step,
                                 kinds)
            weight = image_weight(step, steps) if fade else 1.0
            window_masks = scene.masks[frame_indices(sample.target, cfg.window)]
            tokens, shares = token_cache.frame_tokens(self.model, sample.frames, window_masks)
            segs, ce, dense, at_images, attention = self.seg_and_ce(tokens * weight, [q.text for q in sample.queries],
                                                                    grounded)
            target = self.codes[[self.colour_index(scene, q.targets[sample.target]) for q in sample.queries]]
            scale = (self.codes**2).mean()
            code = ((segs - target) ** 2).mean() / scale
            # every position after the query words must know the answer too: many more gradients
            # towards reading the query than the [SEG] position alone gives
            dense_code = torch.stack([((d - c) ** 2).mean() for d, c in zip(dense, target)]).mean() / scale
            parts = {"ce": ce, "code": code, "dense_code": dense_code,
                     "loss": cfg.ce_weight * ce + cfg.code_weight * (code + dense_code)}
            if grounded:
                # every image token says which object's colour it covers (0: background), and the [SEG]
                # position looks at the answer's tokens: a query about positions or sizes can then copy
                # the answer's code from the right tokens
                object_codes = self.codes[[self.colour_index(scene, k) for k in range(len(scene.objects))]]
                parts["token_code"] = ((at_images - shares @ object_codes) ** 2).mean() / scale
                answer = shares.flatten(0, 1)[:, [q.targets[sample.target] for q in sample.queries]].T  # [Q,F*T]
                parts["attention"] = -torch.log((attention * answer[:, None]).sum(-1) + 1e-3).mean()
                parts["loss"] = (parts["loss"] + cfg.token_weight * parts["token_code"]
                                 + cfg.attn_weight * parts["attention"])
            yield parts

    def cached_batches(self, kinds: tuple[str, ...], grounded: bool) -> Iterator[dict[str, torch.Tensor]]:
        """Queries on windows of cached scenes (frozen image tokens): answer cross-entropy + [SEG]
        embedding (and the head's output after the query words) to the answer's colour code.
        ``grounded``: + the target frame's tokens' colour codes and the [SEG] position's attention on
        the answer's tokens there (``token_weight``, ``attn_weight``)."""
        cfg, m = self.cfg, self.model
        cache = [token_cache.cache_scene(m, int(self.rng.integers(0, HELD_OUT_SEED0)), cfg.window, kinds, COLOUR_NAMES)
                 for _ in tqdm(range(cfg.cache_scenes), desc="train-tiny cache", disable=self.log is None)]
        prompts = {}  # (query text, references) -> (ids, first position after the query words, answer span)
        scale = (self.codes**2).mean()
        while True:
            rows, target, shares, object_codes, answers = [], [], [], [], []
            for _ in range(cfg.cached_windows):
                scene = cache[int(self.rng.integers(0, len(cache)))]
                t = int(self.rng.integers(0, cfg.window.n_frames))
                tokens = token_cache.window(scene, t, cfg.window)
                n_refs = tokens.shape[0] - 1  # fewer at the start of a clip
                for q in token_cache.draw_queries(scene, t, self.rng, cfg.queries_per_step):
                    if (q.text, n_refs) not in prompts:
                        prompts[q.text, n_refs] = (m.prompt(q.text, n_refs),
                                                   query_end(m, q.text, n_refs) + n_refs_tokens(tokens),
                                                   answer_span(m, q.text, n_refs))
                    rows.append((tokens, *prompts[q.text, n_refs]))
                    target.append(scene.colours[q.targets[t]])
                    shares.append(scene.shares[t])
                    object_codes.append(self.codes[scene.colours])
                    answers.append(scene.shares[t][:, q.targets[t]])
            segs, ce, dense, at_target, attention = token_cache.batch_prompts(m, rows, grounded)
            codes = self.codes[target]
            code = ((segs - codes) ** 2).mean() / scale
            dense_code = torch.stack([((d - c) ** 2).mean() for d, c in zip(dense, codes)]).mean() / scale
            parts = {"ce": ce, "code": code, "dense_code": dense_code,
                     "loss": cfg.ce_weight * ce + cfg.code_weight * (code + dense_code)}
            if grounded:
                under = torch.stack([s @ c for s, c in zip(shares, object_codes)])  # [B,T,out]
                parts["token_code"] = ((at_target - under) ** 2).mean() / scale
                # half the heads look at the answer; the others stay free to read the query words
                on_answer = (attention[:, : attention.shape[1] // 2] * torch.stack(answers)[:, None]).sum(-1)
                parts["attention"] = -torch.log(on_answer + 1e-3).mean()
                parts["loss"] = (parts["loss"] + cfg.token_weight * parts["token_code"]
                                 + cfg.attn_weight * parts["attention"])
            yield parts


def colour_codes(seed: int, dim: int) -> torch.Tensor:
    """The fixed random code [n_colours, dim] the [SEG] embedding of each colour is trained towards."""
    return torch.randn(len(COLOUR_NAMES), dim, generator=torch.Generator().manual_seed(seed))


def reinit_llm(llm: nn.Module, std: float = 0.02) -> None:
    """LLaMA's own initialisation (normal(0, 0.02), unit norms). The tiny writer's wider random
    weights (std 0.1) saturate attention; from there the [SEG] state never learns to look at the query."""
    with torch.no_grad():
        for module in llm.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif type(module).__name__.endswith("RMSNorm"):
                module.weight.fill_(1.0)


def reinit_linear(linear: nn.Linear, std: float = 0.02) -> None:
    """Small projector weights: the writer's projector maps every frame to tokens ~6x the norm of the
    text embeddings and nearly equal to each other, an attention sink that hides the query words."""
    with torch.no_grad():
        linear.weight.normal_(0.0, std)
        linear.bias.zero_()


def add_position_ramps(tower: nn.Module, amplitude: float) -> None:
    """Add x and y ramps (-amplitude..amplitude over the patch grid) to position-embedding channels 0 and 1.
    The tiny CLIP's random position embeddings (RMS 0.05) vanish next to its patch embeddings (RMS ~7):
    without the ramps the clustered tokens carry no position (a linear probe finds none)."""
    if amplitude == 0:
        return
    weight = tower.embeddings.position_embedding.weight  # [1 + side*side, C], CLS first
    side = math.isqrt(weight.shape[0] - 1)
    ramp = torch.linspace(-amplitude, amplitude, side)
    with torch.no_grad():
        weight[1:, 0] += ramp.repeat(side)
        weight[1:, 1] += ramp.repeat_interleave(side)


def stage_parameters(model: VisaModel, stage: str) -> dict[str, nn.Parameter]:
    """The parameters a stage trains, by their name in ``model``."""
    d = "sam.mask_decoder."
    prefixes = (d + "output_upscaling.", d + "output_hypernetworks_mlps.0.") if stage == "decoder" else (
        "vision_tower.", "mm_projector.", "llm.", "text_hidden_fcs.")
    return {k: p for k, p in model.named_parameters() if k.startswith(prefixes)}


def train_stage(cfg: TrainConfig, ckpt: TinyCheckpoint, stage: str, log_path: Path | None) -> dict[str, torch.Tensor]:
    """Run one stage from the initial checkpoint; returns the trained parameters by name.

    The stages train disjoint parameters from independent random streams, so they can run in
    parallel processes and give the same bits as one after the other.
    """
    setup_determinism(cfg.seed, cfg.threads)
    model = VisaModel.from_pretrained(ckpt.checkpoint, clip=ckpt.clip)
    params = stage_parameters(model, stage)
    if stage == "reasoner":
        reinit_llm(model.llm)
        reinit_linear(model.mm_projector)
        add_position_ramps(model.vision_tower, cfg.position_ramp)
    for p in params.values():
        p.requires_grad_(True)
    trained = list(params.values())
    with open(log_path, "w") if log_path else nullcontext() as log:
        t = Trainer(model, cfg, stage, log)
        if stage == "decoder":
            t.run_stage(stage, cfg.decoder_steps, cfg.decoder_lr, trained, t.decoder_batches())
        else:
            t.run_stage(stage, cfg.reasoner_steps, cfg.reasoner_lr, trained,
                        t.reasoner_batches(("colour_shape",), cfg.reasoner_steps, True, False))
            model.llm.set_attn_implementation("eager")  # attention weights for the grounding loss
            t.run_stage("kinds", cfg.kinds_steps, cfg.kinds_lr, trained,
                        t.reasoner_batches(cfg.reasoner_kinds, cfg.kinds_steps, False, True))
            model.llm.set_attn_implementation("sdpa")  # the runtime's (and the first phase's) attention
            t.run_stage("cached", cfg.cached_steps, cfg.cached_lr, [params[k] for k in params if k.startswith(
                ("llm.", "text_hidden_fcs."))], t.cached_batches(cfg.reasoner_kinds, cfg.cached_grounded))
    return {k: p.detach().clone() for k, p in params.items()}


def train(cfg: TrainConfig, out: str | Path, progress: bool = True, workers: int = 1) -> TinyCheckpoint:
    """Train from a tiny random checkpoint written to ``out``; overwrite its weights with the trained ones.

    Writes ``out/visa``, ``out/clip``, ``out/train_log.jsonl`` (one line per step) and
    ``out/train_config.json``. ``workers=2`` runs the two stages in parallel processes (same result).
    """
    out = Path(out)
    setup_determinism(cfg.seed, cfg.threads)
    ckpt = write_tiny_checkpoint(out, seed=cfg.seed, spec=cfg.spec)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str) + "\n")
    logs = {stage: out / f"train_log_{stage}.jsonl" if progress else None for stage in STAGES}
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [pool.submit(train_stage, cfg, ckpt, stage, logs[stage]) for stage in STAGES]
            trained = [job.result() for job in jobs]
    else:
        trained = [train_stage(cfg, ckpt, stage, logs[stage]) for stage in STAGES]
    model = VisaModel.from_pretrained(ckpt.checkpoint, clip=ckpt.clip)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for state in trained:
            for k, v in state.items():
                params[k].copy_(v)
    if progress:
        with open(out / "train_log.jsonl", "w") as log:
            for stage in STAGES:
                log.write(logs[stage].read_text())
                logs[stage].unlink()
    save(model, ckpt)
    return ckpt


def save(model: VisaModel, ckpt: TinyCheckpoint) -> None:
    """Overwrite the weights of ``ckpt`` (written by the tiny writer) with ``model``'s, in its format (bf16 shards)."""
    from transformers import CLIPVisionModel

    from visa_edge.runtime.clip import ClipVisionTower

    keys = list(load_state_dict(ckpt.checkpoint))
    state = {}
    for prefix, module in (("", model.llm), (PROJECTOR, model.mm_projector), (SEG_HEAD, model.text_hidden_fcs), (SAM, model.sam)):
        for k, v in module.state_dict().items():
            if prefix or k.startswith(LLM_PREFIXES):
                state[prefix + k] = v.detach().to(torch.bfloat16)
    if set(state) != set(keys):
        raise RuntimeError(f"trained keys differ from the checkpoint's: {sorted(set(state) ^ set(keys))[:10]}")
    _write_shards(ckpt.checkpoint, {k: state[k] for k in keys}, "bin", 2)
    with quiet_transformers():
        clip = CLIPVisionModel.from_pretrained(str(ckpt.clip), local_files_only=True)
        ClipVisionTower(clip, model.config.mm_vision_select_layer).load_state_dict(model.vision_tower.state_dict())
        clip.save_pretrained(str(ckpt.clip))
