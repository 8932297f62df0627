"""Cost of several queries in the streaming runtime: per-frame process() time with 1 and 3 queries.

Streams the first frames of a DAVIS 2016 sequence through ``StreamingRuntime`` (flow tracker,
blocking reasoning every 10 frames) with an oracle reasoner: query 1 is the ground-truth object,
queries 2 and 3 the frame's top and bottom quarters (regions for the tracker to carry, not model
output). The 1- and 3-query runs alternate, so both see the same machine load; the table gives the
p50 of process() on tracked frames (tracker step + label image + per-object results), of the tracker
step alone, and query 1's
J against the ground truth (does tracking more objects change the first one?).

    python -m benchmarks.multi_stream --out DIR [--davis ../shared/data/davis2016] [--sequence blackswan]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from visa_edge.runtime.streaming import Frame, ReasonOutput, StreamConfig, StreamingRuntime
from visa_edge.runtime.tracking.factory import tracker_factory

from .davis_tracker import load_sequence

QUERIES = ("the object", "the top quarter", "the bottom quarter")


class RegionOracle:
    """Masks by query: the ground truth of the target frame, or a fixed band of the frame."""

    def __init__(self, truth: dict[int, np.ndarray]):
        self.truth = truth

    def masks(self, index: int, query: str) -> np.ndarray:
        truth = self.truth[index]
        band = np.zeros_like(truth)
        h = truth.shape[0]
        if query == QUERIES[1]:
            band[: h // 4] = 1
        elif query == QUERIES[2]:
            band[3 * h // 4:] = 1
        return (truth > 0).astype(np.uint8) if query == QUERIES[0] else band

    def __call__(self, frames, queries):
        texts = [queries] if isinstance(queries, str) else list(queries)
        masks = np.stack([self.masks(frames[-1].index, q) for q in texts])
        return ReasonOutput(masks[0], masks=masks)


def run_once(frames: list[Frame], truth: dict[int, np.ndarray], queries: tuple[str, ...]) -> dict:
    """process() seconds on tracked frames and query 1's per-frame J."""
    config = StreamConfig(window=4, references=2, every_frames=10, min_confidence=0.0, blocking=True)
    times, steps, jaccard = [], [], []
    with StreamingRuntime(RegionOracle(truth), tracker_factory("flow"), config, query=list(queries)) as rt:
        for frame in frames:
            t0 = time.perf_counter()
            result = rt.process(frame)
            elapsed = time.perf_counter() - t0
            if result.mask_source == "tracked":
                times.append(elapsed)
                steps.append(result.track_s)
                gt = truth[frame.index] > 0
                union = np.logical_or(result.mask > 0, gt).sum()
                jaccard.append(1.0 if union == 0 else np.logical_and(result.mask > 0, gt).sum() / union)
    return {"process_s": times, "track_s": steps, "j_query1": jaccard}


def measure(davis: Path, sequence: str, n_frames: int, repeats: int) -> dict:
    names, images, masks = load_sequence(davis, sequence, max_frames=n_frames)
    frames = [Frame(i, i / 30, image, name) for i, (name, image) in enumerate(zip(names, images))]
    truth = dict(enumerate(masks))
    runs: dict[int, list[dict]] = {1: [], 3: []}
    for _ in range(repeats):  # alternate, so both see the same load
        for k in (1, 3):
            runs[k].append(run_once(frames, truth, QUERIES[:k]))
    rows = {}
    for k, rs in runs.items():
        times = [t for r in rs for t in r["process_s"]]
        steps = [t for r in rs for t in r["track_s"]]
        rows[k] = {"queries": k, "tracked_frames": len(times), "process_ms_p50": 1000 * float(np.median(times)),
                   "process_ms_p90": 1000 * float(np.percentile(times, 90)),
                   "tracker_step_ms_p50": 1000 * float(np.median(steps)),
                   "j_query1_mean": float(np.mean([j for r in rs for j in r["j_query1"]]))}
    return {"sequence": sequence, "frames": len(frames), "size": list(images[0].shape[:2]), "repeats": repeats,
            "rows": list(rows.values()), "ratio_p50_3_vs_1": rows[3]["process_ms_p50"] / rows[1]["process_ms_p50"]}


def table(result: dict) -> str:
    lines = [f"{result['sequence']}, {result['frames']} frames {result['size'][1]}x{result['size'][0]}, "
             f"{result['repeats']} alternating repeats",
             "| queries | tracked frames | process() p50 ms | p90 ms | of which tracker step p50 ms | J query 1 |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['queries']} | {r['tracked_frames']} | {r['process_ms_p50']:.1f} | "
                     f"{r['process_ms_p90']:.1f} | {r['tracker_step_ms_p50']:.1f} | {r['j_query1_mean']:.3f} |")
    lines.append(f"3 queries / 1 query, process() p50: x{result['ratio_p50_3_vs_1']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="folder for multi_stream.json")
    p.add_argument("--davis", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/davis2016")
    p.add_argument("--sequence", default="blackswan")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    result = measure(args.davis, args.sequence, args.frames, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "multi_stream.json").write_text(json.dumps(result, indent=2))
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
