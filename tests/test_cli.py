"""The command line as an operator runs it: real subprocesses, exit codes and messages."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lab.agent import Agent
from logwarden import __version__
from logwarden.config import SETTINGS
from tests.agents import LOG_FORMAT

FMT = "$host \"$request\" $status $upstream_cache_status"
ARGS = ["--access-log", "/var/log/nginx/access.log", "--log-format", FMT,
        "--self", "http://127.0.0.11:80", "--peer", "http://127.0.0.11:80",
        "--peer", "http://127.0.0.12:80"]


def logwarden(*args: str, env: dict[str, str] | None = None,
              stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "logwarden", *args], capture_output=True,
                          text=True, timeout=30, env=env, input=stdin)


def test_version() -> None:
    out = logwarden("--version")
    assert out.returncode == 0
    assert __version__ in out.stdout


def test_check_prints_the_effective_config(tmp_path: Path) -> None:
    out = logwarden("check", *ARGS, "--timeout", "2.5")
    assert out.returncode == 0, out.stderr
    effective = tomllib.loads(out.stdout)
    assert effective["timeout"] == 2.5
    assert effective["peer"] == ["http://127.0.0.11:80", "http://127.0.0.12:80"]
    assert "refreshes go to: http://127.0.0.12:80" in out.stderr
    # What check prints is a config file that check accepts back.
    conf = tmp_path / "effective.toml"
    conf.write_text(out.stdout)
    again = logwarden("check", "--config", str(conf))
    assert again.returncode == 0, again.stderr
    assert tomllib.loads(again.stdout) == effective


@pytest.mark.parametrize(
    ("toml", "args", "message"),
    [
        ('bogus_key = 1\n', [], "bogus_key: 'bogus_key' is not a known setting"),
        ("", ["--log-format", "$host \"$request\" $status"], "upstream_cache_status"),
        ("", ["--peer", "ftp://127.0.0.13"], "peer: 'ftp://127.0.0.13' is not an http(s)"),
    ],
)
def test_check_rejects_bad_config(tmp_path: Path, toml: str, args: list[str], message: str) -> None:
    conf = tmp_path / "lw.toml"
    conf.write_text(toml)
    out = logwarden("check", "--config", str(conf), *ARGS, *args)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.startswith("logwarden: error: ")
    assert message in out.stderr


def test_check_says_how_refreshes_are_verified() -> None:
    out = logwarden("check", *ARGS)
    assert "# refreshes verified: ok only when the peer answers X-Cache-Status: BYPASS" \
        in out.stderr
    out = logwarden("check", *ARGS, "--cache-status-header", "X-Cache")
    assert "answers X-Cache: BYPASS" in out.stderr
    out = logwarden("check", *ARGS, "--cache-status-header", "")
    assert out.returncode == 0, out.stderr
    assert "# refresh verification off (cache_status_header = '')" in out.stderr
    assert 'cache_status_header = ""' in out.stdout  # and the TOML keeps it off
    purge = ["--log-format", FMT + ' "$http_user_agent"', "--mode", "purge"]
    assert "purge mode sends no bypass request" in logwarden("check", *ARGS, *purge).stderr


def test_run_rejects_bad_config_before_starting() -> None:
    out = logwarden("run", *ARGS, "--concurrency", "0")
    assert out.returncode == 2
    assert "concurrency: 0 must be greater than 0" in out.stderr


def test_every_setting_is_a_flag_and_documented() -> None:
    help_text = logwarden("run", "--help").stdout
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for s in SETTINGS:
        assert s.flag in help_text
        assert f"`{s.flag}" in readme, f"{s.flag} is not in the README's settings table"


def test_check_tries_the_format_on_the_last_lines_of_each_file(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    args = ["--access-log", str(log), *ARGS[2:]]
    good = b'www.example.com "GET /a HTTP/1.1" 200 MISS\n'
    log.write_bytes(good * 300 + b"garbage\n" * 20 + b"www.example.com \"GET /b")  # one unended
    out = logwarden("check", *args)
    assert out.returncode == 0, out.stderr
    assert f"# access_log {log}: 180 of its last 200 lines parse with the log_format\n" \
        in out.stderr
    log.write_bytes(b"")
    out = logwarden("check", *args)
    assert out.returncode == 0, out.stderr
    assert f"# access_log {log}: empty: no line yet to try the log_format on" in out.stderr
    log.write_bytes(b'www.example.com\t"GET /a HTTP/1.1"\t200\tMISS\n' * 3)  # another format
    out = logwarden("check", *args)
    assert out.returncode == 1
    assert tomllib.loads(out.stdout)["access_log"] == [str(log)]  # the config was fine
    assert f"# access_log {log}: none of its last 3 lines parses with the log_format: give " \
           "the format this file is written with" in out.stderr
    # ... the format of that file, typed with a literal \t as in nginx.conf: all parse.
    tabs = ["--log-format", r'$host\t"$request"\t$status\t$upstream_cache_status']
    out = logwarden("check", *args, *tabs)
    assert out.returncode == 0, out.stderr
    assert f"# access_log {log}: 3 of its last 3 lines parse" in out.stderr


def test_a_self_that_is_no_peer_is_an_error_naming_both() -> None:
    out = logwarden("check", *ARGS, "--self", "http://127.0.0.11:8080")
    assert out.returncode == 2
    assert out.stderr == ("logwarden: error: self: 'http://127.0.0.11:8080' is not one of the "
                          "peers (http://127.0.0.11:80, http://127.0.0.12:80): list this node "
                          "among them (the same list on every node) and give --self as it is "
                          "spelled there\n")


@pytest.mark.parametrize("piped", ["", "nginx: the configuration file /etc/nginx/nginx.conf "
                                   "syntax is ok\nnginx: configuration file "
                                   "/etc/nginx/nginx.conf test is successful\n"])
def test_no_config_on_stdin_is_said_as_such(piped: str) -> None:
    """Nothing piped, or `nginx -t 2>&1` (only its messages) instead of `nginx -T`."""
    out = logwarden("check", "--nginx-conf", "-", "--peer", "http://127.0.0.12", stdin=piped)
    assert out.returncode == 2
    assert out.stderr.startswith("logwarden: error: nginx_conf: '-' has no config on stdin: "
                                 "pipe `nginx -T` into it")


def test_a_refresh_header_without_a_secret_is_a_warning_in_check_and_run(tmp_path: Path) -> None:
    warning = "warning: refresh_header: no secret given, refreshes carry the default"
    assert f"# {warning}" in logwarden("check", *ARGS).stderr
    secret = tmp_path / "refresh-header"
    secret.write_text("X-Refresh: s3cr3t\n")
    with_secret = logwarden("check", *ARGS, "--refresh-header-file", str(secret))
    assert with_secret.returncode == 0 and warning not in with_secret.stderr
    log, said = tmp_path / "access.log", tmp_path / "agent.log"
    log.touch()
    agent = Agent(log, LOG_FORMAT, "http://127.0.0.11:80", ["http://127.0.0.12:80"],
                  stderr=said).start()
    assert agent.stop() == 0
    assert said.read_text().count("WARNING logwarden.daemon: refresh_header: no secret") == 1
@pytest.mark.parametrize("command", ["warm", "replay"])
def test_each_command_lists_only_the_options_it_reads(command: str) -> None:
    help_text = logwarden(command, "--help").stdout
    flags = set(re.findall(r"^\s+(--[a-z-]+)", help_text, re.M)) - {"--help", "--config"}
    read = {s.flag for s in SETTINGS if command in s.also}
    assert flags - {"--only-missing", "--json"} == read
    for flag in ("--metrics-listen", "--positions", "--bus", "--syslog-tag", "--rotate-wait"):
        assert flag not in help_text  # run's alone
    assert len(read) < len(SETTINGS) / 2
    assert "No such option '--metrics-listen'" in logwarden(
        command, "x", "--metrics-listen", "127.0.0.1:1").stderr


def test_the_file_keeps_every_commands_keys(tmp_path: Path) -> None:
    """One TOML file serves run, warm and replay: keys a command has no flag for are fine."""
    conf = tmp_path / "lw.toml"
    conf.write_text('metrics_listen = "127.0.0.1:1"\nrotate_wait = 2\npeer = ["http://127.0.0.12:80"]\n')
    urls = tmp_path / "urls.txt"
    urls.write_text("http://www.example.com/a\n")
    out = logwarden("warm", str(urls), "--config", str(conf), "--dry-run")
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("url", ["http://127.0.0.12:0", "http://127.0.0.12:65536",
                                 "http://127.0.0.12:x"])
def test_ports_must_be_1_to_65535(url: str) -> None:
    out = logwarden("check", *ARGS, "--peer", url)
    assert out.returncode == 2
    assert f"peer: '{url}' has a bad port: ports are 1-65535" in out.stderr


def test_check_and_errors_never_print_the_refresh_secret() -> None:
    out = logwarden("check", *ARGS, "--refresh-header", "X-Refresh: s3cret-value")
    assert out.returncode == 0, out.stderr
    assert "s3cret" not in out.stdout + out.stderr
    assert '# refresh_header = "X-Refresh: ***"' in out.stdout
    bad = logwarden("check", *ARGS, "--refresh-header", "X-Refresh s3cret-value")
    assert bad.returncode == 2 and "s3cret" not in bad.stderr
    assert "refresh_header: '***' must look like 'Name: value'" in bad.stderr
