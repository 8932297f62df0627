"""Shared fixtures: paths to ../shared (golden fixtures, DAVIS data) and a tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GOLDEN_VISA = SHARED / "golden" / "visa_tiny"
GOLDEN_XMEM = SHARED / "golden" / "xmem"
DAVIS = SHARED / "data" / "davis2016"


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it exists, else skip the test saying what is missing."""
    if not path.is_dir():
        pytest.skip(f"{what} not found at {path} (expected ../shared beside the repository)")
    return path


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
