"""Prompt construction: templates, normalisation, reference list, image-token ids."""

from __future__ import annotations

import numpy as np
import pytest

from visa_edge.runtime.errors import InputError
from visa_edge.runtime.prompt import IMAGE_TOKEN_INDEX, conversation, load_prompt_tokenizer, question


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
    tok = load_prompt_tokenizer(golden_visa / "hf_model")
    ids = tok("the red ball moving to the right", 11)
    assert ids == np.load(golden_visa / "inputs.npz")["input_ids"][0].tolist()
    assert ids.count(IMAGE_TOKEN_INDEX) == 12 and ids[0] == 1 and ids[123] == tok.seg_token_id == 320


def test_tiny_sentencepiece_tokenizer_keeps_one_bos_and_the_seg_token(tiny_checkpoint):
    import sentencepiece as spm

    tok = load_prompt_tokenizer(tiny_checkpoint.checkpoint)
    sp = spm.SentencePieceProcessor(model_file=str(tiny_checkpoint.checkpoint / "tokenizer.model"))
    ids = tok("the car that is about to turn", 3)
    assert ids.count(1) == 1 and ids[0] == 1
    assert ids.count(IMAGE_TOKEN_INDEX) == 4
    assert ids.count(tok.seg_token_id) == 1 and tok.seg_token_id == sp.get_piece_size() and ids[-1] == 2
    assert sp.id_to_piece(ids[ids.index(tok.seg_token_id) - 1]) == "\u2581is"
