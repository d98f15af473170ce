"""The reward server's front door, as plain ASGI middleware: host check, bearer token, body limit, JSON hygiene.

Checked before any route runs, so no handler ever sees a request that fails them:
- `Host` in `allowed_hosts` (a tokenless server on loopback would otherwise be open to DNS rebinding from a
  browser page): 400;
- `Authorization: Bearer TOKEN`, the scheme case-insensitive (RFC 7235), the token compared in constant time: 401
  with `WWW-Authenticate: Bearer`;
- the body at most `max_body_bytes`, counted as it arrives (a chunked body has no `Content-Length`): 413;
- JSON without `NaN` / `Infinity` literals or lone surrogates (`"\\ud800"`: no tokenizer takes it): 422, whatever
  the `Content-Type` says (FastAPI reads a body without one, or with `application/JSON`, as JSON too);

and, below ASGI, `header_timeout_protocol`: a connection whose request headers are not all in within
`serve --header_timeout_s` is closed (1,100 connections with unfinished headers locked everyone else out).
"""

from __future__ import annotations

import hmac
import json
import math


def _json(status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> tuple[int, list, bytes]:
    body = json.dumps({"detail": detail}).encode()
    return (
        status,
        [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        body,
    )


def _bad_value(value, path: str = "$") -> str | None:
    """Where a parsed JSON value holds a non-finite number or a lone surrogate (None if nowhere)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path}: {value} is not a JSON number"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{path}: a lone surrogate is not text"
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and _bad_value(key):
            return f"{path}: a key holds a lone surrogate"
        found = _bad_value(item, f"{path}[{key!r}]" if isinstance(key, str) else f"{path}[{key}]")
        if found:
            return found
    return None


class Guard:
    """ASGI middleware (see the module docstring). `allowed_hosts=None` accepts any Host."""

    def __init__(self, app, *, token: str | None, max_body_bytes: int, allowed_hosts: list[str] | None = None):
        self.app, self.token, self.max_body_bytes = app, token, max_body_bytes
        self.allowed_hosts = None if allowed_hosts is None or "*" in allowed_hosts else set(allowed_hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(headers)
        if refusal is None and scope["method"] in ("POST", "PUT", "PATCH"):
            body, refusal = await self._read(receive, headers)
            if refusal is None:
                receive = _replay(body, receive)
        if refusal is not None:
            status, response_headers, payload = refusal
            await send({"type": "http.response.start", "status": status, "headers": response_headers})
            await send({"type": "http.response.body", "body": payload})
            return
        await self.app(scope, receive, send)

    def _refusal(self, headers: dict[str, str]):
        if self.allowed_hosts is not None:
            host = headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self.allowed_hosts:
                return _json(400, f"Host {host!r} is not allowed (serve --allowed_hosts)")
        if self.token is not None:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            given = given.strip().encode("latin-1")  # the header's own bytes (ASGI hands them over as latin-1)
            if scheme.lower() != "bearer" or not hmac.compare_digest(given, self.token.encode("utf-8")):
                return _json(
                    401, "missing or wrong bearer token", [(b"www-authenticate", b'Bearer realm="trustreward"')]
                )
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return _json(413, f"body over {self.max_body_bytes} bytes")
        return None

    async def _read(self, receive, headers):
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", _json(400, "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:  # stop reading: the rest is never buffered
                return b"", _json(413, f"body over {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if body:  # any body FastAPI may read as JSON
            try:
                found = _bad_value(json.loads(body))
            except (ValueError, RecursionError):
                found = None  # not JSON: the route's own validation answers 422
            if found:
                return b"", _json(422, found)
        return body, None


def _replay(body: bytes, receive):
    """A `receive` that hands the app the body read already, then the client's own messages (disconnects)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def header_timeout_protocol(seconds: float):
    """uvicorn's httptools protocol (the C parser: h11, pure Python, took most of the server's request handling and
    held the GIL the judging thread needs), closing a connection whose request headers take over `seconds` to
    arrive (uvicorn times only idle keep-alive connections: a client that sent a byte now and then held its socket
    for good)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderTimeout(HttpToolsProtocol):
        _deadline = None
        _awaiting_headers = True  # from the connection's start, and again once each response is sent

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._arm()

        def on_headers_complete(self) -> None:
            self._awaiting_headers = False
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            # Not at the request's end: a request being judged is not waiting for headers (a pipelined one that
            # is in already has its headers).
            self._awaiting_headers = not self.pipeline
            super().on_response_complete()

        def connection_lost(self, exc):
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if not self._awaiting_headers:  # the request's headers are in
                if self._deadline is not None:
                    self._deadline.cancel()
                    self._deadline = None
            elif self._deadline is None:
                self._deadline = self.loop.call_later(seconds, self._late)

        def _late(self) -> None:
            self._deadline = None
            if self._awaiting_headers and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeout
