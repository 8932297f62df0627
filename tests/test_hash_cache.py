"""File hashes remembered by stat (runtime/backends/hash_cache.py): read once, re-read on any change."""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings

import pytest

from visa_edge.runtime.backends import hash_cache
from visa_edge.runtime.backends.manifest import source_sha256


@pytest.fixture
def reads(monkeypatch, tmp_path):
    """Cache in tmp_path/cache for every file size; returns the list of paths actually read."""
    monkeypatch.setenv(hash_cache.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(hash_cache, "MIN_BYTES", 0)
    seen: list[str] = []
    real = hash_cache.read_sha256

    def counting(path, chunk=1 << 22):
        seen.append(os.path.basename(path))
        return real(path, chunk)

    monkeypatch.setattr(hash_cache, "read_sha256", counting)
    return seen


def old_file(path, data: bytes, age_s: float = 60.0):
    path.write_bytes(data)
    past = time.time() - age_s
    os.utime(path, (past, past))
    return path


def test_an_unchanged_file_is_read_once(reads, tmp_path):
    f = old_file(tmp_path / "shard.bin", b"weights" * 1000)
    assert hash_cache.sha256_file(f) == hash_cache.sha256_file(f) == hashlib.sha256(b"weights" * 1000).hexdigest()
    assert reads == ["shard.bin"]
    assert str(f.resolve()) in json.loads((tmp_path / "cache" / "sha256.json").read_text())
    assert source_sha256(tmp_path / "shard.bin") == hashlib.sha256(b"weights" * 1000).hexdigest() and reads == ["shard.bin"]


def test_a_changed_file_is_read_again(reads, tmp_path):
    f = old_file(tmp_path / "shard.bin", b"a" * 100)
    first = hash_cache.sha256_file(f)
    old_file(f, b"b" * 100, age_s=30.0)  # same size, other content and mtime
    assert hash_cache.sha256_file(f) == hashlib.sha256(b"b" * 100).hexdigest() != first
    assert reads == ["shard.bin", "shard.bin"]


def test_a_just_written_file_is_not_remembered(reads, tmp_path):
    f = tmp_path / "engine.plan"
    f.write_bytes(b"fresh")  # mtime now: a write in the same timestamp tick could keep its stamp
    hash_cache.sha256_file(f)
    hash_cache.sha256_file(f)
    assert reads == ["engine.plan", "engine.plan"]


def test_small_files_and_a_disabled_cache_are_always_read(reads, tmp_path, monkeypatch):
    f = old_file(tmp_path / "config.json", b"{}")
    monkeypatch.setattr(hash_cache, "MIN_BYTES", 1 << 20)
    hash_cache.sha256_file(f)
    monkeypatch.setattr(hash_cache, "MIN_BYTES", 0)
    monkeypatch.setenv(hash_cache.CACHE_DIR_ENV, "")
    hash_cache.sha256_file(f)
    hash_cache.sha256_file(f)
    assert reads == ["config.json"] * 3 and not (tmp_path / "cache").exists()


def test_a_corrupt_cache_is_ignored_and_rewritten(reads, tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "sha256.json").write_text("{not json")
    f = old_file(tmp_path / "shard.bin", b"x" * 10)
    assert hash_cache.sha256_file(f) == hashlib.sha256(b"x" * 10).hexdigest()
    assert list(json.loads((tmp_path / "cache" / "sha256.json").read_text())) == [str(f.resolve())]


def test_an_unwritable_cache_warns_once_and_hashes_right(reads, tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv(hash_cache.CACHE_DIR_ENV, str(blocker / "cache"))
    f = old_file(tmp_path / "shard.bin", b"y" * 10)
    with pytest.warns(RuntimeWarning, match="cannot write the file-hash cache.*VISA_EDGE_CACHE_DIR"):
        assert hash_cache.sha256_file(f) == hashlib.sha256(b"y" * 10).hexdigest()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hash_cache.sha256_file(f) == hashlib.sha256(b"y" * 10).hexdigest()
    assert reads == ["shard.bin", "shard.bin"]


def test_the_cache_keeps_the_most_recent_entries(reads, tmp_path, monkeypatch):
    monkeypatch.setattr(hash_cache, "MAX_ENTRIES", 2)
    files = [old_file(tmp_path / f"s{i}.bin", bytes([i]) * 8) for i in range(3)]
    for f in files:
        hash_cache.sha256_file(f)
    kept = json.loads((tmp_path / "cache" / "sha256.json").read_text())
    assert list(kept) == [str(files[1].resolve()), str(files[2].resolve())]
