"""VISA's evaluation prompt: question template, llava_v1 conversation and image-token ids.

The answer is part of the prompt ("It is [SEG]."), so one prefill gives the [SEG] state.
Token ids follow the original code exactly: transformers 4.31's slow, sentencepiece-backed
``LlamaTokenizer`` on each ``<image>`` chunk, joined as LLaVA's ``tokenizer_image_token`` does
(``load_prompt_tokenizer``; pinned by ``golden/tokenizer``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CheckpointError, InputError

if TYPE_CHECKING:
    from sentencepiece import SentencePieceProcessor
    from tokenizers import Tokenizer

IMAGE_TOKEN_INDEX = -200
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
SEG_TOKEN = "[SEG]"
MAX_REFERENCES = 11
SPIECE_UNDERLINE = "\u2581"

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
_HEADER = f"Reference Video: {VIDEO_TOKEN} \nTarget Image: {IMAGE_TOKEN} \n"
# VISA's first "unified" templates: the long one for questions (ending in "?"), else the short one.
SHORT_QUESTION = _HEADER + "What is {sent} in the Reference Video? Please respond with segmentation mask in the Target Image."
LONG_QUESTION = _HEADER + "{sent} Please find it in the Reference Video and respond with segmentation mask in the Target Image."
ANSWER = f"It is {SEG_TOKEN}."


def normalize_query(query: str) -> str:
    """Lower-case and collapse whitespace, as VISA's dataset does with every expression."""
    if not isinstance(query, str):
        raise InputError(f"query: {type(query).__name__} given; expected a string")
    text = " ".join(query.lower().split())
    if not text:
        raise InputError("query: empty; expected a referring or reasoning expression")
    return text


def question(query: str, n_references: int) -> str:
    """The user turn for ``n_references`` reference frames followed by the target frame."""
    if not 1 <= n_references <= MAX_REFERENCES:
        raise InputError(f"references: {n_references} given; expected 1..{MAX_REFERENCES}")
    text = normalize_query(query)
    template = LONG_QUESTION if text.endswith("?") else SHORT_QUESTION
    refs = ", ".join(f"({i}){IMAGE_TOKEN}" for i in range(n_references))
    return template.format(sent=text).replace(VIDEO_TOKEN, refs)


def conversation(query: str, n_references: int) -> str:
    """The full llava_v1 string: system, USER turn, ASSISTANT answer ending with ``</s>``."""
    return f"{SYSTEM} USER: {question(query, n_references)} ASSISTANT: {ANSWER}</s>"


@dataclass(frozen=True)
class SpecialToken:
    """A token never split by the model: its id and whether spaces next to it are stripped."""

    id: int
    lstrip: bool
    rstrip: bool


@dataclass(frozen=True)
class SentencePieceText:
    """transformers 4.31 slow ``LlamaTokenizer(text).input_ids``, with sentencepiece directly.

    The text is split at the special and added tokens; spaces around an added token are
    stripped (4.31 does so for every added token that is not a special token), then each piece
    is encoded on its own, sentencepiece adding its dummy prefix even before a leading space.
    ``legacy=False`` drops that prefix on a piece that follows a special or added token.
    """

    processor: SentencePieceProcessor
    specials: dict[str, SpecialToken]
    legacy: bool
    bos_id: int | None
    eos_id: int | None

    @cached_property
    def _split(self) -> re.Pattern:
        names = sorted(self.specials, key=len, reverse=True)
        return re.compile("(" + "|".join(map(re.escape, names)) + ")")

    def __call__(self, text: str) -> list[int]:
        if not self.legacy:
            text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        parts = self._split.split(text)  # odd indices: special tokens
        for i, part in enumerate(parts):
            token = self.specials.get(part) if i % 2 else None
            if token is None:
                continue
            if token.rstrip and i + 1 < len(parts):
                parts[i + 1] = parts[i + 1].lstrip()
            if token.lstrip and i > 0:
                parts[i - 1] = parts[i - 1].rstrip()
        ids = [] if self.bos_id is None else [self.bos_id]
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(self.specials[part].id)
            elif part:
                ids.extend(self._encode_piece(part, first=i == 0))
        return ids if self.eos_id is None else ids + [self.eos_id]

    def _encode_piece(self, text: str, first: bool) -> list[int]:
        sp = self.processor
        if self.legacy:
            return sp.encode(text)
        if first:
            return sp.encode(text[1:]) if len(text) > 1 else []
        pieces = sp.encode(text, out_type=str)
        if not text.startswith(" ") and pieces and pieces[0].startswith(SPIECE_UNDERLINE):
            pieces = ([pieces[0][1:]] if len(pieces[0]) > 1 else []) + pieces[1:]
        return [sp.piece_to_id(p) for p in pieces]


@dataclass(frozen=True)
class PromptTokenizer:
    """VISA's prompt as ids: ``(query, n_references) -> ids`` with IMAGE_TOKEN_INDEX per image.

    ``encode_text`` tokenises one string as the checkpoint's tokenizer does (BOS included).
    Each ``<image>`` chunk is tokenised on its own and only the first keeps its BOS
    (LLaVA's ``tokenizer_image_token``). ``reserved`` are strings a query may not contain:
    they would change the prompt's structure.
    """

    encode_text: Callable[[str], list[int]]
    bos_token_id: int | None
    seg_token_id: int
    reserved: tuple[str, ...]

    def encode(self, text: str) -> list[int]:
        chunks = [self.encode_text(chunk) for chunk in text.split(IMAGE_TOKEN)]
        bos = self.bos_token_id
        skip = 1 if bos is not None and chunks[0] and chunks[0][0] == bos else 0
        ids = [bos] if skip else []
        for i, chunk in enumerate(chunks):
            if i:
                ids.append(IMAGE_TOKEN_INDEX)
            ids.extend(chunk[skip:])
        return ids

    def __call__(self, query: str, n_references: int) -> list[int]:
        text = normalize_query(query)
        found = [r for r in (IMAGE_TOKEN, VIDEO_TOKEN, *self.reserved) if r in text]
        if found:
            raise InputError(f"query: contains {found[0]!r}, which is part of VISA's prompt format; expected plain text")
        return self.encode(conversation(query, n_references))

    def sequence_length(self, query: str, n_frames: int, tokens_per_frame: int) -> int:
        """LLM positions of one prefill on ``n_frames`` frames (one frame is both reference and target)."""
        if not 1 <= n_frames <= MAX_REFERENCES + 1:
            raise InputError(f"frames: {n_frames} given; expected 1..{MAX_REFERENCES + 1}")
        ids = self(query, max(n_frames - 1, 1))
        return len(ids) + ids.count(IMAGE_TOKEN_INDEX) * (tokens_per_frame - 1)

    def check_query(self, query: str, n_frames: int, tokens_per_frame: int, max_positions: int) -> None:
        """Raise InputError when the prompt and the frames' visual tokens exceed ``max_positions``."""
        needed = self.sequence_length(query, n_frames, tokens_per_frame)
        if needed > max_positions:
            raise InputError(
                f"query: too long; the prompt with {n_frames} frames of {tokens_per_frame} visual tokens needs {needed} "
                f"positions but the model has {max_positions} (max_position_embeddings); shorten the query by "
                f"{needed - max_positions} tokens or more"
            )


def load_prompt_tokenizer(folder: str | Path) -> PromptTokenizer:
    """The prompt tokenizer of a VISA checkpoint folder.

    ``tokenizer.model`` (sentencepiece) reproduces transformers 4.31's slow LlamaTokenizer,
    honouring ``legacy``, ``add_bos_token`` and ``add_eos_token`` of ``tokenizer_config.json``
    and the added tokens of ``added_tokens.json`` / ``added_tokens_decoder``. Without it, only a
    WordLevel ``tokenizer.json`` is used (its ids do not depend on the library version); a
    converted sentencepiece ``tokenizer.json`` is refused, since its ids differ from VISA's.
    """
    folder = Path(folder)
    if (folder / "tokenizer.model").is_file():
        return _load_sentencepiece(folder)
    if (folder / "tokenizer.json").is_file():
        return _load_tokenizer_json(folder)
    raise CheckpointError(
        f"{folder}: no tokenizer.model or tokenizer.json; expected the VISA checkpoint's tokenizer files "
        "(tokenizer.model, tokenizer_config.json, added_tokens.json) next to config.json"
    )


_SPECIAL_KEYS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); expected a JSON object") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {type(data).__name__} found; expected a JSON object")
    return data


def _special_tokens(folder: Path, config: dict) -> dict[str, tuple[str, bool, bool] | None]:
    """bos/eos/unk/pad as (content, strip flags); special_tokens_map.json overrides the config, as in 4.31."""
    values = {k: config.get(k, default) for k, default in _SPECIAL_KEYS.items()}
    values.update({k: v for k, v in _read_json(folder / "special_tokens_map.json").items() if k in _SPECIAL_KEYS})
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out[key] = (value.get("content"), bool(value.get("lstrip", False)), bool(value.get("rstrip", False)))
        else:
            out[key] = None if value is None else (value, False, False)
        if out[key] is not None and not isinstance(out[key][0], str):
            raise CheckpointError(f"{folder}: {key} is {value!r}; expected a token string")
    return out


def _added_tokens(folder: Path, config: dict) -> dict[str, int]:
    """Added tokens from added_tokens.json and tokenizer_config.json's added_tokens_decoder; they must agree."""
    added: dict[str, int] = {}
    sources = [(folder / "added_tokens.json", _read_json(folder / "added_tokens.json").items())]
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict) or not all(isinstance(v, dict) for v in decoder.values()):
        raise CheckpointError(f"{folder / 'tokenizer_config.json'}: added_tokens_decoder is {decoder!r}; expected {{id: {{content: ...}}}}")
    sources.append((folder / "tokenizer_config.json", ((v.get("content"), k) for k, v in decoder.items())))
    for path, items in sources:
        for content, index in items:
            try:
                index = int(index)
            except (TypeError, ValueError):
                raise CheckpointError(f"{path}: added token {content!r} has id {index!r}; expected an integer") from None
            if added.get(content, index) != index:
                raise CheckpointError(f"{path}: added token {content!r} has id {index}, elsewhere {added[content]}; expected one id")
            added[content] = index
    return added


def _load_sentencepiece(folder: Path) -> PromptTokenizer:
    import sentencepiece as spm

    path = folder / "tokenizer.model"
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a sentencepiece model ({e}); expected the LLaMA tokenizer.model") from e
    config = _read_json(folder / "tokenizer_config.json")
    named = _special_tokens(folder, config)
    added = _added_tokens(folder, config)
    specials: dict[str, SpecialToken] = {}
    for token in named.values():
        if token is not None and token[0] not in specials:
            content, lstrip, rstrip = token
            index = added.get(content, sp.piece_to_id(content))
            specials[content] = SpecialToken(index, lstrip, rstrip)
    size = sp.get_piece_size()
    for content, index in added.items():
        if content in specials:
            continue
        if index < size:
            raise CheckpointError(
                f"{folder}: added token {content!r} has id {index}, inside the {size}-piece sentencepiece vocabulary; "
                f"expected ids from {size} up"
            )
        specials[content] = SpecialToken(index, True, True)  # 4.31 strips spaces around non-special added tokens
    if SEG_TOKEN not in added:
        raise CheckpointError(
            f"{folder} (tokenizer): the tokenizer has no {SEG_TOKEN} token in added_tokens.json or tokenizer_config.json's "
            f"added_tokens_decoder; expected a VISA tokenizer with {SEG_TOKEN} added"
        )
    bos = specials[named["bos_token"][0]].id if named["bos_token"] else None
    eos = specials[named["eos_token"][0]].id if named["eos_token"] else None
    legacy = config.get("legacy")
    text = SentencePieceText(
        sp,
        specials,
        legacy=True if legacy is None else bool(legacy),
        bos_id=bos if config.get("add_bos_token", True) else None,
        eos_id=eos if config.get("add_eos_token", False) else None,
    )
    return PromptTokenizer(text, text.bos_id, added[SEG_TOKEN], tuple(specials))


def _load_tokenizer_json(folder: Path) -> PromptTokenizer:
    path = folder / "tokenizer.json"
    spec = _read_json(path)
    kind = (spec.get("model") or {}).get("type")
    if kind != "WordLevel":
        if _is_sentencepiece_conversion(spec):
            raise CheckpointError(
                f"{path}: a sentencepiece tokenizer converted to tokenizer.json and no tokenizer.model; converted LLaMA "
                "tokenizers give other ids than the slow LlamaTokenizer VISA was fine-tuned with (the dummy prefix of "
                f"chunks that start with a space, the spaces around {SEG_TOKEN}); add the checkpoint's tokenizer.model"
            )
        raise CheckpointError(
            f"{path}: a {kind} tokenizer.json and no tokenizer.model; expected tokenizer.model (the LLaMA "
            "sentencepiece model VISA uses) or a WordLevel tokenizer.json"
        )
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception on a malformed file
        raise CheckpointError(f"{path}: not a tokenizers file ({e})") from e
    added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    if SEG_TOKEN not in added:
        raise CheckpointError(
            f"{path} (tokenizer): the tokenizer has no {SEG_TOKEN} token in added_tokens; expected a VISA tokenizer with {SEG_TOKEN} added"
        )
    config = _read_json(folder / "tokenizer_config.json")
    bos = _special_tokens(folder, config)["bos_token"]
    bos_id = tokenizer.token_to_id(bos[0]) if bos else None
    return PromptTokenizer(_WordLevelText(tokenizer), bos_id, added[SEG_TOKEN], tuple(added))


@dataclass(frozen=True)
class _WordLevelText:
    tokenizer: Tokenizer

    def __call__(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids


def _is_sentencepiece_conversion(spec: dict) -> bool:
    """Metaspace (the ``▁`` word marker) or sentencepiece's byte fallback anywhere in the pipeline."""
    blob = json.dumps({k: spec.get(k) for k in ("normalizer", "pre_tokenizer", "decoder")}, ensure_ascii=False)
    return "Metaspace" in blob or SPIECE_UNDERLINE in blob or bool((spec.get("model") or {}).get("byte_fallback"))
