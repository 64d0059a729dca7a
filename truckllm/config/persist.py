"""Writing the config file atomically: temp file + rename, previous version kept as FILE.bak.

Both files get mode 0600 (they may hold secrets). Blocking file I/O: call it in a thread
from async code. Knows nothing about config contents.
"""

from __future__ import annotations

from pathlib import Path

from truckllm.atomic_file import write_atomic


def backup_path(path: Path) -> Path:
    return path.with_name(path.name + ".bak")


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never a mix."""
    target = path.resolve()             # write through a symlink, not over it
    if target.exists():
        write_atomic(backup_path(target), target.read_bytes())
    write_atomic(target, data)
