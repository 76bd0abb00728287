"""The route table is the one list of routes: the app serves exactly it, and its readers agree."""

from __future__ import annotations

from ember.http import table
from ember.http.app import create_app
from ember.models import Task
from ember.settings import Settings


def test_the_app_serves_exactly_the_table() -> None:
    app = create_app(Settings())
    served = {path: {m.upper() for m in ops} for path, ops in app.openapi()["paths"].items()}
    listed: dict[str, set[str]] = {}
    for r in table.ROUTES:
        listed.setdefault(r.path, set()).update(r.methods)
    assert served == listed


def test_probes_are_open_and_metrics_only_when_public() -> None:
    probes = {(m, p) for p in ("/health", "/ready", "/") for m in ("GET", "HEAD")}
    probes.add(("GET", "/ping"))
    assert table.open_routes(metrics_public=False) == probes
    assert table.open_routes(metrics_public=True) == probes | {("GET", "/metrics")}
    assert ("POST", "/") not in table.open_routes(metrics_public=True)


def test_every_task_route_has_a_warm_up_body_naming_the_model() -> None:
    for task in Task:
        calls = table.warm_calls(task, "m")
        assert calls, task
        assert all(body["model"] == "m" for _, body in calls)
    # A SPLADE model warms the one embed route that does not normalise (TEI answers 424 there).
    assert [path for path, _ in table.warm_calls(Task.EMBED, "m", sparse=True)] == [
        "/embed_sparse",
        "/embed_sparse",
    ]
    assert "/embed_sparse" not in {path for path, _ in table.warm_calls(Task.EMBED, "m")}
    # /embed_all is warmed where the backend gives per-token vectors (else it answers 424).
    assert "/embed_all" in {path for path, _ in table.warm_calls(Task.EMBED, "m")}
    without = table.warm_calls(Task.EMBED, "m", per_token=False)
    assert "/embed_all" not in {path for path, _ in without} and "/embed" in dict(without)
    tasks = table.route_tasks()
    assert tasks["/rerank"] == "rerank" and tasks["/"] == "embed"
    assert "/health" not in tasks


def test_openai_routes_get_openai_errors() -> None:
    assert table.openai_shaped("/v1/embeddings")
    assert table.openai_shaped("/v1/not-a-route")
    assert not table.openai_shaped("/embed")
