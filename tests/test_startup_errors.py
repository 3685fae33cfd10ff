"""Every start-up failure is one line on stderr naming the problem and the fix, exit code 2,
no traceback unless --log-level debug; --log-format-output json makes logwarden's own log
lines JSON objects."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lab import free_port
from lab.agent import Agent
from logwarden.config import ConfigError, load_config
from tests.agents import LOG_FORMAT


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    log = tmp_path / "access.log"
    log.touch()
    base = ["--access-log", str(log), "--log-format", LOG_FORMAT, "--positions", "off",
            "--peer", "http://127.0.0.12:80"]
    return subprocess.run([sys.executable, "-m", "logwarden", "run", *base, *args],
                          capture_output=True, text=True, timeout=30)


def one_line_error(out: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("logwarden: error: "), \
        out.stderr
    for needle in needles:
        assert needle in out.stderr


def test_metrics_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        out = run(tmp_path, "--metrics-listen", listen)
        one_line_error(out, f"metrics_listen: '{listen}' cannot be served (Address already in "
                       "use)", "Give a free --metrics-listen HOST:PORT, or 'off'")
        debug = run(tmp_path, "--metrics-listen", listen, "--log-level", "debug")
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr and debug.stderr.endswith(out.stderr)


def test_access_log_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one_line_error(run(tmp_path, "--access-log", str(tmp_path)), "is a directory")
    log = tmp_path / "secret.log"
    log.touch()
    monkeypatch.setattr("os.access", lambda path, mode: False)  # root reads any file
    with pytest.raises(ConfigError, match=r"cannot be read \(permission denied\): run "
                       r"logwarden as a user that may read it"):
        load_config({"access_log": (str(log),), "log_format": LOG_FORMAT,
                     "peer": ("http://127.0.0.12:80",)})


def test_bad_peer_url(tmp_path: Path) -> None:
    one_line_error(run(tmp_path, "--peer", "ftp://127.0.0.13"), "peer: 'ftp://127.0.0.13'")


def test_nginx_config_not_found(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "logwarden", "run", "--nginx-conf",
                          str(tmp_path / "nginx.conf"), "--peer", "http://127.0.0.12:80"],
                         capture_output=True, text=True, timeout=30)
    one_line_error(out, "nginx_conf:", "cannot be read: No such file or directory",
                   "pipe `nginx -T` into --nginx-conf -")


def test_json_log_lines(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.touch()
    stderr = tmp_path / "agent.log"
    agent = Agent(log, LOG_FORMAT, "http://127.0.0.11:80", ["http://127.0.0.12:80"],
                  extra=["--log-format-output", "json"], stderr=stderr).start()
    assert agent.stop() == 0
    lines = [json.loads(line) for line in stderr.read_text().splitlines()]
    assert len(lines) >= 3
    for line in lines:
        assert {"time", "level", "logger", "event"} <= line.keys()
        assert line["time"].endswith("+00:00") and line["level"] in ("info", "warning", "error")
    assert any(line["event"].startswith("logwarden running") for line in lines)
    assert lines[-1]["event"].startswith("logwarden stopped")
    assert free_port("127.0.0.1")  # the agent's metrics port is free again


def test_syslog_port_in_use(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        url = f"udp://127.0.0.1:{taken.getsockname()[1]}"
        out = subprocess.run([sys.executable, "-m", "logwarden", "run", "--syslog", url,
                              "--log-format", LOG_FORMAT, "--peer", "http://127.0.0.12:80",
                              "--positions", "off", "--metrics-listen", "off"],
                             capture_output=True, text=True, timeout=30)
    one_line_error(out, f"syslog: '{url}' cannot be bound (Address already in use)",
                   "Give a free --syslog URL")
