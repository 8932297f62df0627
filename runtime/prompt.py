"""VISA's evaluation prompt: question template, llava_v1 conversation and image-token ids.

The answer is part of the prompt ("It is [SEG]."), so one prefill gives the [SEG] state.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import CheckpointError, InputError

IMAGE_TOKEN_INDEX = -200
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
SEG_TOKEN = "[SEG]"
MAX_REFERENCES = 11

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
class PromptTokenizer:
    """Turns a conversation into ids with IMAGE_TOKEN_INDEX between the ``<image>`` chunks.

    Each chunk is tokenised on its own; only the first chunk keeps its BOS (LLaVA's
    ``tokenizer_image_token``).
    """

    tokenizer: object
    seg_token_id: int

    @classmethod
    def from_tokenizer(cls, tokenizer, source: str) -> "PromptTokenizer":
        seg = tokenizer.convert_tokens_to_ids(SEG_TOKEN)
        if seg is None or seg == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(seg) != SEG_TOKEN:
            raise CheckpointError(f"{source}: the tokenizer has no {SEG_TOKEN} token; expected a VISA tokenizer with {SEG_TOKEN} added")
        return cls(tokenizer, int(seg))

    def encode(self, text: str) -> list[int]:
        chunks = [self.tokenizer(chunk).input_ids for chunk in text.split(IMAGE_TOKEN)]
        bos = self.tokenizer.bos_token_id
        skip = 1 if chunks and chunks[0] and chunks[0][0] == bos else 0
        ids = [bos] if skip else []
        for i, chunk in enumerate(chunks):
            if i:
                ids.append(IMAGE_TOKEN_INDEX)
            ids.extend(chunk[skip:])
        return ids

    def __call__(self, query: str, n_references: int) -> list[int]:
        return self.encode(conversation(query, n_references))
