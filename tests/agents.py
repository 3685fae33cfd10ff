"""Helpers for tests that run real logwarden agents beside lab NGINX nodes (the ``start_agent``
fixture lives in conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from lab import EXAMPLE_CONFIG, Cluster, LogLine, NginxNode
from lab.agent import Agent, log_format_from_conf
from logwarden.config import Config
from logwarden.daemon import Daemon

LOG_FORMAT = log_format_from_conf(Path(EXAMPLE_CONFIG).read_text())
StartAgent = Callable[..., Agent]


def urls(cluster: Cluster) -> list[str]:
    return [node.url for node in cluster.nodes]


def refreshes_seen(node: NginxNode, target: str) -> list[LogLine]:
    """Lines on ``node`` caused by a logwarden request for ``target``."""
    return [line for line in node.log_lines()
            if line.target == target and line.user_agent.startswith("logwarden/")]


def body_version(node: NginxNode, target: str, host: str) -> tuple[str | None, int]:
    response = node.get(target, host=host)
    return response.headers.get("X-Cache-Status"), int(response.headers["X-Version"])


async def start_daemon(config: Config) -> tuple[Daemon, asyncio.Task[int]]:
    """An in-process daemon, once its sources read: set ``daemon.stopping`` and await the task
    to stop it the way SIGTERM does."""
    daemon = Daemon(config)
    task = asyncio.create_task(daemon.run())
    async with asyncio.timeout(5):
        while daemon.health()["status"] != "ok":
            await asyncio.sleep(0.01)
    return daemon, task
