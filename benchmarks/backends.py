"""The backends a stage runs on, as they exist on this device, and how each is built.

- ``torch-eager``: the modules as the runtime runs them (fp32).
- ``torch-optimized``: CPU: TorchScript trace + freeze + ``optimize_for_inference`` (fp32;
  conv/BN folding, oneDNN layouts), cheap to build unlike ``torch.compile`` on a small CPU.
  CUDA: fp16 weights and activations replayed from one captured CUDA graph (the NF4 LLM keeps
  its 4-bit weights and fp16 compute; the graph removes its kernel-launch overhead).
- ``onnxruntime``: the networks exported with ``export/`` (fp32 ONNX), CPU or CUDA EP.
- ``tensorrt``: engines built with ``export/`` (fp16, fp32-pinned reductions), CUDA only.

Which variant runs is decided by the device alone (:func:`plan_backends`); an unavailable
backend carries the reason, which the report prints as n/a.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import sys
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from visa_edge.runtime.backends import Engine
from visa_edge.runtime.tracking.xmem import XMEM_NETWORKS

from .models import BenchModel

BACKENDS = ("torch-eager", "torch-optimized", "onnxruntime", "tensorrt")
BACKEND_LABELS = {"torch-eager": "PyTorch eager", "torch-optimized": "PyTorch optimized",
                  "onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT"}
EXPORTED = ("onnxruntime", "tensorrt")


class NotApplicable(Exception):
    """A backend does not apply to a stage; the message is the reason shown in the report."""


@dataclass(frozen=True)
class Backend:
    """A backend as it runs on this device (``variant``), or why it cannot run here (``reason``)."""

    name: str
    variant: str
    reason: str | None = None

    @property
    def available(self) -> bool:
        return self.reason is None


def plan_backends(device: torch.device, names: Sequence[str] = BACKENDS) -> dict[str, Backend]:
    """What each backend means on ``device`` and whether it is available; CUDA picks the GPU variants."""
    cuda = device.type == "cuda"
    where = "CUDA" if cuda else "CPU"
    plans = {
        "torch-eager": Backend("torch-eager", f"PyTorch {torch.__version__} eager, fp32 on {where}"),
        "torch-optimized": Backend(
            "torch-optimized",
            "fp16 weights and activations replayed from a captured CUDA graph" if cuda
            else "TorchScript trace + freeze + optimize_for_inference, fp32",
        ),
        "onnxruntime": _ort_plan(cuda),
        "tensorrt": _tensorrt_plan(cuda),
    }
    unknown = sorted(set(names) - set(plans))
    if unknown:
        raise ValueError(f"backends {unknown}: expected names from {list(plans)}")
    return {n: plans[n] if n in names else Backend(n, plans[n].variant, "not requested (--backends)") for n in plans}


def _ort_plan(cuda: bool) -> Backend:
    from visa_edge.runtime.backends.base import EngineError
    from visa_edge.runtime.backends.ort import PROVIDERS, import_onnxruntime

    provider = "cuda" if cuda else "cpu"
    variant = f"ONNX Runtime, {PROVIDERS[provider]}, fp32 graphs from export/"
    if importlib.util.find_spec("onnx") is None:
        return Backend("onnxruntime", variant, "onnx is not installed: the networks cannot be exported (extra [export])")
    try:
        ort = import_onnxruntime()
    except EngineError as e:
        return Backend("onnxruntime", variant, str(e))
    if PROVIDERS[provider] not in ort.get_available_providers():
        return Backend("onnxruntime", variant, f"this onnxruntime build lacks {PROVIDERS[provider]} "
                       f"(has {ort.get_available_providers()}); install onnxruntime-gpu")
    return Backend("onnxruntime", f"ONNX Runtime {ort.__version__}, {PROVIDERS[provider]}, fp32 graphs from export/")


def _tensorrt_plan(cuda: bool) -> Backend:
    from visa_edge.runtime.backends.base import EngineError
    from visa_edge.runtime.backends.trt import import_tensorrt

    variant = "TensorRT fp16 engines from export/ (LayerNorm, softmax, reductions pinned to fp32)"
    if not cuda:
        return Backend("tensorrt", variant, "no CUDA device: TensorRT engines run on NVIDIA GPUs only")
    try:
        trt = import_tensorrt()
    except EngineError as e:
        return Backend("tensorrt", variant, str(e))
    return Backend("tensorrt", f"TensorRT {trt.__version__} fp16 engines from export/ (norms, softmax, reductions fp32)")


class CudaGraphRunner:
    """Replays one CUDA graph of ``module`` captured on static input buffers (shapes fixed at capture)."""

    def __init__(self, module: Callable, args: Sequence[torch.Tensor], warmup: int = 3):
        self.inputs = [a.clone() for a in args]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(warmup):  # allocator and cuDNN/cuBLAS autotuning outside the capture
                module(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.outputs = module(*self.inputs)

    def __call__(self, *args: torch.Tensor):
        for buffer, value in zip(self.inputs, args):
            buffer.copy_(value)
        self.graph.replay()
        return self.outputs


def torchscript(module: nn.Module, args: Sequence[torch.Tensor]) -> Callable:
    """``module`` traced on ``args``, frozen and optimised for inference (TorchScript, CPU).

    The profiling executor specialises the graph on the first call and optimises on the next:
    both happen here, as part of the build, so that one warm-up call reaches the steady state.
    """
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings: the trace is checked by the diff
        traced = torch.jit.trace(module.eval(), tuple(args), check_trace=False)
        scripted = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        for _ in range(torch._C._jit_get_num_profiled_runs() + 1):
            scripted(*args)
    return scripted


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module`` holds packed 4-bit weights (bitsandbytes stores them as uint8)."""
    return any(p.dtype == torch.uint8 for p in module.parameters())


def optimize(module: nn.Module, args: Sequence[torch.Tensor], device: torch.device) -> tuple[Callable, str]:
    """The ``torch-optimized`` version of ``module`` on ``device`` and a description of what it is.

    CPU: :func:`torchscript`. CUDA: an fp16 copy (an NF4 module as it is) captured in a CUDA
    graph; if capture fails the fp16 module runs eagerly and the description says why.
    """
    if device.type != "cuda":
        try:
            return torchscript(module, args), "TorchScript trace + freeze + optimize_for_inference, fp32"
        except Exception as e:  # the tracer raises many types
            raise NotApplicable(f"TorchScript trace failed ({type(e).__name__}: {first_line(e)})") from e
    fp16 = module if is_quantized(module) else copy.deepcopy(module).half()
    args16 = [a.half() if a.is_floating_point() else a for a in args]
    what = "NF4 weights, fp16 compute" if is_quantized(module) else "fp16"
    try:
        return CudaGraphRunner(fp16, args16), f"{what}, CUDA graph"
    except Exception as e:  # capture fails on host syncs or unsupported ops
        torch.cuda.synchronize()
        return (lambda *a: fp16(*(x.half() if x.is_floating_point() else x for x in a))), (
            f"{what}, eager (CUDA graph capture failed: {type(e).__name__}: {first_line(e)})")


class CallableEngine:
    """An ``Engine`` around a callable taking the inputs positionally; outputs as fp32 tensors.

    ``copy_outputs``: return copies (a CUDA graph overwrites its output buffers on every replay).
    """

    backend = "torch-optimized"

    def __init__(self, name: str, fn: Callable, input_names: Sequence[str], output_names: Sequence[str],
                 copy_outputs: bool = False):
        self.name, self.fn, self.copy_outputs = name, fn, copy_outputs
        self.input_names, self.output_names = tuple(input_names), tuple(output_names)

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            out = self.fn(*(inputs[n] for n in self.input_names))
        out = out if isinstance(out, tuple) else (out,)
        return {n: o.to(torch.float32, copy=self.copy_outputs) for n, o in zip(self.output_names, out)}


@dataclass
class ExportedEngines:
    """The engine folder written by ``export/`` for this run, and why a backend has none."""

    folder: Path | None
    reasons: dict[str, str]
    export_s: float
    device: torch.device

    def load(self, backend: str, names: Sequence[str]) -> dict[str, Engine]:
        """Engines of ``names`` on ``backend``; NotApplicable with the reason when there are none."""
        from visa_edge.runtime.backends import load_engines

        if backend in self.reasons or self.folder is None:
            raise NotApplicable(self.reasons.get(backend, "no engines were exported"))
        try:
            return load_engines(self.folder, backend=backend, device=self.device, networks=list(names))
        except Exception as e:  # EngineError or a backend's own error: reported, not fatal
            raise NotApplicable(f"could not load the {backend} engines ({type(e).__name__}: {first_line(e)})") from e


@contextlib.contextmanager
def on_cpu(modules: Sequence[nn.Module], device: torch.device) -> Iterator[None]:
    """Keep ``modules`` on the CPU inside the block (the exporter traces on the CPU), then move them back."""
    if device.type == "cpu":
        yield
        return
    for m in modules:
        m.cpu()
    try:
        yield
    finally:
        for m in modules:
            m.to(device)


def export_engines(bm: BenchModel, plans: Mapping[str, Backend], workdir: Path, names: Collection[str]) -> ExportedEngines:
    """Export the networks ``names`` (reasoning and XMem networks) once into ``workdir/engines``:
    TensorRT engines (+ their ONNX) where TensorRT runs, else ONNX only."""
    from visa_edge.export.registry import reasoning_networks, tracker_networks, xmem_working_size
    from visa_edge.export.pipeline import ExportOptions, Progress, export_networks, steps_per_network

    reasons = {b: plans[b].reason for b in EXPORTED if not plans[b].available}
    wanted = [b for b in EXPORTED if plans[b].available]
    if not wanted or not names:
        return ExportedEngines(None, reasons, 0.0, bm.device)
    m = bm.model
    folder = workdir / "engines"
    t0 = time.perf_counter()
    with on_cpu([m.vision_tower, m.clustering, m.mm_projector, m.sam, bm.xmem], bm.device):
        size = xmem_working_size(bm.frame_hw, bm.xmem_config.shorter_side)
        tracker = tracker_networks(bm.xmem, size) if set(names) & set(XMEM_NETWORKS) else []
        networks = [n for n in reasoning_networks(m) + tracker if n.name in names]
        for backend in ("tensorrt", "onnxruntime"):
            if backend not in wanted:
                continue
            options = ExportOptions(backend="tensorrt", precision="fp16") if backend == "tensorrt" else ExportOptions()
            progress = Progress(len(networks) * steps_per_network(options.backend), stream=io.StringIO())
            try:
                export_networks(networks, folder, options, bm.sources, ["visa-edge", "bench", "--config", bm.config], progress)
                break
            except Exception as e:  # ExportError or a library error: that backend is n/a, the others go on
                reasons[backend] = f"export failed ({type(e).__name__}: {first_line(e)})"
                print(f"bench: {backend} export failed: {e}", file=sys.stderr)
    return ExportedEngines(folder, reasons, time.perf_counter() - t0, bm.device)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (reasons in the report stay one line)."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
