"""Peer discovery: the peers file, DNS answers (injected, and once the system resolver), and
this node's own addresses left out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from lab import free_port
from logwarden.config import load_config
from logwarden.daemon import Daemon
from logwarden.route import discovery
from logwarden.route.discovery import PeerList, interface_addresses, read_peers_file
from tests.lines import FMT, line
from tests.peers import RecordingPeer


class Answers:
    """A resolver that answers from a list the test changes, fails when it is None, and
    hangs when it is ``"hang"``."""

    def __init__(self) -> None:
        self.addresses: list[str] | str | None = []
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, name: str, port: int) -> list[str]:
        self.asked.append((name, port))
        if self.addresses is None:
            raise OSError("Temporary failure in name resolution")
        if self.addresses == "hang":
            await asyncio.sleep(3600)
        return list(self.addresses)


async def test_dns_peers_follow_the_answers_without_this_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(discovery, "LOOKUP_TIMEOUT", 0.05)
    answers = Answers()
    source = PeerList(("http://127.0.0.50:8080",), self_url="http://127.0.0.11:8080",
                        dns=("http://cache.example:8080",), resolver=answers,
                        own_addresses=lambda: {"127.0.0.1", "::1"})

    async def after(addresses: list[str] | str | None) -> tuple[str, ...]:
        answers.addresses = addresses
        await source.resolve()
        return source.current()

    assert await after(["127.0.0.11", "127.0.0.12", "127.0.0.1"]) == (
        "http://127.0.0.50:8080", "http://127.0.0.12:8080")  # not self, not an interface
    grown = await after(["127.0.0.12", "127.0.0.13", "::2"])
    assert grown == ("http://127.0.0.50:8080", "http://127.0.0.12:8080",
                     "http://127.0.0.13:8080", "http://[::2]:8080")
    assert await after(None) == grown  # a failed lookup keeps the last answer
    assert await after("hang") == grown  # so does one that takes too long
    assert await after(["127.0.0.50"]) == ("http://127.0.0.50:8080",)  # listed once
    assert set(answers.asked) == {("cache.example", 8080)}


async def test_the_system_resolver_answers_for_localhost() -> None:
    """Through getaddrinfo and the machine's own configuration, which is left untouched."""
    source = PeerList((), self_url=None, dns=("http://localhost:8080",),
                        own_addresses=set)
    await source.resolve()
    assert "http://127.0.0.1:8080" in source.current()


def test_interface_addresses_include_loopback() -> None:
    assert "127.0.0.1" in interface_addresses()
    assert "127.0.0.12" not in interface_addresses()  # routed to lo, not an interface address


def test_peers_file_is_read_again_only_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "peers"
    path.write_text("# cluster\nhttp://127.0.0.12:8080\n\nhttp://127.0.0.13:8080  # c\n")
    source = PeerList(("http://127.0.0.12:8080",), self_url="http://127.0.0.11:8080",
                        peers_file=str(path))
    assert source.file_changed()
    source.reload_file()
    assert not source.file_changed()
    assert source.current() == ("http://127.0.0.12:8080", "http://127.0.0.13:8080")
    path.write_text("http://127.0.0.11:8080\nhttps://127.0.0.11:8443\nhttp://127.0.0.14:80\n")
    assert source.file_changed()
    source.reload_file()
    assert source.current() == ("http://127.0.0.12:8080", "http://127.0.0.14:80")
    path.write_text("http://127.0.0.15\nftp://nope\n")  # a bad line: keep the previous list
    source.reload_file()
    assert source.current() == ("http://127.0.0.12:8080", "http://127.0.0.14:80")


def test_peers_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "peers"
    path.write_text("http://127.0.0.12\nhttp://127.0.0.13/path\n")
    with pytest.raises(ValueError, match=r"line 2: 'http://127\.0\.0\.13/path' must not"):
        read_peers_file(str(path))


async def test_daemon_follows_dns_answers_across_lookups(tmp_path: Path) -> None:
    """Two peers on one port at two loopback addresses, found through an injected resolver;
    the answers also name 127.0.0.1, an interface address of this host: never a peer."""
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    port = free_port("127.0.0.41")
    answers = Answers()
    answers.addresses = ["127.0.0.41", "127.0.0.1"]
    first = await RecordingPeer(host="127.0.0.41", port=port).start()
    second = await RecordingPeer(host="127.0.0.42", port=port).start()
    config = load_config({
        "access_log": (str(log),), "log_format": FMT, "self": "http://127.0.0.11:80",
        "peers_dns": (f"http://cache.test:{port}",), "dns_refresh": 0.1,
        "poll_interval": 0.05, "metrics_listen": "off", "positions": "off",
    }, None, {})
    daemon = Daemon(config)
    daemon.peer_list.resolver = answers
    task = asyncio.create_task(daemon.run())
    await until(lambda: daemon.health()["status"] == "ok")
    assert daemon.health()["peers"] == [first.url]
    with open(log, "ab") as fh:
        fh.write(line("/one"))
    await until(lambda: len(first.heads) == 1)
    answers.addresses = ["127.0.0.42", "127.0.0.1", "127.0.0.42"]
    await until(lambda: daemon.health()["peers"] == [second.url])
    with open(log, "ab") as fh:
        fh.write(line("/two"))
    await until(lambda: len(second.heads) == 1)
    daemon.stopping.set()
    assert await task == 0
    await first.close()
    await second.close()
    assert first.request_lines() == [b"HEAD /one HTTP/1.1"]
    assert second.request_lines() == [b"HEAD /two HTTP/1.1"]


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
