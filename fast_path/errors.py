"""Errors raised by fast_path. Only `serving` maps them to HTTP/gRPC codes: `RequestError` and
its subclasses are the client's fault (4xx / INVALID_ARGUMENT), `UnavailableError` means the
server cannot take the request now (503 / RESOURCE_EXHAUSTED or UNAVAILABLE)."""

from __future__ import annotations

from collections.abc import Iterable

from sid_index.errors import ReasonrecError


class FastPathError(ReasonrecError):
    """Base of the errors fast_path raises on purpose."""


class RequestError(FastPathError):
    """A recommendation request is invalid (k or num_beams out of range, unknown domain, ...)."""


class UnknownItemError(RequestError):
    """The request's history names items that are not in the release's catalogue."""

    def __init__(self, item_ids: Iterable[str]) -> None:
        self.item_ids: tuple[str, ...] = tuple(dict.fromkeys(item_ids))
        shown = ", ".join(repr(i) for i in self.item_ids[:10])
        more = f" and {len(self.item_ids) - 10} more" if len(self.item_ids) > 10 else ""
        super().__init__(f"{len(self.item_ids)} unknown item id(s) in the history: {shown}{more}")


class EmptyHistoryError(RequestError):
    """No history in the request nor in the store, and cold start is disabled."""


class UnavailableError(FastPathError):
    """The fast path cannot take the request now (retry later or elsewhere)."""


class OverloadedError(UnavailableError):
    """The micro-batcher's queue is full."""


class BatcherStoppedError(UnavailableError):
    """The micro-batcher is not running (not started yet, or stopping)."""
