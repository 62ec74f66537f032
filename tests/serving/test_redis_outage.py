"""Redis stopped mid-traffic: recommendations keep answering 200 in no-trace mode (flagged
`trace_status: error`, stored histories served as cold starts), readiness turns false, and the
metrics count the failed look-ups."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import redis

from slow_path.redis_conn import EmbeddedRedis
from slow_path.trace import Interest, Persona, Trace, Transition, history_fingerprint
from slow_path.trace_store import RedisTraceStore


def _error_lookups(tools: Any, port: int) -> float:
    status, text = tools.http(port, "GET", "/metrics")
    assert status == 200
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith('reasonrec_trace_lookups_total{result="error"}')
    )
    return float(line.rsplit(" ", 1)[1])


def test_redis_stopped_mid_traffic(start_server: Any, releases: Any, tools: Any) -> None:
    embedded = EmbeddedRedis().start()
    try:
        server = start_server(redis=embedded.url)
        port = server.http_port
        history = releases.history(11)[:6]
        client = redis.Redis.from_url(embedded.url)
        store = RedisTraceStore(client, ttl_s=600.0)
        for u in range(20):
            store.put(
                Trace(
                    user_id=f"o{u}", persona=Persona(id=1, name="p"),
                    interests=[Interest((0,), 1.0, "x")],
                    transition=Transition(text="t", next_interest=0), candidates=[], text="",
                    model_version="m", history_fingerprint=history_fingerprint(history),
                    created_at=time.time(),
                )
            )  # fmt: skip
        client.close()
        outcomes: list[tuple[float, int, str, str]] = []
        stop = threading.Event()
        lock = threading.Lock()

        def client_loop(seed: int) -> None:
            n = seed
            while not stop.is_set():
                n += 1
                body: dict[str, Any] = {"user_id": f"o{n % 20}", "k": 3}
                if n % 3:  # two thirds carry their history, one third reads the stored one
                    body["history"] = history
                status, got = tools.http(port, "POST", "/v1/recommend", body)
                with lock:
                    outcomes.append(
                        (time.monotonic(), status, got.get("trace_status", ""),
                         got.get("history_source", ""))
                    )  # fmt: skip

        threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(3)]
        for t in threads:
            t.start()
        tools.wait_for(lambda: len(outcomes) > 30, what="traffic before the outage")
        assert tools.http(port, "GET", "/readyz")[0] == 200
        errors_before = _error_lookups(tools, port)
        stopped_at = time.monotonic()
        embedded.stop()
        tools.wait_for(lambda: sum(t > stopped_at + 0.2 for t, *_ in outcomes) > 30, what="traffic")
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        embedded.stop()
    before = [o for o in outcomes if o[0] < stopped_at]
    after = [o for o in outcomes if o[0] > stopped_at + 0.2]
    assert Counter(status for _, status, _, _ in outcomes) == {200: len(outcomes)}  # no 5xx
    assert Counter(trace for _, _, trace, _ in before)["hit"] > 0
    assert {trace for _, _, trace, _ in after} <= {"error", "miss"}
    assert "error" in {trace for _, _, trace, _ in after}
    assert {src for *_, src in after} <= {"request", "error"}  # stored histories: cold starts
    status, ready = tools.http(port, "GET", "/readyz")
    assert status == 503 and ready["redis"] is False and ready["models_loaded"] is True
    assert _error_lookups(tools, port) >= errors_before + len(after) // 2
    # Events cannot be stored without Redis: an honest 503, never a 500.
    status, body = tools.http(
        port, "POST", "/v1/events", {"user_id": "o1", "events": [{"item_id": history[0]}]}
    )
    assert status == 503 and body["error"]["code"] == "unavailable"
