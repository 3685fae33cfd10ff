"""Peer discovery: the peers file, DNS answers (injected, and once the system resolver), and
this node's own addresses left out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from logwarden import discovery
from logwarden.discovery import PeerSource, interface_addresses, read_peers_file


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


def test_dns_peers_follow_the_answers_without_this_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(discovery, "LOOKUP_TIMEOUT", 0.05)
    answers = Answers()
    source = PeerSource(("http://127.0.0.50:8080",), self_url="http://127.0.0.11:8080",
                        dns=("http://cache.example:8080",), resolver=answers,
                        own_addresses=lambda: {"127.0.0.1", "::1"})

    async def after(addresses: list[str] | str | None) -> tuple[str, ...]:
        answers.addresses = addresses
        await source.resolve()
        return source.current()

    async def go() -> None:
        assert await after(["127.0.0.11", "127.0.0.12", "127.0.0.1"]) == (
            "http://127.0.0.50:8080", "http://127.0.0.12:8080")  # not self, not an interface
        grown = await after(["127.0.0.12", "127.0.0.13", "::2"])
        assert grown == ("http://127.0.0.50:8080", "http://127.0.0.12:8080",
                         "http://127.0.0.13:8080", "http://[::2]:8080")
        assert await after(None) == grown  # a failed lookup keeps the last answer
        assert await after("hang") == grown  # so does one that takes too long
        assert await after(["127.0.0.50"]) == ("http://127.0.0.50:8080",)  # listed once

    asyncio.run(go())
    assert set(answers.asked) == {("cache.example", 8080)}


def test_the_system_resolver_answers_for_localhost() -> None:
    """Through getaddrinfo and the machine's own configuration, which is left untouched."""
    source = PeerSource((), self_url=None, dns=("http://localhost:8080",),
                        own_addresses=set)
    asyncio.run(source.resolve())
    assert "http://127.0.0.1:8080" in source.current()


def test_interface_addresses_include_loopback() -> None:
    assert "127.0.0.1" in interface_addresses()
    assert "127.0.0.12" not in interface_addresses()  # routed to lo, not an interface address


def test_peers_file_is_read_again_only_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "peers"
    path.write_text("# cluster\nhttp://127.0.0.12:8080\n\nhttp://127.0.0.13:8080  # c\n")
    source = PeerSource(("http://127.0.0.12:8080",), self_url="http://127.0.0.11:8080",
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
