"""`make demo-bus` runs `python -m lab.demo_bus`: its walk-through must keep working."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lab import find_nginx
from lab.redisserver import find_redis


@pytest.mark.nginx
def test_demo_bus_walk_through() -> None:
    if find_nginx() is None or find_redis() is None:
        pytest.skip("nginx or redis-server not installed (Debian: make system-deps)")
    out = subprocess.run([sys.executable, "-m", "lab.demo_bus", "--once"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("origin fetches for this change: 1") == 3
    assert 'bus_published_total{outcome="bus_unavailable"} 1' in out.stdout
    assert "client → B: HIT     version 4     client → C: HIT     version 4" in out.stdout
    assert "exit codes [0, 0, 0]" in out.stdout
