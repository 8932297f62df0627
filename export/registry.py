"""The export registry: which networks exist, built from which checkpoints, traced on what.

Each group returns ``ExportNetwork``s (module + ``NetworkSpec`` + example inputs at the
trace sizes + the checkpoints it depends on); the pipeline exports any list of them the
same way. Groups:

- :func:`reasoning_networks`: ``visual_tokens`` (CLIP layer -2 + Chat-UniVi clustering +
  mm_projector in one graph), ``sam_encoder``, ``mask_decoder``;
- :func:`tracker_networks`: the XMem key encoder, value encoder and decoder from
  ``runtime/tracking/xmem`` (``XMEM_NETWORKS`` + ``xmem_modules``) at a working size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from visa_edge.runtime import sam, synthetic
from visa_edge.runtime.backends.base import DimRange
from visa_edge.runtime.model import VisaModel
from visa_edge.runtime.reasoning_networks import REASONING_NETWORKS, NetworkSpec, reasoning_modules
from visa_edge.runtime.tracking.xmem import XMEM_NETWORKS, XMemModel, image_ops, xmem_modules
from visa_edge.runtime.tracking.xmem.modules import HIDDEN_DIM, VALUE_DIM

from .errors import ExportError


@dataclass(frozen=True)
class ExportNetwork:
    """A network to export: module, signature, example inputs and the sources it comes from.

    ``example_inputs`` hold every dynamic dim at its trace size (:func:`trace_size`);
    ``sources`` name entries of the export's source hashes (``checkpoint``, ``clip``, ...).
    """

    name: str
    module: nn.Module
    spec: NetworkSpec
    example_inputs: Mapping[str, torch.Tensor]
    sources: tuple[str, ...]


def trace_size(r: DimRange) -> int:
    """Size a dynamic dim is traced at: at least 2, so that the tracer cannot treat it as a
    broadcastable 1 and bake that into the graph."""
    return min(r.max, max(2, r.min))


def reasoning_networks(model: VisaModel, extra_sources: tuple[str, ...] = (), seed: int = 0) -> list[ExportNetwork]:
    """The reasoning-step networks of ``model`` with example inputs from the synthetic clip.

    ``extra_sources`` (e.g. ``sam_checkpoint``) are recorded for the SAM networks.
    """
    modules = reasoning_modules(model)
    gen = torch.Generator().manual_seed(seed)
    n_frames = trace_size(REASONING_NETWORKS["visual_tokens"].dims["frames"])
    queries = trace_size(REASONING_NETWORKS["mask_decoder"].dims["queries"])
    pixels = torch.stack([model.clip_preprocess(synthetic.frame(1 + 2 * t)) for t in range(n_frames)])
    image = sam.preprocess(synthetic.frame(7))[0][None]
    grid = sam.IMAGE_SIZE // sam.PATCH_SIZE
    embeddings = torch.randn(1, sam.PROMPT_DIM, grid, grid, generator=gen)
    seg = torch.randn(queries, sam.PROMPT_DIM, generator=gen)
    sam_sources = ("checkpoint", *extra_sources)
    return [
        ExportNetwork("visual_tokens", modules["visual_tokens"], REASONING_NETWORKS["visual_tokens"],
                      {"pixel_values": pixels}, ("checkpoint", "clip")),
        ExportNetwork("sam_encoder", modules["sam_encoder"], REASONING_NETWORKS["sam_encoder"], {"image": image}, sam_sources),
        ExportNetwork("mask_decoder", modules["mask_decoder"], REASONING_NETWORKS["mask_decoder"],
                      {"image_embeddings": embeddings, "seg_embeddings": seg}, sam_sources),
    ]


def xmem_working_size(frame_hw: tuple[int, int], shorter_side: int | None) -> tuple[int, int]:
    """The padded size XMemTracker processes frames of ``frame_hw`` at (shorter side resized, multiples of 16)."""
    h, w = image_ops.processing_size(*frame_hw, shorter_side)
    left, right, top, bottom = image_ops.pad_amounts(h, w)
    return h + top + bottom, w + left + right


def tracker_networks(xmem: XMemModel, working_size: tuple[int, int], seed: int = 0) -> list[ExportNetwork]:
    """The XMem key encoder, value encoder and decoder at a fixed padded working size (H, W).

    ``xmem`` comes from ``runtime.tracking.xmem.load_xmem``. The frame size is static
    (engines are built for one camera resolution); the object axis of the value encoder and
    decoder is dynamic (``XMEM_NETWORKS``' ``objects``), traced with two objects. The example
    inputs chain like a tracking step: a synthetic frame, its key-encoder features, the
    ellipses of two frames as the objects' masks, random hidden states and memory readouts.
    """
    height, width = working_size
    if height % image_ops.STRIDE or width % image_ops.STRIDE:
        raise ExportError(f"XMem working size {height}x{width}: expected multiples of {image_ops.STRIDE}")
    modules = xmem_modules(xmem)
    gen = torch.Generator().manual_seed(seed)
    image = image_ops.normalise(synthetic.frame(7, height, width), "cpu")[None]
    with torch.no_grad():
        _, _, _, f16, f8, f4 = modules["xmem_key_encoder"](image)
        s8, s4 = modules["xmem_skips"](f8, f4)
    grid = (height // image_ops.STRIDE, width // image_ops.STRIDE)
    objects = trace_size(XMEM_NETWORKS["xmem_decoder"].dims["objects"])
    mask = torch.stack([torch.from_numpy(synthetic.ellipse_mask(7 + 3 * k, height, width)).float()[None] for k in range(objects)])
    hidden = torch.randn(objects, HIDDEN_DIM, *grid, generator=gen)
    readout = torch.randn(objects, VALUE_DIM, *grid, generator=gen)
    examples = {
        "xmem_key_encoder": {"image": image},
        "xmem_value_encoder": {"image": image, "mask": mask, "others": mask.sum(0, keepdim=True) - mask, "f16": f16, "hidden": hidden},
        "xmem_skips": {"f8": f8, "f4": f4},
        "xmem_decoder": {"f16": f16, "s8": s8, "s4": s4, "readout": readout, "hidden": hidden},
    }
    return [ExportNetwork(name, modules[name], XMEM_NETWORKS[name], examples[name], ("xmem",)) for name in XMEM_NETWORKS]
