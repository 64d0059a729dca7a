"""The `server` section of the config: defaults, values refused with their path, the forms
of admin_listen."""

from __future__ import annotations

import hashlib

import pytest

from truckllm.config.loader import ConfigError, load_bytes

MINIMAL = b"""version: 1
providers: [{id: demo, type: mock}]
models: [{alias: demo, targets: [{provider: demo, model: echo}]}]
"""


def test_ops_fields_defaults() -> None:
    server = load_bytes(MINIMAL, "c.yaml", {}).config.server
    assert server.admin_api_key is None
    assert server.metrics is True and server.watch is True
    assert server.admin_listen is None and server.request_log_size == 1000


@pytest.mark.parametrize(("server", "path", "fragment"), [
    ("{admin_api_key: same-key-123}", "server.admin_api_key", "differ from every client key"),
    ("{admin_api_key: hashed-key-1}", "server.admin_api_key", "differ from every client key"),
    ("{admin_api_key: 'sha256:" + "a" * 64 + "'}", "server.admin_api_key", "not its sha256"),
    ("{admin_listen: 'localhost'}", "server.admin_listen", "host:port"),
    ("{admin_listen: ':8081'}", "server.admin_listen", "host:port"),
    ("{admin_listen: 'h:70000'}", "server.admin_listen", "host:port"),
    ("{admin_listen: '127.0.0.1:8080'}", "server.admin_listen", "must differ"),
    ("{host: 0.0.0.0, admin_listen: '127.0.0.1:8080'}", "server.admin_listen", "must differ"),
    ("{request_log_size: -1}", "server.request_log_size", "greater than or equal"),
    ("{watch: maybe}", "server.watch", "boolean"),
])
def test_ops_fields_validation(server: str, path: str, fragment: str) -> None:
    hashed = "sha256:" + hashlib.sha256(b"hashed-key-1").hexdigest()
    raw = MINIMAL + f"server: {server}\nkeys: [{{id: a, key: same-key-123}}, {{id: b, key: '{hashed}'}}]\n".encode()
    with pytest.raises(ConfigError) as caught:
        load_bytes(raw, "c.yaml", {})
    found = [issue for issue in caught.value.issues if issue.path == path]
    assert found and fragment in found[0].message, caught.value.issues
    assert "same-key-123" not in str(caught.value) and "hashed-key-1" not in str(caught.value)


@pytest.mark.parametrize("listen", ["127.0.0.1:8081", "[::1]:8081", "localhost:9000"])
def test_admin_listen_accepts_host_port(listen: str) -> None:
    raw = MINIMAL + f"server: {{admin_listen: '{listen}', admin_api_key: ''}}\n".encode()
    assert load_bytes(raw, "c.yaml", {}).config.server.admin_listen == listen
