"""What the figures were measured on: machine, device, library versions, load and memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import importlib
import importlib.metadata
import os
import platform
import resource
import sys
import threading
from pathlib import Path

import torch

MIB = 2**20


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """CPUs this process may run on (the affinity mask, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict:
    """CPU model, usable cores, RAM, OS, and the load average now."""
    import psutil

    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "logical_cpus_host": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "hostname": platform.node(),
        "load_average": load_average(),
    }


def device_info(device: torch.device) -> dict:
    """The device the stages run on: type and name, and for CUDA its capability and memory."""
    if device.type != "cuda":
        return {"type": "cpu", "name": cpu_model(), "torch_threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(device)
    return {
        "type": "cuda",
        "name": torch.cuda.get_device_name(device),
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
    }


def module_version(name: str) -> str | None:
    """``name.__version__`` if the module imports, else None."""
    try:
        return getattr(importlib.import_module(name), "__version__", None)
    except Exception:  # a broken optional install must not stop the benchmark
        return None


def versions() -> dict[str, str | None]:
    try:
        visa_edge = importlib.metadata.version("visa-edge")
    except importlib.metadata.PackageNotFoundError:
        visa_edge = None
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": module_version("transformers"),
        "onnxruntime": module_version("onnxruntime"),
        "onnx": module_version("onnx"),
        "tensorrt": module_version("tensorrt"),
        "bitsandbytes": module_version("bitsandbytes"),
        "numpy": module_version("numpy"),
        "opencv": module_version("cv2"),
        "visa-edge": visa_edge,
    }


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (``getrusage``; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def rss_mib() -> float:
    """Current resident set size of this process."""
    import psutil

    return psutil.Process().memory_info().rss / MIB


def memory_snapshot(device: torch.device) -> dict[str, float]:
    """RSS now and at peak; on CUDA also torch's allocation now and since its last peak reset, and the
    device memory in use by every library (TensorRT and ONNX Runtime allocate outside torch)."""
    out = {"rss_mib": round(rss_mib(), 1), "peak_rss_mib": round(peak_rss_mib(), 1)}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        out["gpu_allocated_mib"] = round(torch.cuda.memory_allocated(device) / MIB, 1)
        out["gpu_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / MIB, 1)
        out["gpu_device_used_mib"] = round((total - free) / MIB, 1)
    return out


def gpu_peak_mib(result: object) -> float | None:
    """The largest ``gpu_max_allocated_mib`` anywhere in ``result`` (stage warm-ups reset torch's peak)."""
    if isinstance(result, dict):
        values = [v for k, v in result.items() if k == "gpu_max_allocated_mib" and isinstance(v, (int, float))]
        values += [p for v in result.values() if (p := gpu_peak_mib(v)) is not None]
    elif isinstance(result, list):
        values = [p for v in result if (p := gpu_peak_mib(v)) is not None]
    else:
        return None
    return max(values) if values else None


def release_memory() -> None:
    """Collect garbage and return freed heap pages to the OS (glibc ``malloc_trim``), so that RSS figures
    and the next stage's headroom reflect what is really in use."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(libc).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


class PeakRss:
    """Peak resident set size of this process while the ``with`` block runs (MiB), sampled on a thread.

    ``getrusage`` only gives the process's lifetime peak; this isolates one backend of one stage.
    """

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def __enter__(self) -> "PeakRss":
        self.peak_mib = rss_mib()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = round(max(self.peak_mib, rss_mib()), 1)

    def _sample(self) -> None:
        import psutil

        process = psutil.Process()
        while not self._stop.wait(self.interval_s):
            self.peak_mib = max(self.peak_mib, process.memory_info().rss / MIB)
