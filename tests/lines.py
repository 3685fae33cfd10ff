"""Access-log lines for tests that write the log themselves instead of asking NGINX.

Two formats: :data:`FMT`, the shortest one logwarden accepts with a user agent (a line reads at a
glance in an assertion), and the example config's (:data:`tests.agents.LOG_FORMAT`, TAB
separated, the fields of :data:`lab.cluster.LOG_FIELDS`), for tests about what the example logs.
"""

from __future__ import annotations

import time

FMT = '$host "$request" $status $upstream_cache_status "$http_user_agent"'


def line(target: str, status: str = "MISS", ua: str = "curl/8", host: str = "www.example.com",
         code: int = 200) -> bytes:
    """A line of :data:`FMT`: a GET of ``target`` answered ``code``, cache status ``status``."""
    return f'{host} "GET {target} HTTP/1.1" {code} {status} "{ua}"\n'.encode()


def example_line(target: str = "/p?x=1", cache: str = "MISS", *, host: str = "www.example.com",
                 upstream: str = "200", msec: float | None = None, extra: str = "",
                 caching: str = "max-age=60\t-\t-\t-\t0", version: str = "-\t-") -> bytes:
    """A line of the example's format: a GET of ``target`` answered 200, logged at ``msec``
    (now by default), the origin's caching headers ``caching`` (Cache-Control, Expires,
    X-Accel-Expires, Vary, Set-Cookie flag) and ``version`` (ETag, Last-Modified); ``extra``
    is appended to the last field, for formats that add fields."""
    fields = (f"{time.time() if msec is None else msec:.3f}", "http", host, "80", "GET", target,
              "200", cache, upstream, "0.001", "0", "curl/8", caching, version)
    return ("\t".join(fields) + extra + "\n").encode()
