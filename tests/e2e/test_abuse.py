"""Abusive clients against a real `ember serve` over real sockets: heads that never end, too many
or too large headers, slow heads and stalled bodies, junk after a request, HEAD on the probes.
Each is refused (431/408, before auth and before the body) or answered, in bounded time and
memory, and the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e

KEY = "abuse-test-key"
AUTH = f"authorization: Bearer {KEY}\r\n"


@pytest.fixture(scope="module")
def server(ember_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        "--api-key", KEY, "--http-header-timeout", "1", "--http-body-timeout", "1",
        env={"EMBER_CACHE_DIR": str(ember_cache)},
        log=tmp_path_factory.mktemp("abuse") / "server.log",
    )  # fmt: skip
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def exchange(
    port: int, head: bytes, *, chunks: Iterator[bytes] | None = None, wait: float = 5.0
) -> bytes:
    """Send `head`, then `chunks` until the server answers or closes; all the server sent."""
    chunks = chunks or iter(())
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        got = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
                if not data:
                    return got
                got += data
                continue
            except BlockingIOError:
                pass
            except ConnectionResetError:
                return got
            chunk = next(chunks, None)
            try:
                if chunk is None:
                    time.sleep(0.01)
                else:
                    sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server refused and closed: read what it said
        raise AssertionError(f"no answer and no close within {wait} s: {got[:200]!r}")


def status_of(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def post_head(extra: str = "", length: int = 2) -> bytes:
    return (
        f"POST /embed HTTP/1.1\r\nhost: x\r\n{extra}content-type: application/json\r\n"
        f"content-length: {length}\r\n"
    ).encode()


def endless(piece: bytes, pause: float = 0.0) -> Iterator[bytes]:
    while True:
        yield piece
        if pause:
            time.sleep(pause)


@pytest.mark.parametrize(
    "name, head, chunks",
    [
        ("an 8 MB header line", post_head() + b"x-big: ", endless(b"a" * 65536)),
        ("100,000 headers", post_head(), endless(b"x-h: v\r\n" * 4096)),
        ("a 20 KB header", post_head() + b"x-big: " + b"a" * 20_000 + b"\r\n\r\n{}", iter(())),
        ("101 headers", post_head("x-h: v\r\n" * 101) + b"\r\n{}", iter(())),
    ],
)
def test_oversized_heads_get_431_before_auth_and_body(
    server: Server, name: str, head: bytes, chunks: Iterator[bytes]
) -> None:
    status, headers, body = status_of(exchange(server.port, head, chunks=chunks))
    assert status == 431, (name, status, body)
    assert headers["connection"] == "close"
    assert json.loads(body)["error_type"] == "too_large"


def test_twenty_endless_heads_hold_no_memory_and_a_normal_request_still_works(
    server: Server,
) -> None:
    rss = psutil.Process(server.proc.pid).memory_info().rss

    async def endless_head() -> int:
        """The status the server answered, 0 if the refusal was lost to a reset (the server
        closes with our unread bytes in its buffer, as any server refusing a stream does)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(post_head() + b"x-big: ")
            for _ in range(200):  # 12.8 MB each if it were all read
                writer.write(b"a" * 65536)
                await writer.drain()
        except OSError:
            pass
        try:
            raw = await reader.read(-1)
        except OSError:
            raw = b""
        writer.close()
        return status_of(raw)[0] if raw else 0

    async def all_of_them() -> list[int]:
        return await asyncio.gather(*(endless_head() for _ in range(20)))

    statuses = asyncio.run(all_of_them())
    assert set(statuses) <= {431, 0} and statuses.count(431) >= 10, statuses
    grown = psutil.Process(server.proc.pid).memory_info().rss - rss
    assert grown < 50 * 2**20, f"RSS grew by {grown / 2**20:.0f} MB"
    ok = post_head(
        AUTH + "connection: close\r\n" + "x-h: v\r\n" * 50, length=len(b'{"inputs":"fine"}')
    )
    status, _, body = status_of(exchange(server.port, ok + b'\r\n{"inputs":"fine"}'))
    assert status == 200, body


def test_a_slow_head_gets_408_within_the_header_timeout(server: Server) -> None:
    started = time.monotonic()
    raw = exchange(server.port, b"POST /embed HTTP/1.1\r\n", chunks=endless(b"x-a: b\r\n", 0.2))
    elapsed = time.monotonic() - started
    status, _, body = status_of(raw)
    assert status == 408 and json.loads(body)["error_type"] == "timeout", raw
    assert elapsed < 2.5, elapsed


def test_a_silent_connection_is_closed_within_the_header_timeout(server: Server) -> None:
    started = time.monotonic()
    exchange(server.port, b"")
    assert time.monotonic() - started < 2.5


def test_a_stalled_body_gets_408_within_the_body_timeout(server: Server) -> None:
    started = time.monotonic()
    raw = exchange(server.port, post_head(AUTH, length=100) + b'\r\n{"inputs": ')
    elapsed = time.monotonic() - started
    status, headers, body = status_of(raw)
    assert status == 408, raw
    assert headers["connection"] == "close" and json.loads(body)["error"], raw
    assert elapsed < 2.5, elapsed


def test_junk_after_a_valid_request_still_gets_the_answer(server: Server) -> None:
    raw = exchange(server.port, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n\x00\x01junk\r\n\r\n")
    status, _, body = status_of(raw)
    assert status == 200 and json.loads(body)["status"] == "alive", raw


def test_pipelined_requests_get_every_answer(server: Server) -> None:
    one = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"
    raw = exchange(server.port, one * 3 + b"GET /health HTTP/1.1\r\nconnection: close\r\n\r\n")
    assert raw.count(b"HTTP/1.1 200") == 4, raw


@pytest.mark.parametrize("path, expected", [("/health", 200), ("/ready", 200)])
def test_head_on_the_probes_answers_without_a_body(
    server: Server, path: str, expected: int
) -> None:
    raw = exchange(server.port, f"HEAD {path} HTTP/1.1\r\nconnection: close\r\n\r\n".encode())
    status, headers, body = status_of(raw)
    assert status == expected, raw
    assert body == b"" and int(headers["content-length"]) > 0, raw
