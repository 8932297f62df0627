"""Prompt construction: templates, normalisation, reference list, image-token ids."""

from __future__ import annotations

import numpy as np
import pytest

from visa_edge.runtime.errors import InputError
from visa_edge.runtime.prompt import IMAGE_TOKEN_INDEX, PromptTokenizer, conversation, question


def test_golden_prompt_string(golden_visa):
    assert conversation("the red ball moving to the right", 11) == (golden_visa / "prompt.txt").read_text()


def test_statement_uses_the_short_template():
    q = question("The  Red\tBall ", 2)
    assert q == (
        "Reference Video: (0)<image>, (1)<image> \nTarget Image: <image> \n"
        "What is the red ball in the Reference Video? Please respond with segmentation mask in the Target Image."
    )


def test_question_uses_the_long_template():
    q = question("What would a person use to cut this bread?", 1)
    assert q == (
        "Reference Video: (0)<image> \nTarget Image: <image> \n"
        "what would a person use to cut this bread? Please find it in the Reference Video and respond "
        "with segmentation mask in the Target Image."
    )


def test_conversation_wraps_llava_v1():
    text = conversation("x", 1)
    assert text.startswith("A chat between a curious human and an artificial intelligence assistant.")
    assert " USER: Reference Video:" in text
    assert text.endswith(" ASSISTANT: It is [SEG].</s>")


@pytest.mark.parametrize("n", [0, 12])
def test_reference_count_is_bounded(n):
    with pytest.raises(InputError, match="expected 1..11"):
        question("x", n)


def test_empty_query_is_rejected():
    with pytest.raises(InputError, match="query: empty"):
        question("  \n ", 3)


def test_golden_token_ids(golden_visa):
    from transformers import AutoTokenizer

    tok = PromptTokenizer.from_tokenizer(AutoTokenizer.from_pretrained(str(golden_visa / "hf_model")), "golden")
    ids = tok("the red ball moving to the right", 11)
    assert ids == np.load(golden_visa / "inputs.npz")["input_ids"][0].tolist()
    assert ids.count(IMAGE_TOKEN_INDEX) == 12 and ids[0] == 1 and ids[123] == tok.seg_token_id == 320


def test_sentencepiece_tokenizer_keeps_one_bos_and_the_seg_token(tiny_checkpoint):
    from transformers import AutoTokenizer

    tok = PromptTokenizer.from_tokenizer(AutoTokenizer.from_pretrained(str(tiny_checkpoint.checkpoint)), "tiny")
    ids = tok("the car that is about to turn", 3)
    assert ids.count(tok.tokenizer.bos_token_id) == 1 and ids[0] == tok.tokenizer.bos_token_id
    assert ids.count(IMAGE_TOKEN_INDEX) == 4
    assert ids.count(tok.seg_token_id) == 1 and ids[-1] == tok.tokenizer.eos_token_id
