"""`ember.early`: which command lines listen before the heavy imports, and what the early
listener answers, over a real loopback socket (no server process)."""

from __future__ import annotations

import json
import socket

import pytest

from ember import early


@pytest.mark.parametrize(
    "argv, env, expected",
    [
        ([], {}, ("0.0.0.0", 8080, False)),
        (["serve", "--port", "9000", "--host=127.0.0.1"], {}, ("127.0.0.1", 9000, False)),
        (["serve"], {"EMBER_PORT": "7000", "EMBER_HOST": "::1"}, ("::1", 7000, False)),
        (["serve", "--port", "1"], {"EMBER_PORT": "7000"}, ("0.0.0.0", 1, False)),  # flags win
        (["prepare"], {}, None),
        (["serve", "--help"], {}, None),
        (["serve", "--reload"], {}, None),
        (["serve"], {"EMBER_RELOAD": "true"}, None),
        # Several workers: the socket joins their SO_REUSEPORT group (the first one inherits it).
        (["serve", "--workers", "2"], {}, ("0.0.0.0", 8080, True)),
        (["serve"], {"EMBER_WORKERS": "4"}, ("0.0.0.0", 8080, True)),
        (["serve", "--workers", "1"], {}, ("0.0.0.0", 8080, False)),
        # `auto` means several only on CUDA, which --device cpu rules out on any host.
        (["serve", "--device", "cpu"], {"EMBER_WORKERS": "auto"}, ("0.0.0.0", 8080, False)),
        (["serve", "--port", "http"], {}, None),  # Settings reports what is wrong
        (["serve", "--workers", "many"], {}, None),
    ],
)
def test_which_command_lines_listen_early(
    argv: list[str],
    env: dict[str, str],
    expected: tuple[str, int, bool] | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("EMBER_PORT", "EMBER_HOST", "EMBER_RELOAD", "EMBER_WORKERS", "EMBER_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(early, "cuda_likely", lambda device: False)  # a CPU host, wherever run
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert early._address(argv) == expected


def test_auto_workers_share_the_port_on_a_cuda_host(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EMBER_WORKERS", "EMBER_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(early, "cuda_likely", lambda device: device in ("auto", "cuda"))
    assert early._address(["serve"]) == ("0.0.0.0", 8080, True)
    assert early._address(["serve", "--device", "cpu"]) == ("0.0.0.0", 8080, False)
    assert early._address(["serve", "--workers", "1"]) == ("0.0.0.0", 8080, False)


def test_warm_cuda_does_nothing_off_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    before = threading.active_count()
    early.warm_cuda("cpu")
    assert threading.active_count() == before


def _ask(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(request)
        raw = b""
        while chunk := sock.recv(4096):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_the_early_listener_answers_probes_then_hands_over_its_socket() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    listener = early.EarlyProbes(sock, host="127.0.0.1", port=port)
    listener.start()
    try:
        status, _, body = _ask(port, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        assert status == 200 and json.loads(body) == {"status": "alive", "stage": "starting"}
        listener.snapshot = lambda: {"status": "loading", "models": []}
        status, headers, body = _ask(port, b"GET /ready HTTP/1.1\r\n\r\n")
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(body) == {"status": "loading", "models": []}
        status, _, body = _ask(port, b"POST /embed HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}")
        assert status == 503 and json.loads(body)["error_type"] == "not_ready"
        status, headers, body = _ask(port, b"HEAD /health HTTP/1.1\r\n\r\n")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    finally:
        handed = listener.stop()
    assert handed is sock
    # Still listening: a connection made now waits in the backlog for whoever serves next.
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    sock.close()
