"""logwarden's own log: one line per record whatever a log line held, the secret never shown, the
libraries quiet unless asked for, and a summary line every --summary-interval."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import wait_until
from lab.agent import Agent
from logwarden.ops import logs
from tests.lines import FMT, line
from tests.peers import dead_url

RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) (\S+): ")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger's records, as ``logs.setup`` writes them, into a buffer."""
    out = io.StringIO()
    saved = logging.root.handlers[:], logging.root.level, set(logs._hidden)
    yield out
    logging.root.handlers[:], logging.root.level = saved[0], saved[1]
    logs._hidden.clear()
    logs._hidden.update(saved[2])
    logging.getLogger("logwarden").setLevel(logging.NOTSET)


def setup(out: io.StringIO, level: str = "debug", output: str = "text",
          libraries: bool = False, secrets: tuple[str, ...] = ()) -> None:
    logs.setup(level, output, libraries, secrets)
    assert isinstance(logging.root.handlers[0], logging.StreamHandler)
    logging.root.handlers[0].setStream(out)


def test_control_bytes_never_split_a_line(captured: io.StringIO) -> None:
    setup(captured)
    log = logging.getLogger("logwarden.test")
    log.warning("target %s", "/a\r\nFORGED 2026-01-01 ERROR x\x1b[31m\x00\x7f\x85\u2028%0d%0a")
    try:
        raise ValueError("bad\rvalue")
    except ValueError:
        log.exception("failed for %s", "/b\n")
    lines = captured.getvalue().splitlines()
    assert lines[0].endswith(r"target /a\x0D\x0AFORGED 2026-01-01 ERROR x\x1B[31m\x00\x7F\x85"
                             r"\u2028%0d%0a")
    assert lines[1].endswith(r"failed for /b\x0A")
    assert lines[2] == "Traceback (most recent call last):"  # a traceback keeps its lines
    assert lines[-1] == r"ValueError: bad\x0Dvalue"
    assert [bool(RECORD.match(ln)) for ln in lines[:2]] == [True, True]


def test_json_lines_are_escaped_too(captured: io.StringIO) -> None:
    setup(captured, output="json")
    logging.getLogger("logwarden.test").info("target %s", "/a\r\n\x85")
    [only] = captured.getvalue().splitlines()
    assert json.loads(only)["event"] == r"target /a\x0D\x0A\x85"


def test_the_secret_is_never_shown(captured: io.StringIO) -> None:
    setup(captured, secrets=("s3cret-value",))
    log = logging.getLogger("logwarden.test")
    log.error("header X-Refresh: %s", "s3cret-value")
    try:
        raise RuntimeError("sent s3cret-value")
    except RuntimeError:
        log.exception("oops")
    logs.hide("rotated-s3cret")  # SIGHUP read a new one
    log.error("now %s", "rotated-s3cret")
    text = captured.getvalue()
    assert "s3cret" not in text
    assert "header X-Refresh: ***" in text and "RuntimeError: sent ***" in text
    assert "now ***" in text


def test_libraries_stay_at_warning_unless_asked(captured: io.StringIO) -> None:
    setup(captured)
    logging.getLogger("watchdog.observers.inotify_buffer").debug("in-event")
    logging.getLogger("asyncio").info("poll took 1 ms")
    logging.getLogger("redis").warning("reconnecting")
    logging.getLogger("logwarden.sources.file").debug("tailing")
    assert [RECORD.match(ln).group(2) for ln in captured.getvalue().splitlines()  # type: ignore
            ] == ["redis", "logwarden.sources.file"]
    setup(captured, "info", libraries=True)
    logging.getLogger("watchdog").info("started")
    logging.getLogger("logwarden").debug("not at info")
    assert captured.getvalue().splitlines()[-1].endswith("INFO watchdog: started")


def test_debug_for_1000_lines_writes_a_bounded_log_on_one_line_each(tmp_path: Path) -> None:
    """With its stderr beside the access log (in the directory watchdog watches), at debug:
    a few lines per refresh and none per inotify event; a target with %0d%0a and one whose
    bytes are CR/LF (escaped by NGINX, raw) stay on their line."""
    log, stderr = tmp_path / "access.log", tmp_path / "logwarden.log"
    log.touch()
    agent = Agent(log, FMT, "http://127.0.0.1:1", [dead_url()], stderr=stderr,
                  extra=["--log-level", "debug", "--summary-interval", "0", "--retries", "0"])
    agent.start()
    try:
        odd = [line("/pct%0d%0a"), line("/esc\\x0D\\x0Ainjected"), line("/raw\rcr")]
        with open(log, "ab") as fh:
            for i in range(100):  # 100 writes: as many inotify events
                fh.write(b"".join(line(f"/hit/{i}/{j}", "HIT") for j in range(10 - (i < 3))))
                if i < 3:
                    fh.write(odd[i])
                fh.flush()
                time.sleep(0.002)
        wait_until(lambda: agent.value("logwarden_lines_total") == 1000, what="1000 lines")
        wait_until(lambda: agent.total("logwarden_refreshes_total") == 3, what="3 outcomes")
        time.sleep(0.5)
        size = stderr.stat().st_size
        time.sleep(1.0)
        assert stderr.stat().st_size == size  # idle: the agent does not feed on its own log
    finally:
        assert agent.stop() == 0
    lines = stderr.read_text().splitlines()
    assert len(lines) < 40, "\n".join(lines)
    assert all(RECORD.match(ln) for ln in lines), "\n".join(lines)
    names = {RECORD.match(ln).group(2) for ln in lines}  # type: ignore[union-attr]
    assert all(name.startswith("logwarden") for name in names), names
    text = "\n".join(lines)
    assert "/pct%0d%0a" in text and r"/esc\x0D\x0Ainjected" in text and r"/raw\x0Dcr" in text


def test_a_summary_line_every_interval(tmp_path: Path) -> None:
    log, stderr = tmp_path / "access.log", tmp_path / "agent.stderr"
    log.touch()
    agent = Agent(log, FMT, "http://127.0.0.1:1", [dead_url()], stderr=stderr,
                  extra=["--summary-interval", "0.5", "--retries", "0"]).start()
    try:
        with open(log, "ab") as fh:
            fh.write(line("/a") + line("/b", "HIT") + b"garbage\n")
        wait_until(lambda: "lines=3" in stderr.read_text(), what="a summary with the lines")
        wait_until(lambda: "lines=0" in stderr.read_text(), what="an idle summary")
    finally:
        assert agent.stop() == 0
    summaries = [ln for ln in stderr.read_text().splitlines() if " last 0.5s: " in ln]
    busy = next(ln for ln in summaries if "lines=3" in ln)
    assert busy.endswith("INFO logwarden.daemon: last 0.5s: lines=3 malformed=1 triggers=1 "
                         "fan-outs=1 refreshes: connect_error=1"), busy
    assert summaries[-1].endswith("lines=0 malformed=0 triggers=0 fan-outs=0 refreshes: none")
