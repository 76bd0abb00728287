from __future__ import annotations

import pytest

from ember.cli import build_parser, settings_from
from ember.settings import Settings


def test_every_field_has_a_doc_and_a_default() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert not field.is_required(), name


def test_env_vars_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_PORT", "9000")
    monkeypatch.setenv("EMBER_MODELS", "a=/x,b=/y")
    monkeypatch.setenv("EMBER_SEQ_BUCKETS", "[32, 16]")
    monkeypatch.setenv("EMBER_WARMUP", "false")
    s = Settings()
    assert s.port == 9000
    assert s.model == ["a=/x", "b=/y"]
    assert s.seq_buckets == [16, 32]
    assert s.warmup is False


def test_cli_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_PORT", "9000")
    args = build_parser().parse_args(
        [
            "serve",
            "--port",
            "9100",
            "--model",
            "a",
            "--model",
            "b",
            "--no-warmup",
            "--seq-buckets",
            "8,16",
        ]
    )
    s = settings_from(args)
    assert s.port == 9100
    assert s.model == ["a", "b"]
    assert s.warmup is False
    assert s.seq_buckets == [8, 16]


def test_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in out


def test_invalid_values_are_rejected() -> None:
    with pytest.raises(ValueError):
        Settings(port=70000)
    with pytest.raises(ValueError):
        Settings(device="tpu")  # type: ignore[arg-type]


def test_api_key_is_secret() -> None:
    s = Settings(api_key="abc123")  # type: ignore[arg-type]
    assert "abc123" not in repr(s)


def test_cgroup_quota_caps_the_cores(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    from ember.settings import _cgroup_cpu_quota

    base = Path(str(tmp_path))
    (base / "limited").write_text("150000 100000\n")
    (base / "unlimited").write_text("max 100000\n")
    assert _cgroup_cpu_quota(base / "limited") == 2
    assert _cgroup_cpu_quota(base / "unlimited") is None
    assert _cgroup_cpu_quota(base / "missing") is None
