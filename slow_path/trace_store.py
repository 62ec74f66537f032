"""`TraceStore`: where the slow path leaves traces for the fast path.

Contract (every implementation, checked by the same contract tests):
- `get_many(user_ids, budget_s)` never raises for store trouble: unreadable users come back
  as misses, counted (`corrupt`, `errors`) and flagged (`timed_out`) in the `TraceBatch`; the
  fast path then serves them in no-trace mode.
- `put(trace)` never replaces a stored trace with an older one (by `created_at`, compared at
  microsecond resolution; an equal stamp overwrites, so a retried task is idempotent), sets
  the TTL, and returns whether it wrote. Store failures raise `StoreError` (the task retries).

Redis layout (`RedisTraceStore`), one string per user:

    {prefix}:trace:{<user_id>}  =  16 ASCII digits: created_at in microseconds, zero-padded
                                   ++ Trace.to_bytes()  (version byte + msgpack)

The braces are literal: they make `<user_id>` the Redis Cluster hash tag, so every key of one
user (trace, history, debounce counters) lives in one slot, and the keys shard by user. The
fixed-width decimal header lets the put script compare stamps with a plain string compare
(exact, no float rounding in Lua) without decoding msgpack. Reads are pipelined GETs, chunked
(MGET across slots fails on a cluster), under a time budget.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from sid_index.errors import ConfigError
from slow_path.errors import StoreError, TraceError
from slow_path.redis_conn import read_pipeline
from slow_path.settings import StoreSettings
from slow_path.trace import Trace

log = logging.getLogger(__name__)

STAMP_DIGITS = 16
"""Width of the created_at header (microseconds; enough until the year 2286)."""
MAX_CLOCK_SKEW_S = 300.0
"""How far in the future a trace's created_at may lie when it is written."""
_STAMP_RE = re.compile(rb"\d{%d}" % STAMP_DIGITS)


@dataclass(frozen=True, slots=True)
class TraceBatch:
    """Result of a batched trace read. Every requested user is in exactly one of hits/misses."""

    hits: dict[str, Trace]
    """Decoded traces by user id."""
    misses: list[str]
    """Users without a usable trace (absent, expired, corrupt, or not read in time)."""
    corrupt: int = 0
    """Stored values that did not decode (bad bytes, unknown schema version); among misses."""
    errors: int = 0
    """Users not read because of a store error or the time budget; among misses."""
    timed_out: bool = False
    """The time budget ran out before every user was read."""
    elapsed_s: float = field(default=0.0, compare=False)
    """Wall time of the read."""


def trace_stamp(trace: Trace) -> int:
    """The integer microsecond stamp that orders traces in every store.

    Raises:
        TraceError: `created_at` lies more than MAX_CLOCK_SKEW_S in the future: stored, such a
            trace would block every genuine update until it expired.
    """
    if trace.created_at > time.time() + MAX_CLOCK_SKEW_S:
        raise TraceError(
            f"trace of user {trace.user_id!r}: created_at {trace.created_at} is more than "
            f"{MAX_CLOCK_SKEW_S:.0f} s in the future (clock skew?)"
        )
    return round(trace.created_at * 1_000_000)


class TraceStore(ABC):
    """Where traces live between the slow and the fast path (see the module docstring)."""

    @abstractmethod
    def get_many(self, user_ids: Sequence[str], budget_s: float | None = None) -> TraceBatch:
        """Read the traces of `user_ids` (duplicates are read once) within `budget_s` seconds
        (None: the store's default budget). Never raises for store trouble."""

    @abstractmethod
    def put_many(self, traces: Sequence[Trace]) -> list[bool]:
        """Write traces (each unless the stored one is newer), with the TTL.

        Returns:
            Per trace, whether it was written.

        Raises:
            StoreError: the store failed; some traces may have been written (safe to retry).
        """

    @abstractmethod
    def delete(self, user_id: str) -> bool:
        """Remove a user's trace; True when there was one. Raises StoreError on failure."""

    def get(self, user_id: str, budget_s: float | None = None) -> Trace | None:
        """One user's trace, or None (absent, expired, unreadable or not read in time)."""
        return self.get_many([user_id], budget_s).hits.get(user_id)

    def put(self, trace: Trace) -> bool:
        """Write one trace unless the stored one is newer; True when written."""
        return self.put_many([trace])[0]


def trace_key(user_id: str, key_prefix: str = "rr") -> str:
    """`{prefix}:trace:{<user_id>}`: the braces make the user id the Cluster hash tag."""
    return f"{key_prefix}:trace:{{{user_id}}}"


# KEYS[1] trace key; ARGV[1] new stamp (STAMP_DIGITS digits), ARGV[2] value, ARGV[3] TTL ms.
# Fixed-width zero-padded digits compare as strings exactly as they do as numbers. A stored
# value whose header is not digits (corrupt) is overwritten.
_PUT_LUA = """
local width = #ARGV[1]
local cur = redis.call('GET', KEYS[1])
if cur and #cur >= width then
  local stamp = string.sub(cur, 1, width)
  if string.match(stamp, '^%d+$') and stamp > ARGV[1] then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


class RedisTraceStore(TraceStore):
    """Traces in Redis (standalone, or Redis Cluster through `redis.cluster.RedisCluster`).

    The client must return bytes (`decode_responses=False`; `redis_client()` does). On the
    fast path, build it with a connect timeout near the read budget and no retries.
    """

    def __init__(
        self,
        client: Any,
        ttl_s: float,
        key_prefix: str = "rr",
        read_budget_s: float = 0.02,
        chunk: int = 256,
    ) -> None:
        """Args:
        client: `redis.Redis` (budgeted raw pipelined reads) or `RedisCluster`.
        ttl_s: lifetime of a written trace (> 0).
        key_prefix: first key component.
        read_budget_s: default budget of `get_many`.
        chunk: GETs (or script calls) per round trip.
        """
        if ttl_s <= 0 or read_budget_s <= 0 or chunk < 1:
            raise ConfigError(
                f"RedisTraceStore: {ttl_s=} and {read_budget_s=} must be > 0, {chunk=} >= 1"
            )
        self.client = client
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.key_prefix = key_prefix
        self.read_budget_s = read_budget_s
        self.chunk = chunk

    @classmethod
    def from_settings(cls, client: Any, settings: StoreSettings) -> RedisTraceStore:
        """A store with the TTL, key prefix and read budget of `settings`."""
        return cls(client, settings.trace_ttl_s, settings.key_prefix, settings.trace_read_budget_s)

    def key(self, user_id: str) -> str:
        """The Redis key of a user's trace."""
        return trace_key(user_id, self.key_prefix)

    def get_many(self, user_ids: Sequence[str], budget_s: float | None = None) -> TraceBatch:
        t0 = time.monotonic()
        users = list(dict.fromkeys(user_ids))
        budget = self.read_budget_s if budget_s is None else budget_s
        commands = [("GET", self.key(u)) for u in users]
        got = read_pipeline(self.client, commands, budget, self.chunk)
        hits: dict[str, Trace] = {}
        misses: list[str] = []
        corrupt = 0
        for user, raw in zip(users, got.replies, strict=False):
            trace = None
            if isinstance(raw, bytes | bytearray):
                trace = _decode(user, raw)
                corrupt += trace is None
            elif raw is not None:
                corrupt += 1
                log.warning("trace of user %r: unexpected reply %r", user, raw)
            if trace is None:
                misses.append(user)
            else:
                hits[user] = trace
        unread = users[len(got.replies) :]
        misses.extend(unread)
        if got.error is not None or got.timed_out:
            # Debug, not warning: during an outage this fires on every request; the caller
            # counts `errors`/`timed_out` in metrics instead.
            log.debug(
                "trace read of %d users stopped after %d: %s",
                len(users),
                len(got.replies),
                got.error or "time budget",
            )
        return TraceBatch(hits, misses, corrupt, len(unread), got.timed_out, time.monotonic() - t0)

    def put_many(self, traces: Sequence[Trace]) -> list[bool]:
        out: list[bool] = []
        stamps = [trace_stamp(t) for t in traces]
        for start in range(0, len(traces), self.chunk):
            pipe = self.client.pipeline(transaction=False)
            for trace, stamp in zip(
                traces[start : start + self.chunk], stamps[start : start + self.chunk], strict=True
            ):
                header = b"%0*d" % (STAMP_DIGITS, stamp)
                pipe.execute_command(
                    "EVAL", _PUT_LUA, 1, self.key(trace.user_id), header,
                    header + trace.to_bytes(), self.ttl_ms,
                )  # fmt: skip
            try:
                out.extend(bool(r) for r in pipe.execute())
            except redis.RedisError as exc:
                raise StoreError(
                    f"writing {len(traces)} traces (first user {traces[start].user_id!r}) "
                    f"failed: {type(exc).__name__}: {exc}"
                ) from None
        return out

    def delete(self, user_id: str) -> bool:
        try:
            return bool(self.client.delete(self.key(user_id)))
        except redis.RedisError as exc:
            raise StoreError(f"deleting trace of user {user_id!r} failed: {exc}") from None


def _decode(user_id: str, raw: bytes | bytearray) -> Trace | None:
    """Strip the stamp header and decode; None (logged) for a corrupt or foreign value."""
    if not _STAMP_RE.match(raw[:STAMP_DIGITS]):
        log.warning("trace of user %r: value has no stamp header (%d bytes)", user_id, len(raw))
        return None
    try:
        trace = Trace.from_bytes(memoryview(raw)[STAMP_DIGITS:])
    except TraceError as exc:
        log.warning("trace of user %r unreadable: %s", user_id, exc)
        return None
    if trace.user_id != user_id:
        log.warning("trace under user %r belongs to %r", user_id, trace.user_id)
        return None
    return trace


class MemoryTraceStore(TraceStore):
    """In-process reference implementation (tests, single-process demos). Thread-safe."""

    def __init__(self, ttl_s: float, clock: Any = time.monotonic) -> None:
        """Args:
        ttl_s: lifetime of a written trace (> 0).
        clock: monotonic seconds (injectable for tests).
        """
        if ttl_s <= 0:
            raise ConfigError(f"MemoryTraceStore: {ttl_s=} must be > 0")
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        # user id -> (expiry on self._clock, stamp, serialized trace): stored serialized so a
        # reader gets its own copy and the wire format is exercised as in Redis.
        self._data: dict[str, tuple[float, int, bytes]] = {}

    def get_many(self, user_ids: Sequence[str], budget_s: float | None = None) -> TraceBatch:
        t0 = time.monotonic()
        users = list(dict.fromkeys(user_ids))
        hits: dict[str, Trace] = {}
        misses: list[str] = []
        now = self._clock()
        with self._lock:
            entries = {u: self._data.get(u) for u in users}
        for u, entry in entries.items():
            if entry is None or entry[0] <= now:
                misses.append(u)
                continue
            trace = _decode(u, b"%0*d" % (STAMP_DIGITS, entry[1]) + entry[2])
            if trace is None:
                misses.append(u)
            else:
                hits[u] = trace
        return TraceBatch(hits, misses, 0, 0, False, time.monotonic() - t0)

    def put_many(self, traces: Sequence[Trace]) -> list[bool]:
        out: list[bool] = []
        prepared = [(t.user_id, trace_stamp(t), t.to_bytes()) for t in traces]
        with self._lock:
            now = self._clock()
            for user, stamp, blob in prepared:
                cur = self._data.get(user)
                if cur is not None and cur[0] > now and cur[1] > stamp:
                    out.append(False)
                    continue
                self._data[user] = (now + self.ttl_s, stamp, blob)
                out.append(True)
        return out

    def delete(self, user_id: str) -> bool:
        with self._lock:
            cur = self._data.pop(user_id, None)
        return cur is not None and cur[0] > self._clock()
