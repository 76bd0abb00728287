"""The minimal HTTP client and the request/response shapes of `ember bench`."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from ember.bench.client import (
    WORDS,
    HttpConnection,
    HttpError,
    build_body,
    count_embeddings,
    is_loopback,
    make_text,
    parse_url,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    """One request from a client → (request line, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    return lines[0], await reader.readexactly(length)


def serve(handler: Handler, client: Callable[[int], Awaitable[None]]) -> None:
    """Run `client(port)` against an asyncio server that runs `handler` per connection."""

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(guarded, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            await client(port)

    asyncio.run(main())


def test_keep_alive_reuses_one_connection_and_parses_content_length() -> None:
    seen: list[tuple[str, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            try:
                line, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            seen.append((line, body))
            payload = b'{"ok": true}'
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
            )
            await writer.drain()
        writer.close()

    async def client(port: int) -> None:
        conn = HttpConnection("127.0.0.1", port, timeout=5)
        for i in range(3):
            response = await conn.request("POST", "/embed", b'{"i": %d}' % i)
            assert response.status == 200
            assert response.headers["content-type"] == "application/json"
            assert orjson.loads(response.body) == {"ok": True}
        assert conn.connects == 1
        await conn.close()

    serve(handler, client)
    assert [line for line, _ in seen] == ["POST /embed HTTP/1.1"] * 3
    assert [body for _, body in seen] == [b'{"i": 0}', b'{"i": 1}', b'{"i": 2}']


def test_chunked_body_with_trailer_and_interim_100() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    async def client(port: int) -> None:
        conn = HttpConnection("127.0.0.1", port, timeout=5)
        response = await conn.request("GET", "/")
        assert (response.status, response.body) == (200, b"hello, world")
        await conn.close()

    serve(handler, client)


def test_connection_close_and_read_to_eof_reconnect() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\nnot yet")
        await writer.drain()
        writer.close()

    async def client(port: int) -> None:
        conn = HttpConnection("127.0.0.1", port, timeout=5)
        for _ in range(2):
            response = await conn.request("GET", "/ready")
            assert (response.status, response.body) == (503, b"not yet")
        assert conn.connects == 2
        await conn.close()

    serve(handler, client)


def test_errors_have_kinds() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _ = await read_request(reader)
        if "garbage" in line:
            writer.write(b"SPDY/9 what\r\n\r\n")
        elif "slow" in line:
            await asyncio.sleep(1)
        elif "cut" in line:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
        await writer.drain()
        writer.close()

    async def client(port: int) -> None:
        conn = HttpConnection("127.0.0.1", port, timeout=0.2)
        for path, kind in (("/garbage", "protocol"), ("/slow", "timeout"), ("/cut", "conn")):
            with pytest.raises(HttpError) as info:
                await conn.request("GET", path)
            assert info.value.kind == kind, path

    serve(handler, client)


def test_connection_refused_is_a_conn_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused

        async def main() -> None:
            with pytest.raises(HttpError) as info:
                await HttpConnection("127.0.0.1", port, timeout=2).request("GET", "/")
            assert info.value.kind == "conn"

        asyncio.run(main())


@pytest.mark.parametrize(
    ("url", "host", "port", "prefix"),
    [
        ("http://127.0.0.1:8080", "127.0.0.1", 8080, ""),
        ("http://localhost:9/api/", "localhost", 9, "/api"),
        ("http://127.3.4.5:1", "127.3.4.5", 1, ""),
        ("http://[::1]:7997", "::1", 7997, ""),
    ],
)
def test_parse_url_accepts_loopback(url: str, host: str, port: int, prefix: str) -> None:
    endpoint = parse_url(url)
    assert (endpoint.host, endpoint.port, endpoint.prefix) == (host, port, prefix)


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1:80",
        "http://192.168.1.2:8080",
        "http://example.com:80",
        "http://0.0.0.0:80",
        "https://127.0.0.1:443",
        "http://128.0.0.1",
    ],
)
def test_parse_url_refuses_everything_else(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)


def test_is_loopback() -> None:
    assert is_loopback("LOCALHOST") and is_loopback("::1") and is_loopback("127.255.0.1")
    assert not is_loopback("localhost.example.com") and not is_loopback("::")


def test_build_body_tei_and_openai() -> None:
    assert orjson.loads(build_body("tei", ["a"])) == {"inputs": "a", "normalize": True}
    assert orjson.loads(build_body("tei", ["a", "b"])) == {"inputs": ["a", "b"], "normalize": True}
    assert orjson.loads(build_body("openai", ["a"], model="m")) == {
        "input": ["a"],
        "encoding_format": "float",
        "model": "m",
    }
    assert "model" not in orjson.loads(build_body("openai", ["a"]))


def test_count_embeddings_checks_the_shape() -> None:
    assert count_embeddings("tei", b"[[0.1, 0.2], [0.3, 0.4]]") == 2
    openai = {"object": "list", "data": [{"index": 0, "embedding": [0.1]}]}
    assert count_embeddings("openai", orjson.dumps(openai)) == 1
    assert count_embeddings("openai", orjson.dumps({"data": [{"embedding": "AAAA"}]})) == 1
    for api, body in (
        ("tei", b'{"error": "x"}'),
        ("tei", b"[[]]"),
        ("openai", b"[[0.1]]"),
        ("openai", b'{"data": [{}]}'),
        ("tei", b"not json"),
    ):
        with pytest.raises(ValueError):
            count_embeddings(api, body)  # type: ignore[arg-type]


def test_make_text_has_exact_word_count_and_varies() -> None:
    rng = random.Random(1)
    texts = [make_text(rng, 40) for _ in range(50)]
    assert all(len(t.split()) == 40 for t in texts)
    assert len(set(texts)) == 50
    assert set(" ".join(texts).split()) <= set(WORDS)


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_agrees_with_httpx_against_uvicorn(http: str) -> None:
    """A real server: JSON bodies (one ≈ 250 kB), chunked streaming, keep-alive held."""
    app = FastAPI()

    @app.post("/embed")
    async def embed(request: Request) -> Response:
        inputs = (await request.json())["inputs"]
        n = 1 if isinstance(inputs, str) else len(inputs)
        vectors = [[(i + 1) / 7] * 384 for i in range(n)]
        return Response(orjson.dumps(vectors), media_type="application/json")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for i in range(5):
                yield f"part{i};".encode()

        return StreamingResponse(parts())

    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http=http, log_level="error", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            threading.Event().wait(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        body = build_body("tei", [f"text {i}" for i in range(32)])
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as reference:
            expected_embed = reference.post("/embed", content=body).content
            expected_stream = reference.get("/stream").content

        async def client() -> None:
            conn = HttpConnection("127.0.0.1", port, timeout=5)
            for _ in range(2):
                embed_response = await conn.request("POST", "/embed", body)
                assert embed_response.body == expected_embed
                assert count_embeddings("tei", embed_response.body) == 32
                stream_response = await conn.request("GET", "/stream")
                assert stream_response.headers.get("transfer-encoding") == "chunked"
                assert stream_response.body == expected_stream == b"part0;part1;part2;part3;part4;"
            assert conn.connects == 1
            await conn.close()

        asyncio.run(client())
    finally:
        server.should_exit = True
        thread.join(5)


def test_a_connection_the_server_closed_while_idle_is_reopened_not_an_error() -> None:
    """uvicorn closes keep-alive connections idle for 5 s; the next request must reconnect."""
    asyncio.run(_closed_while_idle())


async def _closed_while_idle() -> None:
    import asyncio as aio

    from ember.bench.client import HttpConnection as Conn

    async def handle(reader: aio.StreamReader, writer: aio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # as a keep-alive timeout would, after answering

    server = await aio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = Conn("127.0.0.1", port, timeout=5)
    try:
        first = await conn.request("GET", "/")
        await aio.sleep(0.05)  # the close reaches the client while it is idle
        second = await conn.request("GET", "/")
        assert (first.status, second.status) == (200, 200)
        assert conn.connects == 2
    finally:
        await conn.close()
        server.close()
        await server.wait_closed()
