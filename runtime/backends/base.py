"""The backend interface and its PyTorch implementation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import InputError


@runtime_checkable
class Engine(Protocol):
    """A network with named tensor inputs and outputs, on some backend."""

    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


class TorchEngine:
    """Runs an ``nn.Module`` whose forward takes the inputs positionally and returns the outputs."""

    backend = "torch"

    def __init__(self, name: str, module: nn.Module, input_names: Sequence[str], output_names: Sequence[str]):
        self.name = name
        self.module = module.eval()
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        args = [require(inputs, n, self.name) for n in self.input_names]
        with torch.inference_mode():
            out = self.module(*args)
        out = out if isinstance(out, tuple) else (out,)
        return dict(zip(self.output_names, out))


def require(inputs: Mapping[str, torch.Tensor], name: str, engine: str) -> torch.Tensor:
    """``inputs[name]`` or an InputError naming the engine and what it expects."""
    if name not in inputs:
        raise InputError(f"engine {engine!r}: missing input {name!r}; got {sorted(inputs)}")
    return inputs[name]
