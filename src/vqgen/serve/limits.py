"""Connection limits for the server: no client holds a connection by sending slowly.

uvicorn times out only an idle keep-alive connection (``timeout_keep_alive``); a client that
opens a connection and sends nothing, or sends its request line, headers or body a byte a
second, is otherwise held forever. :class:`ReadDeadlineProtocol` is uvicorn's h11 protocol with
one more timer: each request (line, headers and body) must arrive within ``read_timeout``
seconds of the connection opening or of its first byte; else the client is answered 408 and
disconnected. The other limits are uvicorn's own settings (:func:`uvicorn_options`).
"""
from __future__ import annotations

import asyncio
import functools
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("vqgen.serve")

_TIMEOUT_BODY = b"request not received in time\n"
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                     b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))
_REQUEST_READ = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)  # h11 states past reading a request


class ReadDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for reading each request (see the module doc)."""

    def __init__(self, *args, read_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout
        self.read_deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self.read_deadline is None:
            self.read_deadline = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _disarm(self) -> None:
        if self.read_deadline is not None:
            self.read_deadline.cancel()
            self.read_deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # the first request must come in time too

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state not in _REQUEST_READ:
            self._arm()  # the first bytes of a request after an idle keep-alive wait
        super().data_received(data)
        if self.conn.their_state in _REQUEST_READ or self.transport.is_closing():
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _read_timed_out(self) -> None:
        self.read_deadline = None
        if self.transport.is_closing() or self.conn.their_state in _REQUEST_READ:
            return
        log.info("closing a connection from %s: no whole request within %g s",
                 "%s:%d" % self.client if self.client else "?", self.read_timeout)
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # nothing of a response sent yet
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


def uvicorn_options(limits) -> dict:
    """Keyword arguments for ``uvicorn.Config`` that apply ``limits`` (a ``server.ServerLimits``)."""
    return dict(http=functools.partial(ReadDeadlineProtocol, read_timeout=limits.read_timeout),
                timeout_keep_alive=limits.keep_alive, limit_concurrency=limits.max_connections,
                h11_max_incomplete_event_size=limits.max_header_bytes)
