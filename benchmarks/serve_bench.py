"""Reasoning as a service: steps/s and added latency for 1..8 concurrent streams, with and without
batching, and bytes sent per step with and without the server's per-stream token cache.

Runs a local Ray instance (loopback) with two applications of ``visa-edge serve`` on the tiny
checkpoint, one replica each: ``batched`` (Serve batches up to 8 requests into one
``ReasoningStep.batch``) and ``unbatched`` (max_batch_size=1: one request at a time). Only one is
driven at a time, by one ``RemoteReasoner`` per stream on its own thread; every stream count runs
on both, in alternating order, ``--repeats`` times, so each batched/unbatched ratio is measured
side by side. Each stream reasons on windows of 12 frames (11 references + target) that advance by
4 frames, so with the cache a step sends 4 new frames, without it (client ``known_frames=0``) all 12.
"Added latency" is what serving adds to the step: the client's round trip minus the step's stage
times the server reports for that request (JPEG encode and decode, HTTP, Serve's proxy, queueing
and batching wait; in a batch the stage times are the whole batch's). The local step
(``VisaReasoner`` in this process) runs alternately with the remote one on the same windows for
reference.

    python -m visa_edge.benchmarks.serve_bench --out out/bench/serve
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import statistics
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from visa_edge.runtime import synthetic
from visa_edge.runtime.remote_reasoner import RemoteReasoner
from visa_edge.runtime.streaming import Frame

from . import system

QUERY = "the red ball"
WINDOW, ADVANCE = 12, 4
MODES = {"batched": {"max_batch_size": 8, "batch_wait_timeout_s": 0.02},
         "unbatched": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}}


def _windows(stream: int, steps: int) -> list[list[Frame]]:
    frames = [Frame(i, i / 30, synthetic.frame(i + 1000 * stream), f"{i:05d}") for i in range(WINDOW + ADVANCE * steps)]
    return [frames[ADVANCE * k:ADVANCE * k + WINDOW] for k in range(steps)]


def _server_s(timings: dict[str, float]) -> float:
    """Seconds of step stages the server reports for a request (its batch's, when batched)."""
    return sum(v for k, v in timings.items() if k.startswith("server_"))


def _drive(url: str, token: str, streams: int, steps: int, known_frames: int = 64) -> dict:
    """``streams`` clients stepping concurrently; steps/s, latency and added latency per step, bytes per step."""
    clients = [RemoteReasoner(url, token, known_frames=known_frames, timeout_s=300) for _ in range(streams)]
    windows = [_windows(s, steps) for s in range(streams)]
    latencies: list[float] = []
    added: list[float] = []
    lock = threading.Lock()

    def run(s: int) -> None:
        for window in windows[s]:
            t0 = time.perf_counter()
            out = clients[s](window, QUERY)
            with lock:
                latencies.append(time.perf_counter() - t0)
                added.append(latencies[-1] - _server_s(out.timings))

    threads = [threading.Thread(target=run, args=(s,)) for s in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    step_bytes = [b for c in clients for b in c.stats.step_bytes[1:]]  # steady state: after each stream's first
    return {"streams": streams, "steps": len(latencies), "wall_s": wall, "steps_per_s": len(latencies) / wall,
            "latency_ms_p50": 1000 * statistics.median(latencies), "latency_ms_max": 1000 * max(latencies),
            "added_ms_p50": 1000 * statistics.median(added),
            "bytes_per_step": statistics.mean(step_bytes) if step_bytes else None}


def _added_latency(url: str, token: str, checkpoint, steps: int) -> dict:
    """Local and remote step on the same windows, alternating (order swapped every step): p50s and p50 of the
    per-step differences (both sides cache tokens, so steps after the first encode 4 new frames)."""
    from visa_edge.runtime.model import VisaModel
    from visa_edge.runtime.reasoning import ReasoningStep
    from visa_edge.runtime.streaming.visa_reasoner import VisaReasoner

    local = VisaReasoner(ReasoningStep(VisaModel.from_pretrained(checkpoint.checkpoint, clip=checkpoint.clip)))
    remote = RemoteReasoner(url, token, timeout_s=300)
    local(_windows(99, 1)[0], QUERY)  # warm-up
    times: dict[str, list[float]] = {"local": [], "remote": [], "server_step": []}
    for k, window in enumerate(_windows(0, steps)):
        for name in (("local", "remote") if k % 2 else ("remote", "local")):
            t0 = time.perf_counter()
            out = (local if name == "local" else remote)(window, QUERY)
            times[name].append(time.perf_counter() - t0)
            if name == "remote":
                times["server_step"].append(_server_s(out.timings))
    overhead = [r - s for r, s in zip(times["remote"], times["server_step"])]
    return {"steps": steps, **{f"{k}_ms_p50": 1000 * statistics.median(v) for k, v in times.items()},
            "added_ms_p50": 1000 * statistics.median(overhead)}


def _stage_scaling(checkpoint, sizes: list[int], repeats: int) -> list[dict]:
    """Where a step's time goes and what batching saves, in this process: per stage, ms per window for B
    one-window steps vs one ``ReasoningStep.batch`` of the same B windows (cached tokens), alternating;
    medians over ``repeats``. ``cpu`` is this process's CPU time (less sensitive than wall time to other
    jobs on a shared machine)."""
    from visa_edge.runtime.model import VisaModel
    from visa_edge.runtime.reasoning import ReasoningStep, Window

    step = ReasoningStep(VisaModel.from_pretrained(checkpoint.checkpoint, clip=checkpoint.clip))
    step.batch_sam_encoder = True  # measure what batching the encoder too saves here (the server skips it on a CPU)
    windows = []
    for s in range(max(sizes)):
        frames = [f.image for f in _windows(s, 1)[0]]
        windows.append(Window(frames, QUERY, step.visual_tokens(frames)))
    step.batch(windows[:1])  # warm-up
    out = []
    for b in sizes:
        runs: dict[str, list[dict[str, float]]] = {"single": [], "batched": []}
        for rep in range(repeats):
            for mode in (("single", "batched") if rep % 2 == 0 else ("batched", "single")):
                totals: dict[str, float] = {}
                t0, c0 = time.perf_counter(), time.process_time()
                results = [step.batch([w])[0] for w in windows[:b]] if mode == "single" else step.batch(windows[:b])[:1]
                totals["wall"], totals["cpu"] = time.perf_counter() - t0, time.process_time() - c0
                for r in results:
                    for k, v in r.timings.items():
                        totals[k] = totals.get(k, 0.0) + v
                runs[mode].append({k: 1000 * v / b for k, v in totals.items()})
        med = {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for mode, rs in runs.items()}
        out.append({"windows": b, "ms_per_window": med,
                    "wall_ratio_single_over_batched": med["single"]["wall"] / med["batched"]["wall"],
                    "cpu_ratio_single_over_batched": med["single"]["cpu"] / med["batched"]["cpu"]})
        print(f"stages B={b}: " + ", ".join(f"{k} {med['single'][k]:.0f}/{med['batched'][k]:.0f}" for k in med["single"])
              + " ms per window (single/batched)", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    import ray
    import torch
    from ray import serve

    from visa_edge.runtime.tiny import write_tiny_checkpoint
    from visa_edge.serve.app import ServeOptions, application

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (serve.json)")
    p.add_argument("--streams", default="1,2,4,8", help="concurrent stream counts (default 1,2,4,8)")
    p.add_argument("--steps", type=int, default=4, help="steps per stream (default 4)")
    p.add_argument("--repeats", type=int, default=2, help="rounds over every stream count and mode (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch threads, locally and in the replicas (default 2)")
    p.add_argument("--stage-batches", default="1,2,4", help="batch sizes of the in-process stage breakdown (default 1,2,4)")
    args = p.parse_args(argv)
    counts = [int(n) for n in args.streams.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    token = "bench-token"
    ckpt = write_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="serve-bench-")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    urls = {mode: f"http://127.0.0.1:{port}/{mode}" for mode in MODES}
    # the same torch thread count on both sides (Ray sets OMP_NUM_THREADS=1 in a replica otherwise)
    torch.set_num_threads(args.threads)
    stages = _stage_scaling(ckpt, [int(b) for b in args.stage_batches.split(",")], args.repeats)
    base = ServeOptions(checkpoint=str(ckpt.checkpoint), clip=str(ckpt.clip), token=token, cpus_per_replica=0,
                        torch_threads=args.threads)
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    rows = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for mode, batching in MODES.items():
            serve.run(application(dataclasses.replace(base, **batching)), name=mode, route_prefix=f"/{mode}")
            _drive(urls[mode], token, 1, 1)  # warm-up
        for rep in range(args.repeats):
            for k, n in enumerate(counts):
                order = list(MODES) if (rep + k) % 2 == 0 else list(reversed(MODES))
                for mode in order:
                    before = RemoteReasoner(urls[mode], token).get("/metrics")
                    row = {"mode": mode, "repeat": rep, **_drive(urls[mode], token, n, args.steps)}
                    after = RemoteReasoner(urls[mode], token).get("/metrics")
                    row["mean_batch_size"] = (after["requests"] - before["requests"]) / max(after["batches"] - before["batches"], 1)
                    rows.append(row)
                    print(f"repeat {rep} {mode:9s} streams={n} steps/s={row['steps_per_s']:.2f} "
                          f"p50={row['latency_ms_p50']:.0f} ms added={row['added_ms_p50']:.0f} ms "
                          f"batch={row['mean_batch_size']:.2f}", flush=True)
        added = _added_latency(urls["batched"], token, ckpt, 2 * args.steps)
        no_cache = _drive(urls["batched"], token, 1, args.steps, known_frames=0)
    finally:
        serve.shutdown()
        ray.shutdown()
    with_cache = [r["bytes_per_step"] for r in rows if r["mode"] == "batched" and r["streams"] == 1]
    result = {
        "schema": "visa-edge-bench-serve", "schema_version": 2, "created": datetime.now(timezone.utc).isoformat(),
        "machine": system.machine(), "load_average_end": system.load_average(),
        "settings": {"torch_threads": args.threads, "window": WINDOW, "advance": ADVANCE, "steps_per_stream": args.steps,
                     "repeats": args.repeats, "modes": MODES,
                     "model": "tiny checkpoint (runtime/tiny.py), CPU, one replica per mode"},
        "added_latency": added,
        "stage_scaling": stages,
        "bytes_per_step": {"with_cache": with_cache[0] if with_cache else None, "without_cache": no_cache["bytes_per_step"]},
        "summary": _summary(rows, counts),
        "rows": rows,
    }
    (out / "serve.json").write_text(json.dumps(result, indent=2))
    print(_table(result))
    return 0


def _summary(rows: list[dict], counts: list[int]) -> list[dict]:
    """Per stream count: median steps/s and added latency per mode, and the batched/unbatched steps/s ratio of
    each repeat (the two modes of one repeat ran back to back)."""
    out = []
    for n in counts:
        by = {m: [r for r in rows if r["mode"] == m and r["streams"] == n] for m in MODES}
        ratios = [b["steps_per_s"] / u["steps_per_s"] for b, u in zip(by["batched"], by["unbatched"])]
        entry = {"streams": n, "ratios": ratios, "ratio_median": statistics.median(ratios)}
        for m, rs in by.items():
            entry[m] = {"steps_per_s": statistics.median(r["steps_per_s"] for r in rs),
                        "added_ms_p50": statistics.median(r["added_ms_p50"] for r in rs),
                        "latency_ms_p50": statistics.median(r["latency_ms_p50"] for r in rs),
                        "mean_batch_size": statistics.median(r["mean_batch_size"] for r in rs)}
        out.append(entry)
    return out


def _table(result: dict) -> str:
    lines = ["| streams | steps/s batched | steps/s unbatched | ratio (median; per repeat) | added ms p50 batched | "
             "added ms p50 unbatched | p50 latency ms batched / unbatched | mean batch |",
             "|---|---|---|---|---|---|---|---|"]
    for e in result["summary"]:
        b, u = e["batched"], e["unbatched"]
        per = ", ".join(f"{r:.2f}" for r in e["ratios"])
        lines.append(f"| {e['streams']} | {b['steps_per_s']:.2f} | {u['steps_per_s']:.2f} | {e['ratio_median']:.2f} "
                     f"({per}) | {b['added_ms_p50']:.0f} | {u['added_ms_p50']:.0f} | {b['latency_ms_p50']:.0f} / "
                     f"{u['latency_ms_p50']:.0f} | {b['mean_batch_size']:.2f} |")
    bytes_ = result["bytes_per_step"]
    a = result["added_latency"]
    lines.append(f"\none stream: remote round trip p50 {a['remote_ms_p50']:.0f} ms, server step "
                 f"{a['server_step_ms_p50']:.0f} ms, added {a['added_ms_p50']:.0f} ms; local step (alternating) "
                 f"{a['local_ms_p50']:.0f} ms; bytes/step with cache {bytes_['with_cache']:.0f}, "
                 f"without {bytes_['without_cache']:.0f} ({bytes_['without_cache'] / bytes_['with_cache']:.1f}x)")
    lines += ["", "| windows B | stage: ms per window, B single steps / one batch of B | wall ratio single/batched | "
              "CPU-time ratio single/batched |", "|---|---|---|---|"]
    for e in result["stage_scaling"]:
        single, batched = e["ms_per_window"]["single"], e["ms_per_window"]["batched"]
        stages = ", ".join(f"{k} {single[k]:.0f}/{batched[k]:.0f}" for k in single if k not in ("wall", "cpu"))
        lines.append(f"| {e['windows']} | {stages} | {e['wall_ratio_single_over_batched']:.2f} | "
                     f"{e['cpu_ratio_single_over_batched']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
