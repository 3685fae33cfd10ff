"""The files that run logwarden as a service do what they say: systemd unit (and the daemon's
readiness notification), logrotate config (with the real logrotate, real NGINX under load),
Dockerfile, Kubernetes sidecar."""

from __future__ import annotations

import configparser
import gzip
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lab import Cluster, NginxNode, Origin, find_nginx, wait_until
from lab.agent import Agent
from logwarden.config import ENV_PREFIX, REPLAY, SETTINGS, load_config
from tests.agents import LOG_FORMAT
from tests.test_tail_nginx import Client

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
UNIT = EXAMPLES / "logwarden.service"


def unit_settings() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


# --- systemd -----------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_systemd_unit_verifies_clean(tmp_path: Path) -> None:
    """No warning at all: an unknown or misspelt key is only a warning for systemd."""
    logwarden = shutil.which("logwarden", path=os.path.dirname(sys.executable))
    assert logwarden is not None
    unit = tmp_path / "logwarden.service"  # verify needs the ExecStart binary to exist
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/logwarden", logwarden))
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (out.stdout + out.stderr).strip() == ""


def test_systemd_unit_is_what_logwarden_expects(tmp_path: Path) -> None:
    service = unit_settings()["Service"]
    assert service["Type"] == "notify" and service["Restart"] == "on-failure"
    assert service["StateDirectory"] == "logwarden"  # positions.default_path uses it
    assert service["DynamicUser"] == "yes" and service["User"] == "logwarden"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "CapabilityBoundingSet": ""}.items():
        assert service[key] == value
    # Every LOGWARDEN_ variable is a setting, and the run command's flags are logwarden's.
    env = dict(e.split("=", 1) for e in service["Environment"].split())
    names = {s.env for s in SETTINGS}
    assert all(k in names for k in env if k.startswith(ENV_PREFIX))
    args = service["ExecStart"].split()
    assert args[1:3] == ["run", "--config"]
    conf = tmp_path / "logwarden.toml"
    conf.write_text(f"access_log = ['/var/log/nginx/access.log']\nlog_format = '''{LOG_FORMAT}'''\n"
                    "peer = ['http://10.0.0.2:80']\n")
    header = tmp_path / "refresh-header"
    header.write_text("X-Refresh: s3cret\n")
    environ = {**{k: v.replace("%d", str(tmp_path)) for k, v in env.items()},
               "STATE_DIRECTORY": "/var/lib/logwarden"}
    config = load_config({}, str(conf), environ)
    assert config.positions_path == Path("/var/lib/logwarden") / (
        f"positions-{config.agent_name}.json")
    assert config.agent_name.startswith("var-log-nginx-access.log-")
    assert config.refresh_header == "X-Refresh: s3cret"
    # systemd waits TimeoutStopSec before SIGKILL: more than logwarden's own drain deadline.
    assert float(service["TimeoutStopSec"]) > config.shutdown_timeout


def test_daemon_notifies_systemd_when_ready_and_when_stopping(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    address = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", str(address))
        log = tmp_path / "access.log"
        log.touch()
        agent = Agent(log, LOG_FORMAT, "http://127.0.0.11:80", ["http://127.0.0.12:80"],
                      stderr=tmp_path / "agent.log").start()
        try:
            assert sock.recv(1024) == b"READY=1"  # healthz already said ok
        finally:
            assert agent.stop() == 0
        assert sock.recv(1024) == b"STOPPING=1"


# --- logrotate ---------------------------------------------------------------------------------


def render_logrotate(node: NginxNode, group: str) -> str:
    """examples/logrotate.conf for a lab node: its log, its pid file, this user's group."""
    text = (EXAMPLES / "logrotate.conf").read_text()
    for old, new in (("/var/log/nginx/*.log", str(node.access_log)),
                     ("create 0640 www-data adm", f"create 0640 root {group}"),
                     ("/run/nginx.pid", str(node.pid_path))):
        assert text.count(old) >= 1, f"{old!r} is no longer in examples/logrotate.conf"
        text = text.replace(old, new)
    return text


def lines_in(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        total += data.count(b"\n")
    return total


@pytest.mark.nginx
@pytest.mark.skipif(shutil.which("logrotate", path="/usr/sbin:/usr/bin:/sbin") is None,
                    reason="logrotate not installed (Debian: apt-get install logrotate)")
def test_logrotate_config_loses_no_line(tmp_path: Path, origin: Origin) -> None:
    """Four rotations by the real logrotate with examples/logrotate.conf while a client keeps
    NGINX busy: logwarden reads every line NGINX wrote, in every file, exactly once."""
    if find_nginx() is None:
        pytest.skip("nginx not installed")
    logrotate = shutil.which("logrotate", path="/usr/sbin:/usr/bin:/sbin")
    assert logrotate is not None
    with Cluster(tmp_path / "cluster", nodes=1, origin=origin) as cluster:
        node = cluster[0]
        conf = tmp_path / "logrotate.conf"
        conf.write_text(render_logrotate(node, group=_group()))
        agent = Agent(node.access_log, LOG_FORMAT, node.url, ["http://127.0.0.12:80"],
                      extra=["--from-start", "--dry-run", "--rotate-wait", "0.5",
                             "--dedup-window", "0"],
                      stderr=tmp_path / "agent.log").start()
        try:
            with Client(node.address, node.port):
                for _ in range(4):
                    rotated = subprocess.run(
                        [logrotate, "--force", "--state", str(tmp_path / "state"), str(conf)],
                        capture_output=True, text=True, timeout=30)
                    assert rotated.returncode == 0, rotated.stderr
                    # notifempty: the next rotation needs lines in the new file (after USR1)
                    wait_until(lambda: _size(node.access_log) > 0, 5,
                               what="NGINX to write into the new access.log")
            files = sorted(node.access_log.parent.glob("access.log*"))
            assert [f.name for f in files] == ["access.log", "access.log.1", "access.log.2.gz",
                                               "access.log.3.gz", "access.log.4.gz"]
            # NGINX logs a request after answering it: count once the files and logwarden agree.
            wait_until(lambda: agent.value("logwarden_lines_total") == lines_in(files), 10,
                       what="logwarden to read every line NGINX wrote")
            written = lines_in(files)
            assert agent.value("logwarden_lines_total") == written
            # Every line was a MISS of a new URL: every one triggered, none twice.
            assert agent.total("logwarden_triggers_total") == written
            assert agent.value("logwarden_lines_malformed_total") == 0
        finally:
            assert agent.stop() == 0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # between logrotate's rename and its create
        return 0


def _group() -> str:
    import grp
    return grp.getgrgid(os.getegid()).gr_name


# --- helpers shared by the container tests ------------------------------------------------------


def flags_of(args: list[str]) -> dict[str, object]:
    """``--flag value`` pairs as load_config's flags (repeatable ones as tuples)."""
    by_flag = {s.flag: s for s in SETTINGS}
    flags: dict[str, object] = {}
    i = 0
    while i < len(args):
        setting = by_flag.get(args[i])
        assert setting is not None, f"{args[i]} is not a logwarden flag"
        value: object = True if setting.kind is bool else args[i + 1]
        if setting.kind in (int, float):
            value = setting.kind(value)
        if setting.multiple:
            value = (*flags.get(setting.name, ()), value)  # type: ignore[misc]
        flags[setting.name] = value
        i += 1 if setting.kind is bool else 2
    return flags


def test_flags_of_refuses_what_is_not_a_flag() -> None:
    assert flags_of(["--peer", "a", "--peer", "b", "--from-start", "--timeout", "2"]) == {
        "peer": ("a", "b"), "from_start": True, "timeout": 2.0}
    with pytest.raises(AssertionError, match="--bogus is not a logwarden flag"):
        flags_of(["--bogus", "1"])


# --- Dockerfile (docker itself is not needed) --------------------------------------------------

ROOT = EXAMPLES.parent


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_builds_a_slim_non_root_image_of_logwarden() -> None:
    steps = dockerfile()
    stages = [args for op, args in steps if op == "FROM"]
    assert stages and all(re.match(r"python:3\.1[1-9]-slim", s) for s in stages)
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    ops = [op for op, _ in final]
    user = [args for op, args in final if op == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert ops.index("USER") > max(i for i, op in enumerate(ops) if op == "RUN")
    assert dict(final)["ENTRYPOINT"] == '["logwarden"]'
    for op, args in steps:  # what is copied exists, and .dockerignore lets it in
        if op == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert f"!{source.rstrip('/')}" in (ROOT / ".dockerignore").read_text()
    env = dict(pair.split("=", 1) for op, args in final if op == "ENV" for pair in args.split())
    config = load_config({"log_format": LOG_FORMAT}, needs=REPLAY, environ=env)
    assert config.positions_path == Path(env["STATE_DIRECTORY"]) / (
        f"positions-{config.agent_name}.json")
    port = config.metrics_listen.rsplit(":", 1)[1]
    assert config.metrics_listen.startswith("0.0.0.0:") and dict(final)["EXPOSE"] == port
    assert f"127.0.0.1:{port}/healthz" in dict(final)["HEALTHCHECK"]


# --- Kubernetes sidecar ------------------------------------------------------------------------


def test_kubernetes_sidecar_runs_logwarden_with_valid_flags(tmp_path: Path) -> None:
    import yaml

    docs = {d["kind"]: d for d in yaml.safe_load_all((EXAMPLES / "kubernetes" /
                                                      "sidecar.yaml").read_text())}
    pod = docs["Deployment"]["spec"]["template"]
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    agent, nginx = containers["logwarden"], containers["nginx"]
    assert agent["args"][0] == "run"
    flags = flags_of(agent["args"][1:])
    # The files the flags name are the mounted ConfigMap and Secret: write them out here.
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for name, value in list(flags.items()):
        if isinstance(value, str) and value.startswith("/"):
            flags[name] = str(_mounted_file(value, agent, volumes, docs, tmp_path))
    config = load_config(flags)
    # NGINX logs to the volume logwarden reads, at the path the config names.
    log_dir = os.path.dirname(config.access_log[0])
    assert config.access_log == ("/var/log/nginx/access.log",)
    assert _volume_at(nginx, log_dir) == _volume_at(agent, log_dir) is not None
    assert config.refresh_header == "X-Refresh: CHANGE-ME-SECRET"
    # Peers: the headless Service selecting these pods, on the port NGINX listens on.
    service = docs["Service"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    name = service["metadata"]["name"] + "." + service["metadata"]["namespace"]
    assert config.peers_dns == (f"http://{name}.svc.cluster.local:80",)
    assert nginx["ports"][0]["containerPort"] == 80
    # Probes and metrics on the port logwarden listens on; no root, no privilege.
    assert config.metrics_listen == f"0.0.0.0:{agent['ports'][0]['containerPort']}"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/healthz"
    security = agent["securityContext"]
    assert security["runAsNonRoot"] and not security["allowPrivilegeEscalation"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > config.shutdown_timeout


def _volume_at(container: dict[str, object], path: str) -> str | None:
    mounts = container["volumeMounts"]
    assert isinstance(mounts, list)
    return next((m["name"] for m in mounts if m["mountPath"] == path), None)


def _mounted_file(path: str, container: dict[str, object], volumes: dict[str, dict[str, object]],
                  docs: dict[str, dict[str, object]], tmp_path: Path) -> Path:
    """The content a container sees at ``path``, from the ConfigMap or Secret mounted there."""
    mounts = container["volumeMounts"]
    assert isinstance(mounts, list)
    for mount in mounts:
        where = mount["mountPath"]
        if path != where and not path.startswith(where + "/"):
            continue
        volume = volumes[mount["name"]]
        key = mount.get("subPath") or path[len(where) + 1:]
        if "configMap" in volume:
            data = docs["ConfigMap"]["data"]
        else:
            assert "secret" in volume, f"{path} is on volume {mount['name']}, not a file source"
            data = docs["Secret"]["stringData"]
        assert isinstance(data, dict)
        out = tmp_path / key
        out.write_text(data[key])
        return out
    raise AssertionError(f"{path} is not mounted in the container")
