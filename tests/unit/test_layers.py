"""Imports flow one way, http → engine → backends (DESIGN.md), checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "ember"
WEB = ("fastapi", "starlette", "uvicorn", "ember.http", "ember.server")
HEAVY = ("torch", "transformers", "sentence_transformers", "cupy")
BASE = ("models", "manifest", "tasks", "settings", "errors", "lifecycle", "metrics", "logs")
"""The modules every layer may use: they import nothing from the layers above them."""
LAYERS = ("ember.engine", "ember.backends", "ember.http")
MAX_LINES = 450


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


# --- the import graph: every module, imports inside functions included -------------------------


def module_name(path: Path) -> str:
    parts = ("ember", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:`: never executed, so no cycle."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    return skipped


def ember_imports(path: Path, known: set[str], *, runtime_only: bool) -> set[str]:
    """The ember modules `path` imports anywhere in it, relative imports resolved; `from p
    import name` counts as importing `p.name` when that is a module, else `p`."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree) if runtime_only else set()
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in known else base)
    return {m for m in found if m in known and m != module_name(path)}


def import_graph(*, runtime_only: bool) -> dict[str, set[str]]:
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    known = set(files)
    return {name: ember_imports(p, known, runtime_only=runtime_only) for name, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that starts and ends at the same module, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_find_cycle_reports_the_loop() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]


def test_the_graph_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    graph = import_graph(runtime_only=True)
    assert "ember.backends.export" in graph["ember.backends.artifact"]  # inside `prepare`
    assert "ember.manifest" in graph["ember.models"]


def test_no_import_cycle_among_ember_modules() -> None:
    cycle = find_cycle(import_graph(runtime_only=True))
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


@pytest.mark.parametrize("base", BASE)
def test_base_modules_import_no_layer(base: str) -> None:
    """Type-only imports count too: a base module must not even name a layer's types."""
    imported = import_graph(runtime_only=False)[f"ember.{base}"]
    assert not {m for m in imported if m.startswith(LAYERS)}, f"ember.{base} imports {imported}"


def test_no_module_is_over_the_line_limit() -> None:
    sizes = {
        p.relative_to(SRC).as_posix(): len(p.read_text().splitlines()) for p in SRC.rglob("*.py")
    }
    over = {name for name, size in sizes.items() if size > MAX_LINES}
    assert not over, f"over {MAX_LINES} lines: {sorted(over)}"
