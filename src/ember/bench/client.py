"""The wire: a minimal asyncio HTTP/1.1 keep-alive client, the bodies we send and what we parse.

The load generator shares the machine's cores with the server it measures, so it must cost
little per request: one asyncio stream per virtual user, requests written in one `write`,
responses framed by Content-Length (chunked and read-to-close are handled too), JSON by orjson.
httpx costs several times more CPU per request, which on two cores would be taken from the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

import orjson

Api = Literal["tei", "openai"]
APIS: tuple[Api, ...] = ("tei", "openai")
DEFAULT_EMBED_PATHS: dict[Api, str] = {"tei": "/embed", "openai": "/v1/embeddings"}

# Common English words that are each one word-piece in BERT-style uncased vocabularies, so that
# N words ≈ N tokens (+2 for [CLS]/[SEP]) and texts of one class have near-equal lengths.
_WORDS_TEXT = """the of and to in is was for on that with as by at from his her they this which
    be are or an had not but have their were has all one been she when who more there
    its into only other time after new two first also some these may would people year
    years over many most can about such then them used city state world made part where
    during under between school work life day game house small large long high great music
    water family power light play team early show could three four five six seven
    eight nine ten old best because each while before since through until against around
    down left right good well very still same another found film book name place way own
    back end line home country river land war age group road north south east west
    open field church center building park market company model system data server token
    fast slow warm cold ready start stop request answer number value table paper letter
    story point word sound color voice heart mind body face hand head eye door room car"""
WORDS: tuple[str, ...] = tuple(_WORDS_TEXT.split())


def make_text(rng: random.Random, words: int) -> str:
    """A text of exactly `words` words from WORDS, different on each call (≈ `words` tokens)."""
    return " ".join(rng.choices(WORDS, k=words))


def build_body(
    api: Api,
    texts: list[str],
    *,
    model: str | None = None,
    encoding_format: Literal["float", "base64"] = "float",
) -> bytes:
    """The JSON request body that embeds `texts` in `api`'s shape (TEI `/embed`, OpenAI)."""
    if api == "tei":
        inputs: str | list[str] = texts[0] if len(texts) == 1 else texts
        return orjson.dumps({"inputs": inputs, "normalize": True})
    payload: dict[str, object] = {"input": texts, "encoding_format": encoding_format}
    if model is not None:
        payload["model"] = model
    return orjson.dumps(payload)


def count_embeddings(api: Api, body: bytes) -> int:
    """How many embeddings a 200 response body holds; ValueError if it is not that API's shape."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"response is not JSON: {body[:80]!r}") from exc
    if api == "tei":
        if not isinstance(parsed, list) or not all(isinstance(v, list) and v for v in parsed):
            raise ValueError("TEI response is not a list of vectors")
        return len(parsed)
    data = parsed.get("data") if isinstance(parsed, dict) else None
    if not isinstance(data, list) or not all(
        isinstance(item, dict) and item.get("embedding") for item in data
    ):
        raise ValueError("OpenAI response has no data[].embedding")
    return len(data)


def is_loopback(host: str) -> bool:
    """True for `localhost`, 127.0.0.0/8 and ::1: the only targets a benchmark may load."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a server listens: host, port and a path prefix (no trailing slash)."""

    host: str
    port: int
    prefix: str = ""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.prefix}"


def parse_url(url: str) -> Endpoint:
    """An http:// URL on a loopback host → Endpoint; ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only http:// URLs are supported, got {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"URL has no host: {url!r}")
    if not is_loopback(host):
        raise ValueError(
            f"refusing to load {host!r}: benchmarks target loopback only "
            "(127.0.0.0/8, localhost, ::1)"
        )
    return Endpoint(host=host, port=parts.port or 80, prefix=parts.path.rstrip("/"))


@dataclass(slots=True)
class Response:
    """One HTTP response: status, headers (names lower-cased) and the whole body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class HttpError(Exception):
    """The connection failed, timed out, or the server sent something that is not HTTP/1.x.

    `kind` is "timeout", "conn" (refused, reset, closed mid-response) or "protocol".
    """

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; requests on it are sequential (one virtual user).

    `request` (re)connects when needed, so a server closing an idle connection costs one
    reconnect, never an error. After any failure the connection is closed and the next
    `request` opens a new one.
    """

    def __init__(self, host: str, port: int, *, timeout: float = 60.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connects = 0
        """How many TCP connections this object has opened (1 if keep-alive held)."""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        host_header = f"[{host}]" if ":" in host else host
        self._host_line = f"Host: {host_header}:{port}\r\n".encode()

    async def connect(self) -> None:
        """Open the TCP connection now (ConnectionError/OSError if nothing listens)."""
        await self.close()
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), self.timeout
        )
        self.connects += 1

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await writer.wait_closed()

    async def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        """Send one request and read its whole response, within `timeout` seconds.

        Raises HttpError (connection refused, reset, timeout, malformed response); the caller
        counts it, and the next call reconnects.
        """
        try:
            async with asyncio.timeout(self.timeout):  # no extra Task, unlike wait_for in 3.11
                return await self._roundtrip(method, path, body)
        except TimeoutError as exc:  # before OSError, its base class
            await self.close()
            raise HttpError(f"timeout after {self.timeout:g} s", kind="timeout") from exc
        except (OSError, asyncio.IncompleteReadError) as exc:
            await self.close()
            raise HttpError(f"{type(exc).__name__}: {exc}", kind="conn") from exc
        except (asyncio.LimitOverrunError, ValueError) as exc:
            await self.close()
            raise HttpError(f"{type(exc).__name__}: {exc}", kind="protocol") from exc

    async def _roundtrip(self, method: str, path: str, body: bytes | None) -> Response:
        reused = not (
            self._writer is None
            or self._writer.is_closing()
            or self._reader is None
            or self._reader.at_eof()  # the server closed it while idle (its keep-alive timeout)
        )
        if not reused:
            await self.connect()
        try:
            return await self._send(method, path, body)
        except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as exc:
            # A reused connection the server closed just as we wrote: nothing was answered,
            # so one retry on a fresh connection is safe; a fresh one failing is an error.
            partial = getattr(exc, "partial", b"")
            if not reused or partial:
                raise
            await self.connect()
            return await self._send(method, path, body)

    async def _send(self, method: str, path: str, body: bytes | None) -> Response:
        assert self._reader is not None and self._writer is not None
        head = [f"{method} {path} HTTP/1.1\r\n".encode(), self._host_line]
        if body is not None:
            head.append(b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body))
        head.append(b"\r\n")
        if body is not None:
            head.append(body)
        self._writer.write(b"".join(head))
        response, keep_alive = await read_response(self._reader, head_only=method == "HEAD")
        if not keep_alive:
            await self.close()
        return response


async def read_response(
    reader: asyncio.StreamReader, *, head_only: bool = False
) -> tuple[Response, bool]:
    """Read one HTTP/1.x response from `reader` → (response, whether the connection stays open).

    Bodies are framed by Content-Length, chunked transfer-encoding, or the end of the stream.
    Interim 1xx responses are skipped. ValueError for a malformed status line or header.
    """
    while True:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw[:-4].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1.x status line: {lines[0]!r}")
        status = int(rest[:3])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"malformed header line: {line!r}")
            headers[name.strip().lower()] = value.strip()
        if not 100 <= status < 200:
            break
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    if head_only or status in (204, 304):
        return Response(status, headers), keep_alive
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return Response(status, headers, await _read_chunked(reader)), keep_alive
    length = headers.get("content-length")
    if length is not None:
        return Response(status, headers, await reader.readexactly(int(length))), keep_alive
    return Response(status, headers, await reader.read()), False


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the blank line
                pass
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
