"""Config file writes: atomic, the old file kept as .bak with mode 0600, through a symlink
and of a new file; a failed write leaves the file alone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from truckllm.config.files import backup_path, write_atomically


def test_atomic_write_keeps_backup_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"old: 1\n")
    os.chmod(path, 0o644)
    write_atomically(path, b"new: 2\n")
    assert path.read_bytes() == b"new: 2\n"
    assert backup_path(path).read_bytes() == b"old: 1\n"
    for written in (path, backup_path(path)):
        assert stat.S_IMODE(written.stat().st_mode) == 0o600
    write_atomically(path, b"newer: 3\n")
    assert backup_path(path).read_bytes() == b"new: 2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "config.yaml.bak"]


def test_atomic_write_through_a_symlink_and_of_a_new_file(tmp_path: Path) -> None:
    real = tmp_path / "real.yaml"
    real.write_bytes(b"a: 1\n")
    link = tmp_path / "config.yaml"
    link.symlink_to(real)
    write_atomically(link, b"a: 2\n")
    assert link.is_symlink() and real.read_bytes() == b"a: 2\n"
    fresh = tmp_path / "fresh.yaml"
    write_atomically(fresh, b"b: 1\n")
    assert fresh.read_bytes() == b"b: 1\n" and not backup_path(fresh).exists()


def test_atomic_write_failure_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"old\n")
    os.chmod(tmp_path, 0o500)
    try:
        if os.access(tmp_path, os.W_OK):
            pytest.skip("running as root: directory permissions are not enforced")
        with pytest.raises(OSError):
            write_atomically(path, b"new\n")
    finally:
        os.chmod(tmp_path, 0o700)
    assert path.read_bytes() == b"old\n"


def test_atomic_write_failure_leaves_the_file_alone_even_as_root(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"old\n")
    (tmp_path / "config.yaml.bak").mkdir()          # renaming a file over a directory fails
    (tmp_path / "config.yaml.bak" / "keep").write_bytes(b"x")
    with pytest.raises(OSError):
        write_atomically(path, b"new\n")
    assert path.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "config.yaml.bak"]
