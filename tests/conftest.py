"""Shared fixtures. Servers are real (Redis-compatible, Celery, HTTP, gRPC) on loopback."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

# Offline everywhere: no hub downloads exist here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# -- Redis (slow_path stores, Celery broker) --------------------------------------------------


def _machine_redis_url() -> str | None:
    """`redis://127.0.0.1:6379/15` when a Redis there answers PING within a fraction of a
    second (db 15, so tests stay out of the default db); None otherwise."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.2) as sock:
            sock.settimeout(0.5)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            if not sock.recv(64).startswith(b"+PONG"):
                return None
    except OSError:
        return None
    return "redis://127.0.0.1:6379/15"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis-compatible server for the session: the machine's Redis on
    127.0.0.1:6379 when reachable, else an embedded valkey server started here."""
    url = _machine_redis_url()
    if url is not None:
        yield url
        return
    from slow_path.redis_conn import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    """A `redis.Redis` (bytes replies) on `redis_url`, its db flushed before the test."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5.0, socket_connect_timeout=2.0)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def silent_server() -> Iterator[tuple[str, int]]:
    """(host, port) of a loopback TCP server that accepts connections and never answers:
    a stand-in for a stalled Redis, to test time budgets."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(conn)  # held open, never read from or written to

    thread = threading.Thread(target=serve, name="silent-server", daemon=True)
    thread.start()
    yield "127.0.0.1", int(listener.getsockname()[1])
    stop.set()
    thread.join(timeout=2)
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
