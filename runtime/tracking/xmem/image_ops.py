"""XMem's input and output pipeline (eval.py + VideoReader + InferenceCore), in torch.

frame RGB uint8 -> float /255 -> (x - mean) / std -> shorter side resized (bilinear, on the
normalised tensor) -> zero-padded to multiples of 16, centred. Outputs are cropped back and
resized bilinearly to the frame size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InputError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
STRIDE = 16

Pads = tuple[int, int, int, int]  # left, right, top, bottom


def check_frame(frame: np.ndarray, what: str = "frame") -> np.ndarray:
    """``frame`` if it is RGB uint8 [H,W,3], else an InputError saying what was expected."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        desc = f"{type(frame).__name__} {getattr(frame, 'dtype', '')} {getattr(frame, 'shape', '')}"
        raise InputError(f"{what}: expected an RGB uint8 array [H,W,3], got {desc}")
    if min(frame.shape[:2]) < 1:
        raise InputError(f"{what}: empty frame of shape {frame.shape}")
    return frame


def check_mask(mask: np.ndarray, frame_shape: tuple[int, ...]) -> np.ndarray:
    """A reference as an integer label image [H,W]; InputError unless it is a 2-D array with the frame's H,W.

    Integer arrays are label images; boolean and float arrays are 0/1 masks (non-zero = object 1).
    """
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.shape != tuple(frame_shape[:2]):
        shape = getattr(mask, "shape", type(mask).__name__)
        raise InputError(f"mask: expected a label image or 0/1 mask [H,W] = {tuple(frame_shape[:2])} like its frame, got {shape}")
    return mask if np.issubdtype(mask.dtype, np.integer) else (mask != 0).astype(np.uint8)


def processing_size(height: int, width: int, shorter_side: int | None) -> tuple[int, int]:
    """(H, W) with the shorter side resized to ``shorter_side`` (long side truncated, as torchvision does)."""
    if shorter_side is None:
        return height, width
    if width <= height:
        return int(shorter_side * height / width), shorter_side
    return shorter_side, int(shorter_side * width / height)


def normalise(frame: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """RGB uint8 [H,W,3] -> float32 [3,H,W], ImageNet-normalised (divide, subtract, divide: bit-exact)."""
    x = torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(MEAN, dtype=torch.float32, device=x.device)[:, None, None]
    std = torch.tensor(STD, dtype=torch.float32, device=x.device)[:, None, None]
    return (x - mean) / std


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """[C,H,W] resized to ``size``; bilinear without antialiasing (torchvision 0.14's tensor Resize, VISA's pin)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x[None], size=size, mode="nearest")[0]
    return F.interpolate(x[None], size=size, mode=mode, align_corners=False, antialias=False)[0]


def pad_amounts(height: int, width: int) -> Pads:
    """Zero padding to the next multiple of 16, split floor/ceil (left/top gets the floor)."""
    dh, dw = -height % STRIDE, -width % STRIDE
    return dw // 2, dw - dw // 2, dh // 2, dh - dh // 2


def pad(x: torch.Tensor, pads: Pads) -> torch.Tensor:
    return F.pad(x, pads)


def unpad(x: torch.Tensor, pads: Pads) -> torch.Tensor:
    left, right, top, bottom = pads
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


def aggregate(prob: torch.Tensor) -> torch.Tensor:
    """Soft aggregation of object probabilities [O,H,W] -> [bg, objects] [O+1,H,W] summing to 1."""
    with_bg = torch.cat([torch.prod(1 - prob, dim=0, keepdim=True), prob], dim=0).clamp(1e-7, 1 - 1e-7)
    return torch.softmax(torch.log(with_bg / (1 - with_bg)), dim=0)


def logits_to_prob(logits_q4: torch.Tensor) -> torch.Tensor:
    """Decoder logits [O,1,h4,w4] -> aggregated probabilities [O+1,H,W] at the padded size."""
    logits = F.interpolate(logits_q4, scale_factor=4.0, mode="bilinear", align_corners=False)
    return aggregate(torch.sigmoid(logits[:, 0]))
