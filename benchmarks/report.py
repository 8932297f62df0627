"""The benchmark's outputs: ``bench.json`` (every figure), ``bench.md`` (tables) and PNG plots.

Plots use matplotlib's Agg backend (no display): ``latency.png`` (p50 per stage per backend,
p90 as the whisker, log scale) and ``staleness.png`` (capture -> mask ready over the stream,
with the anchor age below it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from .backends import BACKEND_LABELS, BACKENDS

SCHEMA = "visa-edge-bench"
SCHEMA_VERSION = 1
FILES = {"json": "bench.json", "markdown": "bench.md", "latency_plot": "latency.png", "staleness_plot": "staleness.png"}


def write_report(result: Mapping, out: Path) -> dict[str, Path]:
    """Write every output of ``result`` into ``out``; returns the paths by kind."""
    out.mkdir(parents=True, exist_ok=True)
    bad = check_finite(result)
    if bad:
        raise ValueError(f"benchmark result has non-finite figures at {bad[:10]}")
    paths = {k: out / v for k, v in FILES.items()}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["markdown"].write_text(markdown(result))
    plot_latency(result, paths["latency_plot"])
    plot_staleness(result.get("streaming"), paths["staleness_plot"])
    return paths


# ---------------------------------------------------------------- Markdown


def markdown(r: Mapping) -> str:
    """The report as Markdown: header, per-stage table with footnoted n/a reasons, streaming, memory, quality."""
    notes: list[str] = []
    parts = [header(r), stage_table(r["stages"], notes), "", backend_list(r["stages"]["backends"]), ""]
    parts += [flow_line(r["stages"].get("flow_tracker")), ""]
    if notes:
        parts += ["n/a and errors:", "", *[f"{i}. {n}" for i, n in enumerate(notes, 1)], ""]
    parts += [streaming_section(r.get("streaming")), memory_section(r["memory"]), quality_section(r.get("quality"))]
    return "\n".join(parts).rstrip() + "\n"


def header(r: Mapping) -> str:
    m, d, s = r["machine"], r["device"], r["settings"]["repeat"]
    load = "/".join(f"{x:g}" for x in m["load_average"]) if m.get("load_average") else "n/a"
    end = r.get("load_average_end")
    load_end = "/".join(f"{x:g}" for x in end) if end else "n/a"
    return "\n".join([
        f"# visa-edge benchmark: config `{r['config']}`{' (quick)' if r.get('quick') else ''}",
        "",
        f"- Measured {r['created']} on **{m['cpu']}**, {m['cores']} usable cores, {m['ram_gib']} GiB RAM, {m['os']}.",
        f"- Device: **{d['name']}** ({d['type']}).",
        f"- Load average (1/5/15 min) at start {load}, at end {load_end}.",
        f"- {r['note']}",
        "- Model: " + "; ".join(f"{k}: {v}" for k, v in r["model"]["architecture"].items()) + ".",
        f"- Timing: {s['warmup']} warm-up call(s) per backend, then up to {s['repeats']} timed calls "
        f"(at least {s['min_repeats']}, stopping after {s['budget_s']:g} s), "
        + ("backends interleaved round by round" if s["interleave"] else "one backend at a time (memory)")
        + "; latency in ms as p50 / p90 / p99, "
        "speed-up = eager p50 / backend p50 in the same run"
        + ("; subnormal floats flushed to zero (FTZ/DAZ)." if r["settings"].get("flush_denormals") else "."),
        "",
    ])


def stage_table(stages: Mapping, notes: list[str]) -> str:
    """One row per stage, one column per backend: ``p50 / p90 / p99 (xS)``, or n/a with a footnote number."""
    rows = ["## Per-stage latency", "", "| stage | " + " | ".join(BACKEND_LABELS[b] for b in BACKENDS) + " |",
            "|---|" + "---|" * len(BACKENDS)]
    for rec in stages["stages"]:
        cells = [cell(rec["results"].get(b, {"status": "n/a", "reason": "not measured"}), notes) for b in BACKENDS]
        rows.append(f"| {rec['stage']}: {rec['description']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def cell(res: Mapping, notes: list[str]) -> str:
    if res.get("status") == "ok":
        lat = res["latency_ms"]
        speed = res.get("speedup_vs_eager_p50")
        text = f"{fmt_ms(lat['p50'])} / {fmt_ms(lat['p90'])} / {fmt_ms(lat['p99'])}"
        return text + (f" (×{speed:.2f})" if speed is not None else "")
    reason = f"{res.get('status')}: {res.get('reason')}"
    if reason not in notes:
        notes.append(reason)
    return f"{res.get('status')} [{notes.index(reason) + 1}]"


def fmt_ms(ms: float) -> str:
    """Milliseconds with 3 significant digits (0.0207, 10.7, 1180)."""
    if ms >= 100:
        return f"{ms:.0f}"
    return f"{ms:.3g}"


def backend_list(backends: Mapping) -> str:
    lines = ["Backends:", ""]
    for name in BACKENDS:
        b = backends[name]
        lines.append(f"- {BACKEND_LABELS[name]}: {b['variant']}" + ("" if b["available"] else f" (n/a: {b['reason']})"))
    return "\n".join(lines)


def flow_line(flow: Mapping | None) -> str:
    if not flow:
        return ""
    if flow.get("status") != "ok":
        return f"Weight-free tracker step: n/a ({flow.get('reason')})."
    lat = flow["latency_ms"]
    return (f"Weight-free tracker step ({flow['description'].split(', ')[-1]}; OpenCV/numpy, one implementation): "
            f"{fmt_ms(lat['p50'])} / {fmt_ms(lat['p90'])} / {fmt_ms(lat['p99'])} ms (n={lat['n']}).")


def streaming_section(s: Mapping | None) -> str:
    if not s:
        return "## Streaming\n\nNot run.\n"
    st = s["settings"]
    reason = s["reasoning_ms"]
    age = s["anchor_age_frames"]
    h, w = st["frame_hw"]
    steps = s["reasoning_steps"]
    rows = [
        "## Streaming end to end",
        "",
        f"Synthetic clip at {st['rate_fps']:g} fps, {h}x{w}, {s['frames_pushed']} frames; reasoner `{s['reasoner']}` on "
        f"{s['backend']}, tracker `{s['tracker']}`; reasoning every {st['every_frames']} frames on a {st['window']}-frame "
        f"window; source queue {st['queue']} (drops the oldest).",
        "",
        "| output fps | staleness p50 / p99 (ms) | queue wait p50 (ms) | track p50 / p99 (ms) | reasoning p50 / p99 (ms) "
        "| steps done / coalesced | anchor age p50 / max (frames) | dropped |",
        "|---|---|---|---|---|---|---|---|",
        f"| {s['output_fps']:.1f} | {fmt_ms(s['staleness_ms']['p50'])} / {fmt_ms(s['staleness_ms']['p99'])} "
        f"| {fmt_ms(s['queue_wait_ms']['p50'])} | {fmt_ms(s['track_ms']['p50'])} / {fmt_ms(s['track_ms']['p99'])} "
        f"| {_pair(reason)} | {steps['completed']} / {steps['coalesced']} "
        f"| {_age(age)} | {s['dropped']} |",
        "",
    ]
    return "\n".join(rows)


def _age(age: Mapping | None) -> str:
    return "n/a" if age is None else f"{age['p50']:g} / {age['max']}"


def _pair(lat: Mapping | None) -> str:
    return "n/a" if lat is None else f"{fmt_ms(lat['p50'])} / {fmt_ms(lat['p99'])}"


def memory_section(mem: Mapping) -> str:
    lines = ["## Memory", "", "| phase | RSS (MiB) | peak RSS so far (MiB) | GPU allocated by torch (MiB) "
             "| GPU used, all libraries (MiB) |", "|---|---|---|---|---|"]
    for phase, snap in mem["phases"].items():
        gpu, used = snap.get("gpu_allocated_mib"), snap.get("gpu_device_used_mib")
        lines.append(f"| {phase} | {snap['rss_mib']:.0f} | {snap['peak_rss_mib']:.0f} | {_mib(gpu)} | {_mib(used)} |")
    peak = mem.get("gpu_peak_allocated_mib")
    lines += ["", f"Peak RSS {mem['peak_rss_mib']:.0f} MiB" + ("" if peak is None else f"; torch's GPU peak {peak:.0f} MiB") + ".", ""]
    return "\n".join(lines)


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def quality_section(q: Mapping | None) -> str:
    if not q or q.get("status") != "ok":
        reason = "not run" if not q else q.get("reason")
        return f"## Quality\n\nWeight-free tracker on DAVIS 2016: skipped ({reason}).\n"
    rows = ["## Quality: weight-free tracker on DAVIS 2016", "",
            f"{q['protocol']}", "", "| sequence | scored frames | J | F | J&F | tracker fps |", "|---|---|---|---|---|---|"]
    for name, seq in q["sequences"].items():
        rows.append(f"| {name} | {seq['scored_frames']} | {seq['J']:.3f} | {seq['F']:.3f} | {seq['JF']:.3f} | {seq['fps']:.1f} |")
    rows.append(f"| **mean** | {q['scored_frames']} | {q['J']:.3f} | {q['F']:.3f} | **{q['JF']:.3f}** | {q['tracker_fps']:.1f} |")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(r: Mapping, path: Path) -> None:
    """Horizontal bars: p50 per stage and backend (p90 whisker), log-scale milliseconds."""
    plt = _pyplot()
    stages = r["stages"]["stages"]
    height = 0.8 / len(BACKENDS)
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.75 * len(stages)))
    for j, backend in enumerate(BACKENDS):
        ys, p50, err = [], [], []
        for i, rec in enumerate(stages):
            res = rec["results"].get(backend, {})
            if res.get("status") == "ok":
                ys.append(i + (j - (len(BACKENDS) - 1) / 2) * height)
                p50.append(res["latency_ms"]["p50"])
                err.append(res["latency_ms"]["p90"] - res["latency_ms"]["p50"])
        if ys:
            ax.barh(ys, p50, height=height, xerr=[[0] * len(err), err], label=BACKEND_LABELS[backend], capsize=2)
    for i, rec in enumerate(stages):
        if not any(res.get("status") == "ok" for res in rec["results"].values()):
            ax.annotate("n/a (see bench.md)", (0.01, i), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    ax.set_yticks(range(len(stages)), [rec["stage"] for rec in stages])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (bar p50, whisker p90; log scale)")
    ax.set_title(f"visa-edge {r['config']}: per-stage latency on {r['device']['name']}", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(BACKENDS), frameon=False)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_staleness(s: Mapping | None, path: Path) -> None:
    """Staleness (capture -> mask ready) per frame over the stream, and the anchor age below it."""
    plt = _pyplot()
    fig, (ax, ax_age) = plt.subplots(2, 1, figsize=(9, 5), sharex=True, height_ratios=(2, 1))
    if s:
        series = s["series"]
        ax.plot(series["t_s"], series["staleness_ms"], ".", ms=3)
        ages = [(t, a) for t, a in zip(series["t_s"], series["anchor_age"]) if a is not None]
        if ages:
            ax_age.step(*zip(*ages), where="post")
        st = s["settings"]
        ax.set_title(f"streaming at {st['rate_fps']:g} fps: staleness p50 {s['staleness_ms']['p50']:.0f} ms, "
                     f"p99 {s['staleness_ms']['p99']:.0f} ms, {s['dropped']} dropped", fontsize=10)
    else:
        ax.set_title("streaming not run", fontsize=10)
    ax.set_ylabel("capture -> mask ready, ms")
    ax_age.set_ylabel("anchor age, frames")
    ax_age.set_xlabel("capture time, s")
    for a in (ax, ax_age):
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check_finite(value: object, path: str = "") -> list[str]:
    """Paths of every number in ``value`` that is not finite (the JSON must hold real figures only)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, (int, float)):
        return [] if math.isfinite(value) else [path]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in check_finite(v, f"{path}.{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in check_finite(v, f"{path}[{i}]")]
    return [f"{path} ({type(value).__name__})"]
