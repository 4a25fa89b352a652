"""Slow and greedy clients: connection-level limits uvicorn does not have, and the server runner.

uvicorn waits forever for a request head that trickles in a byte at a time (its keep-alive timer
is cancelled by any byte), does not bound the size of a head with httptools, and its
``limit_concurrency`` answers 503 to every new request, /healthz included, once slow connections
fill it. :class:`GuardedProtocol` adds, per connection:

- a deadline for each request head (``header_timeout_s``), armed when the connection opens and
  again after each response; a head not complete by then closes the connection;
- a cap on head size (``max_header_bytes``: 431);
- past ``max_connections``, the connection that has waited longest for its head is closed, so a
  slowloris fills the table only with connections that are evicted first.

:class:`BodyTimeout` (ASGI middleware) gives each request body ``body_timeout_s`` to arrive; a body
still trickling then gets 408 (:class:`BodyReadTimeout`) and the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from observer.config import CollectorSettings


class GuardedProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 2048

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head = True  # the parser is between messages or inside a request head
        self._head_bytes, self._head_tail = 0, b""
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_deadline()
        if len(self.connections) > self.max_connections:
            self._evict_slowest()

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_since = time.monotonic()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_deadline)

    def _cancel_head_deadline(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_deadline(self) -> None:
        self._head_timer = None
        if self._waiting_for_head() and not self.transport.is_closing():
            self.transport.close()

    def _evict_slowest(self) -> None:
        waiting = [
            c
            for c in self.connections
            if isinstance(c, GuardedProtocol) and c._waiting_for_head() and not c.transport.is_closing()
        ]
        if waiting:
            min(waiting, key=lambda c: c._head_since).transport.close()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            # Only the bytes up to the blank line end the head; what follows in the chunk is body.
            window = self._head_tail + data
            end = window.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._head_tail))
            self._head_tail = data[-3:]
            if self._head_bytes > self.max_header_bytes:
                self._cancel_head_deadline()
                self.transport.write(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                    b"content-length: 0\r\nconnection: close\r\n\r\n"
                )
                self.transport.close()
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_deadline()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head, self._head_bytes, self._head_tail = True, 0, b""
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)


class BodyReadTimeout(Exception):
    """Raised from ``receive`` when the body is late; the app answers 408 (see create_app)."""


class BodyTimeout:
    """ASGI middleware: a request body must arrive completely within ``timeout_s``; no NUL in URLs."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if b"%00" in scope.get("query_string", b"").lower() or "\x00" in scope.get("path", ""):
            # No text column takes a NUL (PostgreSQL refuses it): a 400 here, not a failed query.
            await _reply(send, 400, b'{"error":"NUL character in the URL"}')
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        body_done = False

        async def guarded_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise BodyReadTimeout from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, guarded_receive, send)


async def _reply(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def raise_open_files_limit(wanted: int) -> int:
    """Lift the soft RLIMIT_NOFILE toward the hard limit so max_connections fit; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def run(app: Any, host: str, port: int, cfg: CollectorSettings) -> None:
    """Serve ``app`` with the connection guards from ``cfg`` (``observer serve``)."""
    import uvicorn

    # Files besides sockets (database, logs, the threadpool's) need some of the descriptors.
    soft = raise_open_files_limit(cfg.max_connections + 256)
    protocol = type(
        "ServeProtocol",
        (GuardedProtocol,),
        {
            "header_timeout_s": cfg.header_timeout_s,
            "max_header_bytes": cfg.max_header_bytes,
            "max_connections": max(16, min(cfg.max_connections, soft - 128)),
        },
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        http=protocol,
        timeout_keep_alive=int(max(1, cfg.keepalive_timeout_s)),
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
