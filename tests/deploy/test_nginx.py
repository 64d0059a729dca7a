"""deploy/nginx.conf, as written, in front of a real `truckllm serve`: TLS works and a
streamed answer's chunks reach the client as TruckLLM sends them, not all at the end.

Debian's nginx is installed with apt-get when it is missing (skipped only where apt
cannot be used); nginx runs on free ports from a temporary prefix and is stopped after.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from openai import DefaultHttpxClient, OpenAI

from tests.harness import CLIENT_KEY, free_port, make_config, make_serve_process
from tests.installs import one_at_a_time

pytestmark = pytest.mark.slow     # mostly waits: runs first (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
CHUNK_DELAY_S = 0.25


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    """Debian's nginx (and the openssl command for a test certificate), installed with
    apt-get when missing."""
    with one_at_a_time("apt"):
        _install_missing()
    found = _which("nginx")
    assert found is not None
    return found


def _install_missing() -> None:
    missing = [package for package, command in (("nginx", "nginx"), ("openssl", "openssl"))
               if _which(command) is None]
    if missing:
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            pytest.skip(f"{', '.join(missing)} missing and apt-get cannot install it here")
        # RUNLEVEL=1: the package's scripts must not start a system nginx on port 80
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}
        update = subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True,
                                text=True, timeout=600, check=False)
        if update.returncode != 0:
            pytest.skip(f"apt-get update failed: {update.stderr[-500:]}")
        install = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                                 env=env, capture_output=True, text=True, timeout=900, check=False)
        assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]


def _which(command: str) -> str | None:
    """PATH may lack /usr/sbin, where Debian puts nginx."""
    return shutil.which(command) or shutil.which(command, path="/usr/sbin:/usr/bin")


def _certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], capture_output=True, check=True, timeout=60)
    return cert, key


def _site(truckllm_port: int, http_port: int, https_port: int, cert: Path, key: Path) -> str:
    """deploy/nginx.conf with only addresses and certificate paths changed."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    changes = [
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{truckllm_port};"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;"),
        ("/etc/letsencrypt/live/llm.example.com/fullchain.pem", str(cert)),
        ("/etc/letsencrypt/live/llm.example.com/privkey.pem", str(key)),
    ]
    for old, new in changes:
        assert text.count(old) == 1, f"deploy/nginx.conf no longer has {old!r} once"
        text = text.replace(old, new)
    # IPv6 may be off where the tests run
    return "\n".join(line for line in text.splitlines() if "listen [::]" not in line)


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory, nginx_binary: str) -> Iterator[tuple[int, int, Path]]:
    """TruckLLM behind nginx, shared by the tests below: they only send requests."""
    tmp_path = tmp_path_factory.mktemp("proxied")
    config = {**make_config(), "server": {"log_format": "json", "watch": False}}
    config["providers"] = [{"id": "demo", "type": "mock", "chunk_delay_ms": CHUNK_DELAY_S * 1000}]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    cert, key = _certificate(prefix)
    http_port, https_port = free_port(), free_port()
    with make_serve_process(path) as served:
        (prefix / "truckllm.conf").write_text(_site(served.port, http_port, https_port, cert, key))
        (prefix / "nginx.conf").write_text(f"""
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/truckllm.conf;
}}
""")
        nginx = subprocess.Popen([nginx_binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_for_port(https_port, nginx, prefix)
            yield http_port, https_port, cert
        finally:
            nginx.terminate()
            nginx.wait(timeout=20)


def test_streams_pass_through_nginx_as_they_are_sent(proxied: tuple[int, int, Path]) -> None:
    _, https_port, cert = proxied
    trusted = ssl.create_default_context(cafile=str(cert))     # TLS checked, not skipped
    with urllib.request.urlopen(f"https://127.0.0.1:{https_port}/health", context=trusted, timeout=10) as reply:
        assert json.loads(reply.read())["status"] == "ok"
    with OpenAI(base_url=f"https://127.0.0.1:{https_port}/v1", api_key=CLIENT_KEY, max_retries=0,
                http_client=DefaultHttpxClient(verify=trusted)) as client:
        stream = client.chat.completions.create(
            model="demo", stream=True, messages=[{"role": "user", "content": "one two three four five"}])
        arrivals: list[tuple[float, str]] = []
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append((time.monotonic(), chunk.choices[0].delta.content))
    assert "".join(text for _, text in arrivals) == "You said: one two three four five"
    assert len(arrivals) >= 4
    # Sent CHUNK_DELAY_S apart: a buffering proxy would hand them over all at once at the
    # end. Only a lower bound: a busy machine makes the gaps longer, never shorter.
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(arrivals)]
    assert sum(gap > CHUNK_DELAY_S / 2 for gap in gaps) >= len(gaps) - 1, gaps


def test_plain_http_redirects_to_https(proxied: tuple[int, int, Path]) -> None:
    http_port, _, _ = proxied

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as caught:
        opener.open(f"http://127.0.0.1:{http_port}/v1/models", timeout=10)
    assert caught.value.code == 301
    assert caught.value.headers["Location"] == "https://127.0.0.1/v1/models"


def _wait_for_port(port: int, process: subprocess.Popen[bytes], prefix: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error_log = prefix / "error.log"
            raise AssertionError(f"nginx exited: {process.stderr.read() if process.stderr else b''!r} "
                                 f"{error_log.read_text() if error_log.exists() else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("nginx did not start listening")
