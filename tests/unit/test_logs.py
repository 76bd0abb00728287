"""The API key never reaches a log line; JSON logs are one object per line."""

from __future__ import annotations

import json
import logging

import pytest

from ember import logs


@pytest.fixture
def restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_secret_is_redacted_in_json_logs(
    restore_logging: object, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup(level="info", json_logs=True, secrets=["s3cr3t-key"])
    log = logging.getLogger("ember.test")
    log.info("configured with key %s", "s3cr3t-key", extra={"stage": "ready"})
    log.warning("Authorization: Bearer s3cr3t-key was refused")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["level"] for line in lines] == ["info", "warning"]
    assert lines[0]["stage"] == "ready"
    assert all("s3cr3t-key" not in json.dumps(line) for line in lines)
    assert "***" in lines[0]["message"]


def test_plain_logs_redact_too(restore_logging: object, capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup(level="info", json_logs=False, secrets=["abc-123"])
    logging.getLogger("ember.test").error("key abc-123 leaked?")
    err = capsys.readouterr().err
    assert "abc-123" not in err and "key *** leaked?" in err
