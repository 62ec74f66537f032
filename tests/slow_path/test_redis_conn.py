"""Redis connection: settings from the environment, the client factory, budgeted pipelined
reads, the embedded valkey server and `ensure_redis`."""

from __future__ import annotations

import time

import pytest
import redis

from sid_index.errors import ConfigError
from slow_path.errors import StoreError
from slow_path.redis_conn import (
    EmbeddedRedis,
    ensure_redis,
    read_pipeline,
    redact_url,
    redis_client,
)
from slow_path.settings import RedisSettings, StoreSettings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "REASONREC_REDIS_URL", "REASONREC_SOCKET_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)


# -- settings ---------------------------------------------------------------------------------


def test_settings_read_redis_url_from_either_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(RedisSettings).redis_url is None
    monkeypatch.setenv("REDIS_URL", "redis://plain:6379/0")
    assert load_settings(RedisSettings).redis_url == "redis://plain:6379/0"
    monkeypatch.setenv("REASONREC_REDIS_URL", "redis://prefixed:6379/0")
    assert load_settings(RedisSettings).redis_url == "redis://prefixed:6379/0"
    assert load_settings(RedisSettings, redis_url="redis://x/1").redis_url == "redis://x/1"


def test_settings_env_prefix_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REASONREC_SOCKET_TIMEOUT_S", "0.25")
    assert load_settings(RedisSettings).socket_timeout_s == 0.25
    monkeypatch.setenv("REASONREC_SOCKET_TIMEOUT_S", "-1")
    with pytest.raises(ConfigError, match="socket_timeout_s='-1'"):
        load_settings(RedisSettings)
    with pytest.raises(ConfigError, match="bogus"):
        load_settings(StoreSettings, bogus=1)
    with pytest.raises(ConfigError, match="key_prefix"):
        load_settings(StoreSettings, key_prefix="has space")
    s = load_settings(StoreSettings)
    assert (s.key_prefix, s.history_max_len) == ("rr", 200)


# -- client factory ---------------------------------------------------------------------------


def test_redis_client_sets_timeouts_on_every_call() -> None:
    settings = load_settings(RedisSettings, socket_timeout_s=0.3, socket_connect_timeout_s=0.2)
    client = redis_client(settings, "redis://127.0.0.1:1/0")
    kw = client.connection_pool.connection_kwargs
    assert (kw["socket_timeout"], kw["socket_connect_timeout"]) == (0.3, 0.2)
    fast = redis_client(settings, "redis://127.0.0.1:1/0", socket_timeout_s=0.05, retries=0)
    assert fast.connection_pool.connection_kwargs["socket_timeout"] == 0.05
    with pytest.raises(ConfigError, match="REDIS_URL"):
        redis_client(settings)
    with pytest.raises(ConfigError, match="malformed Redis URL 'http://x'"):
        redis_client(settings, "http://x")


def test_redact_url() -> None:
    assert redact_url("redis://:s3cret@h:6380/2") == "redis://:***@h:6380/2"
    assert redact_url("rediss://me:s3cret@h/0") == "rediss://me:***@h/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


# -- budgeted pipelined reads ---------------------------------------------------------------------


def test_read_pipeline_replies_in_order_across_chunks(redis_client: redis.Redis) -> None:
    redis_client.set("a", b"1")
    redis_client.rpush("l", b"x", b"y")
    cmds = [("GET", "a"), ("GET", "none"), ("LRANGE", "l", 0, -1), ("INCR", "l"), ("GET", "a")]
    got = read_pipeline(redis_client, cmds, budget_s=2.0, chunk=2)
    assert not got.timed_out and got.error is None
    assert got.replies[:3] == [b"1", None, [b"x", b"y"]] and got.replies[4] == b"1"
    assert isinstance(got.replies[3], redis.ResponseError)  # WRONGTYPE, in its place
    assert read_pipeline(redis_client, [], 1.0).replies == []


def test_read_pipeline_returns_bytes_even_for_decoding_clients(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=2)
    client.set("k", "v")
    assert read_pipeline(client, [("GET", "k")], 1.0).replies == [b"v"]
    client.close()


def test_read_pipeline_stalled_and_refused(
    silent_server: tuple[str, int], closed_port: int
) -> None:
    settings = load_settings(RedisSettings, socket_timeout_s=5.0, retries=0)
    host, port = silent_server
    stalled = redis_client(settings, f"redis://{host}:{port}/0")
    t0 = time.monotonic()
    got = read_pipeline(stalled, [("GET", "a")] * 5, budget_s=0.15)
    assert 0.1 < time.monotonic() - t0 < 1.0
    assert got.timed_out and got.replies == [] and got.error is None
    refused = redis_client(settings, f"redis://127.0.0.1:{closed_port}/0")
    got = read_pipeline(refused, [("GET", "a")], budget_s=1.0)
    assert not got.timed_out and got.replies == [] and "ConnectionError" in (got.error or "")


# -- embedded server --------------------------------------------------------------------------


def test_embedded_server_lifecycle() -> None:
    server = EmbeddedRedis(maxmemory="64mb")
    with pytest.raises(StoreError, match="not running"):
        _ = server.url
    t0 = time.monotonic()
    with server:
        started = time.monotonic() - t0
        assert server.running and server.url.startswith("redis://127.0.0.1:")
        client = redis_client(load_settings(RedisSettings), server.url)
        assert client.ping()
        cfg = client.config_get("maxmemory*")
        assert cfg["maxmemory-policy"] == "noeviction" and int(cfg["maxmemory"]) == 64 << 20
        port = server.port
        client.close()
    assert not server.running
    server.stop()  # idempotent
    probe = redis_client(load_settings(RedisSettings, retries=0), f"redis://127.0.0.1:{port}/0")
    with pytest.raises(redis.ConnectionError):
        probe.ping()
    assert started < 5.0


def test_two_embedded_servers_are_independent() -> None:
    with EmbeddedRedis() as a, EmbeddedRedis() as b:
        assert a.port != b.port
        ca, cb = redis.Redis.from_url(a.url), redis.Redis.from_url(b.url)
        ca.set("k", b"a")
        assert cb.get("k") is None
        ca.close()
        cb.close()


# -- ensure_redis -----------------------------------------------------------------------------


def test_ensure_redis_uses_a_reachable_url(redis_url: str) -> None:
    assert ensure_redis(load_settings(RedisSettings, redis_url=redis_url)) == (redis_url, None)


def test_ensure_redis_unreachable_url_is_a_clear_store_error(closed_port: int) -> None:
    url = f"redis://:topsecret@127.0.0.1:{closed_port}/0"
    t0 = time.monotonic()
    with pytest.raises(StoreError, match=r"REDIS_URL redis://:\*\*\*@127\.0\.0\.1:\d+/0") as exc:
        ensure_redis(load_settings(RedisSettings, redis_url=url))
    assert "unreachable" in str(exc.value) and "topsecret" not in str(exc.value)
    assert time.monotonic() - t0 < 2.0


def test_ensure_redis_starts_the_embedded_default() -> None:
    url, handle = ensure_redis(load_settings(RedisSettings))
    assert handle is not None
    try:
        assert url == handle.url and redis.Redis.from_url(url).ping()
    finally:
        handle.stop()
    with pytest.raises(ConfigError, match="embedded"):
        ensure_redis(load_settings(RedisSettings, embedded=False))
