"""Shared fixtures: the lab's origin and a three-node NGINX cluster, real processes on loopback.

Both are function-scoped and fail the test if they leave a thread or an NGINX process behind.
An ``async def`` test runs in a fresh event loop of its own (:func:`pytest_pyfunc_call`).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from lab import Cluster, NginxNode, Origin, find_nginx
from lab.agent import Agent
from lab.process import group_alive
from tests.agents import LOG_FORMAT, StartAgent


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an ``async def`` test with ``asyncio.run``: one new loop per test, closed after it
    (the whole of what pytest-asyncio would give us here)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names}))
    return True


@pytest.fixture
def origin() -> Iterator[Origin]:
    """A started :class:`lab.Origin` on 127.0.0.1; stopped (threads joined) at teardown."""
    with Origin() as started:
        yield started
    assert not started.running, "origin thread still running after stop()"


@pytest.fixture
def cluster(origin: Origin, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Three NGINX nodes (127.0.0.11-13) rendered from examples/nginx.conf, using ``origin``.
    Parametrized indirectly, the parameter is the cluster's ``edits`` (``{2: DEAF[...]}``)."""
    if find_nginx() is None:
        pytest.skip("nginx not found on PATH or in /usr/sbin (Debian: make system-deps)")
    edits = getattr(request, "param", None)
    with Cluster(tmp_path / "cluster", nodes=3, origin=origin, edits=edits) as started:
        masters = [node.pid for node in started]
        yield started
    left = [pid for pid in masters if pid is not None and group_alive(pid)]
    assert not left, f"NGINX process groups still alive after stop(): {left}"


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[StartAgent]:
    """Start logwarden beside a node, tailing its access log unless ``access_log=False``;
    every agent must exit 0 on SIGTERM at teardown."""
    agents: list[Agent] = []

    def start(node: NginxNode, peers: Sequence[str], *extra: str,
              access_log: bool = True) -> Agent:
        agent = Agent(node.access_log if access_log else None, LOG_FORMAT, node.url, peers,
                      extra=["--log-level", "debug", *extra],
                      stderr=tmp_path / f"logwarden-{node.address}.log")
        agents.append(agent.start())
        return agent

    yield start
    codes = [agent.stop() for agent in agents]
    assert codes == [0] * len(agents), f"logwarden exit codes: {codes}"
