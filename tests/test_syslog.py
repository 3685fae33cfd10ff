"""The syslog source: header parsing on NGINX's exact datagrams, real sockets (UDP, IPv6, unix),
the allow-list, and drops accounted exactly under a burst. Real NGINX sending its access log
over syslog is in test_e2e.py."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from lab import EXAMPLE_CONFIG, free_port, wait_until
from lab.agent import Agent, log_format_from_conf
from logwarden.config import ConfigError, load_config
from logwarden.ops.metrics import Metrics
from logwarden.parse.logformat import LogFormat
from logwarden.sources import LineQueue, SourceError
from logwarden.sources.syslog import SyslogMessage, SyslogSource, parse_datagram, parse_url

LOG_FORMAT = log_format_from_conf(EXAMPLE_CONFIG.read_text())

# nginx-facts §5, byte for byte (NGINX 1.22.1; the host was named ``vm``).
UDP_DATAGRAM = (b'<190>Nov 22 08:04:44 vm nginx: 127.0.0.1 - - [22/Nov/2026:08:04:44 +0000] '
                b'"GET /sys/a1?ma=60 HTTP/1.1" 200 50 "-" "curl/7.88.1" "MISS" "www.example.com"')
UNIX_DATAGRAM = (b'<190>Nov 22 08:04:44 vm nginx: 127.0.0.1 - - [...] "GET /x?y=1 HTTP/1.1" 200 3 '
                 b'"-" "Mozilla/5.0 \\x22quoted\\x22 ua" "-" "www.example.com"')
NOHOSTNAME_DATAGRAM = b"<133>Nov 22 08:04:44 ngx_alt: 127.0.0.1 - - ..."
PADDED_DAY_DATAGRAM = (b'<190>Dec  3 04:05:08 vm nginx: [03/Dec/2026:04:05:08 -0500] '
                       b'2026-12-03T04:05:08-05:00 1796288708.018 "GET /day3 HTTP/1.1"')
TAB_MESSAGE = (b"1795335563.744\thttp\twww.example.com\t8080\tGET\t/f/page1?ma=60&static=1\t200\t"
               b"MISS\t200\t0.001\t-\tcurl/7.88.1\t-\t-\t-\t-\t0\t-\t-")
TAB_DATAGRAM = b"<190>Nov 22 08:19:23 vm nginx: " + TAB_MESSAGE


def test_the_facts_datagram_is_copied_exactly() -> None:
    assert len(UDP_DATAGRAM) == 152


@pytest.mark.parametrize(("datagram", "tag", "message"), [
    pytest.param(UDP_DATAGRAM, b"nginx", UDP_DATAGRAM[31:], id="rfc3164"),
    pytest.param(UNIX_DATAGRAM, b"nginx", UNIX_DATAGRAM[31:], id="unix-escaped-quotes"),
    pytest.param(NOHOSTNAME_DATAGRAM, b"ngx_alt", b"127.0.0.1 - - ...", id="nohostname"),
    pytest.param(PADDED_DAY_DATAGRAM, b"nginx", PADDED_DAY_DATAGRAM[31:], id="day-space-padded"),
    pytest.param(TAB_DATAGRAM, b"nginx", TAB_MESSAGE, id="tabs"),
    pytest.param(b"<190>Nov 22 08:04:44 vm nginx: x\n", b"nginx", b"x", id="relay-newline"),
    pytest.param(b"<13>Nov 22 08:04:44 vm nginx[812]: x", b"nginx", b"x", id="tag-with-pid"),
    pytest.param(b"<190>Nov 22 08:04:44 vm nginx: ", b"nginx", b"", id="empty-message"),
    pytest.param(b"<190>Nov 22 08:04:44 vm apache: x", b"apache", b"x", id="other-tag"),
    pytest.param(b"<190>1 2026-11-22T08:04:44.123+00:00 vm nginx - - - " + TAB_MESSAGE,
                 b"nginx", TAB_MESSAGE, id="rfc5424"),
    pytest.param(b'<190>1 2026-11-22T08:04:44Z vm nginx 812 access [origin@1 ip="127.0.0.1"]'
                 b'[meta@1 note="a \\] b \\"c\\"" x="y"] \xef\xbb\xbf' + TAB_MESSAGE,
                 b"nginx", TAB_MESSAGE, id="rfc5424-structured-data-bom"),
    pytest.param(b"<190>1 - - - - - -", b"-", b"", id="rfc5424-all-nil-no-message"),
])
def test_header_is_stripped(datagram: bytes, tag: bytes, message: bytes) -> None:
    assert parse_datagram(datagram) == SyslogMessage(tag, message)


@pytest.mark.parametrize("datagram", [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x00\xff\xfe garbage \x80", id="garbage"),
    pytest.param(TAB_MESSAGE, id="no-header"),
    pytest.param(b"<999>Nov 22 08:04:44 vm nginx: x", id="priority-out-of-range"),
    pytest.param(b"<190>Noe 22 08:04:44 vm nginx: x", id="bad-month"),
    pytest.param(b"<190>Nov 22 08:04 vm nginx: x", id="bad-time"),
    pytest.param(b"<190>Nov 22 08:04:44 vm 127.0.0.1 - - x", id="no-tag"),
    pytest.param(b'<190>1 - - nginx - - [a@1 x="unterminated] x', id="rfc5424-bad-sd"),
    pytest.param(b"<190>2 - - nginx - - - x", id="rfc5424-version"),
])
def test_not_syslog_is_a_value_not_an_error(datagram: bytes) -> None:
    assert parse_datagram(datagram) is None


def test_the_message_goes_to_the_same_parser() -> None:
    parsed = parse_datagram(TAB_DATAGRAM)
    assert parsed is not None
    record = LogFormat.compile(LOG_FORMAT).parse(parsed.message)
    assert record is not None
    assert (record.cache_status, record.target, record.host) == (
        "MISS", b"/f/page1?ma=60&static=1", "www.example.com")


@pytest.mark.parametrize(("url", "address"), [
    ("udp://127.0.0.1:5514", ("127.0.0.1", 5514)),
    ("udp://[::1]:5514", ("::1", 5514)),
    ("unix:///run/logwarden/syslog.sock", "/run/logwarden/syslog.sock"),
    ("unix:/run/logwarden/syslog.sock", "/run/logwarden/syslog.sock"),  # as NGINX writes it
])
def test_listener_urls(url: str, address: object) -> None:
    assert parse_url(url) == address


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("syslog", "tcp://127.0.0.1:5514", "udp://HOST:PORT or unix:///PATH"),
    ("syslog", "udp://127.0.0.1", "udp://HOST:PORT"),
    ("syslog", "udp://127.0.0.1:70000", "not a valid URL"),
    ("syslog", "udp://::1:5514", "not a valid URL"),
    ("syslog", "unix://relative/sock", "ABSOLUTE"),
    ("syslog", "unix:///" + "x" * 120, "too long"),
    ("syslog_allow", "127.0.0.1/8", "CIDR"),
    ("syslog_tag", "ng inx", "syslog tag"),
    ("syslog_rcvbuf", 0, "greater than 0"),
])
def test_bad_syslog_settings_name_key_and_value(key: str, value: Any, fragment: str) -> None:
    multiple = key in ("syslog", "syslog_allow")
    with pytest.raises(ConfigError) as err:
        load_config(_flags(**{key: (value,) if multiple else value}), None, {})
    assert str(err.value).startswith(f"{key}: {value!r}")
    assert fragment in str(err.value)


def test_syslog_alone_is_a_source_and_one_source_is_required() -> None:
    config = load_config(_flags(syslog=("udp://[::1]:5514", "unix:///run/lw.sock")), None, {})
    assert (config.access_log, config.syslog_tag, config.syslog_rcvbuf) == ((), "nginx", 4 << 20)
    with pytest.raises(ConfigError, match=r"access_log: .*required.*syslog"):
        load_config(_flags(), None, {})


def _flags(**values: Any) -> dict[str, Any]:
    return {"log_format": LOG_FORMAT, "peer": ("http://127.0.0.1:1", "http://127.0.0.1:2"),
            "self": "http://127.0.0.1:1", **values}


# -- a real source on real sockets -------------------------------------------------------------

class Listening:
    """A running :class:`SyslogSource` with its queue and metrics, and a way to wait on them."""

    def __init__(self, source: SyslogSource, queue: LineQueue, metrics: Metrics) -> None:
        self.source, self.queue, self.metrics = source, queue, metrics

    def value(self, name: str, **labels: str) -> float:
        labels = {"listener": self.source.name, **labels} if name.startswith(
            "logwarden_syslog") else labels
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not condition():
                await asyncio.sleep(0.005)

    def messages(self) -> list[bytes]:
        out: list[bytes] = []
        while not self.queue.empty():
            batch = self.queue.get_nowait()
            assert batch is not None
            out.extend(batch)
        return out


@contextlib.asynccontextmanager
async def listening(url: str, queue_size: int = 64, bind: bool = True,
                    **options: Any) -> AsyncIterator[Listening]:
    """A source bound first, as the daemon does; with ``bind=False``, by its ``run()``."""
    queue: LineQueue = asyncio.Queue(queue_size)
    metrics = Metrics()
    source = SyslogSource(url, queue, metrics, **options)
    if bind:
        source.bind()
    task = asyncio.create_task(source.run())
    try:
        async with asyncio.timeout(5):
            while source.state == "starting" and not task.done():
                await asyncio.sleep(0.005)
        assert source.state == "listening"
        yield Listening(source, queue, metrics)
    finally:
        source.stop()
        await task
    assert source.state == "closed"


def send(datagrams: list[bytes], to: Any, family: int = socket.AF_INET,
         source: str | None = None) -> None:
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if source is not None:
            sock.bind((source, 0))
        for datagram in datagrams:
            sock.sendto(datagram, to)


async def test_udp_listener_keeps_its_tag_and_counts_the_rest() -> None:
    async with listening("udp://127.0.0.1:0") as lw:
        send([UDP_DATAGRAM, TAB_DATAGRAM, NOHOSTNAME_DATAGRAM, b"\x00\xffgarbage", b"",
              b"<190>1 - vm nginx - - - rfc5424"], lw.source.local_address)
        await lw.until(lambda: lw.value("logwarden_syslog_datagrams_total") == 6)
        assert lw.messages() == [UDP_DATAGRAM[31:], TAB_MESSAGE, b"rfc5424"]
        assert lw.value("logwarden_lines_total") == 3
        assert lw.value("logwarden_syslog_ignored_total", reason="other_tag") == 1
        assert lw.value("logwarden_syslog_ignored_total", reason="malformed") == 2
        assert lw.value("logwarden_syslog_ignored_total", reason="disallowed") == 0
        assert lw.value("logwarden_syslog_kernel_drops_total") == 0


async def test_ipv6_listener() -> None:
    if not socket.has_ipv6 or not _can_bind_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")

    async with listening("udp://[::1]:0", tag="ngx_alt") as lw:
        send([NOHOSTNAME_DATAGRAM], lw.source.local_address, socket.AF_INET6)
        await lw.until(lambda: lw.value("logwarden_lines_total") == 1)
        assert lw.messages() == [b"127.0.0.1 - - ..."]


def _can_bind_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_allow_list_rejects_other_sources() -> None:
    async with listening("udp://127.0.0.1:0", allow=("127.0.0.2/32",)) as lw:
        for sender in ("127.0.0.2", "127.0.0.3", "127.0.0.2"):
            send([TAB_DATAGRAM], lw.source.local_address, source=sender)
        await lw.until(lambda: lw.value("logwarden_syslog_datagrams_total") == 3)
        assert lw.value("logwarden_lines_total") == 2
        assert lw.value("logwarden_syslog_ignored_total", reason="disallowed") == 1


async def test_a_full_queue_drops_and_counts_without_waiting() -> None:
    async with listening("udp://127.0.0.1:0", queue_size=1) as lw:
        send([TAB_DATAGRAM], lw.source.local_address)
        await lw.until(lambda: lw.queue.full())
        send([TAB_DATAGRAM, TAB_DATAGRAM], lw.source.local_address)
        await lw.until(lambda: lw.value("logwarden_syslog_datagrams_total") == 3)
        assert lw.value("logwarden_syslog_queue_drops_total") == 2
        assert lw.value("logwarden_lines_total") == 1


async def test_unix_socket_64k_datagram_and_socket_file_lifecycle(tmp_path: Path) -> None:
    path = tmp_path / "syslog.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
        dead.bind(str(path))  # a stale socket file, as a killed process leaves it
    header = b"<190>Nov 22 08:04:44 vm nginx: "
    big = header + b"x" * (64 * 1024 - len(header))
    too_long = header + b"y" * (64 * 1024 + 1)

    async with listening(f"unix://{path}", bind=False) as lw:
        assert path.is_socket()
        send([big, too_long, UNIX_DATAGRAM], str(path), socket.AF_UNIX)
        await lw.until(lambda: lw.value("logwarden_syslog_datagrams_total") == 3)
        assert lw.messages() == [big[len(header):], UNIX_DATAGRAM[31:]]
        assert lw.value("logwarden_lines_too_long_total") == 1
    assert len(big) == 65536
    assert not path.exists()  # removed at exit


async def test_a_smaller_receive_buffer_than_asked_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    # More than Linux grants anybody, root included (INT_MAX / 2).
    async with listening("udp://127.0.0.1:0", rcvbuf=2**31 - 1):
        pass
    assert "the kernel granted" in caplog.text


def test_a_port_in_use_is_a_source_error_naming_the_fix() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        url = f"udp://127.0.0.1:{taken.getsockname()[1]}"
        source = SyslogSource(url, asyncio.Queue(1), Metrics())
        with pytest.raises(SourceError) as err:
            source.bind()
    assert str(err.value) == (
        f"syslog: {url!r} cannot be bound (Address already in use): does another process "
        "(rsyslog, another logwarden) listen there? Give a free --syslog URL")
    assert isinstance(err.value.__cause__, OSError)
    assert source.state == "starting"


@pytest.mark.parametrize(("occupant", "reason"), [
    ("live socket", "Address already in use"), ("regular file", "File exists")])
async def test_unix_socket_path_in_use_is_left_alone(
    tmp_path: Path, occupant: str, reason: str, caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "syslog.sock"
    url = f"unix://{path}"
    with contextlib.ExitStack() as stack:
        if occupant == "live socket":
            live = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
            live.bind(str(path))
        else:
            path.write_text("not a socket")
        source = SyslogSource(url, asyncio.Queue(1), Metrics())
        with pytest.raises(SourceError) as err:
            source.bind()
        assert str(err.value).startswith(f"syslog: '{url}' cannot be bound ({reason}): ")
        await source.run()  # returns at once: it could not listen
        assert source.state == "starting"
        assert path.exists()
    assert f"syslog: '{url}' cannot be bound ({reason})" in caplog.text  # run() logs it


# -- a burst, through a real logwarden process --------------------------------------------------

BURST = 50_000


def test_burst_every_datagram_is_processed_or_counted_as_dropped(tmp_path: Path) -> None:
    port = free_port("127.0.0.1", socket.SOCK_DGRAM)
    url = f"udp://127.0.0.1:{port}"
    agent = Agent(None, LOG_FORMAT, "http://127.0.0.1:1",
                  ["http://127.0.0.1:1", "http://127.0.0.1:2"], extra=["--syslog", url],
                  stderr=tmp_path / "logwarden.log").start()
    try:
        sent = _send_burst(port, TAB_DATAGRAM.replace(b"\tMISS\t", b"\tHIT\t"))  # no refreshes

        def accounted() -> float:
            return (agent.value("logwarden_syslog_datagrams_total", listener=url)
                    + agent.value("logwarden_syslog_kernel_drops_total", listener=url))

        wait_until(lambda: accounted() >= sent, timeout=20, interval=0.2,
                   what="every datagram to be received or counted as dropped")
        processed = agent.value("logwarden_lines_total")
        queue_drops = agent.value("logwarden_syslog_queue_drops_total", listener=url)
        kernel_drops = agent.value("logwarden_syslog_kernel_drops_total", listener=url)
        print(f"burst: sent {sent}, processed {processed:.0f}, queue drops {queue_drops:.0f}, "
              f"kernel drops {kernel_drops:.0f}")
        assert processed + queue_drops + kernel_drops == sent == BURST
        wait_until(lambda: agent.value("logwarden_records_ignored_total", reason="cache_status")
                   == processed, what="every processed line to be parsed")
        assert agent.value("logwarden_lines_malformed_total") == 0
    finally:
        assert agent.stop() == 0


def _send_burst(port: int, datagram: bytes) -> int:
    """Send ``BURST`` copies as fast as this process can; returns how many the kernel took."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        for _ in range(BURST):
            with contextlib.suppress(OSError):
                sock.send(datagram)
                sent += 1
    return sent
