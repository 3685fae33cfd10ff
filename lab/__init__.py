"""The lab: a real origin and real NGINX nodes on loopback, for the tests and ``make demo``.

Not part of the ``logwarden`` package. :mod:`lab.origin` serves versioned objects and records
what it receives; :mod:`lab.cluster` renders ``examples/nginx.conf`` for loopback and runs NGINX
nodes from it; :mod:`lab.process` stops what the lab, the benchmarks and the tests start, and
:mod:`lab.accounting` reads and sums metric samples.
"""

from lab.cluster import (
    CLIENT_ADDRESS,
    EXAMPLE_CONFIG,
    LOG_FIELDS,
    OUTSIDER_ADDRESS,
    Cluster,
    LogLine,
    NginxError,
    NginxNode,
    Response,
    find_nginx,
    free_port,
    render_config,
    wait_until,
)
from lab.origin import Origin, OriginRequest

__all__ = [
    "CLIENT_ADDRESS",
    "EXAMPLE_CONFIG",
    "LOG_FIELDS",
    "OUTSIDER_ADDRESS",
    "Cluster",
    "LogLine",
    "NginxError",
    "NginxNode",
    "Origin",
    "OriginRequest",
    "Response",
    "find_nginx",
    "free_port",
    "render_config",
    "wait_until",
]
