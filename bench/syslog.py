"""Benchmark 6: NGINX-format syslog datagrams on loopback, processed + dropped = sent.

logwarden (``--syslog udp://``, ``--dry-run``) runs on one core; the sender, on the other, sends
the generated lines as NGINX does (RFC 3164, tag ``nginx``, one line per datagram) at a paced
rate for a fixed time. Rates step up until datagrams are lost; the figure is the highest rate
with none lost. The reference is the target itself (no other tool reads NGINX's syslog here).
"""

from __future__ import annotations

import socket
import time
from itertools import cycle, islice

from bench import gen
from bench.common import (
    LOGWARDEN,
    ROOT,
    Row,
    core,
    fmt_rate,
    healthy,
    scrape,
    wait_for,
)
from bench.throughput import LINES_DONE
from lab import free_port
from lab.accounting import total
from lab.process import running

HEADER = b"<190>Nov 23 12:00:00 web1 nginx: "
DROPS = ("logwarden_syslog_queue_drops_total", "logwarden_syslog_kernel_drops_total")


def run(seconds: float, rates: tuple[int, ...]) -> list[Row]:
    lossless = 0
    at_50k = None
    for rate in rates:
        sent, processed, dropped = _round(rate, seconds)
        if rate == 50_000:
            at_50k = processed == sent
        if processed + dropped != sent or processed != sent:
            break
        lossless = rate
    met = lossless >= 100_000 and bool(at_50k)
    return [Row(f"6. syslog datagrams/s, one core, no loss ({seconds:g} s per rate)",
                fmt_rate(lossless) if lossless else "< " + fmt_rate(rates[0]),
                "100 k/s", f"{lossless / 100_000:.2f}x",
                ">= 100 k/s, none lost at 50 k/s", met)]


def _round(rate: int, seconds: float) -> tuple[int, float, float]:
    """Send at ``rate`` for ``seconds``; returns (sent, processed, dropped)."""
    port, metrics = free_port(), free_port()
    args = [*core(), *LOGWARDEN, "run", "--syslog", f"udp://127.0.0.1:{port}",
            "--log-format", gen.FORMAT, "--peer", "http://127.0.0.1:9", "--dry-run",
            "--positions", "off", "--metrics-listen", f"127.0.0.1:{metrics}",
            "--log-level", "warning"]
    lines = [HEADER + line.rstrip(b"\n") for line in gen.lines(20_000, start=time.time())]
    with running(args, cwd=ROOT):
        wait_for(lambda: healthy(metrics), timeout=30)
        sent = _send(port, lines, rate, seconds)
        done = time.monotonic() + 10
        while time.monotonic() < done:
            samples = scrape(metrics)
            processed, dropped = total(samples, *LINES_DONE), total(samples, *DROPS)
            if processed + dropped >= sent:
                break
            time.sleep(0.1)
        time.sleep(0.3)  # the kernel's drop count arrives with later datagrams or a poll
        samples = scrape(metrics)
        return sent, total(samples, *LINES_DONE), total(samples, *DROPS)


def _send(port: int, lines: list[bytes], rate: int, seconds: float) -> int:
    """Paced in 1 ms slices; returns how many datagrams were sent."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    send, source = sock.send, cycle(lines)
    sent, started = 0, time.monotonic()
    total_ = int(rate * seconds)
    while sent < total_:
        due = min(total_, int((time.monotonic() - started) * rate) + rate // 1000)
        if due > sent:
            for datagram in islice(source, due - sent):
                send(datagram)
            sent = due
        else:
            time.sleep(0.0005)
    sock.close()
    return sent
