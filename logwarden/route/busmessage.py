"""The bus's message: one trigger as a signed entry of a Redis stream.

An entry has two fields: ``m``, a JSON object, and ``s``, the hex HMAC-SHA256 of the stream's
name, a zero byte and ``m``'s exact bytes, keyed by the bus secret (``--bus-secret-file``).
Signing the bytes as sent, not a re-encoding, leaves nothing to canonicalise; the stream's
name keeps an entry of one fleet's stream from being replayed on another's with the same
secret.

``m`` holds a version ``v`` (only :data:`VERSION` is understood; others are counted and
skipped, so a fleet can be upgraded node by node), the URL (``scheme``, ``host``, ``target``),
the publisher's refresh ``method`` (for the record: a receiver refreshes with its own
settings), ``source`` (the publisher's ``ADDRESS:PORT`` for origin offload, or null: the
``Refresh.holder``), ``time`` (the triggering line's, or null), ``variant`` (the triggering
class with ``--variant``, or null), ``node``, the publisher's id (a node ignores its own
messages), and ``sent``, the publisher's clock when it published: signed, so a receiver can
tell a copy replayed later (:func:`check`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Any

from logwarden.model import Refresh

VERSION = 2
"""1 was the pub/sub message: unsigned, no ``sent``."""
MAX_MESSAGE_BYTES = 16384
"""A message carries one URL of at most --max-target-bytes (8 KiB by default): anything
larger is not ours."""


class Rejected(ValueError):
    """An entry not to act on; ``outcome`` is its ``logwarden_bus_received_total`` label."""

    def __init__(self, outcome: str, detail: str = "") -> None:
        super().__init__(detail or outcome)
        self.outcome = outcome


def sign(secret: bytes, stream: str, payload: bytes) -> str:
    return hmac.new(secret, stream.encode() + b"\0" + payload, hashlib.sha256).hexdigest()


def encode(refresh: Refresh, node: str, method: str, sent: float) -> bytes:
    return json.dumps({
        "v": VERSION, "node": node, "scheme": refresh.scheme, "host": refresh.host,
        "target": refresh.target.decode("latin-1"), "method": method,
        "source": refresh.holder, "time": refresh.logged_at, "variant": refresh.variant,
        "sent": sent,
    }, separators=(",", ":")).encode()


def entry(refresh: Refresh, node: str, method: str, sent: float, secret: bytes,
          stream: str) -> dict[str, bytes]:
    """The fields to ``XADD``."""
    payload = encode(refresh, node, method, sent)
    return {"m": payload, "s": sign(secret, stream, payload).encode()}


def verified(fields: Mapping[bytes, bytes], secrets: Sequence[bytes], stream: str) -> bytes:
    """The payload of an entry signed with one of ``secrets``; Rejected ``unsigned``,
    ``malformed`` or ``bad_signature``. Nothing of an entry is parsed before this."""
    payload, signature = fields.get(b"m"), fields.get(b"s")
    if payload is None:
        raise Rejected("malformed", "no m field")
    if signature is None:
        raise Rejected("unsigned")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise Rejected("malformed", "message too large")
    text = signature.decode("latin-1")
    if not any(hmac.compare_digest(sign(secret, stream, payload), text) for secret in secrets):
        raise Rejected("bad_signature")
    return payload


def decode(payload: bytes) -> tuple[str, float, Refresh]:
    """``(node, sent, refresh)`` from a verified payload; Rejected ``unknown_version`` or
    ``malformed``."""
    try:
        msg = json.loads(payload)
    except (ValueError, RecursionError):  # deep nesting: json raises RecursionError
        raise Rejected("malformed", "not JSON") from None
    if not isinstance(msg, dict) or "v" not in msg:
        raise Rejected("malformed", "not a logwarden message")
    if msg["v"] != VERSION:
        raise Rejected("unknown_version", f"version {msg['v']!r}")
    node, scheme, host, target = (_text(msg, k) for k in ("node", "scheme", "host", "target"))
    holder, logged_at, variant, sent = (msg.get(k) for k in ("source", "time", "variant",
                                                             "sent"))
    if scheme not in ("http", "https") or not all(
            value is None or isinstance(value, str) for value in (holder, variant)) \
            or not all(_number(value) for value in (logged_at, sent)) or sent is None:
        raise Rejected("malformed", "bad field")
    try:
        raw = target.encode("latin-1")
    except UnicodeEncodeError:
        raise Rejected("malformed", "target is not bytes") from None
    return node, float(sent), Refresh(scheme, host, raw, "bus",
                                      float(logged_at) if logged_at else None, holder or None,
                                      variant)


def check(sent: float, added: float, now: float, *, max_skew: float, max_age: float) -> None:
    """Rejected ``out_of_window`` when the signed ``sent`` is further than ``max_skew`` s
    from ``added``, when Redis added the entry (its ID's time): a signed message copied into
    the stream again later; ``too_old`` when it was published more than ``max_age`` s before
    ``now`` (0: no limit), as after a long downtime."""
    if abs(added - sent) > max_skew:
        raise Rejected("out_of_window", f"sent {added - sent:.0f} s before it was added")
    if max_age and now - sent > max_age:
        raise Rejected("too_old")


def _number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _text(msg: dict[str, Any], key: str) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or not value:
        raise Rejected("malformed", f"{key} missing")
    return value
