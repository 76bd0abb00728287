"""Imports flow one way, http → engine → backends (DESIGN.md), checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "ember"
WEB = ("fastapi", "starlette", "uvicorn", "ember.http", "ember.server")
HEAVY = ("torch", "transformers", "sentence_transformers", "cupy")


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at top level) for every import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, id(node) in top))
    return out


@pytest.mark.parametrize("folder", ["engine", "backends"])
def test_engine_and_backends_never_import_the_web_layer(folder: str) -> None:
    for path in (SRC / folder).rglob("*.py"):
        for module, _ in imports(path):
            assert not module.startswith(WEB), f"{path.name} imports {module}"


def test_backends_never_import_the_engine() -> None:
    for path in (SRC / "backends").rglob("*.py"):
        for module, _ in imports(path):
            assert not module.startswith("ember.engine"), f"{path.name} imports {module}"


def test_torch_is_only_imported_lazily_outside_its_backend() -> None:
    """The serving path on CPU must not pay for torch: only inside functions, if at all."""
    for path in SRC.rglob("*.py"):
        for module, top_level in imports(path):
            if module.split(".")[0] in HEAVY:
                assert not top_level, f"{path.relative_to(SRC)} imports {module} at module level"


def test_no_environment_reads_outside_settings() -> None:
    allowed = {"settings.py", "models.py", "loader.py", "server.py", "app.py"}
    for path in SRC.rglob("*.py"):
        if path.name in allowed or "bench" in path.parts:
            continue
        assert "os.getenv" not in path.read_text(), path.name
        assert "os.environ[" not in path.read_text(), path.name
