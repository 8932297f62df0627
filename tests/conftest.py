"""Shared fixtures (paths to ../shared, a tiny checkpoint) and how the suite splits over xdist workers.

``make test`` runs two pytest-xdist workers with ``--dist loadgroup``: a group is one unit of
work on one worker. Session and module fixtures are computed per worker, so a module's tests
stay together by default (its module fixtures are computed once), and tests that must share a
process or must not run at the same time share a group (below). Each worker gets its share of
the CPU cores as torch threads: two workers with two OpenMP threads each on two cores spend
most of their time waiting for each other.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GOLDEN_VISA = SHARED / "golden" / "visa_tiny"
GOLDEN_XMEM = SHARED / "golden" / "xmem"
DAVIS = SHARED / "data" / "davis2016"

# Modules whose tests must share one worker: ROS 2 nodes of two workers would discover each other
# over DDS; Ray runs one local instance at a time.
MODULE_GROUPS = {
    "test_ros_node.py": "ros",
    "test_semantic_ros.py": "ros",
    "test_serve.py": "ray",
}
# Units that take longest (--durations of the whole suite), started first so that no worker is
# left with a long one at the end; the others follow in collection order.
SLOWEST_FIRST = (
    "xmem_golden_main", "xmem_golden_long_term", "ray", "ros", "test_semantic.py", "test_xmem_runtime.py",
    "test_precision.py", "test_multi_query.py", "test_bench.py", "test_latency_comp.py",
)


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it exists, else skip the test saying what is missing."""
    if not path.is_dir():
        pytest.skip(f"{what} not found at {path} (expected ../shared beside the repository)")
    return path


def pytest_configure(config: pytest.Config) -> None:
    """On an xdist worker: torch threads = this worker's share of the cores (also for the processes it starts)."""
    worker = getattr(config, "workerinput", None)
    if worker is None or "OMP_NUM_THREADS" in os.environ:
        return
    threads = max(1, len(os.sched_getaffinity(0)) // int(worker["workercount"]))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def xdist_group(item: pytest.Item) -> str:
    """The unit of work ``item`` belongs to: its own xdist_group mark, its module's group, or its module."""
    mark = item.get_closest_marker("xdist_group")
    if mark is not None:
        return str(mark.args[0])
    return MODULE_GROUPS.get(item.path.name, item.path.name)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its group; on xdist workers, order the slowest units first."""
    groups = {item: xdist_group(item) for item in items}
    for item, group in groups.items():
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
    if hasattr(config, "workerinput"):
        rank = {g: i for i, g in enumerate(SLOWEST_FIRST)}
        items.sort(key=lambda item: rank.get(groups[item], len(rank)))  # stable: collection order within a rank


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
