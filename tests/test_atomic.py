"""Atomic writes: all-or-nothing, no leftovers, and ordinary (umask) permissions."""

from __future__ import annotations

import os

import pytest

from ntga import atomic


def test_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")
    atomic.write_json(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")
    with pytest.raises(ValueError):
        atomic.write_json(target, {"a": float("nan")})  # NaN is not JSON
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(target) as f:
            f.write(b"half")
            raise RuntimeError
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
