"""CLIP vision tower of VISA: exact CLIP preprocessing and layer-(-2) patch features."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .errors import CheckpointError
from .sam import check_rgb

_PIL_RESAMPLE = {0: Image.NEAREST, 1: Image.LANCZOS, 2: Image.BILINEAR, 3: Image.BICUBIC}


@dataclass(frozen=True)
class ClipPreprocess:
    """``CLIPImageProcessor`` as VISA uses it (openai/clip-vit-large-patch14 settings).

    PIL resize of the shortest side to ``size`` (long side ``int(size*long/short)``), center
    crop, ``uint8 * (1/255)`` in float64 cast to float32, ``(x - mean) / std`` in float32.
    """

    size: int = 224
    crop: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    resample: int = 3

    @classmethod
    def from_folder(cls, folder: str | Path) -> "ClipPreprocess":
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            raise CheckpointError(f"{path}: not found; the CLIP folder must hold the CLIPImageProcessor config")
        d = json.loads(path.read_text())
        size, crop = d.get("size", 224), d.get("crop_size", 224)
        size = size["shortest_edge"] if isinstance(size, dict) else size
        crop = crop["height"] if isinstance(crop, dict) else crop
        if int(d.get("resample", 3)) not in _PIL_RESAMPLE:
            raise CheckpointError(f"{path}: unsupported resample {d.get('resample')}; expected one of {sorted(_PIL_RESAMPLE)}")
        return cls(
            size=int(size),
            crop=int(crop),
            mean=tuple(d.get("image_mean", cls.mean)),
            std=tuple(d.get("image_std", cls.std)),
            resample=int(d.get("resample", 3)),
        )

    def __call__(self, frame: np.ndarray) -> torch.Tensor:
        """RGB uint8 HxWx3 -> [3, crop, crop] float32."""
        check_rgb(frame, "frame")
        h, w = frame.shape[:2]
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.size * long / short)
        new_w, new_h = (self.size, new_long) if w <= h else (new_long, self.size)
        img = np.asarray(Image.fromarray(frame).resize((new_w, new_h), _PIL_RESAMPLE[self.resample], reducing_gap=None))
        top, left = (new_h - self.crop) // 2, (new_w - self.crop) // 2
        img = img[top : top + self.crop, left : left + self.crop]
        x = (img * (1 / 255)).astype(np.float32)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(x.transpose(2, 0, 1).copy())


class ClipVisionTower(nn.Module):
    """``CLIPVisionModel`` truncated to the selected layer: pixels [N,3,224,224] -> patches [N,P,C].

    VISA takes ``hidden_states[select_layer]`` with the CLS token dropped and no post-layernorm.
    Layers after the selected one never influence the output, so they are removed.
    """

    def __init__(self, clip_model: nn.Module, select_layer: int = -2):
        super().__init__()
        n_layers = len(clip_model.encoder.layers)
        keep = select_layer % (n_layers + 1)
        if keep == 0:
            raise CheckpointError(f"mm_vision_select_layer={select_layer} selects the embeddings; expected an encoder layer")
        self.embeddings = clip_model.embeddings
        self.pre_layrnorm = clip_model.pre_layrnorm
        self.layers = clip_model.encoder.layers[:keep]
        self.hidden_size = int(clip_model.config.hidden_size)
        self.num_patches = int(clip_model.embeddings.num_patches)
        self.image_size = int(clip_model.config.image_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        for layer in self.layers:
            x = layer(x, None)
        return x[:, 1:]


def load_clip(folder: str | Path, dtype: torch.dtype, select_layer: int) -> ClipVisionTower:
    """Load a Hugging Face CLIP folder (``CLIPVisionModel`` or full ``CLIPModel``) as a vision tower."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder / 'config.json'}: not found; expected a Hugging Face CLIP vision folder")
    try:
        config = CLIPVisionConfig.from_pretrained(str(folder))
        model, info = CLIPVisionModel.from_pretrained(
            str(folder), config=config, dtype=dtype, local_files_only=True, output_loading_info=True
        )
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: could not load the CLIP vision model ({e})") from e
    missing = [k for k in info["missing_keys"] if "position_ids" not in k]
    if missing or info.get("mismatched_keys"):
        raise CheckpointError(
            f"{folder}: CLIP weights incomplete; missing {sorted(missing)[:20]}, shape mismatches {info.get('mismatched_keys')}"
        )
    return ClipVisionTower(model.eval(), select_layer)
