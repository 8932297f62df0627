"""The backend interface, its PyTorch implementation, and what every backend shares.

``DimRange`` bounds a named dynamic dimension: the sizes an exported engine accepts
(the TensorRT optimisation profile). :func:`check_inputs` validates inputs against a
signature with such dimensions, so every backend rejects a bad input with the same
clear error instead of a backend-specific one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import InputError, VisaEdgeError


class EngineError(VisaEdgeError):
    """An engine cannot be loaded or run (missing library, provider, file, or incompatible build)."""


@runtime_checkable
class Engine(Protocol):
    """A network with named tensor inputs and outputs, on some backend."""

    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class DimRange:
    """Sizes a named dynamic dimension may take: ``min <= opt <= max`` (TensorRT profile)."""

    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"DimRange({self.min}, {self.opt}, {self.max}): expected 1 <= min <= opt <= max")

    def __contains__(self, size: int) -> bool:
        return self.min <= size <= self.max


Shape = tuple[int | str, ...]  # a static size or the name of a dynamic dimension per axis


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


def check_inputs(
    engine: str, inputs: Mapping[str, torch.Tensor], shapes: Mapping[str, Shape], dims: Mapping[str, DimRange]
) -> dict[str, int]:
    """Check each input's rank, static sizes and dynamic sizes; return the size of each named dim.

    A named dimension must have one size across all inputs and lie in its ``DimRange``.
    """
    sizes: dict[str, int] = {}
    for name, expected in shapes.items():
        got = tuple(require(inputs, name, engine).shape)
        if len(got) != len(expected) or any(isinstance(e, int) and e != g for e, g in zip(expected, got)):
            raise InputError(f"engine {engine!r}: input {name!r} has shape {list(got)}; expected {list(expected)}")
        for e, g in zip(expected, got):
            if isinstance(e, str):
                if sizes.setdefault(e, g) != g:
                    raise InputError(f"engine {engine!r}: dimension {e!r} is {sizes[e]} in one input and {g} in {name!r}")
                if e in dims and g not in dims[e]:
                    r = dims[e]
                    raise InputError(
                        f"engine {engine!r}: input {name!r} has {e}={g}; the engine was exported for {e} in {r.min}..{r.max}"
                    )
    return sizes


def resolve_shape(shape: Shape, sizes: Mapping[str, int]) -> tuple[int, ...] | None:
    """``shape`` with named dims replaced by ``sizes``; None if a name is unknown."""
    if any(isinstance(d, str) and d not in sizes for d in shape):
        return None
    return tuple(sizes[d] if isinstance(d, str) else d for d in shape)
