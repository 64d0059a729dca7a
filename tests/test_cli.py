"""The `truckllm` command: click's runner for the quick commands, a real process for
`serve` (start, answer, SIGTERM mid-stream, exit 0)."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
import yaml
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


def test_keys_new_prints_the_key_once_and_an_entry_that_works(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["keys", "new", "--id", "team-a", "--models", "demo,other-*",
                                       "--rpm", "60", "--tpm", "90000", "--budget-usd", "12.5"])
    assert result.exit_code == 0, result.output
    key = result.output.split("key: ")[1].split()[0]
    assert result.output.count(key) == 1
    entry = yaml.safe_load(result.output.split("in the config:")[1])
    assert entry == [{"id": "team-a", "key": "sha256:" + hashlib.sha256(key.encode()).hexdigest(),
                      "models": ["demo", "other-*"], "rpm": 60, "tpm": 90000, "budget_usd": 12.5}]
    path = write_config(tmp_path, {**make_config(), "keys": entry})       # pasted as printed
    assert CliRunner().invoke(main, ["validate", "-c", str(path)]).exit_code == 0
    with make_serve_process(path) as served:
        client = OpenAI(base_url=served.url, api_key=key, max_retries=0)
        assert client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}]).choices


def test_keys_new_without_options_and_with_a_bad_glob() -> None:
    entry = yaml.safe_load(CliRunner().invoke(main, ["keys", "new"]).output.split("in the config:")[1])
    assert list(entry[0]) == ["id", "key"] and entry[0]["id"].startswith("key-")
    bad = CliRunner().invoke(main, ["keys", "new", "--models", "gpt-[4"])
    assert bad.exit_code == 2 and "unclosed '['" in bad.output and "Traceback" not in bad.output


COMMANDS = [[], ["serve"], ["validate"], ["init"], ["keys"], ["keys", "new"], ["import"], ["import", "litellm"]]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) or "truckllm" for c in COMMANDS])
def test_dash_h_works_everywhere(command: list[str]) -> None:
    short = CliRunner().invoke(main, [*command, "-h"])
    assert short.exit_code == 0 and "Usage: " in short.output
    assert short.output == CliRunner().invoke(main, [*command, "--help"]).output


def test_the_config_defaults_to_truckllm_config(tmp_path: Path) -> None:
    path = write_config(tmp_path, make_config())
    result = CliRunner().invoke(main, ["validate"], env={"TRUCKLLM_CONFIG": str(path)})
    assert result.exit_code == 0 and f"{path}: valid" in result.output
    missing = CliRunner().invoke(main, ["validate"], env={"TRUCKLLM_CONFIG": None})
    assert missing.exit_code == 2 and "TRUCKLLM_CONFIG" in missing.output


def test_shell_completion_script_is_generated() -> None:
    command = str(Path(sys.executable).parent / "truckllm")      # the installed console script
    result = subprocess.run([command], env={**os.environ, "_TRUCKLLM_COMPLETE": "bash_source"},
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0 and "_truckllm_completion" in result.stdout


def test_validate_prints_every_problem_in_one_run(tmp_path: Path) -> None:
    config = make_config()
    config["server"] = {"log_fromat": "json", "port": "high"}
    config["providers"].append({"id": "oa", "type": "openai", "keys": [{"id": "k", "value": "${TRUCKLLM_TEST_UNSET}"}]})
    config["models"][0]["targets"][0]["provider"] = "dmeo"
    path = write_config(tmp_path, config)
    result = CliRunner().invoke(main, ["validate", "-c", str(path)])
    assert result.exit_code == 1
    assert "invalid config (4 problems)" in result.output
    for fragment in ("server.log_fromat: unknown field (did you mean `log_format`?)", "server.port:",
                     "environment variable TRUCKLLM_TEST_UNSET is not set",
                     "unknown provider 'dmeo' (did you mean `demo`?)"):
        assert fragment in result.output
    assert all(line.startswith(f"  {path}:") for line in result.output.splitlines()[1:])


def test_validate_warns_when_the_state_file_cannot_be_written(tmp_path: Path) -> None:
    config = {**make_config(), "server": {"state_file": str(tmp_path / "nowhere" / "state.json")}}
    result = CliRunner().invoke(main, ["validate", "-c", str(write_config(tmp_path, config))])
    assert result.exit_code == 0 and "warning: the state file" in result.output
    assert "does not exist" in result.output


def test_validate_warns_about_a_directory_it_cannot_write(tmp_path: Path) -> None:
    if os.getuid() == 0:                    # root writes anywhere but on a read-only mount
        directory = Path("/proc/sys")
        if os.access(directory, os.W_OK):
            pytest.skip("no read-only directory on this machine")
    else:
        directory = tmp_path / "read-only"
        directory.mkdir()
        directory.chmod(0o555)
    config = {**make_config(), "server": {"state_file": str(directory / "truckllm.state.json")}}
    result = CliRunner().invoke(main, ["validate", "-c", str(write_config(tmp_path, config))])
    assert result.exit_code == 0 and "not writable by this user" in result.output


def test_validate_looks_where_systemd_puts_the_state(tmp_path: Path) -> None:
    path = write_config(tmp_path, make_config())
    state_directory = tmp_path / "var-lib-truckllm"
    result = CliRunner().invoke(main, ["validate", "-c", str(path)],
                                env={"STATE_DIRECTORY": str(state_directory)})
    assert f"{state_directory}/config.state.json cannot be written" in result.output
    state_directory.mkdir()
    result = CliRunner().invoke(main, ["validate", "-c", str(path)],
                                env={"STATE_DIRECTORY": str(state_directory)})
    assert result.exit_code == 0 and "warning" not in result.output


def test_serve_refuses_a_bad_config_and_an_unset_variable(tmp_path: Path) -> None:
    config = make_config()
    config["providers"].append({"id": "oa", "type": "openai", "keys": [{"id": "k", "value": "${TRUCKLLM_TEST_UNSET}"}]})
    path = write_config(tmp_path, config)
    result = CliRunner().invoke(main, ["serve", "-c", str(path)])
    assert result.exit_code == 1
    assert "environment variable TRUCKLLM_TEST_UNSET is not set" in result.output
    assert "providers[1].keys[0].value" in result.output and "Traceback" not in result.output
    assert gc.isenabled()           # serve starts with the collector off: back on when it exits


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
    assert gc.isenabled()


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


def test_the_startup_line_and_an_unchanged_sighup_each_say_so_in_one_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, {**make_config(), "server": {"log_format": "json", "watch": False}})
    with make_serve_process(path) as served:
        served.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "config unchanged" not in served.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        served.stop()
    lines = [json.loads(line) for line in served.output().splitlines() if line.startswith("{")]
    listening = [line for line in lines if line["event"] == "listening"]
    assert len(listening) == 1
    assert listening[0]["config"] == str(path)
    assert listening[0]["state_file"] == str(tmp_path / "config.state.json")
    assert listening[0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    unchanged = [line for line in lines if line["event"].startswith("config unchanged")]
    assert len(unchanged) == 1 and unchanged[0]["trigger"] == "sighup"
