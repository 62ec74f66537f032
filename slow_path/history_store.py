"""`HistoryStore`: users' recent interactions, fed by `POST /v1/events`, read by both paths,
plus the debounce that turns new events into (few) trace refreshes.

Redis layout (`RedisHistoryStore`); the braces are literal, the user id is the Redis Cluster
hash tag, so a user's keys (and trace, see trace_store) share one slot and MULTI/Lua over them
works on a cluster:

    {prefix}:hist:{<user_id>}           list, oldest first; element b"<unix_ts:.3f> <item_id>";
                                        trimmed to the newest `max_len` on every append
    {prefix}:hist:{<user_id>}:new       int, events appended since the last refresh was enqueued
    {prefix}:hist:{<user_id>}:debounce  exists (with a PX expiry) while a refresh is debounced

`append` pushes, trims and counts in one MULTI. `should_refresh` is one Lua script: when the
counter has reached the threshold and no debounce key exists, it sets the debounce key, zeroes
the counter and returns True — exactly one concurrent caller wins each crossing. Events that
cross the threshold while debounced keep counting and fire on the first check after the
debounce expires; users who go quiet are covered by the beat schedule's stale-trace refresh.

Reads by the slow path (`get`, `get_events`, `fingerprint`) raise `StoreError` (the task
retries); the fast path's `get_many` is budgeted and degrades like the trace store's.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from sid_index.errors import ConfigError, DataError
from slow_path.errors import StoreError
from slow_path.redis_conn import read_pipeline
from slow_path.settings import StoreSettings
from slow_path.trace import DEFAULT_FINGERPRINT_WINDOW, history_fingerprint


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """One interaction."""

    item_id: str
    """Catalogue item id."""
    ts: float
    """Unix seconds (millisecond resolution in Redis)."""


@dataclass(frozen=True, slots=True)
class HistoryBatch:
    """Result of a budgeted batched history read."""

    histories: dict[str, list[str]]
    """Item ids, oldest first, of every user read (a user without history maps to [])."""
    unread: list[str]
    """Users not read because of a store error or the time budget."""
    timed_out: bool = False
    """The time budget ran out before every user was read."""


class HistoryStore(ABC):
    """Per-user capped interaction histories and the refresh debounce."""

    @abstractmethod
    def append(
        self, user_id: str, item_ids: Sequence[str], timestamps: Sequence[float] | None = None
    ) -> int:
        """Append events (oldest first; `timestamps` default to now), keep the newest
        `max_len`, count them toward the refresh threshold.

        Returns:
            The number of events now stored for the user.
        """

    @abstractmethod
    def get_events(self, user_id: str, n: int) -> list[HistoryEvent]:
        """The last `n` events, oldest first. Raises StoreError on store failure."""

    @abstractmethod
    def get_many(
        self, user_ids: Sequence[str], n: int, budget_s: float | None = None
    ) -> HistoryBatch:
        """The last `n` item ids of each user within `budget_s`; never raises for store
        trouble (unread users are listed in `unread`)."""

    @abstractmethod
    def should_refresh(self, user_id: str, min_new_events: int, min_interval_s: float) -> bool:
        """True exactly once per threshold crossing: when at least `min_new_events` events
        arrived since the last refresh and none was triggered in the last `min_interval_s`
        seconds (0: no debounce). A True resets the count; the caller enqueues the refresh."""

    @abstractmethod
    def mark_refreshed(self, user_id: str) -> None:
        """Zero the new-event count: a refresh was enqueued by another route (beat, manual)."""

    @abstractmethod
    def delete(self, user_id: str) -> None:
        """Forget a user's history and refresh state."""

    def get(self, user_id: str, n: int) -> list[str]:
        """The last `n` item ids, oldest first. Raises StoreError on store failure."""
        return [e.item_id for e in self.get_events(user_id, n)]

    def fingerprint(self, user_id: str, n: int = DEFAULT_FINGERPRINT_WINDOW) -> str:
        """`history_fingerprint` of the stored history (to compare with a trace's)."""
        return history_fingerprint(self.get(user_id, n), n)


def _check_events(
    user_id: str, item_ids: Sequence[str], timestamps: Sequence[float] | None
) -> list[float]:
    if not isinstance(user_id, str) or not user_id:
        raise DataError(f"history append: user id {user_id!r} must be a non-empty string")
    if any(not isinstance(i, str) or not i for i in item_ids):
        raise DataError(f"history append for user {user_id!r}: item ids must be non-empty strings")
    if timestamps is None:
        return [time.time()] * len(item_ids)
    if len(timestamps) != len(item_ids):
        raise DataError(
            f"history append for user {user_id!r}: {len(timestamps)} timestamps for "
            f"{len(item_ids)} items"
        )
    ts = [float(t) for t in timestamps]
    if not all(math.isfinite(t) and t >= 0 for t in ts):
        raise DataError(f"history append for user {user_id!r}: timestamps must be finite, >= 0")
    return ts


def _check_n(n: int) -> None:
    if n < 1:
        raise ConfigError(f"history read: {n=} must be >= 1")


# KEYS[1] counter, KEYS[2] debounce key; ARGV[1] min new events, ARGV[2] debounce ms (0: none).
_SHOULD_REFRESH_LUA = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n < tonumber(ARGV[1]) then return 0 end
if tonumber(ARGV[2]) > 0 then
  if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then return 0 end
end
redis.call('DEL', KEYS[1])
return 1
"""


class RedisHistoryStore(HistoryStore):
    """Histories in Redis (see the module docstring for the key layout)."""

    def __init__(
        self,
        client: Any,
        max_len: int = 200,
        key_prefix: str = "rr",
        ttl_s: float | None = None,
        read_budget_s: float = 0.02,
    ) -> None:
        """Args:
        client: `redis.Redis` (bytes replies) or `RedisCluster`.
        max_len: events kept per user.
        key_prefix: first key component.
        ttl_s: expire a user's history and counter this long after their last event (None:
            keep).
        read_budget_s: default budget of `get_many`.
        """
        if max_len < 1 or (ttl_s is not None and ttl_s <= 0) or read_budget_s <= 0:
            raise ConfigError(
                f"RedisHistoryStore: {max_len=} must be >= 1, {ttl_s=} > 0 or None, "
                f"{read_budget_s=} > 0"
            )
        self.client = client
        self.max_len = max_len
        self.key_prefix = key_prefix
        self.ttl_ms = None if ttl_s is None else max(1, round(ttl_s * 1000))
        self.read_budget_s = read_budget_s

    @classmethod
    def from_settings(cls, client: Any, settings: StoreSettings) -> RedisHistoryStore:
        """A store with the cap, key prefix, TTL and read budget of `settings`."""
        return cls(
            client,
            max_len=settings.history_max_len,
            key_prefix=settings.key_prefix,
            ttl_s=settings.history_ttl_s,
            read_budget_s=settings.trace_read_budget_s,
        )

    def key(self, user_id: str, suffix: str = "") -> str:
        """`{prefix}:hist:{<user_id>}` plus an optional `:suffix` (`new`, `debounce`)."""
        return f"{self.key_prefix}:hist:{{{user_id}}}" + (f":{suffix}" if suffix else "")

    def append(
        self, user_id: str, item_ids: Sequence[str], timestamps: Sequence[float] | None = None
    ) -> int:
        ts = _check_events(user_id, item_ids, timestamps)
        if not item_ids:
            return len(self.get_events(user_id, self.max_len))
        values = [f"{t:.3f} {i}".encode() for t, i in zip(ts, item_ids, strict=True)]
        hist, new = self.key(user_id), self.key(user_id, "new")
        pipe = self.client.pipeline(transaction=True)
        pipe.rpush(hist, *values)
        pipe.ltrim(hist, -self.max_len, -1)
        pipe.incrby(new, len(values))
        if self.ttl_ms is not None:
            pipe.pexpire(hist, self.ttl_ms)
            pipe.pexpire(new, self.ttl_ms)
        try:
            length = pipe.execute()[0]
        except redis.RedisError as exc:
            raise StoreError(f"appending history of user {user_id!r} failed: {exc}") from None
        return min(int(length), self.max_len)

    def get_events(self, user_id: str, n: int) -> list[HistoryEvent]:
        _check_n(n)
        try:
            raw = self.client.lrange(self.key(user_id), -n, -1)
        except redis.RedisError as exc:
            raise StoreError(f"reading history of user {user_id!r} failed: {exc}") from None
        return [_parse(user_id, v) for v in raw]

    def get_many(
        self, user_ids: Sequence[str], n: int, budget_s: float | None = None
    ) -> HistoryBatch:
        _check_n(n)
        users = list(dict.fromkeys(user_ids))
        budget = self.read_budget_s if budget_s is None else budget_s
        got = read_pipeline(self.client, [("LRANGE", self.key(u), -n, -1) for u in users], budget)
        histories: dict[str, list[str]] = {}
        unread = users[len(got.replies) :]
        for user, raw in zip(users, got.replies, strict=False):
            if isinstance(raw, list):
                histories[user] = [_parse(user, v).item_id for v in raw]
            else:  # a refused command (e.g. WRONGTYPE): unreadable, like an error
                unread.append(user)
        return HistoryBatch(histories, unread, got.timed_out)

    def should_refresh(self, user_id: str, min_new_events: int, min_interval_s: float) -> bool:
        if min_new_events < 1 or min_interval_s < 0:
            raise ConfigError(f"{min_new_events=} must be >= 1 and {min_interval_s=} >= 0")
        keys = (self.key(user_id, "new"), self.key(user_id, "debounce"))
        interval_ms = math.ceil(min_interval_s * 1000)
        try:
            fired = self.client.eval(_SHOULD_REFRESH_LUA, 2, *keys, min_new_events, interval_ms)
        except redis.RedisError as exc:
            raise StoreError(f"refresh debounce of user {user_id!r} failed: {exc}") from None
        return bool(fired)

    def mark_refreshed(self, user_id: str) -> None:
        try:
            self.client.delete(self.key(user_id, "new"))
        except redis.RedisError as exc:
            raise StoreError(f"resetting refresh count of user {user_id!r}: {exc}") from None

    def delete(self, user_id: str) -> None:
        keys = [self.key(user_id, s) for s in ("", "new", "debounce")]
        try:
            self.client.delete(*keys)
        except redis.RedisError as exc:
            raise StoreError(f"deleting history of user {user_id!r} failed: {exc}") from None


def _parse(user_id: str, value: bytes | str) -> HistoryEvent:
    raw = value.decode() if isinstance(value, bytes) else value
    ts, sep, item_id = raw.partition(" ")
    try:
        if not sep or not item_id:
            raise ValueError("no item id")
        return HistoryEvent(item_id, float(ts))
    except ValueError:
        raise StoreError(f"history of user {user_id!r} holds a malformed event {raw!r}") from None


class MemoryHistoryStore(HistoryStore):
    """In-process reference implementation (tests, single-process demos). Thread-safe."""

    def __init__(self, max_len: int = 200, clock: Any = time.monotonic) -> None:
        """Args:
        max_len: events kept per user.
        clock: monotonic seconds for the debounce (injectable for tests).
        """
        if max_len < 1:
            raise ConfigError(f"MemoryHistoryStore: {max_len=} must be >= 1")
        self.max_len = max_len
        self._clock = clock
        self._lock = threading.Lock()
        self._events: dict[str, deque[HistoryEvent]] = {}
        self._new: dict[str, int] = {}
        self._debounced_until: dict[str, float] = {}

    def append(
        self, user_id: str, item_ids: Sequence[str], timestamps: Sequence[float] | None = None
    ) -> int:
        ts = _check_events(user_id, item_ids, timestamps)
        with self._lock:
            events = self._events.setdefault(user_id, deque(maxlen=self.max_len))
            # Redis keeps milliseconds; round the same way so both stores read back alike.
            events.extend(
                HistoryEvent(i, float(f"{t:.3f}")) for i, t in zip(item_ids, ts, strict=True)
            )
            self._new[user_id] = self._new.get(user_id, 0) + len(item_ids)
            return len(events)

    def get_events(self, user_id: str, n: int) -> list[HistoryEvent]:
        _check_n(n)
        with self._lock:
            events = list(self._events.get(user_id, ()))
        return events[-n:]

    def get_many(
        self, user_ids: Sequence[str], n: int, budget_s: float | None = None
    ) -> HistoryBatch:
        _check_n(n)
        users = list(dict.fromkeys(user_ids))
        return HistoryBatch({u: self.get(u, n) for u in users}, [], False)

    def should_refresh(self, user_id: str, min_new_events: int, min_interval_s: float) -> bool:
        if min_new_events < 1 or min_interval_s < 0:
            raise ConfigError(f"{min_new_events=} must be >= 1 and {min_interval_s=} >= 0")
        with self._lock:
            if self._new.get(user_id, 0) < min_new_events:
                return False
            now = self._clock()
            if min_interval_s > 0:
                if self._debounced_until.get(user_id, -math.inf) > now:
                    return False
                self._debounced_until[user_id] = now + min_interval_s
            self._new.pop(user_id, None)
            return True

    def mark_refreshed(self, user_id: str) -> None:
        with self._lock:
            self._new.pop(user_id, None)

    def delete(self, user_id: str) -> None:
        with self._lock:
            self._events.pop(user_id, None)
            self._new.pop(user_id, None)
            self._debounced_until.pop(user_id, None)
