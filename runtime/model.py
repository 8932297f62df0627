"""``VisaModel``: a VISA checkpoint loaded as plain modules, with the exportable networks.

Checkpoint layout (state-dict prefixes of ``VISAForCausalLM``):
``model.embed_tokens/layers/norm`` + ``lm_head`` (LLaMA), ``model.mm_projector``,
``model.visual_model.{image_encoder,prompt_encoder,mask_decoder}`` (SAM),
``model.text_hidden_fcs.0`` ([SEG] head). ``model.vision_tower.*`` is ignored: like VISA,
the CLIP tower is loaded from its own folder (``clip=``). The rotary ``inv_freq`` buffers
are ignored too: they are recomputed exactly, as transformers does.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from .checkpoint import check_keys, load_file, load_state_dict, quiet_transformers
from .clip import ClipPreprocess, ClipVisionTower, load_clip
from .clustering import TokenClustering
from .visa_config import VisaConfig
from .errors import CheckpointError
from .llm import build_llama, llama_config
from .prompt import PromptTokenizer, load_prompt_tokenizer
from .sam import PARTS, SamEncoderConfig, SegMaskDecoder, build_sam_parts
from .validate import parse_device

LLM_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")
PROJECTOR = "model.mm_projector."
SAM = "model.visual_model."
SEG_HEAD = "model.text_hidden_fcs.0."
IGNORED_PREFIXES = ("model.vision_tower.",)
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


class VisualTokenNet(nn.Module):
    """CLIP pixels [N,3,224,224] -> projected visual tokens [N,112,H] (CLIP + clustering + projector)."""

    def __init__(self, vision_tower: ClipVisionTower, clustering: TokenClustering, projector: nn.Linear):
        super().__init__()
        self.vision_tower = vision_tower
        self.clustering = clustering
        self.projector = projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.clustering(self.vision_tower(pixel_values)))


def seg_head(hidden: int, out_dim: int) -> nn.Sequential:
    """VISA's ``text_hidden_fcs[0]``: Linear(H,H) -> ReLU -> Linear(H,out) (-> Dropout(0), omitted)."""
    return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class VisaModel(nn.Module):
    """All VISA modules (CLIP tower, clustering, projector, LLaMA, [SEG] head, SAM) and the prompt tokenizer."""

    def __init__(
        self,
        config: VisaConfig,
        prompt: PromptTokenizer,
        clip_preprocess: ClipPreprocess,
        vision_tower: ClipVisionTower,
        mm_projector: nn.Linear,
        llm: nn.Module | None,
        text_hidden_fcs: nn.Sequential,
        sam: nn.ModuleDict,
        quantization: str | None = None,
    ):
        super().__init__()
        self.config = config
        self.prompt = prompt
        self.clip_preprocess = clip_preprocess
        self.vision_tower = vision_tower
        self.clustering = TokenClustering(config.cluster, vision_tower.num_patches)
        self.mm_projector = mm_projector
        self.llm = llm
        self.text_hidden_fcs = text_hidden_fcs
        self.sam = sam
        self.quantization = quantization

    @property
    def device(self) -> torch.device:
        return self.mm_projector.weight.device

    def check_query(self, query: str, n_frames: int = 12) -> None:
        """Raise InputError unless ``query`` is a string whose prompt, with ``n_frames`` frames of
        visual tokens, fits the LLM's ``max_position_embeddings``."""
        self.prompt.check_query(query, n_frames, self.config.cluster.tokens_per_frame, self.config.max_position_embeddings)

    def visual_token_net(self) -> VisualTokenNet:
        return VisualTokenNet(self.vision_tower, self.clustering, self.mm_projector)

    def sam_encoder_net(self) -> nn.Module:
        """SAM image encoder: padded image [B,3,1024,1024] -> image embeddings [B,256,64,64]."""
        return self.sam["image_encoder"]

    def mask_decoder_net(self) -> SegMaskDecoder:
        return SegMaskDecoder(self.sam["prompt_encoder"], self.sam["mask_decoder"])

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        clip: str | Path,
        quantization: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        sam_checkpoint: str | Path | None = None,
        load_llm: bool = True,
    ) -> "VisaModel":
        """Load a VISA checkpoint folder (config.json, tokenizer with [SEG], weights) and a CLIP folder.

        ``quantization="nf4"`` loads the LLM in 4-bit (bitsandbytes); everything else stays in
        ``dtype``. ``sam_checkpoint`` is an official SAM ``.pth`` whose tensors replace the
        checkpoint's ``model.visual_model.*`` ones key by key. ``load_llm=False`` skips the
        LLM's tensors entirely (``llm`` is None): for exporting the vision and SAM networks.
        """
        folder, device = Path(folder), parse_device(str(device))
        warn_slow_cpu_dtype(device, dtype)
        with quiet_transformers():
            config = VisaConfig.from_file(folder / "config.json")
            prompt = _load_prompt_tokenizer(folder, config)
            keep = None if load_llm else (lambda k: not k.startswith(LLM_PREFIXES))
            groups = split_state_dict(load_state_dict(folder, keep), str(folder))
            if sam_checkpoint is not None:
                groups["sam"].update(_load_sam_override(Path(sam_checkpoint)))
            sam = _build_sam(groups["sam"], str(folder), dtype, device)
            projector = _build_linear_stack(
                nn.Linear(config.mm_hidden_size, config.hidden_size), groups["projector"], f"{folder} (mm_projector)", dtype, device
            )
            head = _build_linear_stack(
                seg_head(config.hidden_size, config.out_dim), groups["seg_head"], f"{folder} (text_hidden_fcs)", dtype, device
            )
            llm = None
            if load_llm:
                _check_llm_keys(config, groups["llm"], str(folder))
                llm = build_llama(config, groups["llm"], dtype, device, quantization)
            tower = load_clip(clip, dtype, config.mm_vision_select_layer).to(device)
        if tower.hidden_size != config.mm_hidden_size:
            raise CheckpointError(
                f"{clip}: CLIP hidden size {tower.hidden_size} does not match mm_hidden_size {config.mm_hidden_size} of {folder / 'config.json'}"
            )
        if config.cluster.clusters[0] > tower.num_patches:
            raise CheckpointError(
                f"{folder / 'config.json'}: spatial_cluster_rate0={config.cluster.clusters[0]} clusters from "
                f"{tower.num_patches} CLIP patches of {clip}; expected at most {tower.num_patches}"
            )
        model = cls(config, prompt, ClipPreprocess.from_folder(clip), tower, projector, llm, head, sam, quantization)
        model.clustering.to(device)
        return model.eval().requires_grad_(False)


def warn_slow_cpu_dtype(device: torch.device, dtype: torch.dtype) -> None:
    """Warn when ``dtype`` on this CPU has no oneDNN kernels: PyTorch then runs convolutions on its
    reference kernels (measured on an AVX2 CPU: the tiny model's SAM encoder 34 s in bfloat16
    against 0.4 s in float32)."""
    supported = {
        torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported,
        torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported,
    }.get(dtype)
    if device.type == "cpu" and supported is not None and not supported():
        warnings.warn(
            f"dtype {str(dtype).removeprefix('torch.')} on this CPU ({torch.backends.cpu.get_cpu_capability()}, no native "
            "support): convolutions run on PyTorch's reference kernels, tens of times slower than float32; "
            "use float32 on this CPU (reduced precision pays on a GPU)",
            RuntimeWarning,
            stacklevel=3,
        )


def split_state_dict(sd: dict[str, torch.Tensor], source: str) -> dict[str, dict[str, torch.Tensor]]:
    """Partition a VISA state dict into llm / projector / sam / seg_head groups (prefixes stripped
    except for the LLM); raise on keys that belong to none."""
    groups: dict[str, dict[str, torch.Tensor]] = {"llm": {}, "projector": {}, "sam": {}, "seg_head": {}}
    unknown = []
    for key, value in sd.items():
        if key.startswith(IGNORED_PREFIXES) or key.endswith(IGNORED_SUFFIXES):
            continue
        if key.startswith(LLM_PREFIXES):
            groups["llm"][key] = value
        elif key.startswith(PROJECTOR):
            groups["projector"][key[len(PROJECTOR) :]] = value
        elif key.startswith(SAM):
            groups["sam"][key[len(SAM) :]] = value
        elif key.startswith(SEG_HEAD):
            groups["seg_head"][key[len(SEG_HEAD) :]] = value
        else:
            unknown.append(key)
    if unknown:
        hint = " (LoRA adapters must be merged first)" if any("lora_" in k for k in unknown) else ""
        check_keys(source, {k: sd[k] for k in unknown}, {}, "the VISA model" + hint)
    return groups


def _load_prompt_tokenizer(folder: Path, config: VisaConfig) -> PromptTokenizer:
    prompt = load_prompt_tokenizer(folder)
    if prompt.seg_token_id >= config.vocab_size:
        raise CheckpointError(
            f"{folder}: tokenizer [SEG] id {prompt.seg_token_id} is outside the model vocabulary ({config.vocab_size} in config.json)"
        )
    return prompt


def _check_llm_keys(config: VisaConfig, sd: dict[str, torch.Tensor], source: str) -> None:
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        expected = {k: v.shape for k, v in LlamaForCausalLM(llama_config(config)).state_dict().items()}
    check_keys(source, sd, expected, "the LLaMA language model")


def _build_linear_stack(module: nn.Module, sd: dict[str, torch.Tensor], source: str, dtype, device) -> nn.Module:
    check_keys(source, sd, {k: v.shape for k, v in module.state_dict().items()}, "the module")
    module.load_state_dict({k: v.to(dtype) for k, v in sd.items()})
    return module.to(device=device, dtype=dtype).eval()


def _build_sam(sd: dict[str, torch.Tensor], source: str, dtype, device) -> nn.ModuleDict:
    cfg = SamEncoderConfig.from_state_dict(sd, "image_encoder.", f"{source} (model.visual_model)")
    with torch.device("meta"):
        parts = build_sam_parts(cfg)
    check_keys(f"{source} (model.visual_model)", sd, {k: v.shape for k, v in parts.state_dict().items()}, "SAM")
    parts.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, assign=True)
    return parts.to(device).eval()


def _load_sam_override(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: SAM checkpoint not found")
    sd = load_file(path)
    bad = [k for k in sd if not k.startswith(tuple(p + "." for p in PARTS))]
    if bad:
        raise CheckpointError(f"{path}: unexpected keys {bad[:10]}; expected an official SAM checkpoint ({', '.join(PARTS)})")
    if any(k.startswith("mask_decoder.") for k in sd):
        print(f"note: {path} replaces VISA's fine-tuned SAM mask decoder", file=sys.stderr)
    return sd
