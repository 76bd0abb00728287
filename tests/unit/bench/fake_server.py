"""A stand-in embedding server for `ember bench` tests: no model, answers in microseconds.

    python fake_server.py --port P [--ready-after S] [--exit-after S] [--ignore-term]
                              [--dim N] [--delay S] [--overloaded]

/health is 200 at once; /ready is 503 until `ready-after` seconds have passed; POST /embed
(TEI) and POST /v1/embeddings (OpenAI, float or base64) return one 4-dim vector per input,
POST /rerank (TEI) one score per text, POST /predict one label list per input; GET /info lists
an embedder, a reranker and a classifier; else 404. `--overloaded` answers every POST 429 with
Retry-After: 1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import struct
import time

DIM = 4


def vectors(n: int) -> list[list[float]]:
    return [[0.123456789] * DIM for _ in range(n)]


INFO = {
    "version": "fake",
    "max_client_batch_size": 8,
    "models": [
        {"model_id": "e", "task": "embed", "max_input_length": 64},
        {"model_id": "r", "task": "rerank", "max_input_length": 64},
        {"model_id": "c", "task": "classify", "max_input_length": 64},
    ],
}


def answer(method: str, path: str, body: bytes, ready: bool) -> tuple[int, object]:
    if path == "/info":
        return 200, INFO
    if path == "/health":
        return 200, {"status": "alive"}
    if path == "/ready":
        return (200, {"status": "ready"}) if ready else (503, {"stage": "warming"})
    if method == "POST" and path == "/embed":
        inputs = json.loads(body)["inputs"]
        return 200, vectors(1 if isinstance(inputs, str) else len(inputs))
    if method == "POST" and path == "/v1/embeddings":
        request = json.loads(body)
        texts = request["input"]
        n = 1 if isinstance(texts, str) else len(texts)
        data: list[dict[str, object]] = [
            {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors(n))
        ]
        if request.get("encoding_format") == "base64":
            packed = base64.b64encode(struct.pack(f"<{DIM}f", *vectors(1)[0])).decode()
            data = [{**item, "embedding": packed} for item in data]
        return 200, {"object": "list", "data": data, "model": "fake"}
    if method == "POST" and path == "/rerank":
        texts = json.loads(body)["texts"]
        return 200, [{"index": i, "score": 0.5} for i in range(len(texts))]
    if method == "POST" and path == "/predict":
        inputs = json.loads(body)["inputs"]
        row = [{"label": "positive", "score": 0.9}, {"label": "negative", "score": 0.1}]
        return 200, row if isinstance(inputs, str) else [row for _ in inputs]
    return 404, {"error": "not found"}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-after", type=float, default=0.0)
    parser.add_argument("--exit-after", type=float, default=None)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--dim", type=int, default=4, help="vector length")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--overloaded", action="store_true", help="429 to every POST")
    args = parser.parse_args()
    global DIM  # noqa: PLW0603
    DIM = args.dim
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    start = time.monotonic()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, path, _ = lines[0].split(" ")
                length = 0
                for line in lines[1:]:
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                body = await reader.readexactly(length)
                ready = time.monotonic() - start >= args.ready_after
                status, payload = answer(method, path, body, ready)
                extra = ""
                if args.overloaded and method == "POST":
                    status, payload, extra = 429, {"error": "busy"}, "Retry-After: 1\r\n"
                if args.delay and method == "POST":
                    await asyncio.sleep(args.delay)
                data = json.dumps(payload).encode()
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}"
                    f"Content-Length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", args.port)
    async with server:
        if args.exit_after is not None:
            await asyncio.sleep(args.exit_after)
            raise SystemExit(3)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
