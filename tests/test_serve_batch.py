"""A batched reasoning step across windows of different streams (issue #17).

On the golden tiny VISA (fp32): ``llm.batched_seg_states`` over windows of different lengths gives
each window the [SEG] state of its own prefill within 1e-4, and ``ReasoningStep.batch`` gives each
window the result of its own step: identical masks, states and logits within 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .conftest import golden_visa_frames, golden_visa_model, max_abs
from visa_edge.runtime.errors import InputError
from visa_edge.runtime.llm import batched_seg_states, expand_image_tokens, seg_hidden_states
from visa_edge.runtime.reasoning import ReasoningStep, Window

TOL = 1e-4


@pytest.fixture(scope="module")
def model(golden_visa):
    return golden_visa_model(golden_visa)


@pytest.fixture(scope="module")
def step(model):
    return ReasoningStep(model)


@pytest.fixture(scope="module")
def frames(golden_visa):
    return golden_visa_frames(golden_visa)


@pytest.fixture(scope="module")
def tokens(step, frames):
    return step.visual_tokens(frames)


@pytest.fixture(scope="module")
def per_window(step, windows):
    """Each window's own one-window step."""
    return [step(w.frames, w.queries, frame_tokens=w.frame_tokens) for w in windows]


@pytest.fixture(scope="module")
def windows(frames, tokens):
    """Four streams' windows: 12, 5 and 1 frames with one query each, and 7 frames with two queries."""
    spans = [(0, 12), (3, 8), (6, 7), (2, 9)]
    queries = ["the red ball moving to the right", "the cube", "which object moves fastest in the video?",
               ["the cube", "the red ball moving to the right"]]
    return [Window(frames[a:b], q, tokens[a:b]) for (a, b), q in zip(spans, queries)]


def test_batched_prefill_equals_one_prefill_per_window(model, windows):
    """Rows of 1, 5 and 12 images (different padded lengths) in one prefill: each [SEG] state within 1e-4 of its
    own prefill's (measured: <= 2e-6)."""
    singles = [w for w in windows if isinstance(w.queries, str)]
    embed = model.llm.get_input_embeddings()
    prompts, image_tokens, expected = [], [], []
    for w in singles:
        t = w.frame_tokens if len(w.frames) > 1 else torch.cat([w.frame_tokens, w.frame_tokens])
        ids = model.prompt(w.queries, t.shape[0] - 1)
        prompts.append(ids)
        image_tokens.append(t)
        embeds, positions = expand_image_tokens(ids, t, embed, model.prompt.seg_token_id)
        expected.append(seg_hidden_states(model.llm, embeds, positions[:1])[0])
    with torch.inference_mode():
        got = batched_seg_states(model.llm, prompts, image_tokens, model.prompt.seg_token_id)
    assert got.shape == (len(singles), model.llm.config.hidden_size)
    assert len({len(p) for p in prompts}) > 1  # the rows really have different lengths
    for row, want in zip(got, expected):
        assert max_abs(row, want) <= TOL
    with pytest.raises(InputError, match="batched prefill: 2 prompts for 1 windows"):
        batched_seg_states(model.llm, prompts[:2], image_tokens[:1], model.prompt.seg_token_id)


def test_batch_equals_one_step_per_window(step, windows, per_window):
    """Each window's result from one batched call, with the SAM encoder batched as off the CPU, equals its own
    step: identical masks, [SEG] states, embeddings and mask logits within 1e-4 (measured: states <= 1.4e-6,
    embeddings <= 5e-7, logits <= 2e-7); every result carries the batch's stage times."""
    assert not step.batch_sam_encoder  # the CPU default: one encoder call per target
    step.batch_sam_encoder = True
    try:
        batched = step.batch(windows)
    finally:
        step.batch_sam_encoder = False
    assert len(batched) == len(windows)
    for got, want in zip(batched, per_window):
        assert got.queries == want.queries and got.masks.shape == want.masks.shape
        assert np.array_equal(got.masks, want.masks)
        assert max_abs(got.seg_hidden, want.seg_hidden) <= TOL
        assert max_abs(got.seg_embedding, want.seg_embedding) <= TOL
        assert max_abs(got.mask_logits, want.mask_logits) <= TOL
        assert max_abs(got.ious, want.ious) <= TOL
        assert set(got.timings) == {"llm_prefill", "seg_head", "sam_encoder", "mask_decoder", "postprocess"}
    assert all(r.timings == batched[0].timings for r in batched)
    assert batched[3].masks.shape[0] == 2  # the two-query window kept both queries


def test_one_window_batch_is_the_step(step, windows, per_window):
    """``step(...)`` is ``step.batch([window])[0]``: bit-identical."""
    a, b = per_window[0], step.batch([windows[0]])[0]
    assert np.array_equal(a.mask_logits, b.mask_logits) and torch.equal(a.seg_hidden, b.seg_hidden)


def test_a_bad_window_fails_the_batch_naming_it(step, windows):
    bad = Window(windows[0].frames, windows[0].queries, windows[0].frame_tokens[:3])
    with pytest.raises(InputError, match="window 1: frame_tokens: 3 rows for 12 frames"):
        step.batch([windows[1], bad])
    with pytest.raises(InputError, match="window 0: queries: 0 given"):
        step.batch([Window(windows[0].frames, []), windows[1]])
    with pytest.raises(InputError, match="windows: none given"):
        step.batch([])
