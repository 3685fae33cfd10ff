"""Config layering (defaults < file < env < flags) and validation messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from logwarden.config import REPLAY, ConfigError, load_config
from logwarden.deliver.peerhttp import Answer

FMT = "$host \"$request\" $status $upstream_cache_status"
BASE: dict[str, Any] = {
    "access_log": ("/var/log/nginx/access.log",),
    "log_format": FMT,
    "peer": ("http://10.0.0.1", "http://10.0.0.2:8080"),
    "self": "http://10.0.0.1:80",
}


def load(flags: dict[str, Any] | None = None, env: dict[str, str] | None = None,
         toml: str | None = None, tmp_path: Path | None = None) -> Any:
    config_file = None
    if toml is not None:
        assert tmp_path is not None
        config_file = str(tmp_path / "lw.toml")
        Path(config_file).write_text(toml)
    return load_config({**BASE, **(flags or {})}, config_file, env or {})


def test_defaults() -> None:
    c = load()
    assert c.statuses == ("MISS", "EXPIRED", "UPDATING", "STALE")
    assert c.refresh_method == "HEAD"
    assert c.refresh_header_pair == ("X-Refresh", "1")
    assert c.metrics_listen == "127.0.0.1:9145"
    assert c.targets == ("http://10.0.0.2:8080",)  # self (port 80 spelled out) is left out


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    toml = 'timeout = 2\nconcurrency = 3\npeer_concurrency = 4\nlog_level = "debug"\n'
    env = {"LOGWARDEN_CONCURRENCY": "30", "LOGWARDEN_PEER_CONCURRENCY": "40"}
    c = load({"peer_concurrency": 400}, env, toml, tmp_path)
    assert (c.timeout, c.concurrency, c.peer_concurrency, c.log_level) == (2.0, 30, 400, "debug")


def test_lists_from_env_and_file(tmp_path: Path) -> None:
    env = {"LOGWARDEN_STATUSES": "miss, expired"}
    c = load({"peer": (), "self": None}, env, 'peer = ["http://a:1", "http://b:2"]\n', tmp_path)
    assert c.peer == ("http://a:1", "http://b:2")
    assert c.statuses == ("MISS", "EXPIRED")


def test_toml_roundtrip(tmp_path: Path) -> None:
    c = load({"log_format": "$host\t\"$request\" $status $upstream_cache_status"})
    again = load_config({}, str(_write(tmp_path, c.to_toml())), {})
    assert again == c


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "effective.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("flags", "env", "toml", "key", "fragment"),
    [
        ({}, {}, "peers = []\n", "peers", "did you mean 'peer'"),
        ({}, {"LOGWARDEN_TIMEOUTS": "1"}, None, "LOGWARDEN_TIMEOUTS", "not a known setting"),
        ({}, {"LOGWARDEN_TIMEOUT": "soon"}, None, "LOGWARDEN_TIMEOUT", "must be a number"),
        ({}, {}, 'timeout = "1"\n', "timeout", "must be of type float"),
        ({}, {}, "from_start = 1\n", "from_start", "true or false"),
        ({"peer": ("ftp://10.0.0.2",)}, {}, None, "peer", "not an http(s)"),
        ({"peer": ("10.0.0.2:80",)}, {}, None, "peer", "not an http(s)"),
        ({"peer": ("http://10.0.0.2/cache",)}, {}, None, "peer", "path"),
        ({"peer": ("http://10.0.0.1",)}, {}, None, "peer", "no peer other than self"),
        ({"log_format": "$host \"$request\" $status"}, {}, None, "log_format",
         "upstream_cache_status"),
        ({"log_format": "$upstream_cache_status $request_uri"}, {}, None, "log_format",
         "request_method"),
        ({"log_format": "\"$request\" $upstream_cache_status"}, {}, None, "log_format",
         "give --default-host HOST"),
        ({"statuses": ("MISS,FRESH",)}, {}, None, "statuses", "FRESH"),
        ({"statuses": ("BYPASS",)}, {}, None, "statuses", "ping-pong"),
        ({"refresh_header": "X-Refresh"}, {}, None, "refresh_header", "Name: value"),
        ({"refresh_method": "POST"}, {}, None, "refresh_method", "HEAD, GET"),
        ({"log_format_escape": "xml"}, {}, None, "log_format_escape", "default, json, none"),
        ({"metrics_listen": "9145"}, {}, None, "metrics_listen", "HOST:PORT"),
        ({"concurrency": 0}, {}, None, "concurrency", "greater than 0"),
        ({"access_log": ()}, {}, None, "access_log", "required"),
        ({"access_log": ("/dev/stdout",)}, {}, None, "access_log", "read its own output"),
        ({"access_log": ("/dev/stderr",)}, {}, None, "access_log", "read its own output"),
        ({"access_log": ("/proc/self/fd/1",)}, {}, None, "access_log", "read its own output"),
        ({"access_log": ("/dev/fd/2",)}, {}, None, "access_log", "read its own output"),
        ({"access_log": ("/dev/null",)}, {}, None, "access_log", "is not a file or a FIFO"),
        ({"self": "http://10.0.0.1:8080"}, {}, None, "self",
         "is not one of the peers (http://10.0.0.1, http://10.0.0.2:8080)"),
    ],
)
def test_errors_name_the_key_and_value(
    flags: dict[str, Any], env: dict[str, str], toml: str | None, key: str, fragment: str,
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as err:
        load(flags, env, toml, tmp_path)
    assert err.value.key == key
    assert str(err.value).startswith(f"{key}: ")
    assert fragment in str(err.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(BASE, str(tmp_path / "missing.toml"), {})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(toml="timeout = = 1\n", tmp_path=tmp_path)


def test_config_is_frozen() -> None:
    c = load()
    with pytest.raises(AttributeError):
        c.timeout = 1  # type: ignore[misc]


def test_ipv6_metrics_listen() -> None:
    assert load({"metrics_listen": "[::1]:9145"}).metrics_listen == "[::1]:9145"


def test_refresh_header_file_keeps_the_secret_out_of_output(tmp_path: Path) -> None:
    secret = tmp_path / "refresh-header"
    secret.write_text("X-Refresh: s3cr3t-Value\n")
    c = load({"refresh_header_file": str(secret)})
    assert c.refresh_header_pair == ("X-Refresh", "s3cr3t-Value")
    assert "s3cr3t" not in c.to_toml() and "s3cr3t" not in repr(c)
    assert load_config({}, str(_write(tmp_path, c.to_toml())), {}) == c


@pytest.mark.parametrize(("content", "message"), [
    ("s3cr3t-without-a-name\n", "must hold one line 'Name: value'"),
    ("X-Refresh: s3cr3t-caf\u00e9\n", "printable ASCII"),
    (None, "cannot be read"),
])
def test_refresh_header_file_errors_name_the_file_never_the_secret(
    tmp_path: Path, content: str | None, message: str,
) -> None:
    path = tmp_path / "refresh-header"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as caught:
        load({"refresh_header_file": str(path)})
    assert caught.value.key == "refresh_header_file" and str(path) in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_purge_mode_needs_method_and_user_agent_in_the_format() -> None:
    with pytest.raises(ConfigError, match="mode: 'purge' needs \\$http_user_agent"):
        load({"mode": "purge"})
    assert load({"mode": "purge", "log_format": FMT + ' "$http_user_agent"'}).mode == "purge"


def test_self_leaves_out_its_listener_of_the_other_scheme() -> None:
    c = load({"peer": ("http://10.0.0.1", "https://10.0.0.1", "http://10.0.0.2",
                       "https://10.0.0.2:8443", "http://10.0.0.1:8080")})
    assert c.targets == ("http://10.0.0.2", "https://10.0.0.2:8443", "http://10.0.0.1:8080")


@pytest.mark.parametrize(("flags", "key", "message"), [
    ({"only": ("(",)}, "only", "is not a regular expression"),
    ({"purge_method": "PUR GE"}, "purge_method", "is not an HTTP method token"),
    ({"peer_ca": "/nonexistent/ca.pem"}, "peer_ca", "is not a readable file"),
    ({"mode": "ban"}, "mode", "must be one of refresh, purge"),
    ({"breaker_failures": 0}, "breaker_failures", "must be greater than 0"),
    ({"cache_status_header": "X Cache"}, "cache_status_header", "'X Cache' is not a header name"),
])
def test_dispatch_settings_are_validated(flags: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load(flags)
    assert caught.value.key == key


def test_variants_are_parsed_and_checked() -> None:
    fmt = '$host "$request" $status $upstream_cache_status "$http_accept_encoding"'
    config = load_config({"log_format": fmt, "variant": ("Accept-Encoding: br", "")},
                         needs=REPLAY)
    assert [v.header for v in config.variants] == [("Accept-Encoding", "br"), None]
    assert config.refresh_mode.methods == ("HEAD", "HEAD")
    parser = config.log_format_parser()  # the logged header tells the triggering class
    record = parser.parse(b'h "GET / HTTP/1.1" 200 MISS "br"')
    assert record is not None and record.variant == b"br"
    with pytest.raises(ConfigError, match="names more than one header"):
        load_config({"log_format": fmt, "variant": ("Accept-Encoding: br", "Accept: x")},
                    needs=REPLAY)
    with pytest.raises(ConfigError, match="names a class twice"):
        load_config({"log_format": fmt, "variant": ("Accept-Encoding: br",) * 2},
                    needs=REPLAY)
    with pytest.raises(ConfigError, match="variant_variable: 'nope' is not a variable"):
        load_config({"log_format": fmt, "variant_variable": "nope"}, needs=REPLAY)


@pytest.mark.parametrize("flags", [{}, {"mode": "purge", "purge_then_refresh": True,
                                        "log_format": FMT + ' "$http_user_agent"'}])
def test_the_configured_cache_status_header_verifies_bypass_refreshes(
    flags: dict[str, Any],
) -> None:
    """The daemon's refresh, and purge-then-refresh's: ok only on BYPASS; '' turns it off."""
    hit = Answer(200, [(b"x-cache", b"HIT"), (b"x-cache-status", b"BYPASS")], b"")
    bypass = load(flags).refresh_mode.requests()[-1]
    assert bypass.method == "HEAD" and bypass.judge(hit) == "ok"
    assert load({**flags, "cache_status_header": "X-Cache"}).refresh_mode.requests()[-1] \
        .judge(hit) == "not_refreshed"
    assert load({**flags, "cache_status_header": ""}).refresh_mode.requests()[-1] \
        .judge(Answer(200, [(b"x-cache-status", b"HIT")], b"")) == "ok"


def test_a_link_to_the_standard_output_is_refused(tmp_path: Path) -> None:
    """Docker's nginx image links its access.log to /dev/stdout: for logwarden, its own."""
    link = tmp_path / "access.log"
    link.symlink_to("/dev/stdout")
    with pytest.raises(ConfigError, match="leads to /dev/stdout, which is the standard output"):
        load({"access_log": (str(link),)})


@pytest.mark.parametrize("spelled", ["http://10.0.0.1", "HTTP://10.0.0.1:80/", "http://10.0.0.1/"])
def test_self_is_one_of_the_peers_however_spelled(spelled: str) -> None:
    assert load({"self": spelled}).targets == ("http://10.0.0.2:8080",)


def test_self_among_the_peers_known_at_the_start(tmp_path: Path) -> None:
    """The peers file counts (it is read at the start); DNS peers are only known later."""
    peers = tmp_path / "peers"
    peers.write_text("http://10.0.0.3:80\n")
    assert load({"peer": (), "self": "http://10.0.0.3", "peers_file": str(peers)}).self_url
    with pytest.raises(ConfigError, match=r"self: 'http://10.0.0.4' is not one of the peers "
                                          r"\(http://10.0.0.1, http://10.0.0.2:8080, "
                                          r"http://10.0.0.3:80\)"):
        load({"self": "http://10.0.0.4", "peers_file": str(peers)})
    dns = load({"self": "http://10.0.0.4", "peers_dns": ("http://cache.svc:80",)})
    assert dns.self_url == "http://10.0.0.4"


def test_a_refresh_header_without_a_secret_is_a_warning(tmp_path: Path) -> None:
    [warning] = load().warnings
    assert warning.startswith("refresh_header: no secret given, refreshes carry the default "
                              "'X-Refresh: 1'") and "--refresh-header-file" in warning
    assert load({"refresh_header": "X-Refresh: 1"}).warnings == (warning,)
    secret = tmp_path / "refresh-header"
    secret.write_text("X-Refresh: s3cr3t\n")
    assert load({"refresh_header_file": str(secret)}).warnings == ()
    assert load({"refresh_header": "X-Refresh: s3cr3t"}).warnings == ()
def test_a_flag_beats_the_files_alternative(tmp_path: Path) -> None:
    """refresh_header_file in the TOML file gave way to nothing before: a --refresh-header flag
    (or variable) beats it, as a flag beats the file for every setting."""
    secret = tmp_path / "refresh-header"
    secret.write_text("X-Refresh: from-the-file\n")
    toml = f'refresh_header_file = "{secret}"\n'
    assert load(toml=toml, tmp_path=tmp_path).refresh_header == "X-Refresh: from-the-file"
    flag = load({"refresh_header": "X-Refresh: from-the-flag"}, toml=toml, tmp_path=tmp_path)
    assert (flag.refresh_header, flag.refresh_header_file) == ("X-Refresh: from-the-flag", None)
    env = load(env={"LOGWARDEN_REFRESH_HEADER": "X-Refresh: env"}, toml=toml, tmp_path=tmp_path)
    assert env.refresh_header == "X-Refresh: env"
    # The file given as a flag beats a header in the TOML file, too.
    back = load({"refresh_header_file": str(secret)}, toml='refresh_header = "X-Refresh: t"\n',
                tmp_path=tmp_path)
    assert back.refresh_header == "X-Refresh: from-the-file"
    with pytest.raises(ConfigError, match=r"refresh_header_file: .* and refresh_header are both "
                                          r"given in the flags: give one") as both:
        load({"refresh_header_file": str(secret), "refresh_header": "X-Refresh: s3cret"})
    assert "s3cret" not in str(both.value)


def test_a_log_format_flag_beats_the_files_nginx_conf(tmp_path: Path) -> None:
    toml = f'nginx_conf = "{tmp_path / "missing.conf"}"\n'  # not even read
    c = load({"log_format": FMT + " $msec"}, toml=toml, tmp_path=tmp_path)
    assert c.log_format == FMT + " $msec" and c.nginx_conf is None


def test_flags_beat_the_file_for_settings_of_every_kind(tmp_path: Path) -> None:
    """Settings of each type given in the TOML file and as flags: the flags' values are used."""
    header = tmp_path / "header"
    header.write_text("X-Refresh: h\n")
    values: dict[str, tuple[Any, Any]] = {  # (file, flag), both valid
        "syslog_tag": ("a", "b"), "log_format_escape": ("json", "none"),
        "default_host": ("a.example", "b.example"), "from_start": (False, True),
        "dns_refresh": (1.0, 2.0), "statuses": (["MISS"], ("EXPIRED",)),
        "dedup_window": (1.0, 2.0), "refresh_method": ("GET", "HEAD"),
        "mode": ("purge", "refresh"), "retries": (1, 3), "timeout": (1.0, 3.0),
        "metrics_listen": ("127.0.0.1:1", "127.0.0.1:2"), "positions": ("a.json", "b.json"),
        "instance": ("a", "b"), "log_level": ("debug", "error"), "max_quiet": (1.0, 2.0),
        "summary_interval": (1.0, 2.0), "log_libraries": (True, False),
    }
    toml = "".join(f"{k} = {json.dumps(file)}\n" for k, (file, _) in values.items())
    c = load({k: flag for k, (_, flag) in values.items()}, toml=toml, tmp_path=tmp_path)
    for name, (_, flag) in values.items():
        got = getattr(c, name)
        assert got == (tuple(flag) if isinstance(flag, tuple) else flag), name
