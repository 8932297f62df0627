"""CLIP vision tower of VISA: exact CLIP preprocessing and layer-(-2) patch features."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .errors import CheckpointError
from .sam import check_rgb
from .validate import Fields, read_json_object

MAX_CLIP_IMAGE = 4096
MAX_CLIP_WIDTH = 1 << 14
MAX_CLIP_LAYERS = 256
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
        """Read and check ``folder/preprocessor_config.json`` (sizes, mean, std, resample)."""
        path = Path(folder) / "preprocessor_config.json"
        d = read_json_object(path, "the CLIPImageProcessor config of the CLIP folder", CheckpointError)
        f = Fields(d, str(path), CheckpointError)
        size = _side(f, "size", ("shortest_edge",))
        crop = _side(f, "crop_size", ("height", "width"))
        if crop > size:
            raise CheckpointError(f"{path}: crop_size {crop} is larger than size {size}; expected crop_size <= size")
        resample = f.integer("resample", 3)
        if resample not in _PIL_RESAMPLE:
            raise CheckpointError(f"{path}: unsupported resample {resample}; expected one of {sorted(_PIL_RESAMPLE)}")
        return cls(size=size, crop=crop, mean=_triple(f, "image_mean", cls.mean, False),
                   std=_triple(f, "image_std", cls.std, True), resample=resample)

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
        if not -(n_layers + 1) <= select_layer <= n_layers:
            raise CheckpointError(
                f"mm_vision_select_layer={select_layer}: the CLIP tower has {n_layers} layers; "
                f"expected a hidden-state index in [{-(n_layers + 1)}, {n_layers}]"
            )
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
    """Load a Hugging Face CLIP folder (``CLIPVisionModel`` or full ``CLIPModel``) as a vision tower.

    Its ``config.json`` is checked (sizes, and an image size equal to the preprocessor's crop)
    before transformers builds anything from it.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModel

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder / 'config.json'}: not found; expected a Hugging Face CLIP vision folder")
    image_size = check_clip_config(folder / "config.json")
    crop = ClipPreprocess.from_folder(folder).crop
    if crop != image_size:
        raise CheckpointError(
            f"{folder / 'preprocessor_config.json'}: crop_size {crop} does not match image_size {image_size} of "
            f"{folder / 'config.json'}; expected the preprocessor to crop to the model's image size"
        )
    try:
        config = CLIPVisionConfig.from_pretrained(str(folder))
        model, info = CLIPVisionModel.from_pretrained(
            str(folder), config=config, dtype=dtype, local_files_only=True, output_loading_info=True
        )
    except Exception as e:  # corrupt weights or shapes rejected inside transformers: name the folder
        raise CheckpointError(f"{folder}: could not load the CLIP vision model ({type(e).__name__}: {_first_line(e)})") from e
    missing = [k for k in info["missing_keys"] if "position_ids" not in k]
    if missing or info.get("mismatched_keys"):
        raise CheckpointError(
            f"{folder}: CLIP weights incomplete; missing {sorted(missing)[:20]}, shape mismatches {info.get('mismatched_keys')}"
        )
    return ClipVisionTower(model.eval(), select_layer)


def check_clip_config(path: Path) -> int:
    """Check the sizes of a CLIP ``config.json`` (a CLIPVisionConfig or a CLIPModel's ``vision_config``); its image size."""
    d = read_json_object(path, "a Hugging Face CLIP config", CheckpointError)
    source = str(path)
    if "vision_config" in d:
        d, source = d["vision_config"], f"{path} vision_config"
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: is {type(d).__name__}; expected a JSON object")
    f = Fields(d, source, CheckpointError)
    image_size = f.integer("image_size", 224, lo=1, hi=MAX_CLIP_IMAGE)
    f.integer("patch_size", 32, lo=1, hi=image_size)
    hidden = f.integer("hidden_size", 768, lo=1, hi=MAX_CLIP_WIDTH)
    heads = f.integer("num_attention_heads", 12, lo=1, hi=hidden)
    if hidden % heads:
        raise CheckpointError(f"{source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    f.integer("intermediate_size", 3072, lo=1, hi=4 * MAX_CLIP_WIDTH)
    f.integer("num_hidden_layers", 12, lo=1, hi=MAX_CLIP_LAYERS)
    f.integer("num_channels", 3, lo=3, hi=3)
    return image_size


def _side(f: Fields, name: str, keys: tuple[str, ...]) -> int:
    """A preprocessor size: an integer, or an object whose ``keys`` hold one equal integer."""
    value = f.data.get(name, 224)
    if isinstance(value, dict):
        sides = {Fields(value, f"{f.source} {name}", CheckpointError).integer(k, lo=1, hi=MAX_CLIP_IMAGE) for k in keys}
        if len(sides) != 1:
            raise f.fail(name, value, f"a square size ({' = '.join(keys)})")
        return sides.pop()
    return f.integer(name, 224, lo=1, hi=MAX_CLIP_IMAGE)


def _triple(f: Fields, name: str, default: tuple[float, ...], positive: bool) -> tuple[float, float, float]:
    """Three finite per-channel numbers (positive for the std)."""
    value = f.data.get(name, list(default))
    if not isinstance(value, list) or len(value) != 3:
        raise f.fail(name, value, "a list of 3 numbers (R, G, B)")
    channels = Fields(dict(enumerate(value)), f"{f.source} {name}", CheckpointError)
    return tuple(channels.number(i, positive=positive) for i in range(3))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"
