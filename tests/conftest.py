"""Shared fixtures (paths to ../shared, a tiny checkpoint) and how the suite splits over xdist workers.

``make test`` runs two pytest-xdist workers. The scheduler below sends each unit of work (see
``unit_of``) to one worker as a whole: session and module fixtures are computed per worker, so
a module's tests stay together by default (its module fixtures are computed once); tests that
must share a process or must not run at the same time share a unit; the four XMem golden runs
split into two units of about equal cost, each encoding the golden frames once. The slowest
units start first. Each worker gets its share of the CPU cores as torch threads: two workers
with two OpenMP threads each on two cores spend most of their time waiting for each other.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GOLDEN_VISA = SHARED / "golden" / "visa_tiny"
GOLDEN_XMEM = SHARED / "golden" / "xmem"
DAVIS = SHARED / "data" / "davis2016"

# Modules whose tests must share one worker: ROS 2 nodes of two workers would discover each other
# over DDS; Ray runs one local instance at a time.
MODULE_UNITS = {
    "test_ros_node.py": "ros",
    "test_semantic_ros.py": "ros",
    "test_serve.py": "ray",
}
XMEM_GOLDEN_MODULES = ("test_xmem_golden.py", "test_xmem_multi_golden.py")
# The slowest units (--durations of the whole suite), started first so that no worker is left
# with a long one at the end; the others follow in collection order.
SLOWEST_FIRST = (
    "xmem_golden_main", "xmem_golden_long_term", "test_bench.py", "ray", "test_precision.py", "ros",
    "test_semantic.py", "test_export_golden.py", "test_export_onnx.py", "test_export_xmem.py",
    "test_semantic_training.py", "test_xmem_runtime.py", "test_latency_comp.py", "test_multi_query.py",
)


def unit_of(nodeid: str) -> str:
    """The unit of work of the test ``nodeid``: its module, its module's unit, or a half of the XMem golden runs.

    The golden halves: the main run's tests and multi-object run A; the long-term run's tests,
    run B and the input checks.
    """
    path, _, test = nodeid.partition("::")
    module = Path(path).name
    if module in XMEM_GOLDEN_MODULES:
        return "xmem_golden_main" if test.startswith("test_main_") or test.endswith("[A]") else "xmem_golden_long_term"
    return MODULE_UNITS.get(module, module)


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it exists, else skip the test saying what is missing."""
    if not path.is_dir():
        pytest.skip(f"{what} not found at {path} (expected ../shared beside the repository)")
    return path


def pytest_configure(config: pytest.Config) -> None:
    """The file-hash cache in a folder of this run (not the user's); on an xdist worker: torch threads =
    this worker's share of the cores (also for the processes it starts)."""
    from visa_edge.runtime.backends.hash_cache import CACHE_DIR_ENV

    if CACHE_DIR_ENV not in os.environ:  # set once by the controller; xdist workers inherit it
        os.environ[CACHE_DIR_ENV] = tempfile.mkdtemp(prefix="visa-edge-hash-cache-")
    worker = getattr(config, "workerinput", None)
    if worker is None or "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // int(worker["workercount"]))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """xdist's scheduling by scope, with ``unit_of`` as the scope."""
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    return UnitScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On xdist workers (whose collection order the scheduler follows): the slowest units first."""
    if hasattr(config, "workerinput"):
        rank = {unit: i for i, unit in enumerate(SLOWEST_FIRST)}
        items.sort(key=lambda item: rank.get(unit_of(item.nodeid), len(rank)))  # stable: collection order within a rank


@pytest.fixture(scope="session")
def golden_visa() -> Path:
    return require_dir(GOLDEN_VISA, "VISA golden fixtures")


@pytest.fixture(scope="session")
def golden_xmem() -> Path:
    return require_dir(GOLDEN_XMEM, "XMem golden fixtures")


@pytest.fixture(scope="session")
def davis() -> Path:
    return require_dir(DAVIS, "DAVIS 2016 sample data")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random VISA checkpoint + CLIP folder written once per session through the real writer."""
    from visa_edge.runtime.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


def max_abs(a, b) -> float:
    """Largest absolute difference of two arrays/tensors, in float64."""
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def golden_visa_frames(golden_visa: Path) -> list[np.ndarray]:
    """The golden tiny VISA's window frames (references..., target), RGB uint8."""
    from visa_edge.runtime.io import read_rgb

    return [read_rgb(p) for p in sorted((golden_visa / "frames").glob("seq*.png"))]


def golden_visa_model(golden_visa: Path, **kwargs):
    """The golden tiny VISA checkpoint with its CLIP tower (``kwargs`` go to ``from_pretrained``)."""
    from visa_edge.runtime.model import VisaModel

    return VisaModel.from_pretrained(golden_visa / "hf_model", clip=golden_visa / "clip_vision_tower", **kwargs)
