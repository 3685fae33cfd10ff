"""``check --nginx-conf`` judges the NGINX side: one config per case, each showing it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from logwarden.commands.nginx_side import verdicts
from logwarden.config import RUN, ConfigError, load_config

BASE = """
events {}
http {
    log_format lw '$msec $scheme $host "$request" $status $upstream_cache_status '
                  '"$http_user_agent"';
    proxy_cache_path %(dir)s/c keys_zone=z:1m;
    geo $peer { default 0; 127.0.0.0/8 1; }
    map "$peer:$http_x_refresh" $refresh { default 0; "1:s3cr3t" 1; }
    %(http)s
    server {
        listen 127.0.0.1:8080;
        access_log %(dir)s/access.log lw%(params)s;
        add_header X-Cache-Status $upstream_cache_status always;
        location / {
            proxy_pass http://127.0.0.1:9;
            proxy_cache z;
            proxy_cache_key %(key)s;
            %(location)s
        }
        location @purge { proxy_cache_purge z %(purge_key)s; }
    }
}
"""
GOOD = {"key": "$scheme$host$request_uri", "location": "proxy_cache_bypass $refresh;",
        "http": "", "params": "", "purge_key": "$scheme$host$request_uri"}


def judged(tmp_path: Path, **changes: str) -> tuple[list[tuple[str, str]], object]:
    """(level, reasons) per verdict of the config with ``changes``, and the config."""
    values = {**GOOD, **changes, "dir": str(tmp_path)}
    (tmp_path / "nginx.conf").write_text(BASE % values)
    flags = {"nginx_conf": str(tmp_path / "nginx.conf"), "peer": ("http://127.0.0.1:1",
                                                                  "http://127.0.0.2:1"),
             "refresh_header": "X-Refresh: s3cr3t"}
    mode = {"mode": "purge"} if changes.pop("mode", None) else {}
    config = load_config({**flags, **mode}, needs=RUN)
    return [(v.level, " ".join(v.reasons)) for v in verdicts(config)], config


def test_a_location_wired_right_is_ok(tmp_path: Path) -> None:
    found, config = judged(tmp_path)
    assert [level for level, _ in found] == ["ok"]
    assert config.refresh_method == "HEAD"


@pytest.mark.parametrize(("changes", "level", "said"), [
    ({"key": "$scheme$request_method$host$request_uri"}, "ok", "refreshes are sent as GET"),
    ({"location": "proxy_cache_bypass $refresh; proxy_cache_convert_head off;"}, "ok",
     "a HEAD refresh would store a HEAD answer"),
    ({"key": "$scheme$host$request_uri$cookie_lang"}, "warning", "depends on $cookie_lang"),
    ({"key": "$scheme$host$request_uri$http_authorization"}, "warning",
     "depends on $http_authorization"),
    ({"key": "$scheme$host$request_uri$device", "http":
      "map $http_user_agent $device { default d; ~Mobile m; }"}, "warning",
     "depends on $http_user_agent"),  # a map of a request header: the header is named
    ({"key": "$scheme$host$request_uri$slice_range", "location":
      "proxy_cache_bypass $refresh; slice 1m;"}, "warning", "slice: every range"),
    ({"key": "$scheme$host$request_uri$arg_v"}, "ok", "stores the new copy"),  # in the URI
    ({"location": ""}, "error", "no proxy_cache_bypass"),
    ({"location": "proxy_cache_bypass $http_pragma;"}, "error", "does not depend on X-Refresh"),
    ({"location": "proxy_cache_bypass $http_x_refresh;"}, "error",
     "any client sending X-Refresh forces an origin fetch"),
    ({"location": "proxy_cache_bypass $refresh; proxy_no_cache $refresh;"}, "error",
     "the bypass also feeds proxy_no_cache"),
    ({"location": "proxy_cache_bypass $refresh; gzip on;"}, "warning", "Vary is honoured"),
    ({"location": "proxy_cache_bypass $refresh; gzip on; proxy_ignore_headers Vary;"}, "ok",
     "stores the new copy"),
])
def test_each_case_gets_its_verdict(tmp_path: Path, changes: dict[str, str], level: str,
                                    said: str) -> None:
    found, _ = judged(tmp_path, **changes)
    assert len(found) == 1 and found[0][0] == level and said in found[0][1], found


def test_request_method_in_the_key_makes_refreshes_get_and_purges_an_error(
        tmp_path: Path) -> None:
    _, config = judged(tmp_path, key="$scheme$request_method$host$request_uri")
    assert config.refresh_method == "GET"
    found, _ = judged(tmp_path, key="$scheme$request_method$host$request_uri",
                      purge_key="$scheme$request_method$host$request_uri", mode="purge")
    [(level, said)] = found
    assert level == "error" and "evaluates it as PURGE" in said
    assert "$scheme$request_method$host$request_uri (" in said  # names the purge key


def test_log_parameters_and_scheme_missing_from_the_format(tmp_path: Path) -> None:
    found, _ = judged(tmp_path, params=" buffer=32k flush=1s if=$peer")
    assert [level for level, _ in found] == ["warning", "ok"]
    assert "buffer=32k: NGINX writes a buffered line" in found[0][1]
    assert "if=$peer: NGINX writes only the lines where it holds" in found[0][1]
    conf = (BASE % {**GOOD, "dir": str(tmp_path)}).replace("$msec $scheme $host", "$msec $host")
    (tmp_path / "nginx.conf").write_text(conf)
    config = load_config({"nginx_conf": str(tmp_path / "nginx.conf"),
                          "peer": ("http://127.0.0.1:1", "http://127.0.0.2:1")}, needs=RUN)
    [verdict] = verdicts(config)
    assert verdict.level == "warning" and "holds $scheme, the log_format not" \
        in verdict.describe()


def test_check_exits_1_on_an_error_and_names_the_location(tmp_path: Path) -> None:
    judged(tmp_path, location="proxy_cache_bypass $refresh; proxy_no_cache $refresh;")
    out = subprocess.run(
        [sys.executable, "-m", "logwarden", "check", "--nginx-conf", str(tmp_path / "nginx.conf"),
         "--peer", "http://127.0.0.1:1", "--peer", "http://127.0.0.2:1"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 1, out.stderr
    assert f"# nginx error: {tmp_path}/access.log <- {tmp_path}/nginx.conf:14: the bypass " \
        "also feeds proxy_no_cache" in out.stderr


TARGETS = """
events {}
http {
    log_format a '$host "$request" $status $upstream_cache_status';
    log_format b '$upstream_cache_status $host "$request"';
    proxy_cache_path %(dir)s/c keys_zone=z:1m;
    proxy_cache z;
    server { listen 127.0.0.1:8080; access_log %(dir)s/one.log a;
             access_log %(dir)s/mixed.log a; location / { proxy_pass http://127.0.0.1:9; } }
    server { listen 127.0.0.1:8081; access_log %(dir)s/one.log a;
             access_log %(dir)s/mixed.log b; access_log /dev/stdout a;
             access_log syslog:server=unix:/dev/log a; access_log relative.log a; }
}
"""


def test_targets_as_real_configs_have_them(tmp_path: Path) -> None:
    """A path named by two servers is followed once (and carries both servers' locations);
    one written in two formats needs --log-format-name; /dev/stdout, the system logger's
    socket and a relative path without the prefix are not usable, each said why."""
    (tmp_path / "nginx.conf").write_text(TARGETS % {"dir": tmp_path})
    flags = {"nginx_conf": str(tmp_path / "nginx.conf"), "peer": ("http://127.0.0.1:1",
                                                                  "http://127.0.0.2:1")}
    one = load_config({**flags, "access_log": (f"{tmp_path}/one.log",)}, needs=RUN)
    assert one.access_log == (f"{tmp_path}/one.log",)
    assert len({scope.where for log in one.nginx_access_logs if log.target.endswith("one.log")
                for scope in log.cache}) == 2
    with pytest.raises(ConfigError, match=r"written in several formats: a .*, b .*; pick one "
                       "with --log-format-name"):
        load_config({**flags, "access_log": (f"{tmp_path}/mixed.log",)}, needs=RUN)
    mixed = load_config({**flags, "access_log": (f"{tmp_path}/mixed.log",),
                         "log_format_name": "b"}, needs=RUN)
    assert mixed.log_format.startswith("'$upstream_cache_status")
    problems = {log.target: log.problem for log in one.nginx_access_logs}
    assert "NGINX's standard output" in (problems["/dev/stdout"] or "")
    assert "the system logger's socket" in (problems["unix:///dev/log"] or "")
    prefixed = load_config({**flags, "access_log": ("/srv/nginx/relative.log",),
                            "nginx_prefix": "/srv/nginx"}, needs=RUN)
    assert prefixed.access_log == ("/srv/nginx/relative.log",)
    # run says the same at start, in one line (exit 2), and reads it with the format named
    base = [sys.executable, "-m", "logwarden", "run", "--nginx-conf", str(tmp_path / "nginx.conf"),
            "--access-log", f"{tmp_path}/mixed.log", "--peer", "http://127.0.0.1:1",
            "--peer", "http://127.0.0.2:1", "--dry-run", "--metrics-listen", "off"]
    refused = subprocess.run(base, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "--log-format-name" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    (tmp_path / "mixed.log").write_text('h "GET /a HTTP/1.1" 200 MISS\n'  # format a
                                        'MISS h "GET /b HTTP/1.1"\n')   # format b
    named = subprocess.run(
        [sys.executable, "-m", "logwarden", "replay", f"{tmp_path}/mixed.log", "--json",
         "--nginx-conf", str(tmp_path / "nginx.conf"), "--access-log", f"{tmp_path}/mixed.log",
         "--log-format-name", "b"], capture_output=True, text=True, timeout=30)
    assert named.returncode == 0, named.stderr
    summary = json.loads(named.stdout.splitlines()[-1])["summary"]
    assert (summary["malformed"], summary["triggers"]) == (1, {"MISS": 1})
