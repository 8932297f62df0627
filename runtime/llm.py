"""The LLaMA of VISA: building it (fp or NF4 4-bit) and the prefills that yield [SEG] states.

One query: one prefill of the whole prompt. Several queries on one window: their prompts
share everything up to the question (system text and every image), so that prefix is
prefilled once into a KV cache and the per-query suffixes run together against it.
Several windows (one query each, e.g. requests of different streams served together):
one right-padded batched prefill (:func:`batched_seg_states`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence

import torch
from torch import nn

from .visa_config import VisaConfig
from .errors import InputError
from .prompt import IMAGE_TOKEN_INDEX

QUANTIZATIONS = (None, "nf4")


def llama_config(cfg: VisaConfig):
    """transformers ``LlamaConfig`` equivalent to a VISA (ChatUniVi) config."""
    from transformers import LlamaConfig

    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling:
        rope = {**{k: v for k, v in cfg.rope_scaling.items() if k != "type"}, "rope_theta": cfg.rope_theta}
        rope["rope_type"] = cfg.rope_scaling.get("rope_type", cfg.rope_scaling.get("type"))
    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters=rope,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        tie_word_embeddings=cfg.tie_word_embeddings,
        use_cache=False,
    )


def build_llama(
    cfg: VisaConfig,
    state_dict: dict[str, torch.Tensor],
    dtype: torch.dtype,
    device: torch.device,
    quantization: str | None,
) -> nn.Module:
    """``LlamaForCausalLM`` loaded from an already key-checked state dict.

    ``quantization="nf4"`` loads the linear layers as bitsandbytes NF4 (4-bit, double
    quantization, compute in ``dtype``) through ``BitsAndBytesConfig``; embeddings, norms
    and ``lm_head`` stay in ``dtype``. The same call is the CPU and the GPU path.
    """
    from transformers import LlamaForCausalLM

    if quantization not in QUANTIZATIONS:
        raise InputError(f"quantization={quantization!r}; expected one of {QUANTIZATIONS}")
    kwargs = {}
    if quantization == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device}
    model = LlamaForCausalLM.from_pretrained(
        None,
        config=llama_config(cfg),
        state_dict={k: v.to(dtype) for k, v in state_dict.items()},
        dtype=dtype,
        attn_implementation="sdpa",
        **kwargs,
    )
    if quantization is None:
        model = model.to(device)
    return model.eval()


def expand_image_tokens(
    input_ids: Sequence[int], image_tokens: torch.Tensor, embed: nn.Module, seg_token_id: int
) -> tuple[torch.Tensor, list[int]]:
    """Splice per-image tokens into the text embeddings.

    ``input_ids`` holds one IMAGE_TOKEN_INDEX per image; ``image_tokens`` is [n_images,T,H].
    Returns ``inputs_embeds`` [1,L,H] and the expanded positions whose next token is [SEG]
    (VISA reads the [SEG] embedding from the state *before* the [SEG] token).
    """
    ids = list(input_ids)
    n_images = ids.count(IMAGE_TOKEN_INDEX)
    if n_images != image_tokens.shape[0]:
        raise InputError(f"prompt has {n_images} image placeholders but {image_tokens.shape[0]} frames of tokens were given")
    per_image = image_tokens.shape[1]
    weight = embed.weight
    pieces, seg_positions, offset, start, image = [], [], 0, 0, 0
    for pos in range(len(ids) + 1):
        if pos == len(ids) or ids[pos] == IMAGE_TOKEN_INDEX:
            if pos > start:
                pieces.append(embed(torch.tensor(ids[start:pos], device=weight.device)))
            if pos < len(ids):
                pieces.append(image_tokens[image].to(weight.device, weight.dtype))
                image += 1
                offset += per_image - 1
            start = pos + 1
        elif pos + 1 < len(ids) and ids[pos + 1] == seg_token_id:
            seg_positions.append(pos + offset)
    if not seg_positions:
        raise InputError("prompt has no [SEG] token; expected the answer 'It is [SEG].' in the prompt")
    return torch.cat(pieces, 0).unsqueeze(0), seg_positions


def seg_hidden_states(llm: nn.Module, inputs_embeds: torch.Tensor, seg_positions: list[int]) -> torch.Tensor:
    """One LLaMA prefill; the final-norm hidden states at ``seg_positions`` -> [n_seg, H]."""
    hidden = llm.model(inputs_embeds=inputs_embeds, use_cache=False).last_hidden_state
    return hidden[0, seg_positions]


def query_seg_states(
    llm: nn.Module, prompts: Sequence[Sequence[int]], image_tokens: torch.Tensor, seg_token_id: int
) -> torch.Tensor:
    """[SEG] states [Q,H] of Q prompts over the same ``image_tokens`` [n_images,T,H].

    One prompt: one prefill. Several: their shared prefix once, then the suffixes against it
    (:func:`shared_prefix_seg_states`).
    """
    embed = llm.get_input_embeddings()
    expanded = [expand_image_tokens(ids, image_tokens, embed, seg_token_id) for ids in prompts]
    if len(expanded) == 1:
        embeds, positions = expanded[0]
        return seg_hidden_states(llm, embeds, positions[:1])
    shared = prompts[0][: shared_prefix_length(prompts, seg_token_id)]
    return shared_prefix_seg_states(
        llm, [e for e, _ in expanded], [p[0] for _, p in expanded], expanded_length(shared, image_tokens.shape[1])
    )


def batched_seg_states(
    llm: nn.Module, prompts: Sequence[Sequence[int]], image_tokens: Sequence[torch.Tensor], seg_token_id: int
) -> torch.Tensor:
    """[SEG] states [B,H] of B one-query windows (``prompts[b]`` over ``image_tokens[b]``), in one prefill.

    Each row is cut after its [SEG]-reading position (later ids cannot change that state) and
    right-padded with zeros to the longest row: ``inputs_embeds`` [B,Lmax,H]. Right padding needs
    no padding mask: under the causal mask a real position attends only to earlier positions, all
    real, and its position ids (0..L_b-1) are those of its own prefill. So each row's state equals
    its one-prefill state up to float summation order, and the pads only cost their compute.
    """
    if not prompts or len(prompts) != len(image_tokens):
        raise InputError(f"batched prefill: {len(prompts)} prompts for {len(image_tokens)} windows of image tokens; "
                         "expected one prompt per window and at least one")
    embed = llm.get_input_embeddings()
    rows = []
    for ids, tokens in zip(prompts, image_tokens):
        embeds, positions = expand_image_tokens(ids, tokens, embed, seg_token_id)
        rows.append(embeds[0, : positions[0] + 1])
    lengths = [r.shape[0] for r in rows]
    padded = rows[0].new_zeros(len(rows), max(lengths), rows[0].shape[1])
    for b, r in enumerate(rows):
        padded[b, : lengths[b]] = r
    hidden = llm.model(inputs_embeds=padded, use_cache=False).last_hidden_state
    return hidden[torch.arange(len(rows)), torch.tensor(lengths) - 1]


def shared_prefix_length(prompts: Sequence[Sequence[int]], seg_token_id: int) -> int:
    """Number of leading ids common to every prompt, stopping before any prompt's [SEG]-reading id.

    The [SEG] state is read at the id just before [SEG]; it must lie in each query's suffix.
    """
    limit = min(_seg_reader(ids, seg_token_id) for ids in prompts)
    n = 0
    while n < limit and all(ids[n] == prompts[0][n] for ids in prompts):
        n += 1
    return n


def expanded_length(ids: Sequence[int], per_image: int) -> int:
    """Length of ``ids`` once each IMAGE_TOKEN_INDEX is replaced by ``per_image`` visual tokens."""
    return len(ids) + ids.count(IMAGE_TOKEN_INDEX) * (per_image - 1)


def shared_prefix_seg_states(
    llm: nn.Module, inputs_embeds: Sequence[torch.Tensor], seg_positions: Sequence[int], prefix: int
) -> torch.Tensor:
    """[SEG] states [Q,H] of Q prompts whose first ``prefix`` embeddings are identical.

    The prefix of ``inputs_embeds[0]`` ([1,L_q,H] each) is prefilled once into a KV cache.
    The suffixes, each cut after its [SEG]-reading position ``seg_positions[q]`` (later ids
    cannot change that state), are packed into one sequence run against the cache: each
    suffix token attends to the whole prefix and causally within its own suffix, with
    positions continuing from ``prefix``. Packing rather than batching keeps one copy of the
    prefix KV instead of one per query; the masked-out keys weigh exactly zero, so each state
    equals the one-prefill state up to float summation order.
    """
    if any(not prefix <= p < e.shape[1] for p, e in zip(seg_positions, inputs_embeds)):
        raise InputError(f"[SEG] positions {list(seg_positions)} must lie after the shared prefix of {prefix} positions")
    from transformers import DynamicCache

    device = inputs_embeds[0].device
    cache = DynamicCache(config=llm.model.config)
    if prefix:
        llm.model(inputs_embeds=inputs_embeds[0][:, :prefix], use_cache=True, **{_cache_kwarg(): cache})
    suffixes = [e[:, prefix : p + 1] for e, p in zip(inputs_embeds, seg_positions)]
    lengths = [s.shape[1] for s in suffixes]
    total = sum(lengths)
    mask = torch.zeros(1, 1, total, prefix + total, dtype=torch.bool, device=device)
    mask[..., :prefix] = True
    positions, reads, start = [], [], 0
    for n in lengths:
        mask[0, 0, start : start + n, prefix + start : prefix + start + n] = torch.ones(n, n, dtype=torch.bool).tril()
        positions.append(torch.arange(prefix, prefix + n))
        reads.append(start + n - 1)
        start += n
    hidden = llm.model(
        inputs_embeds=torch.cat(suffixes, 1),
        attention_mask=mask,
        position_ids=torch.cat(positions)[None].to(device),
        use_cache=True,
        **{_cache_kwarg(): cache},
    ).last_hidden_state
    return hidden[0, reads]


def _seg_reader(ids: Sequence[int], seg_token_id: int) -> int:
    """Index of the id whose state becomes the [SEG] embedding (the one before the first [SEG])."""
    for i in range(len(ids) - 1):
        if ids[i + 1] == seg_token_id:
            return i
    raise InputError("prompt has no [SEG] token; expected the answer 'It is [SEG].' in the prompt")


@functools.cache
def _cache_kwarg() -> str:
    """``LlamaModel.forward``'s KV-cache argument: ``cache`` in recent transformers 5, ``past_key_values`` before."""
    from transformers import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"

