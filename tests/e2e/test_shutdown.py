"""The shutdown contract (DESIGN.md "Shutdown") against a real `ember serve`, real sockets and
real signals: every request gets a 200 or a JSON 503 with Retry-After, never a 500 or a reset,
and the process is gone within the timeout + 1 s, or 1 s after a second signal."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e

# Long texts make each request cost real compute: 128 of them cannot finish in a second.
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 25)


@dataclass(frozen=True)
class Answer:
    status: int
    """0: no HTTP answer at all (reset, or closed without a response)."""
    headers: dict[str, str]
    body: bytes
    error: str = ""


async def request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    send_body: int | None = None,
    after: float = 0.0,
) -> Answer:
    """One HTTP/1.1 request on its own connection, sent `after` seconds after connecting;
    `send_body` sends only that many bytes of the body (and keeps the connection open) to play
    a client holding a partial body."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return Answer(0, {}, b"", repr(exc))
    await asyncio.sleep(after)
    head = (
        f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    try:
        writer.write(head + body[:send_body])
        await writer.drain()
        raw = await reader.read(-1)
    except OSError as exc:
        return Answer(0, {}, b"", repr(exc))
    finally:
        writer.close()
    if not raw:
        return Answer(0, {}, b"", "closed without an answer")
    head_raw, _, rest = raw.partition(b"\r\n\r\n")
    lines = head_raw.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return Answer(int(lines[0].split()[1]), headers, rest)


def check_answers(answers: list[Answer]) -> dict[int, int]:
    """Every answer a 200 or a JSON 503 with Retry-After; returns the count per status."""
    counts: dict[int, int] = {}
    for answer in answers:
        counts[answer.status] = counts.get(answer.status, 0) + 1
        assert answer.status in (200, 503), answer
        assert answer.headers.get("content-type") == "application/json", answer
        if answer.status == 503:
            assert answer.headers.get("retry-after") == "1", answer
            assert json.loads(answer.body)["error_type"] == "not_ready", answer
    return counts


def embed_body(texts: int = 4) -> bytes:
    return json.dumps({"inputs": [LONG] * texts}).encode()


@pytest.fixture
def serve(ember_cache: Path, tmp_path: Path) -> Iterator[type[Server]]:
    started: list[Server] = []

    class Started(Server):
        def __init__(self, *args: str) -> None:
            super().__init__(
                # Room for every test request in the queue: admission is not under test here.
                "--max-concurrent-requests", "100000", *args,
                env={"EMBER_CACHE_DIR": str(ember_cache)}, log=tmp_path / f"log{len(started)}",
            )  # fmt: skip
            started.append(self)

    yield Started
    for server in started:
        server.stop(timeout=5)


async def _load_then(server: Server, n: int, sig: signal.Signals, *, again: float | None) -> float:
    """`n` concurrent long requests, then `sig` (and again after `again` s); returns the
    seconds from the last signal to the process's exit."""
    calls = [
        asyncio.ensure_future(request(server.port, "POST", "/embed", embed_body()))
        for _ in range(n)
    ]
    await asyncio.sleep(0.5)  # all connected and queued
    server.proc.send_signal(sig)
    if again is not None:
        await asyncio.sleep(again)
        server.proc.send_signal(sig)
    last = time.monotonic()
    answers = await asyncio.gather(*calls)
    await asyncio.to_thread(server.proc.wait, 10)
    exited = time.monotonic() - last
    counts = check_answers(answers)
    assert counts.get(503, 0) > 0, counts  # some were unfinished: the test did test something
    assert server.proc.returncode == 0, server.logs()
    assert "Traceback" not in server.logs(), server.logs()
    return exited


def test_sigterm_with_128_queued_answers_200_or_json_503_and_exits_in_time(
    serve: type[Server],
) -> None:
    server = serve("--shutdown-timeout", "1")
    server.wait_ready()
    exited = asyncio.run(_load_then(server, 128, signal.SIGTERM, again=None))
    assert exited <= 2.0, (exited, server.logs())


def test_a_second_signal_finishes_now(serve: type[Server]) -> None:
    server = serve("--shutdown-timeout", "30")
    server.wait_ready()
    exited = asyncio.run(_load_then(server, 64, signal.SIGINT, again=0.7))
    assert exited <= 1.0, (exited, server.logs())


def test_sighup_drains_in_flight_requests_then_exits(serve: type[Server]) -> None:
    server = serve("--shutdown-timeout", "20")
    server.wait_ready()

    async def scenario() -> list[Answer]:
        calls = [
            asyncio.ensure_future(request(server.port, "POST", "/embed", embed_body(4)))
            for _ in range(8)
        ]
        # Connected before the signal, sent just after it: the listener may close as soon as
        # the in-flight requests are done, but connections it accepted are still served.
        ready = asyncio.ensure_future(request(server.port, "GET", "/ready", after=0.5))
        late = asyncio.ensure_future(
            request(server.port, "POST", "/embed", embed_body(1), after=0.5)
        )
        await asyncio.sleep(0.3)
        server.proc.send_signal(signal.SIGHUP)
        return await asyncio.gather(ready, late, *calls)

    ready, late, *answers = asyncio.run(scenario())
    assert ready.status == 503 and json.loads(ready.body)["status"] == "draining", ready
    assert late.status == 503 and late.headers.get("retry-after") == "1", late
    assert json.loads(late.body)["error_type"] == "not_ready", late
    assert all(a.status == 200 for a in answers), answers
    assert server.proc.wait(timeout=5) == 0, server.logs()


def test_a_client_holding_a_partial_body_does_not_hold_the_exit(serve: type[Server]) -> None:
    server = serve("--shutdown-timeout", "1")
    server.wait_ready()

    async def scenario() -> tuple[Answer, float]:
        body = embed_body(1)
        held = asyncio.ensure_future(
            request(server.port, "POST", "/embed", body, send_body=len(body) // 2)
        )
        await asyncio.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        answer = await held
        await asyncio.to_thread(server.proc.wait, 10)
        return answer, time.monotonic() - signalled

    answer, exited = asyncio.run(scenario())
    check_answers([answer])
    assert answer.status == 503
    assert exited <= 2.0, (exited, server.logs())
    assert server.proc.returncode == 0, server.logs()
