"""SAM parts of VISA: building from checkpoint shapes, pre/post-processing, the [SEG]-prompted decoder.

The modules themselves come from the ``segment-anything`` package. Its package
``__init__`` imports ``predictor`` and ``automatic_mask_generator``, which import
torchvision; the PyPI torchvision is a CUDA build that does not import on CPU-only
machines, and VISA does not use those modules. :func:`sam_modeling` is the one place
that imports ``segment_anything.modeling`` without running that ``__init__``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from functools import partial
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .errors import CheckpointError, InputError

IMAGE_SIZE = 1024
PATCH_SIZE = 16
PROMPT_DIM = 256
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


def sam_modeling() -> ModuleType:
    """Import ``segment_anything.modeling`` without executing ``segment_anything/__init__.py``."""
    name = "segment_anything.modeling"
    if name in sys.modules:
        return sys.modules[name]
    if "segment_anything" in sys.modules:  # the full package is already imported
        return importlib.import_module(name)
    spec = importlib.util.find_spec("segment_anything")
    if spec is None:
        raise ImportError("segment-anything is not installed (pip install segment-anything==1.0)")
    # An unexecuted package module lets the relative imports inside modeling/ resolve.
    sys.modules["segment_anything"] = importlib.util.module_from_spec(spec)
    try:
        return importlib.import_module(name)
    finally:
        # Drop the placeholder so a later `import segment_anything` runs the real __init__.
        del sys.modules["segment_anything"]


@dataclass(frozen=True)
class SamEncoderConfig:
    """ViT image-encoder sizes. VISA uses ViT-H (1280, 32 blocks, 16 heads, global at 7/15/23/31)."""

    embed_dim: int = 1280
    depth: int = 32
    num_heads: int = 16
    global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)
    window_size: int = 14

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], prefix: str, source: str) -> "SamEncoderConfig":
        """Infer the encoder sizes from weight shapes (SAM configs are not stored in checkpoints).

        ``rel_pos_h`` has shape ``(2*S-1, head_dim)`` with S the attention grid side: 14 for
        windowed blocks, 64 for global ones; head_dim gives the number of heads.
        """
        pos = sd.get(prefix + "pos_embed")
        if pos is None:
            raise CheckpointError(f"{source}: missing {prefix}pos_embed; cannot infer the SAM image encoder size")
        embed_dim = int(pos.shape[-1])
        depth = 0
        while f"{prefix}blocks.{depth}.attn.rel_pos_h" in sd:
            depth += 1
        if depth == 0:
            raise CheckpointError(f"{source}: no {prefix}blocks.*.attn.rel_pos_h; expected a SAM ViT encoder with relative positions")
        grid = IMAGE_SIZE // PATCH_SIZE
        head_dims, global_idx, windows = set(), [], set()
        for i in range(depth):
            rel = sd[f"{prefix}blocks.{i}.attn.rel_pos_h"]
            side = (int(rel.shape[0]) + 1) // 2
            head_dims.add(int(rel.shape[1]))
            if side == grid:
                global_idx.append(i)
            else:
                windows.add(side)
        if len(head_dims) != 1 or len(windows) > 1 or embed_dim % next(iter(head_dims)):
            raise CheckpointError(f"{source}: inconsistent SAM encoder rel_pos shapes (head dims {head_dims}, windows {windows})")
        return cls(
            embed_dim=embed_dim,
            depth=depth,
            num_heads=embed_dim // head_dims.pop(),
            global_attn_indexes=tuple(global_idx),
            window_size=windows.pop() if windows else 14,
        )


def build_sam_parts(cfg: SamEncoderConfig) -> nn.ModuleDict:
    """SAM image encoder, prompt encoder and mask decoder with SAM's fixed sizes (uninitialised values)."""
    m = sam_modeling()
    grid = IMAGE_SIZE // PATCH_SIZE
    return nn.ModuleDict(
        {
            "image_encoder": m.ImageEncoderViT(
                depth=cfg.depth,
                embed_dim=cfg.embed_dim,
                img_size=IMAGE_SIZE,
                mlp_ratio=4,
                norm_layer=partial(nn.LayerNorm, eps=1e-6),
                num_heads=cfg.num_heads,
                patch_size=PATCH_SIZE,
                qkv_bias=True,
                use_rel_pos=True,
                global_attn_indexes=cfg.global_attn_indexes,
                window_size=cfg.window_size,
                out_chans=PROMPT_DIM,
            ),
            "prompt_encoder": m.PromptEncoder(
                embed_dim=PROMPT_DIM,
                image_embedding_size=(grid, grid),
                input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
                mask_in_chans=16,
            ),
            "mask_decoder": m.MaskDecoder(
                num_multimask_outputs=3,
                transformer=m.TwoWayTransformer(depth=2, embedding_dim=PROMPT_DIM, mlp_dim=2048, num_heads=8),
                transformer_dim=PROMPT_DIM,
                iou_head_depth=3,
                iou_head_hidden_dim=256,
            ),
        }
    )


def resized_shape(height: int, width: int, long_side: int = IMAGE_SIZE) -> tuple[int, int]:
    """SAM's ResizeLongestSide output size: scale the longer side to ``long_side``, round half up."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess(frame: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """RGB uint8 HxWx3 -> normalised, zero-padded [3,1024,1024] float32 and the resized (h, w).

    PIL bilinear resize to the longest side 1024 (as torchvision's resize on a PIL image),
    per-channel ``(x - mean) / std`` in float32, zero padding at the bottom and right.
    """
    check_rgb(frame, "frame")
    h, w = resized_shape(*frame.shape[:2])
    resized = np.asarray(Image.fromarray(frame).resize((w, h), Image.BILINEAR))
    x = (resized.astype(np.float32) - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_STD)
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    out[:h, :w] = x
    return torch.from_numpy(out.transpose(2, 0, 1).copy()), (h, w)


def postprocess(low_res: torch.Tensor, resized_hw: tuple[int, int], original_hw: tuple[int, int]) -> torch.Tensor:
    """Low-res logits [Q,1,256,256] -> logits at the frame size [Q,H,W] (SAM's postprocess_masks)."""
    x = F.interpolate(low_res.float(), (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = x[..., : resized_hw[0], : resized_hw[1]]
    x = F.interpolate(x, original_hw, mode="bilinear", align_corners=False)
    return x[:, 0]


def check_rgb(frame: np.ndarray, what: str) -> None:
    """Raise InputError unless ``frame`` is an HxWx3 uint8 array."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise InputError(f"{what}: expected an RGB uint8 array of shape (H, W, 3), got {desc}")


def dense_positional_encoding(gaussian: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """SAM's random-Fourier encoding of the embedding grid [1, 2*F, H, W], computed in float32.

    Cell centres ``((col+0.5)/W, (row+0.5)/H)`` mapped to [-1, 1], projected by the gaussian
    matrix [2,F], times 2*pi, then [sin, cos]. (SAM's own code would round the grid to the
    matrix dtype in fp16/bf16; float32 keeps the constant exact.)
    """
    h, w = grid
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    coords = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [H,W,2] as (x, y)
    proj = (2 * coords - 1) @ gaussian.float().to(coords.device) * (2 * torch.pi)
    return torch.cat([proj.sin(), proj.cos()], dim=-1).permute(2, 0, 1).unsqueeze(0)


class SegMaskDecoder(nn.Module):
    """SAM mask decoder prompted by [SEG] embeddings, one mask per query.

    Inputs: image embeddings [1,256,64,64] and Q [SEG] embeddings [Q,256] (the sparse
    prompts). The dense prompt (``no_mask_embed``) and the positional encoding are
    folded in as constants. Outputs low-res logits [Q,1,256,256] and IoU [Q,1] of mask
    token 0 (VISA's ``multimask_output=False``). Written with broadcasting instead of
    ``repeat_interleave`` so that the exported graph has no Tile on shape tensors.
    """

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module):
        super().__init__()
        self.decoder = mask_decoder
        with torch.no_grad():
            dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
            grid = tuple(prompt_encoder.image_embedding_size)
            pe = dense_positional_encoding(prompt_encoder.pe_layer.positional_encoding_gaussian_matrix, grid)
        self.register_buffer("dense", dense.expand(1, -1, *grid).clone(), persistent=False)
        self.register_buffer("image_pe", pe.to(dense.dtype), persistent=False)

    def forward(self, image_embeddings: torch.Tensor, seg_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.decoder
        q = seg_embeddings.shape[0]
        out_tokens = torch.cat([d.iou_token.weight, d.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(q, -1, -1), seg_embeddings.unsqueeze(1)], dim=1)
        src = (image_embeddings + self.dense).expand(q, -1, -1, -1)
        pos = self.image_pe.expand(q, -1, -1, -1)
        c, h, w = src.shape[1:]
        hs, src = d.transformer(src, pos, tokens)
        src = src.transpose(1, 2).reshape(q, c, h, w)
        up = d.output_upscaling(src)
        hyper = d.output_hypernetworks_mlps[0](hs[:, 1, :])
        low_res = (hyper.unsqueeze(1) @ up.flatten(2)).reshape(q, 1, up.shape[-2], up.shape[-1])
        iou = d.iou_prediction_head(hs[:, 0, :])[:, :1]
        return low_res, iou
