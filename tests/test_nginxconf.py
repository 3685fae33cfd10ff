"""--nginx-conf: the access logs and formats found are the ones NGINX itself writes with.

Configs are read from disk (includes followed) and from real ``nginx -T`` output; a real NGINX
started from the same config writes lines that the found format must parse exactly.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import (
    EXAMPLE_CONFIG,
    Cluster,
    Origin,
    find_nginx,
    free_port,
    render_config,
    wait_until,
)
from lab.cluster import current_user
from lab.process import running
from logwarden.config import ConfigError, load_config
from logwarden.parse.logformat import LogFormat
from logwarden.parse.nginxconf import (
    RECOMMENDED_LOG_FORMAT,
    NginxConfError,
    choose,
    read,
    split_dump,
)
from tests.agents import LOG_FORMAT

NGINX = find_nginx()
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx not installed")
PEER = {"peer": ("http://127.0.0.12:80",)}

JSON_FORMAT = """log_format edge escape=json '{"t":"$msec","req":"$request","st":"$status",'
        '"ucs":"$upstream_cache_status","host":"$host","ua":"$http_user_agent"}';"""


def same_parser(a: str, b: str, escape: str = "default") -> bool:
    return LogFormat.compile(a, escape).pattern == LogFormat.compile(b, escape).pattern


def write_two_server_config(prefix: Path, origin: str, port_a: int, port_b: int) -> Path:
    """nginx.conf + formats.conf (relative include) + sites/*.conf (glob): two servers, each
    with its own access log and format, one of them escape=json."""
    temp = "".join(f"    {kind}_temp_path {prefix}/tmp/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (prefix / "sites").mkdir(parents=True)
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir()
    (prefix / "formats.conf").write_text(
        "log_format main '$remote_addr [$time_local] \"$request\" $status "
        "\"$http_user_agent\" cache=$upstream_cache_status host=$host';\n" + JSON_FORMAT + "\n"
        "log_format plain '$remote_addr \"$request\" $status';\n")
    server = """server {{
    listen 127.0.0.21:{port};
    server_name www.example.com;
    access_log {prefix}/logs/{name}.log {fmt};
    location / {{ proxy_pass http://{origin}; proxy_cache c; }}
}}
"""
    (prefix / "sites" / "a.conf").write_text(
        server.format(port=port_a, prefix=prefix, name="a", fmt="main", origin=origin))
    (prefix / "sites" / "b.conf").write_text(
        server.format(port=port_b, prefix=prefix, name="b", fmt="edge", origin=origin))
    conf = prefix / "nginx.conf"
    conf.write_text(f"""user {current_user()};
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log;
events {{ worker_connections 64; }}
http {{
{temp}    include formats.conf;
    proxy_cache_path {prefix}/cache keys_zone=c:1m;
    access_log {prefix}/logs/plain.log plain;   # no cache status: not usable
    include sites/*.conf;
}}
""")
    return conf


@contextlib.contextmanager
def running_nginx(conf: Path) -> Iterator[None]:
    assert NGINX is not None
    args = [NGINX, "-c", str(conf), "-p", f"{conf.parent}/", "-g", "daemon off;"]
    with running(args, signal.SIGQUIT, 5, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        yield


def nginx_dump(conf: Path) -> str:
    assert NGINX is not None
    out = subprocess.run([NGINX, "-T", "-c", str(conf), "-p", f"{conf.parent}/"],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout


def get(port: int, target: str, ua: str) -> None:
    import http.client
    conn = http.client.HTTPConnection("127.0.0.21", port, timeout=5)
    try:
        conn.request("GET", target, headers={"Host": "www.example.com", "User-Agent": ua})
        conn.getresponse().read()
    finally:
        conn.close()


# --- the repo's example ----------------------------------------------------------------------


def test_example_config_gives_its_access_log_and_format() -> None:
    found = read(str(EXAMPLE_CONFIG))
    chosen = choose(found, "example")
    assert chosen.access_log == ("/var/log/nginx/access.log",)
    assert chosen.escape == "default"
    assert same_parser(chosen.log_format, LOG_FORMAT)
    # What logwarden offers when no format fits is the example's own.
    assert same_parser(RECOMMENDED_LOG_FORMAT, LOG_FORMAT)


@needs_nginx
def test_nginx_T_of_a_lab_node_gives_what_the_file_gives(tmp_path: Path) -> None:
    prefix = tmp_path / "node"
    for sub in ("logs", "cache", "tmp"):
        (prefix / sub).mkdir(parents=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render_config(EXAMPLE_CONFIG.read_text(), listen="127.0.0.21", port=8080,
                                  prefix=prefix, origin="127.0.0.1:9", peers=["127.0.0.1"],
                                  user=current_user(), syslog="127.0.0.1:5514"))
    from_disk = read(str(conf))
    dump = tmp_path / "dump.txt"
    dump.write_text(nginx_dump(conf))
    from_dump = read(str(dump))
    assert [(a.target, a.log_format, a.escape) for a in from_dump] == \
        [(a.target, a.log_format, a.escape) for a in from_disk]
    assert [a.where for a in from_dump] == [a.where for a in from_disk]  # same file:line
    assert {(a.kind, a.target, a.syslog_tag) for a in from_dump} == {
        ("file", f"{prefix}/logs/access.log", None), ("syslog", "udp://127.0.0.1:5514", "nginx")}
    # A file and a syslog copy of the same lines: logwarden must be told which one.
    with pytest.raises(NginxConfError, match="several access logs qualify"):
        choose(from_dump, "-")
    picked = choose(from_dump, "-", syslog=["udp://127.0.0.1:5514"])
    assert picked.syslog == ("udp://127.0.0.1:5514",) and picked.access_log == ()


@needs_nginx
def test_example_format_found_parses_what_a_lab_node_writes(tmp_path: Path,
                                                           origin: Origin) -> None:
    """examples/nginx.conf as the lab runs it: the format read from the node's own config
    parses every line that node writes, exactly."""
    with Cluster(tmp_path / "cluster", nodes=1, origin=origin) as cluster:
        node = cluster[0]
        chosen = choose(read(str(node.conf_path)), "node")
        assert chosen.access_log == (str(node.access_log),)
        for target in ("/a?ma=60", "/a?ma=60", "/b%20c?x=%22y%22", "/nope"):
            node.get(target)
        node.get("/a?ma=60", headers={"User-Agent": 'ua "q" \\ \t'})
        node.wait_log(lambda line: True, count=5)
    written = node.log_lines()  # NGINX has stopped: every line it will write is there
    parser = LogFormat.compile(chosen.log_format, chosen.escape)
    lines = node.access_log.read_bytes().splitlines(keepends=True)
    records = [parser.parse(line) for line in lines]
    assert all(records), lines
    assert [(r.target.decode(), r.cache_status) for r in records if r] == [
        (w.target, w.cache_status) for w in written]
    # (two workers: a line may be written after the next request's, so look for it)
    assert [r.target for r in records if r and r.user_agent == b'ua "q" \\ \t'] == [b"/a?ma=60"]


@needs_nginx
def test_check_reads_nginx_T_from_stdin(tmp_path: Path) -> None:
    conf = write_two_server_config(tmp_path / "n", "127.0.0.1:9", free_port("127.0.0.21"),
                                   free_port("127.0.0.21"))
    assert NGINX is not None
    dump = subprocess.run([NGINX, "-T", "-c", str(conf), "-p", f"{conf.parent}/"],
                          capture_output=True, text=True, timeout=30, check=True)
    out = subprocess.run(
        [sys.executable, "-m", "logwarden", "check", "--nginx-conf", "-", "--access-log",
         f"{conf.parent}/logs/b.log", "--peer", "http://127.0.0.12:80"],
        input=dump.stderr + dump.stdout, capture_output=True, text=True, timeout=30)
    # the NGINX side is judged too: this plain cache config has no bypass for refreshes
    assert out.returncode == 1, out.stderr
    assert f"# nginx error: {conf.parent}/logs/b.log <- {conf.parent}/sites/b.conf:5: " \
        in out.stderr and "no proxy_cache_bypass" in out.stderr
    assert f'access_log = ["{conf.parent}/logs/b.log"]' in out.stdout
    assert 'log_format_escape = "json"' in out.stdout
    # It says what it found, usable or not, and where.
    assert f"logs/plain.log format plain ({conf}:" in out.stderr
    assert "not usable: log format lacks $upstream_cache_status" in out.stderr
    assert f"logs/a.log format main ({conf.parent}/sites/a.conf:4): usable" in out.stderr


# --- includes, two servers, two formats, escape=json: against the lines NGINX writes ----------


@needs_nginx
def test_found_formats_parse_the_lines_nginx_writes(tmp_path: Path, origin: Origin) -> None:
    port_a, port_b = free_port("127.0.0.21"), free_port("127.0.0.21")
    conf = write_two_server_config(tmp_path / "n", origin.address, port_a, port_b)
    found = read(str(conf))
    assert found == read_dump(nginx_dump(conf), tmp_path)
    logs = {Path(a.target).name: a for a in found}
    assert set(logs) == {"plain.log", "a.log", "b.log"}
    assert logs["plain.log"].problem is not None
    assert (logs["a.log"].escape, logs["b.log"].escape) == ("default", "json")
    with pytest.raises(NginxConfError, match="several access logs qualify"):
        choose(found, str(conf))
    ua = 'tool "q" \\ é'
    with running_nginx(conf):
        for port in (port_a, port_b):
            wait_until(lambda p=port: _accepting(p), what="nginx")  # type: ignore[misc]
            get(port, f"/x/p%20q?ma=60&port={port}", ua)  # one cache zone: keys apart
            get(port, f"/x/p%20q?ma=60&port={port}", ua)
        for name in ("a.log", "b.log"):
            path = conf.parent / "logs" / name
            wait_until(lambda p=path: p.exists() and p.read_bytes().count(b"\n") >= 2,
                       what=name)
    for name in ("a.log", "b.log"):
        chosen = choose(found, str(conf), access_log=[logs[name].target])
        parser = LogFormat.compile(chosen.log_format, chosen.escape)
        lines = (conf.parent / "logs" / name).read_bytes().splitlines(keepends=True)
        records = [parser.parse(line) for line in lines]
        assert [r and r.cache_status for r in records] == ["MISS", "HIT"], lines
        port = port_a if name == "a.log" else port_b
        for r in records:
            assert r is not None
            assert (r.method, r.target, r.host) == (
                "GET", b"/x/p%%20q?ma=60&port=%d" % port, "www.example.com")
            assert r.user_agent == ua.encode("latin-1"), lines  # http.client sends latin-1


def _accepting(port: int) -> bool:
    import socket
    try:
        with socket.create_connection(("127.0.0.21", port), timeout=0.5):
            return True
    except OSError:
        return False


def read_dump(text: str, tmp_path: Path) -> tuple[object, ...]:
    dump = tmp_path / "dump.txt"
    dump.write_text(text)
    return read(str(dump))


# --- what the config says that logwarden cannot use --------------------------------------------


def conf_with(tmp_path: Path, http_body: str) -> Path:
    conf = tmp_path / "nginx.conf"
    conf.write_text("events {}\nhttp {\n" + http_body + "\n}\n"
                    "stream { log_format s '$remote_addr'; access_log /var/log/s.log s; }\n")
    return conf


def test_no_cache_status_is_a_clear_error_that_shows_the_line_to_add(tmp_path: Path) -> None:
    conf = conf_with(tmp_path, "access_log /var/log/nginx/access.log combined;")
    out = subprocess.run([sys.executable, "-m", "logwarden", "run", "--nginx-conf", str(conf),
                          "--peer", "http://127.0.0.12:80"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "file /var/log/nginx/access.log format combined" in out.stderr
    assert f"log_format logwarden {RECOMMENDED_LOG_FORMAT};" in out.stderr
    assert "access_log /var/log/nginx/logwarden.log logwarden;" in out.stderr


def test_syslog_targets_become_listeners(tmp_path: Path) -> None:
    conf = conf_with(tmp_path, f"log_format lw {RECOMMENDED_LOG_FORMAT};\n"
                     "access_log syslog:server=127.0.0.1:5515,tag=edge,severity=info lw;\n"
                     "server { access_log syslog:server=unix:/run/lw.sock lw; }\n"
                     "server { access_log syslog:server=[::1] lw; }\n")
    found = read(str(conf))
    assert [(a.target, a.syslog_tag) for a in found] == [
        ("udp://127.0.0.1:5515", "edge"), ("unix:///run/lw.sock", "nginx"),
        ("udp://[::1]:514", "nginx")]
    with pytest.raises(NginxConfError, match="differ in log_format or syslog tag"):
        choose(found, "x", syslog=["udp://127.0.0.1:5515", "unix:///run/lw.sock"])
    config = load_config({"nginx_conf": str(conf), "syslog": ("udp://127.0.0.1:5515",), **PEER})
    assert (config.syslog, config.syslog_tag, config.access_log) == (
        ("udp://127.0.0.1:5515",), "edge", ())


def test_per_host_files_become_a_glob_and_same_format_files_are_all_followed(
        tmp_path: Path) -> None:
    conf = conf_with(tmp_path, f"log_format lw escape=none {RECOMMENDED_LOG_FORMAT};\n"
                     "server { access_log /var/log/nginx/$host.log lw; }\n"
                     "server { access_log /var/log/nginx/static.log lw buffer=32k; }\n"
                     "server { access_log /var/log/$host/x.log lw; }\n"
                     "server { access_log /var/log/nginx/z.log.gz lw gzip; }\n"
                     "server { access_log off; }\n")
    config = load_config({"nginx_conf": str(conf), **PEER})
    assert config.access_log == ("/var/log/nginx/*.log", "/var/log/nginx/static.log")
    assert config.log_format_escape == "none"
    problems = {a.target: a.problem for a in config.nginx_access_logs}
    assert problems["/var/log/$host/x.log"] == "variables in the directory cannot be followed"
    assert "gzip" in str(problems["/var/log/nginx/z.log.gz"])


def test_pick_and_conflicts_name_the_fix(tmp_path: Path) -> None:
    conf = conf_with(tmp_path, f"log_format lw {RECOMMENDED_LOG_FORMAT};\n"
                     "access_log /var/log/nginx/lw.log lw;")
    with pytest.raises(ConfigError, match=r"not an access_log of the config \(it has: file "):
        load_config({"nginx_conf": str(conf), "access_log": ("/elsewhere.log",), **PEER})
    with pytest.raises(ConfigError, match="drop --log-format"):
        load_config({"nginx_conf": str(conf), "log_format": LOG_FORMAT, **PEER})
    broken = tmp_path / "broken.conf"
    broken.write_text("http { server { listen 80 }\n")
    with pytest.raises(ConfigError, match=r"broken.conf:\d+: "):
        load_config({"nginx_conf": str(broken), **PEER})
    missing = conf_with(tmp_path, "include /nonexistent/*.conf; include missing.conf;")
    with pytest.raises(ConfigError, match=r"missing\.conf: cannot be read"):
        load_config({"nginx_conf": str(missing), **PEER})


def test_split_dump_drops_nginx_messages_and_refuses_a_failed_test() -> None:
    text = ("nginx: the configuration file /e/n.conf syntax is ok\n"
            "# configuration file /e/n.conf:\nhttp {\n include m.conf;\n}\n\n"
            "# configuration file /e/m.conf:\nx 1;\n\n"
            "nginx: configuration file /e/n.conf test is successful\n")
    assert split_dump(text) == {"/e/n.conf": "http {\n include m.conf;\n}\n\n",
                                "/e/m.conf": "x 1;\n\n\n"}
    with pytest.raises(NginxConfError, match="nginx -T reported an error"):
        split_dump("2026/11/23 12:58:46 [emerg] 8356#8356: mkdir() failed\n"
                   "nginx: configuration file /e/n.conf test failed\n")
    assert json.dumps(split_dump("events {}\n")) == '{"<stdin>": "events {}\\n"}'
