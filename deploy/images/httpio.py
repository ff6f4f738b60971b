"""The HTTP/1.1 server and client every hmk8s image shares (standard library, asyncio).

A server facing a cluster must bound what one client can make it hold, so this one
- answers 413 to a Content-Length above `max_body` before reading a byte of the body,
- gives the request head `head_timeout_s` (a client trickling bytes, slowloris, is dropped),
  a kept-alive connection `idle_timeout_s` to start its next request and the body
  `body_timeout_s`; heads are at most `max_head` bytes (431 beyond),
- listens with a backlog of `backlog` connections, so a burst of connects is queued, not dropped,
- answers `/healthz` (alive) and `/readyz` (the program's readiness) on the event loop itself,
  never behind the program's work,
- on SIGTERM stops accepting, answers `/readyz` 503, lets requests in flight finish (at most
  `drain_s`), closes idle connections and exits 0; as PID 1 a pod then stops at once.
Bodies are sized by Content-Length; chunked transfer coding is refused with 501.

What a rule sees must be what the program behind it sees, so a request is refused with 400
when its head could be read two ways: a CR, LF or NUL inside a header line, a Content-Length
that is not ASCII digits, or a target that is not a path (absolute-form, `*`) or hides its
meaning (an encoded `/` or `\\`, a malformed or doubly encoded escape, a control character).
`Request.path` is the normal path: escapes decoded once, `//` collapsed, `.` and `..` resolved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from typing import NoReturn
from urllib.parse import unquote_to_bytes

LINGER_BYTES = 8 << 20  # at most this much of a refused body is read (and dropped) before closing
LINGER_S = 2.0
MAX_LENGTH_DIGITS = 18  # a Content-Length longer than this is over any limit (and int64)
_DIGITS = re.compile(r"[0-9]+")
_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})|%(2[Ff]|5[Cc]|00)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]|%[0-9A-Fa-f]{2}")


@dataclass(frozen=True)
class Limits:
    """What one client may make a server hold, in bytes and seconds."""

    max_body: int = 1 << 20
    max_head: int = 16 << 10
    head_timeout_s: float = 5.0
    body_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    backlog: int = 1024
    drain_s: float = 10.0


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    peer: str
    keep_alive: bool = False

    @property
    def path(self) -> str:
        """The normal path (`normal_path`); the target was checked when the request was read."""
        return normal_path(self.target)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, value: object, **headers: str) -> Response:
        kind = {"Content-Type": "application/json"}
        return cls(status, json.dumps(value).encode(), kind | headers)

    @classmethod
    def text(cls, status: int, text: str, kind: str = "text/plain") -> Response:
        return cls(status, text.encode(), {"Content-Type": kind})


class HttpError(Exception):
    """A request (or a response, on the client side) that breaks the protocol or a limit."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Handler = Callable[[Request], Awaitable[Response]]


def normal_path(target: str) -> str:
    """The path of an origin-form target as a rule should match it: percent-escapes decoded
    once, empty and `.` segments dropped, `..` resolved (never above the root), a trailing `/`
    kept. HttpError 400 for a target that is not a path or whose path could be read two ways."""
    if not target.startswith("/"):
        raise HttpError(400, f"the target must be a path (origin-form), not {target[:80]!r}")
    raw = target.partition("?")[0].partition("#")[0]
    if "\\" in raw or _ESCAPE.search(raw):
        raise HttpError(400, f"the path {raw[:80]!r} has an encoded / or \\ or a bad escape")
    try:
        path = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, f"the path {raw[:80]!r} is not UTF-8 once decoded") from None
    if "\\" in path or _CONTROL.search(path):
        raise HttpError(400, f"the path {raw[:80]!r} decodes to a control character or escape")
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    last = path.rsplit("/", 1)[1]
    trailing = "/" if segments and last in ("", ".", "..") else ""
    return "/" + "/".join(segments) + trailing


def ascii_digits(text: str) -> bool:
    """Whether `text` is a decimal number in ASCII (`str.isdigit` accepts other scripts)."""
    return _DIGITS.fullmatch(text) is not None


def parse_head(head: bytes) -> tuple[list[str], dict[str, str]]:
    """Start line (split in three) and headers of a request or response head; a CR, LF or NUL
    inside a line (a header smuggled into the next hop's request) is refused."""
    lines = head.decode("latin-1").split("\r\n")
    for line in lines:
        if "\r" in line or "\n" in line or "\x00" in line:
            raise HttpError(400, f"a CR, LF or NUL inside the head line {line[:80]!r}")
    start = lines[0].split(" ", 2)
    if len(start) != 3:
        raise HttpError(400, f"malformed start line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, f"malformed header line {line[:80]!r}")
        key, value = name.lower(), value.strip()
        if key in headers and key == "content-length" and headers[key] != value:
            raise HttpError(400, "conflicting Content-Length headers")
        if key in headers and key != "content-length":
            value = f"{headers[key]}, {value}"
        headers[key] = value
    return start, headers


def body_length(headers: dict[str, str], max_body: int) -> int:
    """The announced body size, refused (413) above `max_body` before anything is read."""
    if "transfer-encoding" in headers:
        raise HttpError(501, "transfer codings are not supported; send Content-Length")
    text = headers.get("content-length", "0")
    if not ascii_digits(text):
        raise HttpError(400, f"malformed Content-Length {text[:40]!r}")
    if len(text) > MAX_LENGTH_DIGITS:
        raise HttpError(413, f"a body of {len(text)} digits exceeds the limit of {max_body}")
    length = int(text)
    if length > max_body:
        raise HttpError(413, f"body of {length} bytes exceeds the limit of {max_body}")
    return length


async def read_request(
    first: bytes, reader: asyncio.StreamReader, peer: str, limits: Limits
) -> Request:
    """The rest of a request whose first byte has arrived, within the head and body deadlines."""
    try:
        head = first + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), limits.head_timeout_s)
    except asyncio.LimitOverrunError:
        raise HttpError(431, f"request head exceeds {limits.max_head} bytes") from None
    (method, target, version), headers = parse_head(head)
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505, f"unsupported version {version[:20]!r}")
    normal_path(target)
    length = body_length(headers, limits.max_body)
    body = b""
    if length:
        body = await asyncio.wait_for(reader.readexactly(length), limits.body_timeout_s)
    connection = headers.get("connection", "").lower()
    keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return Request(method, target, headers, body, peer, keep)


def encode_response(response: Response, keep_alive: bool) -> bytes:
    reason = HTTPStatus(response.status).phrase
    lines = [f"HTTP/1.1 {response.status} {reason}"]
    lines += [f"{k}: {v}" for k, v in response.headers.items()]
    connection = "keep-alive" if keep_alive else "close"
    lines += [f"Content-Length: {len(response.body)}", f"Connection: {connection}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


class Server:
    """Serves `handle` under `limits`; `/healthz` and `/readyz` are answered here."""

    def __init__(self, handle: Handler, limits: Limits, ready: Callable[[], str | None]) -> None:
        self.handle, self.limits, self.ready = handle, limits, ready
        self.draining = False
        self._idle: set[asyncio.Task] = set()
        self._busy: set[asyncio.Task] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(
            self._connection, host, port, backlog=self.limits.backlog, limit=self.limits.max_head
        )
        return self._server.sockets[0].getsockname()[1]

    async def drain(self) -> None:
        """Stop accepting, close idle connections, wait (bounded) for requests in flight."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for task in list(self._idle):
            task.cancel()
        if self._busy:
            _, late = await asyncio.wait(set(self._busy), timeout=self.limits.drain_s)
            for task in late:
                task.cancel()

    async def _respond(self, request: Request) -> Response:
        if request.path == "/healthz":
            return Response.json(200, {"ok": True})
        if request.path == "/readyz":
            reason = "draining" if self.draining else self.ready()
            return Response.json(503 if reason else 200, {"ready": not reason, "reason": reason})
        try:
            return await self.handle(request)
        except HttpError as err:
            return Response.json(err.status, {"error": str(err)})
        except Exception:  # a fault of the program: answered, logged, and the server goes on
            traceback.print_exc()
            return Response.json(500, {"error": "internal error"})

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")[0]
        try:
            while not self.draining:
                self._idle.add(task)
                try:
                    first = await asyncio.wait_for(reader.read(1), self.limits.idle_timeout_s)
                finally:
                    self._idle.discard(task)
                if not first:
                    break
                self._busy.add(task)
                try:
                    try:
                        request = await read_request(first, reader, peer, self.limits)
                    except HttpError as err:
                        error = Response.json(err.status, {"error": str(err)})
                        await self._send(writer, error, keep_alive=False)
                        await _linger(reader, writer)
                        break
                    response = await self._respond(request)
                    keep = request.keep_alive and not self.draining
                    await self._send(writer, response, keep)
                finally:
                    self._busy.discard(task)
                if not keep:
                    break
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _send(
        self, writer: asyncio.StreamWriter, response: Response, keep_alive: bool
    ) -> None:
        writer.write(encode_response(response, keep_alive))
        await asyncio.wait_for(writer.drain(), self.limits.body_timeout_s)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After refusing a request, drop (a bounded part of) what the client still sends, so that
    closing does not reset the connection before the client has read the refusal."""
    if writer.can_write_eof():
        writer.write_eof()
    loop = asyncio.get_running_loop()
    deadline, dropped = loop.time() + LINGER_S, 0
    while dropped < LINGER_BYTES and (left := deadline - loop.time()) > 0:
        chunk = await asyncio.wait_for(reader.read(1 << 16), left)
        if not chunk:
            return
        dropped += len(chunk)


async def _serve_until_signalled(server: Server, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = await server.start(host, port)
    print(f"listening on {host}:{bound}", flush=True)
    await stop.wait()
    await server.drain()


def serve(server: Server, host: str, port: int) -> None:
    """Run until SIGTERM or SIGINT, then drain and return (the process exits 0)."""
    asyncio.run(_serve_until_signalled(server, host, port))


async def fetch(
    host: str,
    port: int,
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes,
    max_body: int,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, headers, body). Redirects are not followed.
    The caller bounds the time (asyncio.wait_for)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if any(c in line for line in lines for c in "\r\n\x00"):
        raise HttpError(400, "a CR, LF or NUL in the request line or a header")
    reader, writer = await asyncio.open_connection(host, port, limit=Limits.max_head)
    try:
        lines += [f"Content-Length: {len(body)}", "Connection: close"]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise HttpError(502, "response head too large") from None
        (_, status, _), answer = parse_head(head)
        if not ascii_digits(status):
            raise HttpError(502, f"malformed status {status[:20]!r}")
        if "content-length" in answer:
            data = await reader.readexactly(body_length(answer, max_body))
        else:
            data = await reader.read(max_body + 1)
            if len(data) > max_body:
                raise HttpError(413, f"response body exceeds {max_body} bytes")
        return int(status), answer, data
    finally:
        writer.close()


def fail(program: str, message: str) -> NoReturn:
    """Exit with one line on stderr: how the programs reject bad settings."""
    print(f"{program}: {message}", file=sys.stderr)
    raise SystemExit(2)


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """--max-body, --max-head, --head-timeout-s, ...: every field of Limits, with its default."""
    for f in fields(Limits):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, type=type(f.default), default=f.default, dest=f"limit_{f.name}")


def limits_from(args: argparse.Namespace, program: str) -> Limits:
    """The Limits the options give; a value that is not positive ends the program."""
    values = {f.name: getattr(args, f"limit_{f.name}") for f in fields(Limits)}
    for name, value in values.items():
        if not value > 0:
            fail(program, f"--{name.replace('_', '-')} must be positive (got {value})")
    return Limits(**values)
