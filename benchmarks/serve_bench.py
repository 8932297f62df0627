"""Reasoning as a service: steps/s and added latency for 1..8 concurrent streams, with and without
batching, and bytes sent per step with and without the server's per-stream token cache.

Runs a local Ray instance (loopback), deploys ``visa-edge serve``'s application on the tiny
checkpoint (one replica), and drives it with one ``RemoteReasoner`` per stream on its own thread.
Each stream reasons on windows of 12 frames (11 references + target) that advance by 4 frames,
so with the cache a step sends 4 new frames, without it (client ``known_frames=0``) all 12.
"Added latency" is what serving adds to the step: p50 over one stream's windows of the client's
round trip minus the step's stage times the server reports for that request (JPEG encode and
decode, HTTP, Serve's proxy and batching wait). The local step (``VisaReasoner`` in this process)
runs alternately on the same windows for reference.

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


def _windows(stream: int, steps: int) -> list[list[Frame]]:
    frames = [Frame(i, i / 30, synthetic.frame(i + 1000 * stream), f"{i:05d}") for i in range(WINDOW + ADVANCE * steps)]
    return [frames[ADVANCE * k:ADVANCE * k + WINDOW] for k in range(steps)]


def _drive(url: str, token: str, streams: int, steps: int, known_frames: int = 64) -> dict:
    """``streams`` clients stepping concurrently; latency per step and bytes per step."""
    clients = [RemoteReasoner(url, token, known_frames=known_frames, timeout_s=300) for _ in range(streams)]
    windows = [_windows(s, steps) for s in range(streams)]
    latencies: list[float] = []
    lock = threading.Lock()

    def run(s: int) -> None:
        for window in windows[s]:
            t0 = time.perf_counter()
            clients[s](window, QUERY)
            with lock:
                latencies.append(time.perf_counter() - t0)

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
                times["server_step"].append(sum(v for k, v in out.timings.items() if k.startswith("server_")))
    overhead = [r - s for r, s in zip(times["remote"], times["server_step"])]
    return {"steps": steps, **{f"{k}_ms_p50": 1000 * statistics.median(v) for k, v in times.items()},
            "added_ms_p50": 1000 * statistics.median(overhead)}


def main(argv: list[str] | None = None) -> int:
    import ray
    import torch
    from ray import serve

    from visa_edge.runtime.tiny import write_tiny_checkpoint
    from visa_edge.serve.app import ServeOptions, application, start

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (serve.json)")
    p.add_argument("--streams", default="1,2,4,8", help="concurrent stream counts (default 1,2,4,8)")
    p.add_argument("--steps", type=int, default=4, help="steps per stream (default 4)")
    p.add_argument("--threads", type=int, default=2, help="torch threads, locally and in the replica (default 2)")
    args = p.parse_args(argv)
    counts = [int(n) for n in args.streams.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    token = "bench-token"
    ckpt = write_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="serve-bench-")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    # the same torch thread count on both sides (Ray sets OMP_NUM_THREADS=1 in a replica otherwise)
    torch.set_num_threads(args.threads)
    base = ServeOptions(checkpoint=str(ckpt.checkpoint), clip=str(ckpt.clip), token=token, cpus_per_replica=0,
                        torch_threads=args.threads)
    modes = {"batched": {"max_batch_size": 8, "batch_wait_timeout_s": 0.02},
             "unbatched": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}}
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    rows, started = [], False
    try:
        for mode, batching in modes.items():
            opts = dataclasses.replace(base, **batching)
            if started:
                serve.run(application(opts), name="visa", route_prefix="/")
            else:
                start(opts, port=port)
                started = True
            _drive(url, token, 1, 1)  # warm-up
            for n in counts:
                before = RemoteReasoner(url, token).get("/metrics")
                row = {"mode": mode, **_drive(url, token, n, args.steps)}
                after = RemoteReasoner(url, token).get("/metrics")
                row["mean_batch_size"] = (after["requests"] - before["requests"]) / max(after["batches"] - before["batches"], 1)
                rows.append(row)
                print(f"{mode:9s} streams={n} steps/s={row['steps_per_s']:.2f} p50={row['latency_ms_p50']:.0f} ms "
                      f"batch={row['mean_batch_size']:.2f}", flush=True)
            if mode == "batched":
                added = _added_latency(url, token, ckpt, 2 * args.steps)
        no_cache = _drive(url, token, 1, args.steps, known_frames=0)
    finally:
        serve.shutdown()
        ray.shutdown()
    one = next(r for r in rows if r["mode"] == "batched" and r["streams"] == 1)
    result = {
        "schema": "visa-edge-bench-serve", "schema_version": 1, "created": datetime.now(timezone.utc).isoformat(),
        "machine": system.machine(), "load_average_end": system.load_average(),
        "settings": {"torch_threads": args.threads, "window": WINDOW, "advance": ADVANCE, "steps_per_stream": args.steps, "modes": modes,
                     "model": "tiny checkpoint (runtime/tiny.py), CPU, one replica"},
        "added_latency": added,
        "bytes_per_step": {"with_cache": one["bytes_per_step"], "without_cache": no_cache["bytes_per_step"]},
        "rows": rows,
    }
    (out / "serve.json").write_text(json.dumps(result, indent=2))
    print(_table(result))
    return 0


def _table(result: dict) -> str:
    lines = ["| mode | streams | steps/s | p50 latency ms | mean batch |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['mode']} | {r['streams']} | {r['steps_per_s']:.2f} | {r['latency_ms_p50']:.0f} | "
                     f"{r['mean_batch_size']:.2f} |")
    b = result["bytes_per_step"]
    a = result["added_latency"]
    lines.append(f"\none stream: remote round trip p50 {a['remote_ms_p50']:.0f} ms, server step "
                 f"{a['server_step_ms_p50']:.0f} ms, added {a['added_ms_p50']:.0f} ms; local step (alternating) "
                 f"{a['local_ms_p50']:.0f} ms; bytes/step with cache {b['with_cache']:.0f}, "
                 f"without {b['without_cache']:.0f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
