"""Several agents on one host: each has a positions file of its own by default (named after what
it follows, or its ``--instance``), paths are stored absolute, and a second agent on one file
fails at start with a clear message."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lab import wait_until
from lab.agent import Agent
from logwarden.config import ConfigError, load_config
from tests.lines import FMT, line
from tests.peers import dead_url


def config(**flags: Any) -> Any:
    return load_config({"log_format": FMT, "peer": ("http://10.0.0.2:80",), **flags}, None, {})


def test_the_default_positions_file_is_per_agent_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setattr("os.geteuid", lambda: 0)
    a = config(access_log=("/var/log/nginx/a.access.log",))
    b = config(access_log=("/var/log/nginx/b.access.log",))
    listener = config(syslog=("udp://127.0.0.1:5514",))
    paths = {c.positions_path for c in (a, b, listener)}
    assert len(paths) == 3
    assert all(p.parent == Path("/var/lib/logwarden") for p in paths)
    assert a.positions_path.name.startswith("positions-var-log-nginx-a.access.log-")
    # Alike when spelled as a file name, yet two logs: the hash keeps them apart.
    assert config(access_log=("/a/b.log",)).positions_path != \
        config(access_log=("/a-b.log",)).positions_path
    named = config(access_log=("/var/log/nginx/a.access.log",), instance="shop")
    assert named.positions_path == Path("/var/lib/logwarden/positions-shop.json")
    with pytest.raises(ConfigError, match=r"instance: '\.\./x' is not an instance name"):
        config(access_log=("/x.log",), instance="../x")


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    c = config(access_log=("logs/access.log",), positions="state/positions.json")
    assert c.access_log == (str(tmp_path / "logs/access.log"),)
    assert c.positions_path == tmp_path / "state/positions.json"
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    default = config(access_log=("logs/access.log",)).positions_path
    assert default is not None and default.is_absolute() and default.parent == tmp_path


def agent(tmp_path: Path, log: Path, *extra: str, default_positions: bool = True) -> Agent:
    return Agent(log, FMT, "http://127.0.0.1:1", [dead_url()], extra=["--from-start", *extra],
                 stderr=tmp_path / f"{log.stem}.stderr", default_positions=default_positions,
                 env={"STATE_DIRECTORY": str(tmp_path / "state")})


def test_two_agents_on_one_host_keep_separate_positions(tmp_path: Path) -> None:
    """Both stop; lines come meanwhile; both resume where each was (with one shared file the
    agent that saved first lost its entry and started at the end of its log)."""
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    for log in logs:
        log.write_bytes(line("/before", "HIT"))
    agents = [agent(tmp_path, log).start() for log in logs]
    try:
        for a in agents:
            wait_until(lambda a=a: a.value("logwarden_lines_total") == 1, what="the first line")
    finally:
        codes = [a.stop() for a in agents]
    assert codes == [0, 0]
    saved = sorted((tmp_path / "state").glob("positions-*.json"))
    assert len(saved) == 2
    assert sorted(json.loads(p.read_text())["files"][0]["path"] for p in saved) == \
        [str(log) for log in logs]
    for log in logs:
        with open(log, "ab") as fh:
            fh.write(line("/while-down", "HIT"))
    agents = [agent(tmp_path, log).start() for log in logs]
    try:  # each reads its one new line, not the first again (--from-start has no say)
        for a in agents:
            wait_until(lambda a=a: a.value("logwarden_lines_total") == 1, what="the new line")
    finally:
        codes = [a.stop() for a in agents]
    assert codes == [0, 0]


def test_a_second_agent_on_one_positions_file_exits_2(tmp_path: Path) -> None:
    log, positions = tmp_path / "a.log", tmp_path / "positions.json"
    log.touch()
    first = agent(tmp_path, log, "--positions", str(positions), default_positions=False).start()
    try:
        second = subprocess.run(
            [*agent(tmp_path, log, "--positions", str(positions),
                    default_positions=False).args],
            capture_output=True, text=True, timeout=30)
    finally:
        assert first.stop() == 0
    assert second.returncode == 2
    assert first.proc is not None
    assert second.stderr == (
        f"logwarden: error: positions: {str(positions)!r} is in use by another logwarden "
        f"(pid {first.proc.pid}): give each agent its own --positions FILE, or an "
        "--instance NAME\n")
    # Once the first is gone, the file is free.
    again = agent(tmp_path, log, "--positions", str(positions), default_positions=False)
    assert again.start().stop() == 0


def test_check_prints_the_positions_file(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    args = agent(tmp_path, log).args
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path / "state")}
    out = subprocess.run([*args[:3], "check", *args[4:]], capture_output=True, text=True,
                         env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    name = config(access_log=(str(log),)).agent_name
    assert f"# positions file: {tmp_path}/state/positions-{name}.json\n" in out.stderr
