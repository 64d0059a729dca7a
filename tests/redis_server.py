"""A real `redis-server` for tests and the benchmark: installed with apt when missing
(Debian's package, `apt-get update` once), started on a free port of 127.0.0.1 without
persistence, stopped after. Every wait is bounded."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.installs import one_at_a_time
from tests.ports import free_port

START_LIMIT_S = 10.0


def redis_server_binary() -> str:
    """The path of redis-server, installing Debian's package first if there is none."""
    found = shutil.which("redis-server")
    if found:
        return found
    with one_at_a_time("apt"):
        if not shutil.which("redis-server"):
            sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env, timeout=600)
            subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends",
                            "redis-server"], check=True, env=env, timeout=600)
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(found).exists():
        raise RuntimeError("redis-server is still missing after apt-get install")
    return found


class RedisServer:
    """One redis-server process; `stop` and `start` again keep its port (outage tests)."""

    def __init__(self, port: int | None = None, unix_socket: Path | None = None) -> None:
        self.binary = redis_server_binary()
        self.port = port or free_port()
        self.unix_socket = unix_socket      # also listening there (owner only), when given
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        assert self.unix_socket is not None
        return f"unix://{self.unix_socket}?db=0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning",
             *([] if self.unix_socket is None else
               ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_LIMIT_S
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            sock.recv(16)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
