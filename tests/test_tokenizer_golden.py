"""Prompt ids against VISA's own (transformers 4.31 slow LlamaTokenizer), pinned by golden/tokenizer.

The golden folder holds the real LLaMA ``tokenizer.model`` with [SEG] = 32000 and 30 reference
prompts. Held-out prompts are checked against the README's rules and against the golden cases'
shared parts; folders with only ``tokenizer.json`` and the query limit are checked too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import SHARED, require_dir
from visa_edge.runtime.checkpoint import quiet_transformers
from visa_edge.runtime.errors import CheckpointError, InputError
from visa_edge.runtime.llm import expand_image_tokens
from visa_edge.runtime.prompt import (
    IMAGE_TOKEN,
    IMAGE_TOKEN_INDEX,
    SEG_TOKEN,
    conversation,
    load_prompt_tokenizer,
    normalize_query,
)

GOLDEN = SHARED / "golden" / "tokenizer"
CASES = json.loads((GOLDEN / "prompts_ids.json").read_text())["cases"] if GOLDEN.is_dir() else []
SEG_ID, IS, DOT, DOT_NO_PREFIX, EOS = 32000, 338, 869, 29889, 2
VISUAL = 112
HELD_OUT = [
    ("the person riding the bike", 4),
    ("is the door open?", 5),
    ("  THE  Dog\tbarking at 7 o'clock ", 7),
    ("which one would you eat after running 10km?", 8),
    ("the leftmost car (silver) — near the café", 9),
    ("x", 2),
    ("spaces   before?", 11),
]


@pytest.fixture(scope="module")
def folder() -> Path:
    return require_dir(GOLDEN / "hf_tokenizer", "tokenizer golden fixture")


@pytest.fixture(scope="module")
def sp(folder):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


@pytest.fixture(scope="module")
def legacy_tok(folder):
    return load_prompt_tokenizer(folder)


@pytest.fixture(scope="module")
def strict_tok(folder, tmp_path_factory):
    return load_prompt_tokenizer(_copy_with_config(folder, tmp_path_factory.mktemp("strict"), legacy=False))


def _copy_with_config(src: Path, dst: Path, **config) -> Path:
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    (dst / "tokenizer_config.json").write_text(json.dumps({**cfg, **config}))
    return dst


@pytest.mark.parametrize("case", CASES, ids=[f"{i}:{c['n_refs']}" for i, c in enumerate(CASES)])
def test_golden_case_ids_seg_and_read_index(case, legacy_tok, sp):
    ids = legacy_tok(case["query"], case["n_refs"])
    assert ids == case["ids"]
    assert legacy_tok.seg_token_id == SEG_ID and ids.count(SEG_ID) == 1
    assert ids.index(SEG_ID) == case["seg_index"]
    assert sp.id_to_piece(ids[case["read_index"]]) == case["read_piece"] == "\u2581is"
    images = torch.zeros(case["n_refs"] + 1, VISUAL, 2)
    _, positions = expand_image_tokens(ids, images, torch.nn.Embedding(SEG_ID + 1, 2), SEG_ID)
    assert positions == [case["read_index_expanded"]]


def test_golden_cases_with_legacy_false(strict_tok):
    assert len(CASES) == 30
    for case in CASES:
        assert strict_tok(case["query"], case["n_refs"]) == case["ids_if_legacy_false"], case["query"]


def _rule_ids(sp, text: str) -> list[int]:
    """The README's rules, written out: per <image> chunk, split at [SEG] (spaces stripped) and
    </s>, each piece encoded with its dummy prefix; BOS once; -200 between chunks."""
    ids = [1]
    for n, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if n:
            ids.append(IMAGE_TOKEN_INDEX)
        before_eos, _, after_eos = chunk.partition("</s>")
        left, seg, right = before_eos.partition(SEG_TOKEN)
        for piece, token in ((left.rstrip() if seg else left, [SEG_ID] if seg else []), (right.lstrip(), [EOS] if "</s>" in chunk else [])):
            ids += (sp.encode(piece) if piece else []) + token
        assert not after_eos
    return ids


@pytest.mark.parametrize("query,n_refs", HELD_OUT)
def test_held_out_prompts_follow_the_rules(query, n_refs, legacy_tok, strict_tok, sp):
    ids = legacy_tok(query, n_refs)
    assert ids == _rule_ids(sp, conversation(query, n_refs))
    # The system text and reference list are those of the golden 11-reference case, up to this prompt's last reference.
    golden = next(c["ids"] for c in CASES if c["n_refs"] == 11)
    cut = [i for i, t in enumerate(golden) if t == IMAGE_TOKEN_INDEX][n_refs - 1] + 1
    assert ids[:cut] == golden[:cut]
    # Target chunk, then the question chunk: both keep the dummy prefix before their leading space.
    assert ids[cut : cut + 7] == [259, 13, 8667, 7084, 29901, 29871, IMAGE_TOKEN_INDEX] and ids[cut + 7 : cut + 9] == [259, 13]
    assert ids.count(IMAGE_TOKEN_INDEX) == n_refs + 1 and ids.count(1) == 1
    seg = ids.index(SEG_ID)
    assert ids[seg - 1] == IS and ids[seg + 1 :] == [DOT, EOS]
    assert strict_tok(query, n_refs) == ids[: seg + 1] + [DOT_NO_PREFIX, EOS]
    # Sentencepiece is lossless here: the question chunk decodes back to its text.
    text = conversation(query, n_refs).split(IMAGE_TOKEN)[-1]
    assert sp.decode(ids[cut + 7 : seg]) == text[: text.index(SEG_TOKEN)].rstrip()
    assert normalize_query(query) in text


def test_query_with_prompt_markers_is_refused(legacy_tok):
    for query in ("the <image> on the left", "the cat</s>", "<unk> dog"):
        with pytest.raises(InputError, match="part of VISA's prompt format"):
            legacy_tok(query, 3)


def test_bos_and_eos_follow_the_config(folder, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    case = CASES[0]
    no_bos = load_prompt_tokenizer(_copy_with_config(folder, tmp_path / "a", add_bos_token=False))
    assert no_bos(case["query"], case["n_refs"]) == case["ids"][1:]
    # tokenizer_image_token keeps each chunk's EOS: one after every chunk.
    eos = load_prompt_tokenizer(_copy_with_config(folder, tmp_path / "b", add_eos_token=True))(case["query"], case["n_refs"])
    assert eos.count(EOS) == case["n_refs"] + 3 and eos[-2:] == [EOS, EOS]
    assert [t for t in eos if t != EOS] == [t for t in case["ids"] if t != EOS]


def test_added_tokens_decoder_gives_the_same_ids(folder, legacy_tok, tmp_path):
    decoder = {"32000": {"content": SEG_TOKEN, "lstrip": False, "normalized": True, "rstrip": False, "special": False}}
    copy = _copy_with_config(folder, tmp_path, added_tokens_decoder=decoder)
    (copy / "added_tokens.json").unlink()
    case = CASES[5]
    assert load_prompt_tokenizer(copy)(case["query"], case["n_refs"]) == case["ids"]


def test_missing_or_conflicting_seg_token_is_refused(folder, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    no_seg = _copy_with_config(folder, tmp_path / "a")
    (no_seg / "added_tokens.json").unlink()
    with pytest.raises(CheckpointError, match=r"no \[SEG\] token"):
        load_prompt_tokenizer(no_seg)
    decoder = {"32001": {"content": SEG_TOKEN, "special": False}}
    with pytest.raises(CheckpointError, match=r"'\[SEG\]' has id 32001, elsewhere 32000"):
        load_prompt_tokenizer(_copy_with_config(folder, tmp_path / "b", added_tokens_decoder=decoder))


def test_word_level_tokenizer_json_is_used_as_is(golden_visa):
    import numpy as np

    tok = load_prompt_tokenizer(golden_visa / "hf_model")
    assert not (golden_visa / "hf_model" / "tokenizer.model").exists()
    assert tok("the red ball moving to the right", 11) == np.load(golden_visa / "inputs.npz")["input_ids"][0].tolist()


def test_converted_sentencepiece_tokenizer_json_is_refused(tiny_checkpoint, tmp_path):
    from transformers import AutoTokenizer

    with quiet_transformers():
        AutoTokenizer.from_pretrained(str(tiny_checkpoint.checkpoint)).save_pretrained(str(tmp_path))
    (tmp_path / "tokenizer.model").unlink(missing_ok=True)
    assert (tmp_path / "tokenizer.json").is_file()
    with pytest.raises(CheckpointError, match="sentencepiece tokenizer converted.*add the checkpoint's tokenizer.model"):
        load_prompt_tokenizer(tmp_path)


def test_other_tokenizer_json_and_no_tokenizer_are_refused(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece

    with pytest.raises(CheckpointError, match="no tokenizer.model or tokenizer.json"):
        load_prompt_tokenizer(tmp_path)
    Tokenizer(WordPiece({"[UNK]": 0, SEG_TOKEN: 1}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(CheckpointError, match="a WordPiece tokenizer.json and no tokenizer.model"):
        load_prompt_tokenizer(tmp_path)


def test_query_limit_names_both_numbers(legacy_tok):
    case = next(c for c in CASES if c["n_refs"] == 11)
    needed = len(case["ids"]) + 12 * (VISUAL - 1)
    assert legacy_tok.sequence_length(case["query"], 12, VISUAL) == needed
    legacy_tok.check_query(case["query"], 12, VISUAL, needed)
    with pytest.raises(InputError, match=f"needs {needed} positions but the model has {needed - 1} "):
        legacy_tok.check_query(case["query"], 12, VISUAL, needed - 1)
    # One frame is both the reference and the target: two images.
    one = next(c for c in CASES if c["n_refs"] == 1 and c["query"] == case["query"])
    assert legacy_tok.sequence_length(case["query"], 1, VISUAL) == len(one["ids"]) + 2 * (VISUAL - 1)
    with pytest.raises(InputError, match="frames: 13 given"):
        legacy_tok.sequence_length("x", 13, VISUAL)


def test_model_check_query(tiny_checkpoint):
    from visa_edge.runtime.model import VisaModel

    model = VisaModel.from_pretrained(tiny_checkpoint.checkpoint, tiny_checkpoint.clip, load_llm=False)
    assert model.config.max_position_embeddings == 2048
    model.check_query("the car that is about to turn")
    long = " ".join(["turn"] * 1000)
    needed = model.prompt.sequence_length(long, 12, VISUAL)
    assert needed > 2048
    with pytest.raises(InputError, match=f"needs {needed} positions but the model has 2048 "):
        model.check_query(long)
    model.check_query(long[:100], n_frames=1)
    with pytest.raises(InputError, match="query: int given; expected a string"):
        model.check_query(3)
