"""What one client may cost the server: decoded pixels per request and in flight, and how long it may take to send.

A request's images are sized from their headers before any is decoded: above the per-request pixel budget the
request is refused (413); when the images of every request being decoded or scored would pass the in-flight budget,
it is refused for now (503, retry). Slow clients are cut off by the HTTP protocol below: headers must arrive within
a deadline and a body must keep arriving, so unfinished requests cannot hold connections (and file descriptors).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from contextlib import contextmanager

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("retune.server")


class PixelBudgetExceeded(Exception):
    """One request's images would decode to more pixels than a request may (413)."""


class ServerBusy(Exception):
    """The images in flight already fill the server's pixel budget (503: retry shortly)."""


class PixelBudget:
    """Decoded pixels of the requests in flight, bounded; used from the event loop only (no lock needed)."""

    def __init__(self, per_request: int, in_flight: int) -> None:
        self.per_request, self.in_flight, self.used = per_request, in_flight, 0

    @contextmanager
    def reserve(self, pixels: int):
        """Hold ``pixels`` while a request's images are decoded and scored; refused beyond either budget."""
        if pixels > self.per_request:
            raise PixelBudgetExceeded(
                f"the images of this request decode to {pixels:,} pixels, more than the {self.per_request:,} one "
                "request may; send fewer or smaller images per request"
            )
        if self.used + pixels > self.in_flight:
            raise ServerBusy(f"server busy: {self.used:,} pixels being decoded or scored; retry shortly")
        self.used += pixels
        try:
            yield
        finally:
            self.used -= pixels


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with read deadlines: a request's headers must arrive within ``header_timeout`` seconds
    of the connection (or of the previous response), and its body may pause at most ``body_timeout`` seconds;
    otherwise the connection is closed and one line logged. ``deadline_protocol`` makes one with other deadlines."""

    header_timeout = 10.0
    body_timeout = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm(self.header_timeout, "headers")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._arm(self.body_timeout, "body")  # re-armed by every chunk
        elif state is not h11.IDLE:  # the request is read (DONE) or the connection is over
            self._disarm()

    def on_response_complete(self) -> None:
        self._arm(self.header_timeout, "headers")
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float, part: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow, part, seconds)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, part: str, seconds: float) -> None:
        if not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.warning("closed %s: request %s not received within %g s", client, part, seconds)
            self.transport.close()


def deadline_protocol(header_timeout: float, body_timeout: float) -> type[DeadlineH11Protocol]:
    """The protocol class uvicorn's ``http=`` takes, with these read deadlines in seconds."""
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,), {"header_timeout": header_timeout,
                                                                "body_timeout": body_timeout})


def connection_cap(reserve: int = 64) -> int:
    """Connections uvicorn may hold open: this process's open-files limit less ``reserve`` for its own files, so a
    flood of connections is answered 503 rather than failing to accept (requests are capped separately)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(soft - reserve, 1) if soft != resource.RLIM_INFINITY else 65536


def raise_open_files_limit(wanted: int = 65536) -> int:
    """Raise this process's soft limit on open files towards ``wanted`` (never above the hard limit), so many
    concurrent connections do not run out of descriptors before the deadlines close the slow ones; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft
