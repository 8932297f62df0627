"""Loading the official ``XMem.pth`` (or the same tensors as ``.safetensors``) into :class:`XMemModel`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ...checkpoint import check_keys, load_file
from ...errors import CheckpointError
from .modules import XMemModel

SUFFIXES = (".pth", ".pt", ".safetensors")


def xmem_from_state_dict(state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> XMemModel:
    """An eval-mode XMemModel from the official state dict; strict: every key and shape must match.

    Only the release sizes (key 64, value 512, hidden 64, 5-channel value encoder) are
    supported; any other shape is reported as a mismatch.
    """
    model = XMemModel()
    expected = {k: v.shape for k, v in model.state_dict().items()}
    check_keys(source, state_dict, expected, "the XMem network (release sizes: key 64, value 512, hidden 64)")
    model.load_state_dict(dict(state_dict), strict=True)
    return model.eval()


def load_xmem(path: str | Path) -> XMemModel:
    """Read an XMem checkpoint file (``.pth`` torch pickle or ``.safetensors``) into an eval-mode model on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: XMem checkpoint not found; expected the official XMem.pth (or a .safetensors copy)")
    if path.suffix not in SUFFIXES:
        raise CheckpointError(f"{path}: unknown checkpoint type {path.suffix!r}; expected one of {list(SUFFIXES)}")
    return xmem_from_state_dict(load_file(path), str(path))
