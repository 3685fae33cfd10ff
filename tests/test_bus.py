"""Bus mode (``--bus``): the signed message, the URL and its settings, the mark in the
positions file; then three real NGINX nodes whose agents talk over a real Redis stream on
loopback, through a Redis crash and restart, and entries that must not be acted on."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from lab import Cluster, Origin, wait_until
from lab.redisserver import RedisServer
from logwarden.config import ConfigError, load_config
from logwarden.decide.window import Window
from logwarden.model import Refresh
from logwarden.ops.metrics import Metrics
from logwarden.route.busmessage import (
    VERSION,
    Rejected,
    check,
    decode,
    encode,
    entry,
    verified,
)
from logwarden.route.busredis import BusAddress, mask, parse
from logwarden.route.router import Recorder, Router
from logwarden.route.storm import TokenBucket
from logwarden.sources.positions import BusMark, Positions
from tests.agents import StartAgent, refreshes_seen
from tests.buslab import (
    SECRET,
    add_entry,
    bus_flags,
    change,
    connected,
    health,
    need_redis,
    prime,
    secret_file,
    spread,
)

KEY = SECRET.encode()

# --- the message ------------------------------------------------------------------------------


def test_message_round_trip_keeps_the_exact_target() -> None:
    refresh = Refresh("https", "www.example.com", b"/a/caf%C3%A9?b=2&a=1", "MISS", 1.5e9,
                      "10.0.0.1:80", "gzip")
    fields = entry(refresh, "node-1", "HEAD", 1.6e9, KEY, "lw")
    assert json.loads(fields["m"])["v"] == VERSION and len(fields["m"]) < 250
    node, sent, back = decode(verified({k.encode(): v for k, v in fields.items()}, (KEY,), "lw"))
    assert (node, sent) == ("node-1", 1.6e9)
    assert (back.scheme, back.host, back.target, back.logged_at, back.holder, back.variant) == (
        "https", "www.example.com", b"/a/caf%C3%A9?b=2&a=1", 1.5e9, "10.0.0.1:80", "gzip")


def _signed(payload: bytes, key: bytes = KEY, stream: str = "lw") -> dict[bytes, bytes]:
    from logwarden.route.busmessage import sign

    return {b"m": payload, b"s": sign(key, stream, payload).encode()}


def test_only_an_entry_signed_with_a_known_secret_over_its_bytes_is_read() -> None:
    payload = encode(Refresh("http", "h", b"/", "MISS", None), "n", "HEAD", 1.0)
    old, new = b"o" * 16, b"n" * 16
    assert verified(_signed(payload, old), (new, old), "lw") == payload  # rolling the secret
    for fields, outcome in (
        ({b"m": payload}, "unsigned"),
        ({b"s": b"00"}, "malformed"),
        (_signed(payload, b"x" * 16), "bad_signature"),
        (_signed(payload, stream="other"), "bad_signature"),  # another fleet's stream
        ({**_signed(payload), b"m": payload.replace(b'"/"', b'"/x"')}, "bad_signature"),
        (_signed(b"x" * 20000), "malformed"),
    ):
        with pytest.raises(Rejected) as err:
            verified(fields, (KEY,), "lw")
        assert err.value.outcome == outcome


@pytest.mark.parametrize("data", [
    b"not json", b"[]", b"{}", b'{"v": 2}', b'{"v": 2, "node": "n", "scheme": "ftp", '
    b'"host": "h", "target": "/", "sent": 1}', b'{"v": 2, "node": "n", "scheme": "http", '
    b'"host": "h", "target": "/\\u20ac", "sent": 1}', b"[" * 10000,
    b'{"v": 2, "node": "n", "scheme": "http", "host": "h", "target": "/", "variant": 1, '
    b'"sent": 1}',
    b'{"v": 2, "node": "n", "scheme": "http", "host": "h", "target": "/"}',
])
def test_malformed_messages_are_refused(data: bytes) -> None:
    with pytest.raises(Rejected) as err:
        decode(data)
    assert err.value.outcome == "malformed"


def test_an_unknown_version_is_told_apart() -> None:
    with pytest.raises(Rejected) as err:
        decode(b'{"v": 3, "anything": "new"}')
    assert err.value.outcome == "unknown_version"


def test_a_message_is_judged_by_its_signed_time() -> None:
    check(100.0, 101.0, 102.0, max_skew=30, max_age=300)
    for args, outcome in (((100.0, 200.0, 200.0), "out_of_window"),  # copied in again later
                          ((100.0, 100.5, 500.0), "too_old")):
        with pytest.raises(Rejected) as err:
            check(*args, max_skew=30, max_age=300)
        assert err.value.outcome == outcome
    check(100.0, 100.5, 5000.0, max_skew=30, max_age=0)  # --max-line-age 0: no limit


# --- the URL and the settings -----------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:6379", "redis://", "redis://h:99999", "redis://h/x", "redis://h/0/1",
    "redis://h/0?timeout=1", "redis://a:1,b:2/0", "redis+sentinel://h:26379",
    "redis+sentinel://h:26379/m/x", "redis://:pw@",
])
def test_bad_bus_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse(url)


def test_good_bus_urls() -> None:
    assert parse("redis://127.0.0.1:6379/0") == BusAddress("redis", (("127.0.0.1", 6379),),
                                                           None, 0, None, None)
    assert parse("rediss://h:6380/2").tls
    one = parse("redis://lw:p%40ss/w?rd@[::1]/3")
    assert (one.hosts, one.db, one.username, one.password) == (
        (("::1", 6379),), 3, "lw", "p@ss/w?rd")
    assert "p@ss" not in repr(one) and one.shown == "redis://lw:***@[::1]:6379/3"
    ha = parse("rediss+sentinel://:pw@s1,s2:26380/main/1")
    assert (ha.tls, ha.hosts, ha.master, ha.db, ha.username, ha.password) == (
        True, (("s1", 26379), ("s2", 26380)), "main", 1, None, "pw")
    assert ha.shown == "rediss+sentinel://:***@s1:26379,s2:26380/main/1"
    assert mask("redis://u:a/b@c@h:1/0?x") == "redis://u:***@h:1/0?x"


BASE = {"access_log": ("/var/log/nginx/access.log",), "log_format": "$host \"$request\" "
        "$status $upstream_cache_status", "self": "http://10.0.0.1:80"}


def test_bus_mode_needs_no_peer_and_checks_its_settings(tmp_path: Path) -> None:
    secret = str(secret_file(tmp_path))
    bus = {**BASE, "bus": "redis://10.0.0.9:6379/0", "bus_secret_file": secret}
    config = load_config(bus, None, {})
    assert (config.bus_channel, config.local, config.targets, config.bus_secrets) == (
        "logwarden", "http://127.0.0.1:80", (), (KEY,))
    with pytest.raises(ConfigError, match="peer"):
        load_config(BASE, None, {})
    with pytest.raises(ConfigError, match="bus_secret_file: None is required with bus"):
        load_config({**bus, "bus_secret_file": None}, None, {})
    short = secret_file(tmp_path, "short", name="short")
    three = secret_file(tmp_path, SECRET, SECRET + "1", SECRET + "2", name="three")
    for key, value, said in (
        ("bus", "redis://u:pw-in-url@h/x", "bus: 'redis://u:***@h/x' has a database"),
        ("bus_channel", "a b", "bus_channel"),
        ("local", "http://127.0.0.1/x", "local"),
        ("bus_secret_file", str(short), "shorter than 16"),
        ("bus_secret_file", str(three), "holds 3 secrets"),
        ("bus_secret_file", str(tmp_path / "none"), "cannot be read"),
        ("bus_ca", str(tmp_path / "none"), "bus_ca"),
        ("bus_ca", secret, "needs a TLS bus (rediss://), not redis://10.0.0.9:6379/0"),
        ("bus_password_file", str(short), "bus URL both give a password"),
    ):
        flags = {**bus, key: value}
        if key == "bus_password_file":
            flags["bus"] = "redis://u:pw-in-url@10.0.0.9/0"
        with pytest.raises(ConfigError, match=key) as err:
            load_config(flags, None, {})
        assert said in str(err.value) and "pw-in-url" not in str(err.value)


def test_the_password_is_kept_apart_and_never_printed(tmp_path: Path) -> None:
    bus = {**BASE, "bus_secret_file": str(secret_file(tmp_path))}
    in_url = load_config({**bus, "bus": "rediss://lw:pw-in-url@h:6380/0"}, None, {})
    assert in_url.bus == "rediss://lw:***@h:6380/0"
    assert in_url.bus_address is not None and in_url.bus_address.password == "pw-in-url"
    (tmp_path / "pw").write_text("pw-in-file\n")
    in_file = load_config({**bus, "bus": "redis://lw@h/0", "bus_password_file":
                           str(tmp_path / "pw")}, None, {})
    assert in_file.bus_address is not None and in_file.bus_address.password == "pw-in-file"
    for config in (in_url, in_file):
        shown = config.to_toml() + repr(config)
        assert "pw-in-" not in shown and SECRET not in shown


def test_the_bus_mark_is_kept_beside_the_file_positions(tmp_path: Path) -> None:
    path = tmp_path / "positions.json"
    path.write_text(json.dumps({"version": 1, "files": [
        {"path": "/a", "dev": 1, "ino": 2, "offset": 3, "head": ""}]}))
    positions = Positions(path)
    assert positions.bus("lw") is None
    positions.commit_bus("lw", BusMark("1700000000000-3", 42))
    positions.save()
    again = Positions(path)
    assert again.bus("lw") == BusMark("1700000000000-3", 42)
    assert [e.offset for e in again.entries()] == [3]
    path.write_text(json.dumps({"version": 1, "files": [], "bus": {"lw": {"id": 1}}}))
    assert Positions(path).bus("lw") is None  # malformed: start at the stream's end


def test_check_prints_the_bus_url_without_its_password(tmp_path: Path) -> None:
    secret = secret_file(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "logwarden", "check", "--access-log", str(tmp_path / "a.log"),
         "--log-format", BASE["log_format"], "--self", "http://10.0.0.1:80",
         "--bus", "redis://lw:pw-in-url@10.0.0.9:6379/0", "--bus-secret-file", str(secret)],
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert 'bus = "redis://lw:***@10.0.0.9:6379/0"' in done.stdout
    assert "pw-in-url" not in done.stdout + done.stderr and SECRET not in done.stdout


def test_the_receiving_side_counts_its_own_refusals() -> None:
    """Its dedup is not the triggers': the bus counts what the router returns, so the
    triggers' accounting still holds on a receiving node."""
    metrics, sent = Metrics(), list[Refresh]()
    receive = Router(Recorder(on_submit=sent.append), metrics,
                     dedup=Window(60, 10, time.monotonic), counts={})
    refresh = Refresh("http", "h", b"/", "bus", None)
    assert (receive.route(refresh), receive.route(refresh)) == (None, "deduplicated")
    assert metrics.registry.get_sample_value("logwarden_triggers_deduplicated_total") == 0
    assert sent == [refresh]


def test_a_backlog_waits_for_tokens() -> None:
    now = [0.0]
    bucket = TokenBucket(10, 2, lambda: now[0])
    assert (bucket.take(), bucket.take(), bucket.take()) == (True, True, False)
    assert bucket.wait() == pytest.approx(0.1)
    now[0] += 0.1
    assert bucket.take() and TokenBucket(0, 1).wait() == 0


# --- real Redis, real NGINX -------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    need_redis()
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.mark.nginx
def test_bus_spreads_changes_and_survives_a_redis_crash(
    cluster: Cluster, origin: Origin, start_agent: StartAgent, redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    a, b, c = cluster.nodes
    secret = secret_file(tmp_path)
    prime(cluster, "/bus/one?ma=60", "/bus/gap?ma=60", "/bus/after?ma=60")
    # A keeps its peers as the fallback; B and C know no peer at all.
    agent_a = start_agent(a, [b.url, c.url], *bus_flags(redis_server.url, "lw-crash", secret, a))
    agent_b, agent_c = (start_agent(n, [], *bus_flags(redis_server.url, "lw-crash", secret, n))
                        for n in (b, c))
    connected(agent_a, agent_b, agent_c)
    assert health(agent_b)["bus"] == "connected"

    change(cluster, origin, "/bus/one?ma=60")
    spread(cluster, "/bus/one?ma=60")
    assert agent_a.value("logwarden_bus_published_total", outcome="ok") == 1
    wait_until(lambda: agent_a.value("logwarden_bus_received_total", outcome="own") == 1)
    assert agent_a.total("logwarden_refreshes_total", outcome="ok") == 0  # no direct fan-out
    for agent, node in ((agent_b, b), (agent_c, c)):
        assert agent.value("logwarden_bus_received_total", outcome="ok") == 1
        assert agent.value("logwarden_refreshes_total", peer=node.url, outcome="ok") == 1
        assert agent.value("logwarden_bus_entries_behind") == 0

    redis_server.kill()
    connected(agent_a, agent_b, agent_c, up=0)
    assert health(agent_b)["status"] == "ok" and health(agent_b)["bus"] == "disconnected"
    change(cluster, origin, "/bus/gap?ma=60")  # the bus is down: A falls back to its peers
    spread(cluster, "/bus/gap?ma=60")
    assert agent_a.value("logwarden_bus_published_total", outcome="bus_unavailable") == 1
    assert agent_a.total("logwarden_refreshes_total", outcome="ok") == 2

    redis_server.start()  # empty: the nodes' marks are past its stream's end
    connected(agent_a, agent_b, agent_c)
    change(cluster, origin, "/bus/after?ma=60")
    spread(cluster, "/bus/after?ma=60")
    assert agent_a.value("logwarden_bus_published_total", outcome="ok") == 2
    assert agent_a.total("logwarden_refreshes_total", outcome="ok") == 2  # bus again
    for agent in (agent_b, agent_c):
        assert agent.value("logwarden_bus_received_total", outcome="ok") == 2


@pytest.mark.nginx
def test_unsigned_forged_and_replayed_entries_refresh_nothing(
    cluster: Cluster, origin: Origin, start_agent: StartAgent, redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """A client that can write to the stream but lacks the secret, or one that copies a
    signed entry in again later, makes no node refresh anything; each is counted."""
    a, b, c = cluster.nodes
    stream, secret = "lw-forged", secret_file(tmp_path)
    prime(cluster, "/bus/real?ma=60")
    agent_a = start_agent(a, [], *bus_flags(redis_server.url, stream, secret, a,
                                            "--bus-max-skew", "1"))
    agent_b = start_agent(b, [], *bus_flags(redis_server.url, stream, secret, b,
                                            "--bus-max-skew", "1"))
    connected(agent_a, agent_b)
    change(cluster, origin, "/bus/real?ma=60")
    wait_until(lambda: bool(refreshes_seen(b, "/bus/real?ma=60")), what="the real change on B")

    with redis.Redis.from_url(redis_server.url) as client:
        [(_, real)] = client.xrange(stream)
        client.xadd(stream, {"m": real[b"m"]})  # the signature left off
        add_entry(client, stream, "/bus/forged?ma=60", secret="not-the-bus-secret-at-all")
        client.xadd(stream, {"m": real[b"m"].replace(b"/bus/real", b"/bus/swap"),
                             "s": real[b"s"]})  # another URL under the real signature
        client.xadd(stream, {"m": json.dumps({"v": VERSION + 1}), "s": b"0"})
        add_entry(client, stream, "/bus/future?ma=60", sent=time.time() - 120)
        time.sleep(1.2)  # past --bus-max-skew: the real entry, copied in again, is a replay
        client.xadd(stream, real)  # type: ignore[arg-type]
        add_entry(client, stream, "/bus/genuine?ma=60")  # the one a node must act on

    wait_until(lambda: bool(refreshes_seen(b, "/bus/genuine?ma=60")), what="the genuine entry")
    counts = {o: agent_b.value("logwarden_bus_received_total", outcome=o)
              for o in ("ok", "unsigned", "bad_signature", "out_of_window")}
    assert counts == {"ok": 2, "unsigned": 1, "bad_signature": 3, "out_of_window": 2}
    assert len(refreshes_seen(b, "/bus/real?ma=60")) == 1  # not again
    for target in ("/bus/forged?ma=60", "/bus/swap?ma=60", "/bus/future?ma=60"):
        assert refreshes_seen(b, target) == []
    assert refreshes_seen(c, "/bus/genuine?ma=60") == []  # C has no agent: nobody else sent
