"""Which model a request's `model` name selects (issue 14, "Model names")."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.engine.model import ModelEngine
from ember.engine.registry import Engines
from ember.errors import InvalidInput, UnknownModel, WrongTask
from ember.models import ModelSpec, Task
from ember.settings import Settings
from tests.fakes import FakeFactory


def _engines(*models: tuple[str, Task], **settings: object) -> Engines:
    """Engines holding unloaded models (selection reads names and tasks only)."""
    config = Settings(**settings)  # type: ignore[arg-type]
    engines = Engines(config)
    for name, task in models:
        spec = ModelSpec(name=name, source=name, path=Path("/m"), task=task, max_length=8)
        engines.models.append(ModelEngine(spec=spec, settings=config))
    return engines


def test_any_name_selects_the_one_model_of_the_task() -> None:
    engines = _engines(("mini", Task.EMBED))
    for name in (None, "", "mini", "text-embedding-3-small", "/etc/passwd"):
        assert engines.select(Task.EMBED, name).spec.name == "mini"


def test_any_name_selects_the_one_model_of_the_task_among_several() -> None:
    engines = _engines(("emb", Task.EMBED), ("rr", Task.RERANK))
    assert engines.select(Task.RERANK, "ada-002").spec.name == "rr"
    assert engines.select(Task.EMBED, "ada-002").spec.name == "emb"
    assert engines.select(Task.EMBED, "rr").spec.name == "rr"  # a served name wins: 424 later


def test_unknown_names_are_404_listing_the_served_ones_when_the_task_has_several() -> None:
    engines = _engines(("a", Task.EMBED), ("b", Task.EMBED), ("rr", Task.RERANK))
    with pytest.raises(UnknownModel, match=r"'nope' is not served here; served: a, b, rr"):
        engines.select(Task.EMBED, "nope")
    assert engines.select(Task.EMBED, "b").spec.name == "b"
    with pytest.raises(InvalidInput, match="several models do embed"):
        engines.select(Task.EMBED, None)


def test_unknown_names_are_404_when_no_model_does_the_task() -> None:
    engines = _engines(("a", Task.EMBED), ("b", Task.CLASSIFY))
    with pytest.raises(UnknownModel, match="served: a, b"):
        engines.select(Task.RERANK, "nope")
    with pytest.raises(WrongTask, match="no served model does rerank"):
        engines.select(Task.RERANK, None)


def test_strict_model_names_restore_404s() -> None:
    engines = _engines(("mini", Task.EMBED), strict_model_names=True)
    with pytest.raises(UnknownModel, match="served: mini"):
        engines.select(Task.EMBED, "text-embedding-3-small")
    assert engines.select(Task.EMBED, "mini").spec.name == "mini"
    assert engines.select(Task.EMBED, None).spec.name == "mini"


def test_aliases_select_the_model_and_the_first_name_is_served() -> None:
    settings = Settings(
        model=["builtin"], served_model_name=["mini,ada", "small"], strict_model_names=True
    )
    assert settings.served_model_name == ["mini", "ada", "small"]
    engines = Engines(settings, backend_factory=FakeFactory())
    engines.preload().result(timeout=60)
    for alias in ("mini", "ada", "small"):
        assert engines.select(Task.EMBED, alias).spec.name == "mini"
    with pytest.raises(UnknownModel, match="served: mini"):
        engines.select(Task.EMBED, "large")


def test_served_model_names_become_the_name_and_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--served-model-name a,b`: the model is served as `a`, `b` selects it too."""
    from ember.engine import registry

    monkeypatch.setenv("EMBER_SERVED_MODEL_NAME", "first,second")
    settings = Settings(model=["builtin"], strict_model_names=True)
    (spec,) = registry.resolve_specs(settings)
    assert spec.name == "first"
    assert settings.served_model_name == ["first", "second"]
