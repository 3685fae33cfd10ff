"""The log_format compiler, on lines real NGINX 1.22 wrote (nginx-facts §1, §3, §6, §9)."""

from __future__ import annotations

import json
import random

import pytest

from logwarden.model import Record
from logwarden.parse.logformat import LogFormat, LogFormatError

COMBINED = ('$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
            '"$http_referer" "$http_user_agent"')
COMBINED_CACHE_CONF = """'$remote_addr - $remote_user [$time_local] '
                          '"$request" $status $body_bytes_sent '
                          '"$http_referer" "$http_user_agent" '
                          '"$upstream_cache_status" "$host"'"""
TAB_CONF = r"""'$msec\t$scheme\t$host\t$server_port\t$request_method\t'
                     '$request_uri\t$status\t$upstream_cache_status\t'
                     '$upstream_status\t$request_time\t$logwarden_refresh\t'
                     '$http_user_agent'"""
JSON_FMT = ('{"status":"$status","ucs":"$upstream_cache_status","request":"$request",'
            '"ua":"$http_user_agent","host":"$host","us":"$upstream_status"}')


def test_combined_cache_from_nginx_conf_quoting() -> None:
    fmt = LogFormat.compile(COMBINED_CACHE_CONF)
    line = (b'127.0.0.1 - - [22/Nov/2026:07:58:46 +0000] "GET /basic/t1?ma=2 HTTP/1.1" 200 52 '
            b'"-" "curl/7.88.1" "MISS" "www.example.com"\n')
    assert fmt.parse(line) == Record(method="GET", target=b"/basic/t1?ma=2", cache_status="MISS",
                                     host="www.example.com", status=200,
                                     user_agent=b"curl/7.88.1", time=1795334326.0)
    fields = fmt.fields(line)
    assert fields is not None
    assert fields["remote_user"] is None and fields["http_referer"] is None
    assert fields["time_local"] == b"22/Nov/2026:07:58:46 +0000"


def test_plain_combined_lacks_cache_status() -> None:
    with pytest.raises(LogFormatError, match=r"lacks \$upstream_cache_status"):
        LogFormat.compile(COMBINED)
    fmt = LogFormat.compile(COMBINED + ' "$upstream_cache_status"')
    record = fmt.parse(b'10.1.2.3 - bob [22/Nov/2026:07:58:46 +0000] "HEAD /x HTTP/1.0" 304 0 '
                       b'"https://ref.example/a b" "Mozilla/5.0 (X11; Linux)" "EXPIRED"')
    assert record is not None
    assert (record.method, record.target, record.status, record.host) == ("HEAD", b"/x", 304, None)
    assert record.user_agent == b"Mozilla/5.0 (X11; Linux)"


def test_tab_format_of_the_example_config() -> None:
    fmt = LogFormat.compile(TAB_CONF)
    assert fmt.variables[:3] == ("msec", "scheme", "host")
    line = (b"1795335563.788\thttp\twww.example.com\t8080\tGET\t/f/page1?ma=60&static=1\t200\t"
            b"BYPASS\t200\t0.004\t1\tlogwarden/0.1\n")
    assert fmt.parse(line) == Record(
        method="GET", target=b"/f/page1?ma=60&static=1", cache_status="BYPASS",
        host="www.example.com", scheme="http", status=200, upstream_status="200",
        user_agent=b"logwarden/0.1", time=1795335563.788)
    purge = fmt.parse(b"1795335563.853\thttp\twww.example.com\t8080\tPURGE\t/f/page1\t200\t-\t-\t"
                      b"0.000\t-\tlogwarden/0.1")
    assert purge is not None
    assert (purge.method, purge.cache_status, purge.upstream_status) == ("PURGE", "", None)


@pytest.mark.parametrize(
    ("fmt", "value", "expected"),
    [
        ("$msec", b"1795335563.788", 1795335563.788),
        ("$time_iso8601", b"2026-12-03T04:05:08-05:00", 1796288708.0),
        ("[$time_local]", b"[03/Dec/2026:04:05:08 -0500]", 1796288708.0),
        ("[$time_local]", b"[03/Dec/2026:99:05:08 -0500]", None),
    ],
)
def test_line_time(fmt: str, value: bytes, expected: float | None) -> None:
    parsed = LogFormat.compile(fmt + " $upstream_cache_status $request").parse(value + b" - GET /")
    assert parsed is not None and parsed.time == expected


def test_escaped_bytes_in_user_agent_and_uri() -> None:
    fmt = LogFormat.compile(TAB_CONF)
    ua = fmt.parse(b"1795335563.904\thttp\twww.example.com\t8080\tGET\t/f/ua?ma=60\t200\tMISS\t"
                   b"200\t0.001\t-\ta\\x09b\\x22c")
    assert ua is not None and ua.user_agent == b'a\tb"c'
    cc = LogFormat.compile(COMBINED_CACHE_CONF)
    record = cc.parse(
        b'127.0.0.1 - - [22/Nov/2026:08:04:44 +0000] "GET /esc/a%20b%22c%0d%0a%1b%c3%a9%5c?'
        b'q=%22x%22&r=a+b%00 HTTP/1.1" 200 3 "-" "Mozilla \\x22q\\x22 \\x5Cbs \\x1B[31m\\x09tab'
        b'\\x7Fdel caf\\xC3\\xA9 \\xFF" "MISS" "www.example.com"')
    assert record is not None
    assert record.target == b"/esc/a%20b%22c%0d%0a%1b%c3%a9%5c?q=%22x%22&r=a+b%00"  # raw, exact
    assert record.user_agent == b'Mozilla "q" \\bs \x1b[31m\ttab\x7fdel caf\xc3\xa9 \xff'


def test_escape_json() -> None:
    fmt = LogFormat.compile(JSON_FMT, "json")
    line = (b'{"status":"200","ucs":"STALE","request":"GET /j?a=%22 HTTP/1.1",'
            b'"ua":"Mozilla \\"q\\" \\\\bs \\u001B[31m\\ttab\x7fdel caf\xc3\xa9 \xff",'
            b'"host":"www.example.com","us":""}')
    assert fmt.parse(line) == Record(
        method="GET", target=b"/j?a=%22", cache_status="STALE", host="www.example.com",
        status=200, upstream_status=None,
        user_agent=b'Mozilla "q" \\bs \x1b[31m\ttab\x7fdel caf\xc3\xa9 \xff')
    assert json.loads(line.replace(b"\xff", b"").decode("utf-8"))["ucs"] == "STALE"


def test_escape_none() -> None:
    fmt = LogFormat.compile('$upstream_cache_status "$request" "$http_user_agent"', "none")
    record = fmt.parse(b'MISS "GET /n HTTP/1.1" "a "quoted" ua"')
    assert record is not None and record.user_agent == b'a "quoted" ua'


def test_braced_variables_and_repeats() -> None:
    fmt = LogFormat.compile("${status}x ${upstream_cache_status}|$request|$status")
    record = fmt.parse(b"200x MISS|GET /b HTTP/1.1|200")
    assert record is not None and (record.status, record.cache_status) == (200, "MISS")
    assert fmt.variables == ("status", "upstream_cache_status", "request")


def test_request_uri_and_method_preferred_over_request() -> None:
    fmt = LogFormat.compile('$request_method $request_uri "$request" $upstream_cache_status')
    record = fmt.parse(b'GET /basic/k1?x=1 "GET http://www.example.com/basic/k1?x=1 HTTP/1.1" MISS')
    assert record is not None and record.target == b"/basic/k1?x=1"


@pytest.mark.parametrize(
    ("request_line", "method", "target"),
    [
        (b"GET /basic/k1?ma=60 HTTP/1.1", "GET", b"/basic/k1?ma=60"),
        (b"GET http://www.example.com/basic/k1?ma=60 HTTP/1.1", "GET", b"/basic/k1?ma=60"),
        (b"GET https://www.example.com HTTP/1.1", "GET", b"/"),
        (b"GET http://www.example.com?q=1 HTTP/1.1", "GET", b"/?q=1"),
        (b"GET /esc/http09", "GET", b"/esc/http09"),  # HTTP/0.9: no protocol
        (b"GET /esc/a b HTTP/1.1", "GET", b"/esc/a b"),  # a 400 line with a raw space
        (b"GET  /esc/twospace HTTP/1.1", "GET", b" /esc/twospace"),
        (b"garbage", "", b""),
    ],
)
def test_request_line_forms(request_line: bytes, method: str, target: bytes) -> None:
    fmt = LogFormat.compile(COMBINED_CACHE_CONF)
    line = (b'127.0.0.1 - - [22/Nov/2026:08:04:44 +0000] "' + request_line +
            b'" 400 157 "-" "-" "-" "www.example.com"')
    record = fmt.parse(line)
    assert record is not None
    assert (record.method, record.target) == (method, target)


@pytest.mark.parametrize(
    ("http_host", "host"),
    [(b"WWW.Example.COM:8080", "www.example.com"), (b"www.example.com.", "www.example.com"),
     (b"[::1]:8080", "[::1]"), (b"-", None)],
)
def test_http_host_is_normalised_like_host(http_host: bytes, host: str | None) -> None:
    fmt = LogFormat.compile('$http_host "$request" $upstream_cache_status')
    record = fmt.parse(http_host + b' "GET / HTTP/1.1" MISS')
    assert record is not None and record.host == host


def test_upstream_status_lists() -> None:
    fmt = LogFormat.compile(TAB_CONF)
    record = fmt.parse(b"1.000\thttp\th\t80\tGET\t/\t200\tMISS\t502, 200\t0.010\t-\tua")
    assert record is not None and record.upstream_status == "502, 200"


@pytest.mark.parametrize(
    "line",
    [b"", b"\n", b"garbage", b"\xff\xfe\x00\x01" * 20, b"1.0\thttp\tonly three",
     b'127.0.0.1 - - [22/Nov/2026:07:58:46 +0000] "GET / HTTP/1.1" 200 52 "-" "curl"',
     b"1795335563.744\thttp\twww.example.com\t8080\tGET\t/x\tABC\tMISS\t200\t0.001\t-\tcurl"],
)
def test_lines_that_do_not_match(line: bytes) -> None:
    assert LogFormat.compile(TAB_CONF).parse(line) is None
    assert LogFormat.compile(COMBINED_CACHE_CONF).parse(line) is None
    assert LogFormat.compile(JSON_FMT, "json").parse(line) is None


def test_random_bytes_never_raise() -> None:
    rng = random.Random(7)
    formats = [LogFormat.compile(TAB_CONF), LogFormat.compile(COMBINED_CACHE_CONF),
               LogFormat.compile(JSON_FMT, "json")]
    for _ in range(2000):
        line = bytes(rng.choice(b'\t "\\x-ab0123[]{}:/\n\xff') for _ in range(rng.randint(0, 80)))
        for fmt in formats:
            fmt.parse(line)


@pytest.mark.parametrize(
    ("fmt", "escape", "message"),
    [
        ('$host "$request" $status', "default", r"lacks \$upstream_cache_status"),
        ("$upstream_cache_status $request_uri", "default", r"missing \$request_method"),
        ("$upstream_cache_status $request_method", "default", r"missing \$request_uri"),
        ("$upstream_cache_status $request", "xml", "unknown escape 'xml'"),
        ("just text", "default", "no \\$variables"),
    ],
)
def test_compile_errors_name_what_is_missing(fmt: str, escape: str, message: str) -> None:
    with pytest.raises(LogFormatError, match=message):
        LogFormat.compile(fmt, escape)


TAB_LINE = b'www.example.com\t"GET /a HTTP/1.1"\t200\tMISS\n'


@pytest.mark.parametrize("typed", [
    r'$host\t"$request"\t$status\t$upstream_cache_status',  # typed without NGINX's quotes
    r'$host\t\"$request\"\t$status\t$upstream_cache_status',
    "'$host\\t\"$request\"\\t'\n  # the status, then the cache's\n  '$status\\t'"
    "  # a comment after a piece\n  '$upstream_cache_status';",  # pasted from nginx.conf
    "'$host\\t\"$request\"\\t$status\\t$upstream_cache_status' ; # the end\n",
])
def test_what_nginx_accepts_in_a_config_is_accepted_as_typed(typed: str) -> None:
    """Unquoted, NGINX undoes ``\\t`` and ``\\"`` too; between quoted pieces it skips comments,
    and the directive ends with ';'. Taken literally, no line would match."""
    record = LogFormat.compile(typed).parse(TAB_LINE)
    assert record is not None and (record.host, record.target) == ("www.example.com", b"/a")


@pytest.mark.parametrize(("pasted", "message"), [
    ("'$host \"$request\"'\n  '$status $upstream_cache_status", "unterminated ' quote"),
    ("'$host \"$request\"'\n  $status '$upstream_cache_status';", "unexpected '\\$'"),
    ("'$host \"$request\" $status'; '$upstream_cache_status';", "text after the closing ';'"),
    ("log_format main '$host \"$request\" $status $upstream_cache_status';",
     "starts with 'log_format': give only the quoted pieces"),
    ("escape=json '$host \"$request\" $status $upstream_cache_status'",
     "escape= as --log-format-escape"),
])
def test_config_pieces_that_do_not_parse_are_an_error(pasted: str, message: str) -> None:
    with pytest.raises(LogFormatError, match=message):
        LogFormat.compile(pasted)


# Round trip: render values the way NGINX does, parse them back.

def _nginx_default(value: bytes) -> bytes:
    if not value:
        return b"-"
    return b"".join(b"\\x%02X" % c if c < 0x20 or c in b'"\\' or c >= 0x7F else bytes((c,))
                    for c in value)


def _nginx_json(value: bytes) -> bytes:
    named = {0x22: b'\\"', 0x5C: b"\\\\", 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t",
             0x08: b"\\b", 0x0C: b"\\f"}
    return b"".join(named.get(c) or (b"\\u%04X" % c if c < 0x20 else bytes((c,)))
                    for c in value)


@pytest.mark.parametrize(("escape", "render"), [("default", _nginx_default),
                                                 ("json", _nginx_json)])
@pytest.mark.parametrize("fmt", [TAB_CONF, COMBINED_CACHE_CONF, JSON_FMT])
def test_round_trip(escape: str, render: object, fmt: str) -> None:
    rng = random.Random(11)
    alphabet = b'ab /?=&%"\\\t\x1b\x7f\xc3\xa9\xff\\x22-'
    compiled = LogFormat.compile(fmt, escape)
    free = {"http_user_agent", "http_referer", "remote_user", "logwarden_refresh", "host"}
    for _ in range(300):
        values = {v: bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
                  for v in free}
        values["host"] = values["host"].replace(b" ", b"").replace(b"\t", b"") or b"h"
        line = _render(compiled, values, render, escape)  # type: ignore[arg-type]
        fields = compiled.fields(line)
        assert fields is not None, line
        for name, value in values.items():
            if name in fields:
                # A value of exactly "-" is written like an empty one by the default escaping.
                expected = None if escape == "default" and value == b"-" else value
                assert fields[name] == expected, (name, line)


def _render(compiled: LogFormat, values: dict[str, bytes], render: object, escape: str) -> bytes:
    fixed = {"msec": b"1795335563.744", "scheme": b"http", "server_port": b"80",
             "request_method": b"GET", "request_uri": b"/x?y=1", "status": b"200",
             "upstream_cache_status": b"MISS", "upstream_status": b"200",
             "request_time": b"0.001", "remote_addr": b"127.0.0.1",
             "time_local": b"22/Nov/2026:07:58:46 +0000", "request": b"GET /x?y=1 HTTP/1.1",
             "body_bytes_sent": b"52"}
    line = b""
    for kind, text in compiled.tokens:
        if kind == "lit":
            line += text.encode()
        else:
            value = values.get(text, fixed.get(text, b""))
            line += render(value) if text in values else value  # type: ignore[operator]
    return line


@pytest.mark.parametrize(("logged", "seen"), [
    (b"a\\x22b\\x5Cc", b'a"b\\c'),          # NGINX's own: every backslash starts \xHH
    (b"a\\nb\\x22", b'a\\nb"'),             # not NGINX's: only \xHH is undone
    (b"a\\x2", b"a\\x2"),                   # a \x cut short stays as it is
    (b"\\xC3\\xA9", "é".encode()),
])
def test_default_escapes_are_undone_exactly(logged: bytes, seen: bytes) -> None:
    fmt = LogFormat.compile('$upstream_cache_status "$request" "$http_user_agent"')
    record = fmt.parse(b'MISS "GET / HTTP/1.1" "' + logged + b'"')
    assert record is not None and record.user_agent == seen
