"""The multi-query benchmark's bookkeeping (``visa-edge bench --config multi-query``), on made-up samples.

The benchmark itself takes minutes; these check how rounds become the table: the baseline for
Q queries is the per-round sum of the single-query steps on the first Q queries, and ratios are
taken to the one-query step of the same run.
"""

from __future__ import annotations

import pytest

from visa_edge.benchmarks import multi_query as mq
from visa_edge.runtime.cli import main

# two rounds; shared/1 is query 1's single-query step
SAMPLES = {
    "shared/1": [1.0, 1.2],
    "shared/2": [1.2, 1.4],
    "shared/4": [1.4, 1.6],
    "single/2": [1.0, 1.0],
    "single/3": [1.1, 1.3],
    "single/4": [0.9, 0.9],
}
TIMINGS = {q: [{"llm_prefill": 0.5, "sam_encoder": 0.3, "mask_decoder": 0.1 * q, "postprocess": 0.01 * q}] for q in (1, 2, 4)}


def test_separate_steps_are_summed_per_round():
    assert mq.separate_seconds(SAMPLES, 1) == [1.0, 1.2]
    assert mq.separate_seconds(SAMPLES, 4) == pytest.approx([4.0, 4.4])


def test_rows_give_ratios_to_one_query_and_speedups():
    rows = {r["queries"]: r for r in mq.rows(SAMPLES, TIMINGS, (1, 2, 4))}
    one = 1.1  # p50 of shared/1
    assert rows[1]["shared_vs_one_query"] == pytest.approx(1.0) and rows[1]["speedup_vs_separate"] == pytest.approx(1.0)
    assert rows[2]["shared_ms"]["p50"] == pytest.approx(1300.0)
    assert rows[2]["separate_ms"]["p50"] == pytest.approx(2100.0)  # rounds: 2.0 and 2.2 s
    assert rows[4]["shared_vs_one_query"] == pytest.approx(1.5 / one)
    assert rows[4]["shared_vs_mean_single_step"] == pytest.approx(1.5 / 1.05)  # rounds: 4.0 / 4 and 4.4 / 4 s
    assert rows[4]["separate_vs_one_query"] == pytest.approx(4.2 / one)
    assert rows[4]["speedup_vs_separate"] == pytest.approx(4.2 / 1.5)
    assert rows[4]["target_vs_one_query"] == 1.5 and rows[2]["target_vs_one_query"] is None
    assert rows[4]["shared_stage_ms_p50"] == {"llm_prefill": 500.0, "sam_encoder": 300.0, "mask_decoder": 400.0, "postprocess": 40.0}


def test_markdown_has_one_row_per_query_count():
    result = {
        "machine": {"cpu": "test CPU", "cores": 2, "load_average": [1.0, 1.0, 1.0]}, "device": {"type": "cpu"},
        "load_average_end": None, "model": {"llm": "LLaMA", "sam": "SAM", "prefill_positions": 1609, "note": "random"},
        "agreement": {"queries": 4, "seg_hidden_max_abs": 1e-6, "logits_max_abs": 2e-7, "mask_pixels_differing": 0},
        "rows": mq.rows(SAMPLES, TIMINGS, (1, 2, 4)),
    }
    text = mq.markdown(result)
    table = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [line.split("|")[1].strip() for line in table] == ["1", "2", "4"]
    assert "| 4 | 1500 | 4200 | x1.36 | **x1.43** | x3.82 | x2.80 | <= 1.5 | 500 / 300 / 400 / 40 | 2 |" in text
    assert "0 mask pixels differ" in text


def test_cpu_time_is_recorded_per_call_and_tabled():
    cpu: dict[str, list[float]] = {}
    calls = []
    runners = mq.cpu_timed({"shared/1": lambda: calls.append(1), "single/2": lambda: sum(range(10**5))}, cpu)
    for _ in range(3):
        for fn in runners.values():
            fn()
    assert calls == [1, 1, 1] and {k: len(v) for k, v in cpu.items()} == {"shared/1": 3, "single/2": 3}
    assert all(t >= 0 for v in cpu.values() for t in v)
    result = {
        "machine": {"cpu": "test CPU", "cores": 2, "load_average": None}, "device": {"type": "cpu"}, "load_average_end": None,
        "model": {"llm": "LLaMA", "sam": "SAM", "prefill_positions": 1458, "note": "random"},
        "agreement": {"queries": 4, "seg_hidden_max_abs": 0.0, "logits_max_abs": 0.0, "mask_pixels_differing": 0},
        "rows": mq.rows(SAMPLES, TIMINGS, (1, 2, 4)), "cpu_rows": mq.rows(SAMPLES, TIMINGS, (1, 2, 4)),
    }
    assert "| 4 | 1500 | 4200 | **x1.43** | x2.80 |" in mq.markdown(result)


def test_decoder_rows_compare_with_sams_decoder():
    samples = {"decoder/1": [0.010, 0.012], "decoder/8": [0.040, 0.044], "sam/1": [0.020, 0.020], "sam/8": [0.200, 0.240]}
    rows = {r["queries"]: r for r in mq.decoder_rows(samples, (1, 8))}
    assert rows[8]["decoder_vs_one_query"] == pytest.approx(42 / 11) and rows[8]["sam_vs_one_query"] == pytest.approx(11.0)
    assert rows[8]["speedup_vs_sam"] == pytest.approx(220 / 42) and rows[1]["speedup_vs_sam"] == pytest.approx(20 / 11)
    result = {
        "machine": {"cpu": "test CPU", "cores": 2, "load_average": None}, "device": {"type": "cpu"}, "load_average_end": None,
        "model": {"llm": "LLaMA", "sam": "SAM", "prefill_positions": 1458, "note": "random"},
        "agreement": {"queries": 4, "seg_hidden_max_abs": 0.0, "logits_max_abs": 0.0, "mask_pixels_differing": 0},
        "rows": mq.rows(SAMPLES, TIMINGS, (1, 2, 4)), "decoder_rows": list(rows.values()),
    }
    assert "| 8 | 42.0 | 220.0 | x3.82 | x11.00 | x5.24 |" in mq.markdown(result)


def test_presets_and_overrides():
    full = mq.settings_for(False)
    assert full.query_counts == (1, 2, 4, 8) and full.frames == 12 and full.spec.hidden_size == 512
    quick = mq.settings_for(True, repeats=3, warmup=0)
    assert (quick.repeat.repeats, quick.repeat.warmup, quick.repeat.min_repeats) == (3, 0, 1)
    with pytest.raises(ValueError, match="query_counts"):
        mq.MultiQuerySettings(query_counts=(1, 9))


def test_cli_refuses_options_of_other_configs(tmp_path, capsys):
    assert main(["bench", "--config", "multi-query", "--out", str(tmp_path), "--stages", "sam_encoder"]) == 2
    assert "--stages: not used by --config multi-query" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_word_tokenizer_gives_vicuna_like_prompt_lengths(tmp_path):
    """One token per word: the golden query's prompt has the golden fixture's 126 ids; each
    question after the shared prefix (system text and the 12 images) is ~30 tokens."""
    from visa_edge.runtime.llm import shared_prefix_length
    from visa_edge.runtime.model import VisaModel
    from visa_edge.runtime.prompt import conversation
    from visa_edge.runtime.tiny import write_tiny_checkpoint

    tiny = write_tiny_checkpoint(tmp_path)
    mq.write_word_tokenizer(tiny.checkpoint, [conversation(q, 11) for q in mq.QUERIES])
    model = VisaModel.from_pretrained(tiny.checkpoint, clip=tiny.clip)
    prompts = [model.prompt(q, 11) for q in mq.QUERIES]
    assert len(prompts[0]) == 126 and 0 not in prompts[0]  # no <unk>
    assert prompts[0][-3] == model.prompt.seg_token_id and prompts[0][-1] == 2  # "[SEG] . </s>"
    shared = shared_prefix_length(prompts, model.prompt.seg_token_id)
    assert shared == 95 and [len(p) - shared for p in prompts] == [31, 35, 29, 29, 33, 30, 30, 32]
    assert mq.prefill_positions(model, 12) == 1458
