"""Replacing a file atomically: readers and crashes see the old file or the new one,
never half of one; the config file keeps its previous version as FILE.bak. Both files
get mode 0600 (they may hold secrets or spend). Blocking I/O: call it through
asyncio.to_thread from async code. Knows nothing about what the files hold."""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path

PRIVATE_MODE = 0o600        # config and state files may hold secrets or spend


def write_atomic(path: Path, data: bytes, mode: int = PRIVATE_MODE) -> None:
    """Temp file in the same directory, fsync, rename over `path`, fsync the directory.

    The directory is created when missing. Each write has its own temp name, so a write
    still running in an abandoned worker thread cannot mix with the next one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphan_temps(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)          # the umask must not widen it
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_directory(path.parent)


def remove_orphan_temps(path: Path) -> None:
    """Temp files of `path` left by a process that died mid-write (SIGKILL, power loss):
    removed, so that crashes do not pile them up. Those of live processes (other workers
    sharing the file, this one) are theirs to finish."""
    with contextlib.suppress(OSError):
        for temp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            pid = temp.name[len(path.name) + 2:].partition(".")[0]
            if pid.isascii() and pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    temp.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:         # it exists, under another user
        return True
    return True


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable, where the filesystem allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def backup_path(path: Path) -> Path:
    return path.with_name(path.name + ".bak")


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never a mix."""
    target = path.resolve()             # write through a symlink, not over it
    if target.exists():
        write_atomic(backup_path(target), target.read_bytes())
    write_atomic(target, data)
