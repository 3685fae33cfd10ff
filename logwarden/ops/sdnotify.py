"""systemd's readiness protocol (``Type=notify``): one datagram to ``$NOTIFY_SOCKET``.

The protocol is a single ``sendto()`` of ``KEY=VALUE`` lines, so it needs no dependency. The
daemon says ``READY=1`` once every source reads its file or listens (from then on no line
is missed: what ``systemctl start`` should wait for) and ``STOPPING=1`` on SIGTERM.
Without ``$NOTIFY_SOCKET`` (not under systemd, or ``Type=simple``) nothing is sent.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``); False when there is no notify socket or it failed."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd on %s: %s", address, exc)
        return False
    return True
