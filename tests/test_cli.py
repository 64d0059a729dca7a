"""The `truckllm` command: click's runner for the quick commands, a real process for
`serve` (start, answer, SIGTERM mid-stream, exit 0)."""

from __future__ import annotations

import hashlib
import signal
import socket
import threading
import time
from pathlib import Path

import orjson
from click.testing import CliRunner
from openai import OpenAI

from tests.harness import CLIENT_KEY, make_config, make_serve_process, write_config
from truckllm import __version__
from truckllm.cli import main


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_validate_valid_and_invalid(tmp_path: Path) -> None:
    good = write_config(tmp_path, make_config())
    result = CliRunner().invoke(main, ["validate", "-c", str(good)])
    assert result.exit_code == 0 and "valid" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("provider: demo", "provider: opnai"))
    result = CliRunner().invoke(main, ["validate", "-c", str(bad)])
    assert result.exit_code == 1
    assert "models[0].targets[0].provider: unknown provider 'opnai'" in result.output
    assert f"{bad}:" in result.output and "Traceback" not in result.output


def test_validate_a_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["validate", "-c", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1 and "cannot read" in result.output


def test_init_writes_a_config_that_validates_and_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "starter.yaml"
    runner = CliRunner()
    assert runner.invoke(main, ["init", str(target)]).exit_code == 0
    assert runner.invoke(main, ["validate", "-c", str(target)]).exit_code == 0
    again = runner.invoke(main, ["init", str(target)])
    assert again.exit_code == 1 and "already exists" in again.output


def test_keys_new_prints_a_key_and_its_hash() -> None:
    output = CliRunner().invoke(main, ["keys", "new"]).output
    key = output.split("key:")[1].split()[0]
    digest = output.split("config:")[1].split()[0]
    assert digest == "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def test_serve_refuses_a_bad_config_and_an_unset_variable(tmp_path: Path) -> None:
    config = make_config()
    config["providers"].append({"id": "oa", "type": "openai", "keys": [{"id": "k", "value": "${TRUCKLLM_TEST_UNSET}"}]})
    path = write_config(tmp_path, config)
    result = CliRunner().invoke(main, ["serve", "-c", str(path)])
    assert result.exit_code == 1
    assert "environment variable TRUCKLLM_TEST_UNSET is not set" in result.output
    assert "providers[1].keys[0].value" in result.output and "Traceback" not in result.output


def test_serve_reports_a_port_in_use(tmp_path: Path) -> None:
    path = write_config(tmp_path, make_config())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", "-c", str(path), "--port", str(port)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in result.output
    assert "Traceback" not in result.output, result.output


def test_serve_process_answers_then_drains_a_stream_on_sigterm(tmp_path: Path) -> None:
    config = make_config()
    config["providers"] = [{"id": "demo", "type": "mock", "chunk_delay_ms": 100}]
    config["server"] = {"log_format": "json", "shutdown_grace_s": 10}
    path = write_config(tmp_path, config)
    with make_serve_process(path) as served:
        client = OpenAI(base_url=served.url, api_key=CLIENT_KEY, max_retries=0)
        assert client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}]).model == "demo"
        words = " ".join(f"w{i}" for i in range(15))
        stream = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": words}], stream=True)
        received: list[str] = []
        first = next(stream)
        received.append(first.choices[0].delta.content or "")
        stopper = threading.Timer(0.05, served.process.send_signal, args=(signal.SIGTERM,))
        stopper.start()
        received += [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert "".join(received) == f"You said: {words}"       # the stream finished whole
        assert served.process.wait(timeout=15) == 0
        time.sleep(0)
        assert CLIENT_KEY not in served.output()
        assert '"event": "stopped"' in served.output() or '"event":"stopped"' in served.output()


def test_serve_refuses_new_connections_while_draining(tmp_path: Path) -> None:
    config = make_config()
    config["providers"] = [{"id": "demo", "type": "mock", "chunk_delay_ms": 200}]
    path = write_config(tmp_path, config)
    with make_serve_process(path) as served:
        client = OpenAI(base_url=served.url, api_key=CLIENT_KEY, max_retries=0)
        stream = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "a b c d e"}], stream=True)
        next(stream)
        served.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with socket.socket() as probe:
            probe.settimeout(2)
            refused = probe.connect_ex(("127.0.0.1", served.port)) != 0
        assert refused
        list(stream)
        assert served.process.wait(timeout=15) == 0


def test_bytes_that_are_not_http_get_a_400_and_one_warning_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, {**make_config(), "server": {"log_format": "json"}})
    with make_serve_process(path) as served:
        for raw in (b"GET /v1/models?x=\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", served.port), timeout=5) as connection:
                connection.sendall(raw)
                answer = b""
                while chunk := connection.recv(4096):
                    answer += chunk
                head, _, body = answer.partition(b"\r\n\r\n")
                assert head.split(b" ")[1] == b"400"
                assert b"application/json" in head
                assert orjson.loads(body)["error"]["type"] == "invalid_request_error"
        client = OpenAI(base_url=served.url, api_key=CLIENT_KEY, max_retries=0)
        assert client.models.list().data                        # still serving
        served.stop()
    log = served.output()
    assert "Traceback" not in log
    assert log.count("malformed HTTP request refused") == 2
