"""Dead letters: users the slow path gave up on, kept in Redis for an operator to look at.

A user is dead-lettered when their reasoner output failed to parse `user_max_attempts` times,
or when the task holding them exhausted its retries (store or broker trouble, a broken
backend). Layout (the braces are literal: the user id is the Redis Cluster hash tag)::

    {prefix}:dead:{<user_id>}   hash: user, error, attempts, reason, task_id, first_at, last_at
    {prefix}:dead:index         sorted set of user ids, scored by last_at (for listing)

Recording is idempotent (a redelivered task overwrites the same hash); a later successful
trace write for the user removes the record (`resolve`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from sid_index.errors import ConfigError
from slow_path.errors import StoreError

MAX_ERROR_CHARS = 2000
"""Error text kept per record."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One user the slow path gave up on."""

    user_id: str
    """The user."""
    error: str
    """Why the last attempt failed (parser problems or the exception)."""
    attempts: int
    """Attempts made for the user."""
    reason: str = ""
    """What had enqueued the work: backfill, event, stale, manual, ..."""
    task_id: str = ""
    """Celery task id of the last attempt."""
    first_at: float = 0.0
    """Unix seconds of the first dead-lettering (kept across re-records)."""
    last_at: float = 0.0
    """Unix seconds of the latest dead-lettering."""


class DeadLetterStore:
    """Dead-letter records in Redis (see the module docstring)."""

    def __init__(self, client: Any, key_prefix: str = "rr", ttl_s: float = 30 * 86400.0) -> None:
        """Args:
        client: `redis.Redis` returning bytes.
        key_prefix: first key component (shared with the trace and history stores).
        ttl_s: a record expires this long after it was last written.
        """
        if ttl_s <= 0:
            raise ConfigError(f"DeadLetterStore: {ttl_s=} must be > 0")
        self.client = client
        self.key_prefix = key_prefix
        self.ttl_ms = max(1, round(ttl_s * 1000))

    def key(self, user_id: str) -> str:
        """`{prefix}:dead:{<user_id>}`."""
        return f"{self.key_prefix}:dead:{{{user_id}}}"

    @property
    def index_key(self) -> str:
        """Sorted set of dead-lettered user ids."""
        return f"{self.key_prefix}:dead:index"

    def record(self, letters: Sequence[DeadLetter]) -> None:
        """Write (or overwrite) records in one round trip. Raises StoreError on failure."""
        if not letters:
            return
        pipe = self.client.pipeline(transaction=False)
        now = time.time()
        for d in letters:
            key = self.key(d.user_id)
            at = d.last_at or now
            pipe.hsetnx(key, "first_at", repr(d.first_at or at))
            pipe.hset(
                key,
                mapping={
                    "user": d.user_id,
                    "error": d.error[:MAX_ERROR_CHARS],
                    "attempts": str(d.attempts),
                    "reason": d.reason,
                    "task_id": d.task_id,
                    "last_at": repr(at),
                },
            )
            pipe.pexpire(key, self.ttl_ms)
            pipe.zadd(self.index_key, {d.user_id: at})
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"recording {len(letters)} dead letters failed: {exc}") from None

    def get(self, user_id: str) -> DeadLetter | None:
        """A user's record, or None. Raises StoreError on failure."""
        return self.get_many([user_id]).get(user_id)

    def get_many(self, user_ids: Sequence[str]) -> dict[str, DeadLetter]:
        """Records of the users that have one. Raises StoreError on failure."""
        pipe = self.client.pipeline(transaction=False)
        for u in user_ids:
            pipe.hgetall(self.key(u))
        try:
            raw = pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"reading dead letters failed: {exc}") from None
        return {u: _decode(u, h) for u, h in zip(user_ids, raw, strict=True) if h}

    def recent(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent records (at most `limit`), newest first."""
        try:
            users = [
                u.decode() if isinstance(u, bytes) else str(u)
                for u in self.client.zrevrange(self.index_key, 0, max(0, limit - 1))
            ]
        except redis.RedisError as exc:
            raise StoreError(f"listing dead letters failed: {exc}") from None
        found = self.get_many(users)
        # Records expire on their own; drop index entries whose hash is gone.
        gone = [u for u in users if u not in found]
        if gone:
            self.client.zrem(self.index_key, *gone)
        return [found[u] for u in users if u in found]

    def count(self) -> int:
        """Users in the index (expired records may still be counted until listed)."""
        try:
            return int(self.client.zcard(self.index_key))
        except redis.RedisError as exc:
            raise StoreError(f"counting dead letters failed: {exc}") from None

    def resolve(self, user_ids: Sequence[str]) -> None:
        """Forget the records of users that now have a trace. Raises StoreError on failure."""
        if not user_ids:
            return
        pipe = self.client.pipeline(transaction=False)
        for u in user_ids:
            pipe.delete(self.key(u))
        pipe.zrem(self.index_key, *user_ids)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"resolving dead letters failed: {exc}") from None


def _decode(user_id: str, h: dict[bytes, bytes]) -> DeadLetter:
    def field(name: str, default: str = "") -> str:
        v = h.get(name.encode(), h.get(name))  # type: ignore[call-overload]
        return v.decode() if isinstance(v, bytes) else (default if v is None else str(v))

    try:
        attempts = int(field("attempts", "0"))
        first_at, last_at = float(field("first_at", "0")), float(field("last_at", "0"))
    except ValueError:
        attempts, first_at, last_at = 0, 0.0, 0.0
    return DeadLetter(
        user_id=user_id,
        error=field("error"),
        attempts=attempts,
        reason=field("reason"),
        task_id=field("task_id"),
        first_at=first_at,
        last_at=last_at,
    )
