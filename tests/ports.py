"""Ports for processes a test starts and tells where to listen.

Asking the OS for port 0 and closing the socket leaves a window in which any outgoing
connection (they draw from the same ephemeral range) or another test worker can take the
port before our process binds it. So ports here come from below the ephemeral range, in a
slice of their own for each pytest-xdist worker, and are checked free before use. Each run
starts at a random place in its slice, so that two test runs on one machine (two checkouts)
rarely walk the same ports in step."""

from __future__ import annotations

import itertools
import os
import random
import socket

_FIRST = 20000
_SLICE = 1000  # ports per test worker; slices stay below Linux's ephemeral 32768
WORKER_SLICES = 12


def _worker_index() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = name.removeprefix("gw")
    return int(digits) % WORKER_SLICES if digits.isdigit() else 0


_START = _FIRST + _worker_index() * _SLICE
_first_offset = random.randrange(_SLICE)
_offsets = itertools.cycle([*range(_first_offset, _SLICE), *range(_first_offset)])


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port nothing listens on now and no other test worker will hand out."""
    for _ in range(_SLICE):
        port = _START + next(_offsets)
        if _is_free(port):
            return port
    raise RuntimeError(f"no free port in {_START}..{_START + _SLICE - 1}")
