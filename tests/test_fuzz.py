"""Property tests: random log_formats built from real NGINX variables, random values rendered the
way NGINX renders them (default and json escaping) parse back to the same values; arbitrary
bytes never raise. The same for the syslog header parser."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logwarden.parse.logformat import LogFormat
from logwarden.sources.syslog import parse_datagram
from tests.test_logformat import _nginx_default, _nginx_json

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Free text: anything a client can send, written inside quotes, as NGINX's combined format does.
FREE = ("http_user_agent", "http_referer", "http_x_refresh", "remote_user", "http_cookie",
        "sent_http_content_type")
# NGINX writes these itself, in fixed shapes; any separator may follow them.
TYPED: dict[str, st.SearchStrategy[bytes]] = {
    "status": st.sampled_from([b"200", b"304", b"404", b"500", b"502"]),
    "msec": st.integers(1_000_000_000_000, 2_000_000_000_000).map(
        lambda ms: b"%d.%03d" % divmod(ms, 1000)),
    "request_time": st.sampled_from([b"0.000", b"0.125", b"12.500"]),
    "body_bytes_sent": st.integers(0, 10**9).map(lambda n: b"%d" % n),
    "server_port": st.sampled_from([b"80", b"443", b"8080"]),
    "upstream_cache_status": st.sampled_from(
        [b"MISS", b"HIT", b"EXPIRED", b"STALE", b"UPDATING", b"REVALIDATED", b"BYPASS"]),
}
SEPARATORS = [" ", "\t", " | ", " - ", ", ", "] [", "::"]
# Bytes that stress escaping: quotes, backslashes, control bytes, >= 0x80, \xHH look-alikes.
NASTY = st.lists(st.sampled_from([b'"', b"\\", b"\t", b"\n", b"\x00", b"\x1b", b"\x7f", b"\x80",
                                  b"\xc3\xa9", b"\xff", b"\\x22", b"\\u0022", b"-", b" ", b"a",
                                  b"Z", b"/", b"%41", b"{", b"}", b":"]), max_size=12).map(b"".join)
URI = st.lists(st.sampled_from([b"a", b"/", b"%2F", b"?", b"=", b"&", b'"', b"\\", b"\x80",
                                b"\xff", b"\\x41", b"~"]), max_size=10).map(
    lambda p: b"/" + b"".join(p))


@st.composite
def formats(draw: st.DrawFn) -> tuple[str, dict[str, bytes]]:
    """A format string and the raw value of each of its variables."""
    names = ["upstream_cache_status", "request",
             *draw(st.lists(st.sampled_from([*FREE, *TYPED]), max_size=5, unique=True))]
    order = draw(st.permutations(names))
    values: dict[str, bytes] = {}
    parts = []
    for name in order:
        if name == "request":
            method = draw(st.sampled_from([b"GET", b"HEAD", b"POST"]))
            values[name] = method + b" " + draw(URI) + b" HTTP/1.1"
        else:
            values[name] = draw(TYPED.get(name, NASTY))
        parts.append(f"${name}" if name in TYPED else f'"${name}"')
    seps = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(parts) - 1,
                         max_size=len(parts) - 1))
    fmt = parts[0] + "".join(sep + part for sep, part in zip(seps, parts[1:], strict=True))
    return fmt, values


def _render(fmt: str, values: dict[str, bytes], escape: str) -> bytes:
    render = _nginx_default if escape == "default" else _nginx_json
    line = fmt.encode()
    for name in sorted(values, key=len, reverse=True):  # $request before $request_time
        value = values[name] if name in TYPED else render(values[name])
        line = line.replace(f"${name}".encode(), value.replace(b"$", b"\0dollar"))
    return line.replace(b"\0dollar", b"$") + b"\n"


def _expected(value: bytes, escape: str) -> bytes | None:
    empty = value == b"" or (escape == "default" and value == b"-")
    return None if empty else value


@FUZZ
@given(formats(), st.sampled_from(["default", "json"]))
def test_rendered_lines_parse_back_to_their_values(
    case: tuple[str, dict[str, bytes]], escape: str,
) -> None:
    fmt, values = case
    compiled = LogFormat.compile(fmt, escape)
    line = _render(fmt, values, escape)
    fields = compiled.fields(line)
    assert fields is not None, (fmt, line)
    for name, value in values.items():
        assert fields[name] == _expected(value, escape), (name, fmt, line)
    record = compiled.parse(line)  # the fast path the daemon takes agrees with fields()
    assert record is not None
    assert record.cache_status == values["upstream_cache_status"].decode()
    method, _, rest = values["request"].partition(b" ")
    assert (record.method, record.target) == (method.decode(), rest.rsplit(b" ", 1)[0])
    if "http_user_agent" in values:
        assert record.user_agent == _expected(values["http_user_agent"], escape)
    if "status" in values:
        assert record.status == int(values["status"])


@FUZZ
@given(formats(), st.sampled_from(["default", "json", "none"]), st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(case: tuple[str, dict[str, bytes]], escape: str,
                                     junk: bytes) -> None:
    compiled = LogFormat.compile(case[0], escape)
    compiled.parse(junk)
    compiled.parse(_render(case[0], case[1], "json")[:len(junk)] + junk)


MONTHS = st.sampled_from(["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                          "Nov", "Dec"])
TAGS = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.", min_size=1,
               max_size=32).map(str.encode)
MESSAGES = st.binary(max_size=200).filter(lambda m: not m.endswith(b"\n"))


@FUZZ
@given(st.integers(0, 191), MONTHS, st.integers(1, 31), st.booleans(), TAGS, MESSAGES)
def test_rfc3164_header_is_stripped_exactly(pri: int, month: str, day: int, hostname: bool,
                                            tag: bytes, message: bytes) -> None:
    host = b"node-1.example " if hostname else b""  # NGINX's nohostname leaves it out
    datagram = b"<%d>%s %2d 08:04:44 %s%s: %s" % (pri, month.encode(), day, host, tag, message)
    parsed = parse_datagram(datagram)
    assert parsed is not None
    assert (parsed.tag, parsed.message) == (tag, message)


@FUZZ
@given(st.integers(0, 191), TAGS, st.sampled_from([b"-", b'[x@1 a="b\\"]c"]', b"[a][b c=\"\"]"]),
       MESSAGES)
def test_rfc5424_header_is_stripped_exactly(pri: int, app: bytes, sd: bytes,
                                            message: bytes) -> None:
    datagram = b"<%d>1 2026-11-23T08:04:44.1Z host %s 812 access %s %s" % (pri, app, sd, message)
    parsed = parse_datagram(datagram)
    assert parsed is not None
    assert (parsed.tag, parsed.message) == (app, message.removeprefix(b"\xef\xbb\xbf"))


@FUZZ
@given(st.binary(max_size=400))
def test_any_datagram_is_parsed_or_refused_never_raises(data: bytes) -> None:
    parse_datagram(data)
