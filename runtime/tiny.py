"""A tiny, randomly initialised VISA checkpoint written in the real on-disk format.

``write_tiny_checkpoint(out)`` creates ``out/visa`` (config.json, a LLaMA sentencepiece
tokenizer with [SEG] added, bf16 weight shards with an index, exactly like VISA's merge
script writes them) and ``out/clip`` (a Hugging Face CLIP vision folder). Tests and the
demo load it through the real loader. The weights are random: its masks mean nothing.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import prompt
from .checkpoint import quiet_transformers
from .visa_config import VisaConfig
from .llm import llama_config
from .model import seg_head
from .sam import SamEncoderConfig, build_sam_parts

UNTRAINED_LABEL = "UNTRAINED tiny model with random weights: masks are not meaningful"


@dataclass(frozen=True)
class TinySpec:
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    clip_hidden: int = 32
    clip_layers: int = 2
    clip_heads: int = 4
    sam: SamEncoderConfig = SamEncoderConfig(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,))


@dataclass(frozen=True)
class TinyCheckpoint:
    checkpoint: Path
    clip: Path


def write_tiny_checkpoint(
    out: str | Path, seed: int = 0, fmt: str = "bin", shards: int = 2, spec: TinySpec = TinySpec()
) -> TinyCheckpoint:
    """Write a tiny VISA checkpoint folder and CLIP folder under ``out``; returns their paths."""
    if fmt not in ("bin", "safetensors"):
        raise ValueError(f"fmt={fmt!r}; expected 'bin' or 'safetensors'")
    out = Path(out)
    ckpt, clip = out / "visa", out / "clip"
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    with quiet_transformers():
        return _write(ckpt, clip, spec, fmt, shards)


def _write(ckpt: Path, clip: Path, spec: TinySpec, fmt: str, shards: int) -> TinyCheckpoint:
    vocab = _write_tokenizer(ckpt)
    config = _config_dict(spec, vocab + 1)
    (ckpt / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _write_clip(clip, spec)
    state = _random_state_dict(VisaConfig.from_dict(config), spec)
    _write_shards(ckpt, state, fmt, shards)
    return TinyCheckpoint(ckpt, clip)


def _config_dict(spec: TinySpec, vocab_size: int) -> dict:
    return {
        "architectures": ["VISAForCausalLM"],
        "model_type": "ChatUniVi",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "config": {
            "use_cluster": True,
            "spatial_cluster_rate0": 64,
            "spatial_cluster_rate1": 32,
            "spatial_cluster_rate2": 16,
            "temporal_cluster_rate": 0.0625,
            "freeze": False,
            "mm_tune": True,
            "vision_tune": False,
        },
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_heads,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "vocab_size": vocab_size,
        "mm_hidden_size": spec.clip_hidden,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_vision_tower": "clip",
        "vision_tower": "clip",
        "mm_use_im_start_end": True,
        "mm_use_im_patch_token": False,
        "out_dim": 256,
        "train_mask_decoder": True,
        "torch_dtype": "bfloat16",
        "use_cache": False,
    }


def _write_tokenizer(folder: Path) -> int:
    """Train a small sentencepiece model with LLaMA's settings and write it with [SEG] added.

    The files are those transformers 4.31 ``save_pretrained`` writes for VISA's tokenizer
    (tokenizer.model, tokenizer_config.json, special_tokens_map.json, added_tokens.json), so
    the tiny checkpoint is tokenised by the same path as a real one. Returns the base vocabulary size.
    """
    import sentencepiece as spm

    # One training sentence per line, as a text corpus is read: "\n" is then not a piece and
    # falls back to its byte, as in LLaMA's model.
    text = "\n".join(prompt.conversation(q, 11) for q in _CORPUS_QUERIES).replace(prompt.IMAGE_TOKEN, "\n")
    lines = text.splitlines()
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter((lines + [_CHARSET]) * 8),
        model_writer=buf,
        vocab_size=400,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        max_sentencepiece_length=16,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    vocab = spm.SentencePieceProcessor(model_proto=buf.getvalue()).get_piece_size()
    specials = {k: _added_token(v) for k, v in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))}
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": 512,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        **{k: {"__type": "AddedToken", **v} for k, v in specials.items()},
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (folder / "special_tokens_map.json").write_text(json.dumps({**specials, "pad_token": "<unk>"}, indent=2, sort_keys=True))
    (folder / "added_tokens.json").write_text(json.dumps({prompt.SEG_TOKEN: vocab}, indent=2))
    return vocab


def _added_token(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


_CORPUS_QUERIES = (
    "the red ball moving to the right",
    "what would a person use to cut this bread?",
    "the car that is about to turn",
    "the object that is not moving",
)
_CHARSET = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]{}<>-_/|@#$%&*+="


def _write_clip(folder: Path, spec: TinySpec) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(
        hidden_size=spec.clip_hidden,
        intermediate_size=4 * spec.clip_hidden,
        num_hidden_layers=spec.clip_layers,
        num_attention_heads=spec.clip_heads,
        image_size=224,
        patch_size=14,
        projection_dim=spec.clip_hidden,
        hidden_act="quick_gelu",
    )
    CLIPVisionModel(cfg).save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
             "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
             "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224},
            indent=2,
        )
    )


def _random_state_dict(cfg: VisaConfig, spec: TinySpec) -> dict[str, torch.Tensor]:
    from transformers import LlamaForCausalLM

    llm_cfg = llama_config(cfg)
    llm_cfg.initializer_range = 0.1
    parts: dict[str, nn.Module] = {
        "": LlamaForCausalLM(llm_cfg),
        "model.mm_projector.": nn.Linear(cfg.mm_hidden_size, cfg.hidden_size),
        "model.text_hidden_fcs.0.": seg_head(cfg.hidden_size, cfg.out_dim),
        "model.visual_model.": build_sam_parts(spec.sam),
    }
    state = {}
    for prefix, module in parts.items():
        for k, v in module.state_dict().items():
            if v.is_floating_point() and v.numel() > 1 and bool((v == v.flatten()[0]).all()):
                v = v + 0.02 * torch.randn_like(v)  # no trivially constant norms, biases or pos-embeds
            state[prefix + k] = v.to(torch.bfloat16)
    return state


def _write_shards(folder: Path, state: dict[str, torch.Tensor], fmt: str, shards: int) -> None:
    keys = list(state)
    per = -(-len(keys) // shards)
    chunks = [keys[i : i + per] for i in range(0, len(keys), per)]
    ext, stem, index = (".bin", "pytorch_model", "pytorch_model.bin.index.json") if fmt == "bin" else (
        ".safetensors", "model", "model.safetensors.index.json")
    weight_map = {}
    for i, chunk in enumerate(chunks, 1):
        name = f"{stem}{ext}" if len(chunks) == 1 else f"{stem}-{i:05d}-of-{len(chunks):05d}{ext}"
        part = {k: state[k].contiguous() for k in chunk}
        if fmt == "bin":
            torch.save(part, folder / name)
        else:
            from safetensors.torch import save_file

            save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in chunk})
    if len(chunks) > 1:
        total = sum(v.numel() * v.element_size() for v in state.values())
        (folder / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
