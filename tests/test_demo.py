"""`make demo` runs `python -m lab.demo`: its walk-through must keep working."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lab import find_nginx


@pytest.mark.nginx
def test_demo_walk_through() -> None:
    if find_nginx() is None:
        pytest.skip("nginx not installed")
    out = subprocess.run([sys.executable, "-m", "lab.demo", "--once"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    after_change = out.stdout.split("3. A client asks node A again")[1]
    assert "client → A: STALE   version 1" in after_change
    assert "client → B: HIT     version 2" in after_change
    assert "client → C: HIT     version 2" in after_change
    assert "exit codes [0, 0, 0]" in out.stdout
