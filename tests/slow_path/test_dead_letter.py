"""Dead-letter records in Redis: layout, idempotent re-records, listing, resolving, errors."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sid_index.errors import ConfigError
from slow_path.dead_letter import MAX_ERROR_CHARS, DeadLetter, DeadLetterStore
from slow_path.errors import StoreError


def test_record_get_list_resolve(redis_client: Any) -> None:
    store = DeadLetterStore(redis_client, "dl", ttl_s=60)
    store.record([DeadLetter("u1", "boom", 3, "backfill", "t1", last_at=100.0),
                  DeadLetter("u2", "x" * 5000, 1, "event", "t2", last_at=200.0)])  # fmt: skip
    assert redis_client.exists("dl:dead:{u1}") and 0 < redis_client.pttl("dl:dead:{u1}") <= 60_000
    u1 = store.get("u1")
    assert u1 == DeadLetter("u1", "boom", 3, "backfill", "t1", first_at=100.0, last_at=100.0)
    u2 = store.get("u2")
    assert u2 is not None and len(u2.error) == MAX_ERROR_CHARS
    assert [d.user_id for d in store.recent()] == ["u2", "u1"] and store.count() == 2
    # Re-recording (a redelivered task) keeps first_at and updates the rest.
    store.record([DeadLetter("u1", "boom again", 4, "retry", "t3", last_at=300.0)])
    again = store.get("u1")
    assert again is not None and (again.first_at, again.last_at, again.attempts) == (
        100.0,
        300.0,
        4,
    )
    assert [d.user_id for d in store.recent(1)] == ["u1"]
    store.resolve(["u1", "never-dead"])
    assert store.get("u1") is None and store.count() == 1
    # An expired record disappears from the listing too.
    redis_client.delete("dl:dead:{u2}")
    assert store.recent() == [] and store.count() == 0


def test_failures_raise_store_error(closed_port: int) -> None:
    client = redis.Redis(port=closed_port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    store = DeadLetterStore(client)
    with pytest.raises(StoreError, match="recording 1 dead letters"):
        store.record([DeadLetter("u", "e", 1)])
    with pytest.raises(StoreError):
        store.get("u")
    with pytest.raises(ConfigError, match="ttl_s"):
        DeadLetterStore(client, ttl_s=0)
