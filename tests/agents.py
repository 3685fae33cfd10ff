"""Helpers for tests that run real logwarden agents beside lab NGINX nodes (the ``start_agent``
fixture lives in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lab import EXAMPLE_CONFIG, Cluster, LogLine, NginxNode
from lab.agent import Agent, log_format_from_conf

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
