"""The LLaMA of VISA: building it (fp or NF4 4-bit) and the single prefill that yields [SEG] states."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .config import VisaConfig
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
