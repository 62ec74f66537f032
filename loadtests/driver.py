"""The asyncio load driver shared by the gRPC generator and the soak run.

Two ways to load a server, both bounded by a duration and a request count:

* **fixed rate** (open loop): request i is due at `t0 + i / rate` whatever the server does, as
  independent users arrive. Latency is measured from the *due* time, not the send time, so a
  server that falls behind is charged for the queueing it causes (no coordinated omission, as
  in wrk2). In-flight requests are capped (`max_in_flight`); a request that waits for a slot
  is charged that wait too.
* **fixed concurrency** (closed loop): `concurrency` clients, each sending its next request
  when its last answer arrived; measures capacity at that parallelism.

Requests sent during `warmup_s` are made but not recorded. A request is one call of a
`Channel.send`; it fails by raising `RequestFailed(kind)` (any other exception counts under its
class name, a request past `timeout_s` as `timeout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from loadtests.slo import LatencyRecorder
from sid_index.errors import ConfigError


class RequestFailed(Exception):
    """A request got an answer that is not a success (`kind` names it, e.g. `http_503`)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """How hard and how long to load."""

    rate: float | None = None
    """Requests per second (open loop); exactly one of `rate` and `concurrency` is set."""
    concurrency: int | None = None
    """Concurrent clients (closed loop)."""
    duration_s: float = 10.0
    """Measured seconds (after the warm-up)."""
    max_requests: int | None = None
    """Stop after this many requests (warm-up included); None: only the duration bounds."""
    warmup_s: float = 0.0
    """Seconds of load before measuring (connections, first batches, allocator growth)."""
    max_in_flight: int = 256
    """Open loop: most requests outstanding at once."""
    timeout_s: float = 10.0
    """Per-request deadline; a request past it is a `timeout` failure."""

    def __post_init__(self) -> None:
        if (self.rate is None) == (self.concurrency is None):
            raise ConfigError(
                f"exactly one of rate={self.rate} and concurrency={self.concurrency} must be set"
            )
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"{self.rate=} must be > 0")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"{self.concurrency=} must be >= 1")
        if not self.duration_s > 0:
            raise ConfigError(f"{self.duration_s=} must be > 0")
        if self.max_requests is not None and self.max_requests < 1:
            raise ConfigError(f"{self.max_requests=} must be >= 1")
        if self.warmup_s < 0:
            raise ConfigError(f"{self.warmup_s=} must be >= 0")
        if self.max_in_flight < 1:
            raise ConfigError(f"{self.max_in_flight=} must be >= 1")
        if not self.timeout_s > 0:
            raise ConfigError(f"{self.timeout_s=} must be > 0")

    @property
    def mode(self) -> str:
        return "rate" if self.rate is not None else "concurrency"

    @property
    def offered(self) -> float:
        return float(self.rate if self.rate is not None else self.concurrency)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Channel:
    """One way to send a request (e.g. HTTP or gRPC) and its share of the traffic."""

    name: str
    send: Callable[[int], Awaitable[None]]
    """Sends request number i; raises RequestFailed for a non-success answer."""
    weight: float = 1.0


@dataclass
class DriveResult:
    """Per-channel recorders and the measured window."""

    recorders: dict[str, LatencyRecorder]
    window_s: float
    sent: int
    """Requests sent, warm-up included."""


def require_loopback(host: str, *, allow_remote: bool = False) -> None:
    """ConfigError unless `host` (a name, an address or a URL) resolves to loopback only.

    Load tools aim at a server on this machine; loading someone else's is opt-in.
    """
    if allow_remote:
        return
    name = urlsplit(host).hostname if "//" in host else host.rsplit(":", 1)[0]
    name = (name or "").strip("[]")
    try:
        infos = socket.getaddrinfo(name, None)
    except socket.gaierror as exc:
        raise ConfigError(f"target host {name!r} does not resolve ({exc})") from None
    addresses = {str(i[4][0]) for i in infos}
    remote = sorted(a for a in addresses if not ipaddress.ip_address(a).is_loopback)
    if remote:
        raise ConfigError(
            f"target {host!r} resolves to non-loopback {', '.join(remote)}; load tools target "
            "loopback unless --allow-remote is given"
        )


def _schedule(channels: Sequence[Channel]) -> Callable[[int], Channel]:
    """Deterministic weighted round-robin: request i goes to the channel most behind its share."""
    if len(channels) == 1:
        only = channels[0]
        return lambda _i: only
    total = sum(c.weight for c in channels)
    if total <= 0 or any(c.weight < 0 for c in channels):
        raise ConfigError(f"channel weights {[c.weight for c in channels]} must be >= 0, sum > 0")
    shares = [c.weight / total for c in channels]
    counts = [0] * len(channels)

    def pick(i: int) -> Channel:
        j = max(range(len(channels)), key=lambda c: shares[c] * (i + 1) - counts[c])
        counts[j] += 1
        return channels[j]

    return pick


async def drive(
    plan: LoadPlan, channels: Sequence[Channel], *, on_request: Callable[[], None] | None = None
) -> DriveResult:
    """Run `plan` over `channels`; `on_request` is called after each request (progress bars)."""
    if not channels:
        raise ConfigError("drive() needs at least one channel")
    loop = asyncio.get_running_loop()
    pick = _schedule(channels)
    recorders = {c.name: LatencyRecorder() for c in channels}
    t0 = loop.time()
    record_from = t0 + plan.warmup_s
    stop_at = record_from + plan.duration_s
    limit = plan.max_requests
    sent = 0

    async def one(i: int, due: float) -> None:
        channel = pick(i)
        rec = recorders[channel.name]
        try:
            await asyncio.wait_for(channel.send(i), plan.timeout_s)
        except RequestFailed as exc:
            failure: str | None = exc.kind
        except TimeoutError:
            failure = "timeout"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a client-side error is still a failed request
            failure = type(exc).__name__
        else:
            failure = None
        if due >= record_from:
            if failure is None:
                rec.ok(loop.time() - due)
            else:
                rec.fail(failure)
        if on_request is not None:
            on_request()

    if plan.rate is not None:
        slots = asyncio.Semaphore(plan.max_in_flight)
        tasks: set[asyncio.Task[None]] = set()

        async def held(i: int, due: float) -> None:
            try:
                await one(i, due)
            finally:
                slots.release()

        interval = 1.0 / plan.rate
        while limit is None or sent < limit:
            due = t0 + sent * interval
            if due >= stop_at:
                break
            if (delay := due - loop.time()) > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            task = loop.create_task(held(sent, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if tasks:
            await asyncio.wait(tasks, timeout=plan.timeout_s + 1.0)
        for task in list(tasks):  # only past their own deadline: wait_for already cancels them
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    else:
        assert plan.concurrency is not None
        counter = 0

        async def client() -> None:
            nonlocal counter
            while (now := loop.time()) < stop_at and (limit is None or counter < limit):
                i = counter
                counter += 1
                await one(i, now)

        await asyncio.gather(*(client() for _ in range(plan.concurrency)))
        sent = counter
    # Until the last answer: a server that falls behind stretches the window and so shows a
    # lower achieved QPS than the offered rate.
    end = loop.time()
    window = end - record_from if end > record_from else 0.0
    return DriveResult(recorders, window, sent)
