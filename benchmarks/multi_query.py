"""Reasoning-step latency for several queries on one window: one multi-query step vs one step per query.

The multi-query step prefills the shared prompt prefix (system text and every image) once, runs
the per-query suffixes against its KV cache, the SAM encoder once and the mask decoder on all
[SEG] embeddings together; the baseline runs the single-query step once per query. The mask
decoder is also timed alone against SAM's own ``MaskDecoder`` on the same inputs. Each round
runs the multi-query step for every count and the single-query step for every query, in an
order that changes per round (``timing.measure_interleaved``); the baseline for Q queries is the
sum of that round's single-query steps on the first Q queries. Ratios are taken within the
run, so they hold under a changing machine load.

The model is a mid-size VISA written by ``runtime/tiny.py`` and read by the real loader: a
LLaMA a CPU can run on a full window (12 frames x 112 tokens + prompt, ~1,460 positions), a
reduced SAM image encoder and SAM's full-size mask decoder; random weights (latency depends on
shapes, not values; subnormal floats are flushed to zero while timing). The prompt is tokenised
one token per word or punctuation mark (the loader's WordLevel path, like the golden fixture's
tokenizer), close to Vicuna's count; the tiny checkpoint's 400-piece tokenizer would make each
question about four times longer than VISA's and overstate the per-query LLM work. The frames'
visual tokens are given (the streaming reasoner caches them per frame), so CLIP is not timed.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from visa_edge.runtime.model import VisaModel
from visa_edge.runtime.prompt import SEG_TOKEN, conversation
from visa_edge.runtime.reasoning_networks import MAX_FRAMES
from visa_edge.runtime.reasoning import ReasoningStep
from visa_edge.runtime.sam import SamEncoderConfig
from visa_edge.runtime.tiny import TinySpec, write_tiny_checkpoint

from . import system
from .models import synthetic_frames
from .timing import RepeatSettings, measure_interleaved, summarize, synchronizer

MULTI_QUERY = "multi-query"  # the ``visa-edge bench --config`` name
SCHEMA = "visa-edge-bench-multi-query"
SCHEMA_VERSION = 1
QUERIES = (
    "the red ball moving to the right",
    "which object would a child most likely pick up first?",
    "the person holding a cup",
    "the dog on the left",
    "what could be used to cut the bread?",
    "the second car from the front",
    "the largest animal in the video",
    "where can I sit down to rest?",
)
TARGETS = {4: 1.5, 8: 2.0}  # multi-query step vs one query, at most
WORD = r"\n|\w+|[^\w\s]"  # one token per word, punctuation mark or newline


@dataclass(frozen=True)
class MultiQuerySettings:
    """Model sizes, inputs and repeats of the multi-query benchmark."""

    spec: TinySpec = TinySpec(
        hidden_size=512, intermediate_size=1408, num_layers=4, num_heads=8,
        sam=SamEncoderConfig(embed_dim=128, depth=2, num_heads=2, global_attn_indexes=(1,)),
    )
    frames: int = MAX_FRAMES
    frame_hw: tuple[int, int] = (480, 640)
    query_counts: tuple[int, ...] = (1, 2, 4, 8)
    repeat: RepeatSettings = RepeatSettings(warmup=1, repeats=3, min_repeats=2, budget_s=240.0)

    def __post_init__(self):
        if not self.query_counts or min(self.query_counts) < 1 or max(self.query_counts) > len(QUERIES):
            raise ValueError(f"query_counts {self.query_counts}: expected counts in 1..{len(QUERIES)}")


QUICK = MultiQuerySettings(
    spec=TinySpec(), frames=3, frame_hw=(240, 320), query_counts=(1, 2, 4),
    repeat=RepeatSettings(warmup=1, repeats=1, min_repeats=1, budget_s=0.1),
)


def settings_for(quick: bool, repeats: int | None = None, warmup: int | None = None) -> MultiQuerySettings:
    """The preset (``quick``: CI smoke on the tiny sizes) with the given repeat overrides."""
    s = QUICK if quick else MultiQuerySettings()
    rep = s.repeat
    if repeats:
        rep = replace(rep, repeats=repeats, min_repeats=min(rep.min_repeats, repeats))
    if warmup is not None:
        rep = replace(rep, warmup=warmup)
    return replace(s, repeat=rep)


def run_multi_query(
    settings: MultiQuerySettings, device: torch.device, flush_denormals: bool = True, log: Callable[[str], None] | None = None
) -> dict:
    """Build the model, check the multi-query masks against the single-query ones, time both; the result dict."""
    log = log or (lambda m: print(m, file=sys.stderr))
    start = time.perf_counter()
    machine = system.machine()
    with tempfile.TemporaryDirectory(prefix="visa-edge-multi-query-") as tmp:
        log(f"writing and loading the model ({settings.spec.hidden_size}-wide LLaMA, {settings.spec.num_layers} layers)")
        tiny = write_tiny_checkpoint(Path(tmp), fmt="safetensors", shards=1, spec=settings.spec)
        write_word_tokenizer(tiny.checkpoint, [conversation(q, settings.frames - 1) for q in QUERIES])
        model = VisaModel.from_pretrained(tiny.checkpoint, clip=tiny.clip, device=device)
    flushing = torch.set_flush_denormal(flush_denormals)
    try:
        step = ReasoningStep(model)
        frames = synthetic_frames(settings.frames, settings.frame_hw)
        gen = torch.Generator().manual_seed(0)
        tokens = torch.randn(settings.frames, model.config.cluster.tokens_per_frame, model.config.hidden_size, generator=gen)
        tokens = tokens.to(device)
        queries = QUERIES[: max(settings.query_counts)]
        log(f"checking {len(queries)} queries in one step against one step per query")
        agreement = check_agreement(step, frames, tokens, queries)
        timings: dict[int, list[dict[str, float]]] = {q: [] for q in settings.query_counts}
        cpu: dict[str, list[float]] = {}
        runners = cpu_timed(runners_for(step, frames, tokens, settings.query_counts, timings), cpu)
        for name, fn in runners.items():  # the agreement check ran every single-query shape already
            if name.startswith("shared/"):
                log(f"warm-up: {name}")
                for _ in range(settings.repeat.warmup):
                    fn()
        for q in timings:
            timings[q].clear()
        cpu.clear()
        log(f"timing {len(runners)} runners in interleaved rounds")
        samples = measure_interleaved(runners, settings.repeat, synchronizer(device))
        log("timing the mask decoder alone against SAM's own decoder")
        decoders = decoder_runners(model, device, settings.query_counts)
        for fn in decoders.values():
            fn()
        decoder_samples = measure_interleaved(decoders, settings.repeat, synchronizer(device))
    finally:
        torch.set_flush_denormal(False)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "device": system.device_info(device),
        "versions": system.versions(),
        "settings": {**asdict(settings), "flush_denormals": flushing},
        "model": {
            "llm": f"LLaMA H={settings.spec.hidden_size}, {settings.spec.num_layers} layers, MLP {settings.spec.intermediate_size}, "
                   f"{settings.spec.num_heads} heads, fp32",
            "sam": f"SAM ViT dim {settings.spec.sam.embed_dim}, depth {settings.spec.sam.depth}; full-size mask decoder",
            "prefill_positions": prefill_positions(model, settings.frames),
            "note": "random weights; visual tokens given (CLIP not timed)",
        },
        "queries": list(queries),
        "agreement": agreement,
        "rows": rows(samples, timings, settings.query_counts),
        "samples_s": samples,
        "cpu_rows": rows(cpu, timings, settings.query_counts),
        "decoder_rows": decoder_rows(decoder_samples, settings.query_counts),
        "decoder_samples_s": decoder_samples,
        "targets": {str(q): t for q, t in TARGETS.items()},
        "load_average_end": system.load_average(),
        "total_s": round(time.perf_counter() - start, 1),
    }


def write_word_tokenizer(folder: Path, texts: Sequence[str]) -> None:
    """Replace the checkpoint's sentencepiece tokenizer by a WordLevel ``tokenizer.json`` over the words of ``texts``."""
    from tokenizers import AddedToken, Regex, Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    specials = ["<unk>", "<s>", "</s>"]
    words = dict.fromkeys(w for text in texts for w in re.findall(WORD, text.replace("</s>", " ")))
    vocab = {t: i for i, t in enumerate([*specials, *(w for w in words if w not in specials)])}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(WORD), behavior="removed", invert=True)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer.add_special_tokens([AddedToken(t, normalized=False) for t in specials])
    tokenizer.add_tokens([AddedToken(SEG_TOKEN, normalized=False)])
    for name in ("tokenizer.model", "added_tokens.json"):
        (folder / name).unlink()
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps({k: v for k, v in config.items() if k.endswith("_token")}))


def runners_for(
    step: ReasoningStep, frames: Sequence[np.ndarray], tokens: torch.Tensor, counts: Sequence[int],
    timings: dict[int, list[dict[str, float]]],
) -> dict[str, Callable[[], object]]:
    """``shared/Q``: one step on the first Q queries (stage timings kept); ``single/i``: the
    single-query step on query i, for the queries after the first (``shared/1`` is query 1's)."""

    def shared(q: int) -> Callable[[], object]:
        return lambda: timings[q].append(step(frames, list(QUERIES[:q]), frame_tokens=tokens).timings)

    def single(i: int) -> Callable[[], object]:
        return lambda: step(frames, QUERIES[i - 1], frame_tokens=tokens)

    out = {f"shared/{q}": shared(q) for q in counts}
    out.update({f"single/{i}": single(i) for i in range(2, max(counts) + 1)})
    return out


def decoder_runners(model: VisaModel, device: torch.device, counts: Sequence[int]) -> dict[str, Callable[[], object]]:
    """``decoder/Q``: the deployed mask decoder (``SegMaskDecoder``) on Q [SEG] embeddings;
    ``sam/Q``: SAM's own ``MaskDecoder`` as VISA calls it (``repeat_interleave`` of the image per
    prompt, ``multimask_output=False``) on the same inputs; one image embedding."""
    gen = torch.Generator().manual_seed(1)
    emb = torch.randn(1, 256, 64, 64, generator=gen).to(device)
    segs = {q: (0.3 * torch.randn(q, 256, generator=gen)).to(device) for q in counts}
    dec = model.mask_decoder_net()

    def ours(q: int) -> Callable[[], object]:
        return lambda: torch_inference(dec, emb, segs[q])

    def sams(q: int) -> Callable[[], object]:
        return lambda: torch_inference(model.sam["mask_decoder"], emb, dec.image_pe, segs[q][:, None], dec.dense, multimask_output=False)

    return {**{f"decoder/{q}": ours(q) for q in counts}, **{f"sam/{q}": sams(q) for q in counts}}


def torch_inference(fn: Callable[..., object], *args, **kwargs) -> object:
    with torch.inference_mode():
        return fn(*args, **kwargs)


def decoder_rows(samples: dict[str, list[float]], counts: Sequence[int]) -> list[dict]:
    """Per query count: p50 of both decoders, each one's ratio to its own one-query call, and the speed-up."""
    one = {k: summarize(samples[f"{k}/1"])["p50"] for k in ("decoder", "sam")}
    out = []
    for q in counts:
        ours, sams = summarize(samples[f"decoder/{q}"]), summarize(samples[f"sam/{q}"])
        out.append({
            "queries": q, "decoder_ms": ours, "sam_ms": sams,
            "decoder_vs_one_query": ours["p50"] / one["decoder"], "sam_vs_one_query": sams["p50"] / one["sam"],
            "speedup_vs_sam": sams["p50"] / ours["p50"],
        })
    return out


def cpu_timed(runners: dict[str, Callable[[], object]], cpu: dict[str, list[float]]) -> dict[str, Callable[[], object]]:
    """``runners`` that also append the CPU seconds of this process (all threads) per call to ``cpu[name]``.

    Other jobs on a shared machine stretch wall-clock time much more than CPU time, so CPU-time
    ratios show what the variants cost on an idle machine."""

    def timed(name: str, fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> None:
            t0 = time.process_time()
            fn()
            cpu.setdefault(name, []).append(time.process_time() - t0)

        return run

    return {name: timed(name, fn) for name, fn in runners.items()}


def separate_seconds(samples: dict[str, list[float]], q: int) -> list[float]:
    """Per round: seconds of the single-query steps on the first ``q`` queries, summed."""
    names = ["shared/1"] + [f"single/{i}" for i in range(2, q + 1)]
    return [sum(round_) for round_ in zip(*(samples[n] for n in names))]


def check_agreement(step: ReasoningStep, frames: Sequence[np.ndarray], tokens: torch.Tensor, queries: Sequence[str]) -> dict:
    """Max-abs differences of the multi-query step's [SEG] states and logits vs single-query steps, and mask pixels that differ."""
    multi = step(frames, list(queries), frame_tokens=tokens)
    singles = [step(frames, q, frame_tokens=tokens) for q in queries]
    return {
        "queries": len(queries),
        "seg_hidden_max_abs": max(float((multi.seg_hidden[i] - s.seg_hidden[0]).abs().max()) for i, s in enumerate(singles)),
        "logits_max_abs": max(float(np.abs(multi.mask_logits[i] - s.logits).max()) for i, s in enumerate(singles)),
        "mask_pixels_differing": int(sum((multi.masks[i] != s.mask).sum() for i, s in enumerate(singles))),
    }


def rows(samples: dict[str, list[float]], timings: dict[int, list[dict[str, float]]], counts: Sequence[int]) -> list[dict]:
    """Per query count: latency of both variants, ratios to one query, speed-up, median stage times of the shared step.

    Two denominators for "one query": the one-query step (``shared/1``, n samples) and the mean
    single-query step of a round (its single-query steps on all queries summed, / their number;
    p50 over rounds), which averages n x max(counts) calls and so varies less with the load.
    """
    one = summarize(samples["shared/1"])["p50"]
    mean_single = summarize(separate_seconds(samples, max(counts)))["p50"] / max(counts)
    out = []
    for q in counts:
        shared = summarize(samples[f"shared/{q}"])
        separate = summarize(separate_seconds(samples, q))
        stages = {k: round(1000 * statistics.median(t[k] for t in timings[q]), 2) for k in timings[q][0]} if timings[q] else {}
        out.append({
            "queries": q,
            "shared_ms": shared,
            "separate_ms": separate,
            "shared_vs_one_query": shared["p50"] / one,
            "shared_vs_mean_single_step": shared["p50"] / mean_single,
            "separate_vs_one_query": separate["p50"] / one,
            "speedup_vs_separate": separate["p50"] / shared["p50"],
            "target_vs_one_query": TARGETS.get(q),
            "shared_stage_ms_p50": stages,
        })
    return out


def prefill_positions(model: VisaModel, frames: int) -> int:
    """LLM positions of one query's prefill on ``frames`` frames (prompt + 112 visual tokens per frame)."""
    return model.prompt.sequence_length(QUERIES[0], frames, model.config.cluster.tokens_per_frame)


def markdown(result: dict) -> str:
    """Header and table of a result."""
    m, d = result["machine"], result["device"]
    load = "/".join(f"{x:g}" for x in m["load_average"] or []) or "n/a"
    load_end = "/".join(f"{x:g}" for x in result["load_average_end"] or []) or "n/a"
    a = result["agreement"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} usable cores, device {d['type']}; load average {load} at start, {load_end} at end.",
        f"Model: {result['model']['llm']}; {result['model']['sam']}; {result['model']['prefill_positions']} prefill positions "
        f"per query ({result['model']['note']}).",
        f"Agreement ({a['queries']} queries in one step vs one step each): [SEG] states max-abs {a['seg_hidden_max_abs']:.1e}, "
        f"logits max-abs {a['logits_max_abs']:.1e}, {a['mask_pixels_differing']} mask pixels differ.",
        "",
        "| queries | one step, all queries (ms p50) | one step per query (ms p50) | all-in-one / one-query step "
        "| all-in-one / mean single step | per-query steps / one-query step | speed-up | target "
        "| LLM / SAM encoder / decoder / postprocess (ms p50, all-in-one) | n |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        st = r["shared_stage_ms_p50"]
        stages = " / ".join(f"{st.get(k, float('nan')):.0f}" for k in ("llm_prefill", "sam_encoder", "mask_decoder", "postprocess"))
        target = f"<= {r['target_vs_one_query']:g}" if r["target_vs_one_query"] else ""
        lines.append(
            f"| {r['queries']} | {r['shared_ms']['p50']:.0f} | {r['separate_ms']['p50']:.0f} | x{r['shared_vs_one_query']:.2f} "
            f"| **x{r['shared_vs_mean_single_step']:.2f}** | x{r['separate_vs_one_query']:.2f} | x{r['speedup_vs_separate']:.2f} "
            f"| {target} | {stages} | {r['shared_ms']['n']} |"
        )
    if result.get("cpu_rows"):
        lines += ["", "CPU time of this process (all threads; ms p50), same calls:", "",
                  "| queries | one step, all queries | one step per query | all-in-one / mean single step | speed-up |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['queries']} | {r['shared_ms']['p50']:.0f} | {r['separate_ms']['p50']:.0f} "
                  f"| **x{r['shared_vs_mean_single_step']:.2f}** | x{r['speedup_vs_separate']:.2f} |" for r in result["cpu_rows"]]
    if result.get("decoder_rows"):
        lines += ["", "Mask decoder alone (ms p50, same rounds), vs SAM's own decoder as VISA calls it:", "",
                  "| queries | decoder | SAM's decoder | decoder / its one-query call | SAM's / its one-query call | speed-up |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['queries']} | {r['decoder_ms']['p50']:.1f} | {r['sam_ms']['p50']:.1f} | x{r['decoder_vs_one_query']:.2f} "
                  f"| x{r['sam_vs_one_query']:.2f} | x{r['speedup_vs_sam']:.2f} |" for r in result["decoder_rows"]]
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> dict[str, Path]:
    """``out/multi_query.json`` and ``out/multi_query.md``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "multi_query.json", "markdown": out / "multi_query.md"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["markdown"].write_text(markdown(result))
    return paths


def run_multi_query_bench(args: argparse.Namespace) -> int:
    """``visa-edge bench --config multi-query``: run, write OUT/multi_query.{json,md}, print the table."""
    given = [flag for flag, value in (("--backends", args.backends), ("--stages", args.stages), ("--checkpoint", args.checkpoint),
                                      ("--clip", args.clip), ("--xmem", args.xmem), ("--budget-s", args.budget_s)) if value]
    if given:
        print(f"visa-edge bench: error: {', '.join(given)}: not used by --config {MULTI_QUERY}", file=sys.stderr)
        return 2
    result = run_multi_query(settings_for(args.quick, args.repeats, args.warmup), torch.device(args.device),
                             flush_denormals=not args.keep_denormals)
    paths = write(result, Path(args.out))
    print(markdown(result), end="")
    print(f"wrote {', '.join(str(p) for p in paths.values())} ({result['total_s']:.0f} s)")
    return 0
