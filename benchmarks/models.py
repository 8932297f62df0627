"""The models the benchmark measures: ``tiny`` and ``visa-7b``.

- ``tiny``: the tiny random checkpoint written by the real writer (``runtime.tiny``) and read
  by the real loader; a full-size XMem with random weights run at a small working size.
- ``visa-7b``: VISA-7B's real architectures with random weights (unless checkpoints are
  given): CLIP ViT-L/14, Chat-UniVi clustering, Vicuna-7B shapes in NF4, SAM ViT-H, XMem at
  480p. Latency does not depend on weight values, only on shapes and dtypes. The random NF4
  LLM is built layer by layer (never a 13 GB bf16 copy) and only on CUDA: its prefill is
  about 2e13 FLOPs per window, out of reach of a small CPU.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from visa_edge.runtime import synthetic
from visa_edge.runtime.backends.manifest import SourceRecord
from visa_edge.runtime.checkpoint import quiet_transformers
from visa_edge.runtime.clip import ClipPreprocess, ClipVisionTower
from visa_edge.runtime.visa_config import VisaConfig
from visa_edge.runtime.errors import InputError
from visa_edge.runtime.llm import expand_image_tokens, llama_config, seg_hidden_states
from visa_edge.runtime.model import VisaModel, seg_head
from visa_edge.runtime.reasoning_networks import MAX_FRAMES
from visa_edge.runtime.prompt import MAX_REFERENCES, load_prompt_tokenizer
from visa_edge.runtime.sam import SamEncoderConfig, build_sam_parts
from visa_edge.runtime.tracking.xmem import XMemConfig, XMemModel, load_xmem

CONFIGS = ("tiny", "visa-7b")
QUERY = "what would a person use to cut this bread?"
CLIP_PERIOD = 60  # frames per back-and-forth sweep of the synthetic clip

# Vicuna-7B (LLaMA-7B) as VISA-7B / Chat-UniVi-7B use it; the vocabulary includes [SEG].
VICUNA_7B = VisaConfig(
    vocab_size=32001,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    mm_hidden_size=1024,
    max_position_embeddings=2048,
)
CLIP_VIT_L14 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                "image_size": 224, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu"}


@dataclass
class BenchModel:
    """Everything the stages need: the VISA modules, XMem, sizes, and where they came from.

    ``model.llm`` is None when the LLM is not measured; ``llm_na`` then says why.
    """

    config: str
    model: VisaModel
    xmem: XMemModel
    xmem_config: XMemConfig
    frame_hw: tuple[int, int]  # camera frame size fed to SAM and XMem
    device: torch.device
    llm_dtype: torch.dtype
    sources: dict[str, SourceRecord]
    random_parts: tuple[str, ...]  # "VISA", "XMem": parts built with random weights
    llm_na: str | None = None
    architecture: dict = field(default_factory=dict)


def prefill_tokens(model: VisaModel) -> int:
    """Sequence length of one full-window prefill: 11 references + target, 112 tokens each, + prompt."""
    ids = model.prompt(QUERY, MAX_REFERENCES)
    return len(ids) - MAX_FRAMES + MAX_FRAMES * model.config.cluster.tokens_per_frame


def prefill_flops(cfg: VisaConfig, tokens: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of one LLaMA prefill over ``tokens``: projections, MLP, attention."""
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * head_dim
    linear = 2 * cfg.hidden_size * cfg.hidden_size + 2 * cfg.hidden_size * kv + 3 * cfg.hidden_size * cfg.intermediate_size
    attention = 2 * tokens * cfg.num_attention_heads * head_dim  # QK^T and AV per query token
    return float(cfg.num_hidden_layers * 2 * tokens * (linear + attention))


class PrefillLM(nn.Module):
    """The part of ``LlamaForCausalLM`` a prefill uses: ``model`` (no ``lm_head``: [SEG] is read before it)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens


class PrefillNet(nn.Module):
    """inputs_embeds [1,L,H] -> the final-norm hidden state before [SEG] [1,H] (one LLaMA prefill)."""

    def __init__(self, llm: nn.Module, seg_positions: list[int]):
        super().__init__()
        self.llm = llm
        self.seg_positions = list(seg_positions)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        return seg_hidden_states(self.llm, inputs_embeds, self.seg_positions)


def prefill_inputs(bm: BenchModel, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """inputs_embeds [1,L,H] of a full window (random visual tokens spliced into the real prompt) and [SEG] positions."""
    m = bm.model
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(MAX_FRAMES, m.config.cluster.tokens_per_frame, m.config.hidden_size, generator=gen)
    ids = m.prompt(QUERY, MAX_REFERENCES)
    with torch.inference_mode():
        embeds, positions = expand_image_tokens(ids, tokens.to(bm.device, bm.llm_dtype), m.llm.get_input_embeddings(),
                                                m.prompt.seg_token_id)
    return embeds.clone(), positions[:1]


def nf4_linear(linear: nn.Linear, compute_dtype: torch.dtype, device: torch.device) -> nn.Module:
    """``linear`` as a bitsandbytes NF4 layer (double quantization), quantized on ``device``."""
    import bitsandbytes as bnb

    q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                          compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4", device="meta")
    q.weight = bnb.nn.Params4bit(linear.weight.data.to(compute_dtype), requires_grad=False,
                                 compress_statistics=True, quant_type="nf4")
    if linear.bias is not None:
        q.bias = nn.Parameter(linear.bias.data.to(compute_dtype), requires_grad=False)
    return q.to(device)


def quantize_linears(module: nn.Module, compute_dtype: torch.dtype, device: torch.device) -> None:
    """Replace every ``nn.Linear`` inside ``module`` by its NF4 version, in place."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, nf4_linear(child, compute_dtype, device))
        else:
            quantize_linears(child, compute_dtype, device)


def random_nf4_llama(cfg: VisaConfig, device: torch.device, compute_dtype: torch.dtype, seed: int = 0) -> PrefillLM:
    """A random LLaMA of ``cfg``'s shapes with NF4 linear layers, built one decoder layer at a time.

    Each layer is initialised in ``compute_dtype`` on ``device`` and quantized before the next
    is made, so peak memory is the NF4 model plus one layer (a 7B model never exists in bf16).
    """
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaModel

    lcfg = llama_config(cfg)
    lcfg._attn_implementation = "sdpa"
    layers = lcfg.num_hidden_layers
    lcfg.num_hidden_layers = 0
    torch.manual_seed(seed)
    with quiet_transformers(), torch.device(device):
        base = LlamaModel(lcfg).to(compute_dtype)
        for i in range(layers):
            layer = LlamaDecoderLayer(lcfg, i).to(compute_dtype)
            quantize_linears(layer, compute_dtype, device)
            base.layers.append(layer)
    lcfg.num_hidden_layers = layers
    return PrefillLM(base).eval().requires_grad_(False)


def random_source(description: str) -> SourceRecord:
    """A manifest source for random weights: the description and its sha256 (there is no file)."""
    return SourceRecord(description, hashlib.sha256(description.encode()).hexdigest())


def weights_note(random_parts: tuple[str, ...]) -> str:
    """What the report says about the weights, naming the parts that are random."""
    if not random_parts:
        return "Weights from the given checkpoints."
    return (f"Weights are random ({', '.join(random_parts)}; no checkpoint given): latency and memory depend only on "
            "the architectures, shapes and dtypes, not on weight values; masks are meaningless.")


def tiny_model(workdir: Path, device: torch.device, xmem_shorter_side: int = 128, seed: int = 0) -> BenchModel:
    """The tiny checkpoint through the real writer and loader; full-size random XMem at ``xmem_shorter_side``."""
    from visa_edge.export.manifest_writer import hash_source
    from visa_edge.runtime.tiny import TinySpec, write_tiny_checkpoint

    tiny = write_tiny_checkpoint(workdir / "tiny", seed=seed)
    model = VisaModel.from_pretrained(tiny.checkpoint, clip=tiny.clip, device=device)
    torch.manual_seed(seed)
    xmem = XMemModel().eval().requires_grad_(False).to(device)
    spec = TinySpec()
    return BenchModel(
        config="tiny", model=model, xmem=xmem, xmem_config=XMemConfig(shorter_side=xmem_shorter_side),
        frame_hw=(240, 320), device=device, llm_dtype=torch.float32,
        sources={"checkpoint": hash_source(tiny.checkpoint), "clip": hash_source(tiny.clip),
                 "xmem": random_source(f"random XMem weights, seed {seed}")},
        random_parts=("VISA", "XMem"),
        architecture={"llm": f"LLaMA H={spec.hidden_size}, {spec.num_layers} layers, fp32", "clip": f"CLIP H={spec.clip_hidden}, "
                      f"{spec.clip_layers} layers", "sam": f"SAM ViT dim {spec.sam.embed_dim}, depth {spec.sam.depth}",
                      "xmem": f"XMem (release sizes), shorter side {xmem_shorter_side}"},
    )


def visa7b_model(
    workdir: Path,
    device: torch.device,
    checkpoint: Path | None = None,
    clip: Path | None = None,
    xmem_path: Path | None = None,
    seed: int = 0,
) -> BenchModel:
    """VISA-7B sizes: from ``checkpoint`` + ``clip`` if given, else random; XMem from ``xmem_path`` or random.

    The LLM is built (NF4, fp16 compute) only on CUDA; on the CPU ``llm_na`` says why not.
    """
    if (checkpoint is None) != (clip is None):
        raise InputError("--checkpoint and --clip go together (a VISA checkpoint needs its CLIP folder)")
    cuda = device.type == "cuda"
    build_llm = cuda and importlib.util.find_spec("bitsandbytes") is not None
    if checkpoint is not None:
        from visa_edge.export.manifest_writer import hash_source

        model = VisaModel.from_pretrained(checkpoint, clip=clip, quantization="nf4" if build_llm else None,
                                          device=device, dtype=torch.float16 if cuda else torch.float32,
                                          load_llm=build_llm)
        for part in (model.vision_tower, model.mm_projector, model.text_hidden_fcs, model.sam):
            part.float()  # fp32 eager baseline like the random model; only the LLM computes in fp16
        sources = {"checkpoint": hash_source(checkpoint), "clip": hash_source(clip)}
    else:
        model = random_visa7b(workdir, device, llm=build_llm, seed=seed)
        sources = {"checkpoint": random_source(f"random VISA-7B weights, seed {seed}"),
                   "clip": random_source(f"random CLIP ViT-L/14 weights, seed {seed}")}
    llm_na = None
    if not cuda:
        llm_na = cpu_llm_reason(model.config, prefill_tokens(model))
    elif not build_llm:
        llm_na = "bitsandbytes is not installed (extra [quant]): the NF4 LLM cannot be built"
    xmem = load_xmem(xmem_path) if xmem_path else _random_xmem(seed)
    sources["xmem"] = _xmem_source(xmem_path, seed)
    return BenchModel(
        config="visa-7b", model=model, xmem=xmem.to(device), xmem_config=XMemConfig(), frame_hw=(480, 640),
        device=device, llm_dtype=torch.float16 if cuda else torch.float32, sources=sources,
        random_parts=tuple(p for p, given in (("VISA", checkpoint), ("XMem", xmem_path)) if given is None), llm_na=llm_na,
        architecture={"llm": "Vicuna-7B shapes (H=4096, 32 layers, MLP 11008), NF4 with fp16 compute", "clip": "CLIP ViT-L/14 "
                      "(1024, 24 layers; 23 run: layer -2)", "sam": "SAM ViT-H (1280, 32 blocks)",
                      "xmem": "XMem (release sizes), shorter side 480"},
    )


def cpu_llm_reason(cfg: VisaConfig, tokens: int) -> str:
    """Why the 7B prefill is not measured on a CPU."""
    return (
        f"Vicuna-7B prefill is infeasible on this CPU: {prefill_flops(cfg, tokens):.1e} FLOPs per window of {tokens} "
        "tokens, and a random 7B model is 13 GB in bf16; the random NF4 LLM is built layer by layer on CUDA only"
    )


def random_visa7b(workdir: Path, device: torch.device, llm: bool, seed: int = 0) -> VisaModel:
    """A VisaModel with VISA-7B's architectures and random weights (fp32; the LLM in NF4 when ``llm``).

    The prompt tokenizer is the tiny checkpoint's (a 400-piece sentencepiece BPE with [SEG]): it
    splits the prompt into 265 text tokens, more than Vicuna's 32k-piece tokenizer (127), so the window
    (1,609 tokens) is longer than VISA-7B's (1,471) by 138 tokens.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from visa_edge.runtime.tiny import write_tiny_checkpoint

    tiny = write_tiny_checkpoint(workdir / "tokenizer", seed=seed)
    torch.manual_seed(seed)
    with quiet_transformers():
        prompt = load_prompt_tokenizer(tiny.checkpoint)
        tower = ClipVisionTower(CLIPVisionModel(CLIPVisionConfig(**CLIP_VIT_L14)).eval(), VICUNA_7B.mm_vision_select_layer)
    cfg = VICUNA_7B
    sam = build_sam_parts(SamEncoderConfig())
    llm_module = random_nf4_llama(cfg, device, torch.float16, seed) if llm else None
    model = VisaModel(cfg, prompt, ClipPreprocess(), tower, nn.Linear(cfg.mm_hidden_size, cfg.hidden_size), llm_module,
                      seg_head(cfg.hidden_size, cfg.out_dim), sam)
    for part in (model.vision_tower, model.clustering, model.mm_projector, model.text_hidden_fcs, model.sam):
        part.to(device)
    return model.eval().requires_grad_(False)


def _random_xmem(seed: int) -> XMemModel:
    torch.manual_seed(seed)
    return XMemModel().eval().requires_grad_(False)


def _xmem_source(path: Path | None, seed: int) -> SourceRecord:
    if path is None:
        return random_source(f"random XMem weights, seed {seed}")
    from visa_edge.export.manifest_writer import hash_source

    return hash_source(path)


def clip_time(i: int, period: int) -> float:
    """Synthetic-clip time of frame ``i``: the ellipse sweeps right and back every ``period`` frames, never
    leaving the frame and never jumping (so a looped clip keeps the trackers' workload steady)."""
    return 12.0 * (1.0 - math.cos(2.0 * math.pi * i / period))


def synthetic_frames(n: int, frame_hw: tuple[int, int], period: int = CLIP_PERIOD) -> list[np.ndarray]:
    """``n`` RGB frames of the synthetic clip (a red ellipse moving over texture) at ``frame_hw``."""
    h, w = frame_hw
    return [synthetic.frame(clip_time(i, period), h, w) for i in range(n)]


def synthetic_mask(i: int, frame_hw: tuple[int, int], period: int = CLIP_PERIOD) -> np.ndarray:
    """The ellipse's 0/1 mask in frame ``i`` of :func:`synthetic_frames`."""
    return synthetic.ellipse_mask(clip_time(i, period), *frame_hw)
