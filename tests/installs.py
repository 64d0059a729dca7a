"""Installs a test needs (apt and npm packages), one at a time.

pytest-xdist runs a session fixture once per worker, so on a fresh machine several workers
reach the same missing program at once: two `apt-get` runs fail on dpkg's lock, and two
`npm install`s into one folder see each other's half-written tree. Each install runs under
a file lock shared by every test process on the machine, and the caller looks again for
what it needs once it holds the lock (another worker may have installed it meanwhile)."""

from __future__ import annotations

import fcntl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCKS = Path(tempfile.gettempdir()) / "truckllm-test-installs"


@contextmanager
def one_at_a_time(what: str) -> Iterator[None]:
    """Held while installing `what` ("apt" for every apt-get, since dpkg has one lock)."""
    LOCKS.mkdir(parents=True, exist_ok=True)
    with (LOCKS / f"{what}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
