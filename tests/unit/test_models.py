"""Model resolution and inspection: task, pooling, limits, labels, the offline HF cache, errors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from ember.errors import ModelError
from ember.manifest import folder_digest
from ember.models import (
    BUILTIN_NAME,
    Task,
    builtin_path,
    inspect_model,
    parse_model_arg,
    resolve_path,
)

BERT: dict[str, Any] = {"model_type": "bert", "hidden_size": 32, "max_position_embeddings": 512}


def write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")


def make_model(
    path: Path,
    config: dict[str, Any] | None = None,
    *,
    files: dict[str, object] | None = None,
) -> Path:
    """A model folder with config files only: inspection reads JSON, never weights."""
    write_json(path / "config.json", {**BERT, **(config or {})})
    (path / "tokenizer.json").write_text("{}", encoding="utf-8")  # only its presence is checked
    for name, value in (files or {}).items():
        write_json(path / name, value)
    return path


def st_layout(pooling: dict[str, bool], *, normalize: bool = True, dim: int = 32) -> dict[str, Any]:
    """sentence-transformers files: modules.json, the Pooling config, optionally Normalize."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    return {
        "modules.json": modules,
        "1_Pooling/config.json": {"word_embedding_dimension": dim, **pooling},
    }


# --- the built-in model ----------------------------------------------------------------------


@pytest.mark.parametrize("source", ["builtin", ""])
def test_builtin_is_minilm_mean_pooled_and_normalised(source: str) -> None:
    spec = inspect_model(source)
    assert spec.name == BUILTIN_NAME
    assert spec.source == "builtin"
    assert spec.path == builtin_path()
    assert spec.task is Task.EMBED
    assert (spec.pooling, spec.normalize, spec.dimension) == ("mean", True, 384)
    assert spec.max_length == 256  # sentence_bert_config.json, below the 512 positions
    assert spec.tokenizer_file.is_file()


# --- task detection --------------------------------------------------------------------------

CROSS_ENCODER = {"config_sentence_transformers.json": {"model_type": "CrossEncoder"}}
TASKS: list[tuple[str, dict[str, Any], dict[str, object], Task, tuple[str, ...]]] = [
    ("encoder", {"architectures": ["BertModel"]}, {}, Task.EMBED, ()),
    ("no architectures", {"architectures": None}, {}, Task.EMBED, ()),
    (
        "one label",
        {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"}},
        {},
        Task.RERANK,
        ("LABEL_0",),
    ),
    (
        "xlm-roberta reranker",
        {"architectures": ["XLMRobertaForSequenceClassification"], "num_labels": 1},
        {},
        Task.RERANK,
        ("LABEL_0",),
    ),
    (
        "three labels, keys out of order",
        {
            "architectures": ["BertForSequenceClassification"],
            "id2label": {"2": "positive", "0": "negative", "1": "neutral"},
        },
        {},
        Task.CLASSIFY,
        ("negative", "neutral", "positive"),
    ),
    (
        "no labels: transformers' default of two",
        {"architectures": ["DistilBertForSequenceClassification"]},
        {},
        Task.CLASSIFY,
        ("LABEL_0", "LABEL_1"),
    ),
    (
        "id2label wins over a stale num_labels",
        {
            "architectures": ["BertForSequenceClassification"],
            "num_labels": 2,
            "id2label": {"0": "s"},
        },
        {},
        Task.RERANK,
        ("s",),
    ),
    ("CrossEncoder, no labels", {"architectures": None}, CROSS_ENCODER, Task.RERANK, ("LABEL_0",)),
    (
        "CrossEncoder, one label",
        {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"}},
        CROSS_ENCODER,
        Task.RERANK,
        ("LABEL_0",),
    ),
    (
        "CrossEncoder for NLI: three labels classify",
        {
            "architectures": ["DebertaV2ForSequenceClassification"],
            "id2label": {"0": "contradiction", "1": "entailment", "2": "neutral"},
        },
        CROSS_ENCODER,
        Task.CLASSIFY,
        ("contradiction", "entailment", "neutral"),
    ),
    (
        "sentence-transformers embedder",
        {"architectures": ["BertModel"]},
        {"config_sentence_transformers.json": {"prompts": {}}},
        Task.EMBED,
        (),
    ),
]


@pytest.mark.parametrize(
    ("config", "files", "task", "labels"), [pytest.param(*t[1:], id=t[0]) for t in TASKS]
)
def test_task_and_labels_come_from_the_config(
    tmp_path: Path,
    config: dict[str, Any],
    files: dict[str, object],
    task: Task,
    labels: tuple[str, ...],
) -> None:
    spec = inspect_model(str(make_model(tmp_path / "m", config, files=files)))
    assert spec.task is task
    assert spec.labels == labels
    if task is Task.EMBED:
        assert spec.dimension == 32
    else:
        assert spec.dimension == len(labels)


def test_architecture_and_model_type_are_recorded(tmp_path: Path) -> None:
    config = {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "a"}}
    spec = inspect_model(str(make_model(tmp_path / "m", config)))
    assert (spec.architecture, spec.model_type, spec.hidden_size) == (
        "BertForSequenceClassification",
        "bert",
        32,
    )


# --- pooling and normalisation ---------------------------------------------------------------

POOLINGS = [
    ({"pooling_mode_mean_tokens": True}, "mean"),
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
    ({"pooling_mode_max_tokens": True}, "max"),
    ({"pooling_mode_lasttoken": True}, "lasttoken"),
]


@pytest.mark.parametrize(("modes", "pooling"), POOLINGS, ids=[p[1] for p in POOLINGS])
@pytest.mark.parametrize("normalize", [True, False])
def test_pooling_and_normalize_come_from_modules_json(
    tmp_path: Path, modes: dict[str, bool], pooling: str, normalize: bool
) -> None:
    folder = make_model(tmp_path / "m", files=st_layout(modes, normalize=normalize, dim=24))
    # The folder's own pipeline wins over the --pooling flag.
    spec = inspect_model(str(folder), pooling="cls" if pooling != "cls" else "mean")
    assert (spec.pooling, spec.normalize, spec.dimension) == (pooling, normalize, 24)


@pytest.mark.parametrize(("flag", "expected"), [(None, "mean"), ("cls", "cls"), ("max", "max")])
def test_plain_folder_pools_as_the_flag_says(
    tmp_path: Path, flag: str | None, expected: str
) -> None:
    spec = inspect_model(str(make_model(tmp_path / "m")), pooling=flag)
    assert (spec.pooling, spec.normalize, spec.dimension) == (expected, False, 32)


def st6_pooling(mode: object, **extra: object) -> dict[str, object]:
    """The Pooling config sentence-transformers 6 writes (one `pooling_mode`, renamed dimension)."""
    layout = st_layout({}, dim=24)
    layout["1_Pooling/config.json"] = {"embedding_dimension": 24, "pooling_mode": mode, **extra}
    return layout


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("mean", "mean"), ("cls", "cls"), (["max"], "max"), ("lasttoken", "lasttoken")],
)
def test_sentence_transformers_6_pooling_format(
    tmp_path: Path, mode: object, expected: str
) -> None:
    folder = make_model(tmp_path / "m", files=st6_pooling(mode, include_prompt=True))
    spec = inspect_model(str(folder), pooling="max" if expected != "max" else "cls")
    assert (spec.pooling, spec.normalize, spec.dimension) == (expected, True, 24)


def test_legacy_pooling_with_no_mode_set_is_mean(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m", files=st_layout({"pooling_mode_cls_token": False}))
    assert inspect_model(str(folder), pooling="cls").pooling == "mean"  # as sentence-transformers


UNSUPPORTED_POOLING: list[tuple[str, dict[str, object], str]] = [
    ("mean_sqrt_len", st_layout({"pooling_mode_mean_sqrt_len_tokens": True}), "mean_sqrt_len"),
    ("weightedmean", st_layout({"pooling_mode_weightedmean_tokens": True}), "weightedmean"),
    (
        "legacy concatenation",
        st_layout({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}),
        "concatenated pooling",
    ),
    ("6.x concatenation", st6_pooling(["cls", "mean"]), "concatenated pooling"),
    ("6.x weightedmean", st6_pooling("weightedmean"), "weightedmean"),
    ("prompt left out", st6_pooling("mean", include_prompt=False), "leaves the prompt out"),
]


@pytest.mark.parametrize(
    ("files", "fragment"), [pytest.param(*u[1:], id=u[0]) for u in UNSUPPORTED_POOLING]
)
def test_pooling_ember_cannot_reproduce_is_refused(
    tmp_path: Path, files: dict[str, object], fragment: str
) -> None:
    folder = make_model(tmp_path / "m", files=files)
    with pytest.raises(ModelError, match=fragment) as info:
        inspect_model(str(folder))
    assert str(folder) in info.value.message


def test_unknown_modules_are_refused(tmp_path: Path) -> None:
    layout = st_layout({"pooling_mode_mean_tokens": True})
    modules = layout["modules.json"]
    assert isinstance(modules, list)
    modules.append({"idx": 3, "name": "3", "path": "3_LN", "type": "acme.modules.LayerNorm"})
    folder = make_model(tmp_path / "m", files=layout)
    with pytest.raises(ModelError, match=r"acme\.modules\.LayerNorm"):
        inspect_model(str(folder))
    write_json(folder / "modules.json", {"not": "a list"})
    with pytest.raises(ModelError, match="does not hold a list of modules"):
        inspect_model(str(folder))


def test_unsupported_pipelines_are_refused_naming_the_folder(tmp_path: Path) -> None:
    sqrt = make_model(
        tmp_path / "sqrt", files=st_layout({"pooling_mode_mean_sqrt_len_tokens": True})
    )
    with pytest.raises(ModelError, match="mean_sqrt_len") as info:
        inspect_model(str(sqrt))
    assert str(sqrt) in info.value.message
    dense_layout = st_layout({"pooling_mode_mean_tokens": True}, normalize=False)
    modules = dense_layout["modules.json"]
    assert isinstance(modules, list)
    modules.append(
        {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    )
    dense = make_model(tmp_path / "dense", files=dense_layout)
    # A Dense module without its config is refused, never skipped (the vectors would be wrong).
    with pytest.raises(ModelError, match="3_Dense") as info:
        inspect_model(str(dense))
    assert str(dense) in info.value.message
    write_json(
        dense / "3_Dense" / "config.json",
        {"in_features": 8, "out_features": 4, "activation_function": "acme.Swish"},
    )
    with pytest.raises(ModelError, match=r"acme\.Swish"):
        inspect_model(str(dense))


def test_missing_pooling_config_names_the_file(tmp_path: Path) -> None:
    layout = st_layout({"pooling_mode_mean_tokens": True})
    del layout["1_Pooling/config.json"]
    folder = make_model(tmp_path / "m", files=layout)
    with pytest.raises(ModelError, match="is missing") as info:
        inspect_model(str(folder))
    assert str(folder / "1_Pooling" / "config.json") in info.value.message


def test_prompts_are_read(tmp_path: Path) -> None:
    prompts = {"query": "query: ", "passage": "passage: "}
    files = {"config_sentence_transformers.json": {"prompts": prompts}}
    assert inspect_model(str(make_model(tmp_path / "m", files=files))).prompts == prompts


# --- max length ------------------------------------------------------------------------------

LENGTHS: list[tuple[str, dict[str, Any], dict[str, object], int | None, int]] = [
    ("positions only", {}, {}, None, 512),
    (
        "sbert below positions",
        {},
        {"sentence_bert_config.json": {"max_seq_length": 128}},
        None,
        128,
    ),
    (
        "sbert above positions",
        {},
        {"sentence_bert_config.json": {"max_seq_length": 8192}},
        None,
        512,
    ),
    ("tokenizer limit", {}, {"tokenizer_config.json": {"model_max_length": 256}}, None, 256),
    (
        "tokenizer's 'no limit' sentinel",
        {},
        {"tokenizer_config.json": {"model_max_length": 1000000000000000019884624838656}},
        None,
        512,
    ),
    (
        "sbert wins over the tokenizer",
        {},
        {
            "sentence_bert_config.json": {"max_seq_length": 200},
            "tokenizer_config.json": {"model_max_length": 100},
        },
        None,
        200,
    ),
    (
        "sbert without max_seq_length (CrossEncoder save)",
        {},
        {
            "sentence_bert_config.json": {"transformer_task": "sequence-classification"},
            "tokenizer_config.json": {"model_max_length": 300},
        },
        None,
        300,
    ),
    (
        "roberta positions offset",
        {"model_type": "xlm-roberta", "max_position_embeddings": 514},
        {},
        None,
        512,
    ),
    ("capped by the setting", {}, {}, 64, 64),
    (
        "cap above the model's",
        {},
        {"sentence_bert_config.json": {"max_seq_length": 128}},
        4096,
        128,
    ),
]


@pytest.mark.parametrize(
    ("config", "files", "cap", "expected"), [pytest.param(*c[1:], id=c[0]) for c in LENGTHS]
)
def test_max_length(
    tmp_path: Path,
    config: dict[str, Any],
    files: dict[str, object],
    cap: int | None,
    expected: int,
) -> None:
    folder = make_model(tmp_path / "m", config, files=files)
    assert inspect_model(str(folder), max_input_length=cap).max_length == expected


def test_unknown_max_length_is_an_error_naming_the_folder(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m")
    write_json(folder / "config.json", {"model_type": "bert", "hidden_size": 32})
    with pytest.raises(ModelError, match="maximum sequence length") as info:
        inspect_model(str(folder))
    assert str(folder) in info.value.message


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "parsed"),
    [
        ("builtin", (None, "builtin")),
        ("/models/x", (None, "/models/x")),
        ("rr=/models/x", ("rr", "/models/x")),
        (" rr = /models/x ", ("rr", "/models/x")),
        ("BAAI/bge-reranker-base", (None, "BAAI/bge-reranker-base")),
        ("bge=BAAI/bge-reranker-base", ("bge", "BAAI/bge-reranker-base")),
        ("=/models/x", (None, "=/models/x")),
        ("name=", (None, "name=")),
    ],
)
def test_parse_model_arg(arg: str, parsed: tuple[str | None, str]) -> None:
    assert parse_model_arg(arg) == parsed


def test_served_name_defaults_to_the_folder_name(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "my-reranker")
    assert inspect_model(str(folder)).name == "my-reranker"
    assert inspect_model(str(folder), name="rr").name == "rr"
    assert inspect_model(str(folder)).source == str(folder)


# --- errors name the path --------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelError, match="does not exist") as info:
        resolve_path(str(missing))
    assert str(missing) in info.value.message


def test_a_file_is_not_a_model_folder(tmp_path: Path) -> None:
    file = tmp_path / "model.bin"
    file.write_bytes(b"\0")
    with pytest.raises(ModelError, match="is not a folder") as info:
        inspect_model(str(file))
    assert str(file) in info.value.message


def test_unreadable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_model(tmp_path / "locked")
    folder.chmod(0)
    if os.geteuid() == 0:  # root reads any folder: make `access` answer as for anyone else
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode: False if Path(p) == folder else real_access(p, mode)
        )
    try:
        with pytest.raises(ModelError, match="is not readable") as info:
            inspect_model(str(folder))
    finally:
        folder.chmod(0o755)
    assert str(folder) in info.value.message


@pytest.mark.parametrize(
    ("damage", "fragment", "file"),
    [
        ("no config", "is missing", "config.json"),
        ("bad json", "is not readable JSON", "config.json"),
        ("json list", "does not hold a JSON object", "config.json"),
        ("no tokenizer", "no tokenizer.json", ""),
        ("bad modules.json", "is not valid JSON", "modules.json"),
        ("bad sbert config", "is not readable JSON", "sentence_bert_config.json"),
    ],
)
def test_damaged_folder_errors_name_the_file(
    tmp_path: Path, damage: str, fragment: str, file: str
) -> None:
    folder = make_model(tmp_path / "m")
    if damage == "no config":
        (folder / "config.json").unlink()
    elif damage == "bad json":
        (folder / "config.json").write_text("{oops", encoding="utf-8")
    elif damage == "json list":
        (folder / "config.json").write_text("[1, 2]", encoding="utf-8")
    elif damage == "no tokenizer":
        (folder / "tokenizer.json").unlink()
    elif damage == "bad modules.json":
        (folder / "modules.json").write_text("[{", encoding="utf-8")
    else:
        (folder / "sentence_bert_config.json").write_text("nope", encoding="utf-8")
    with pytest.raises(ModelError, match=fragment) as info:
        inspect_model(str(folder))
    assert str(folder / file).rstrip("/") in info.value.message


def test_errors_name_the_served_model_when_named(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        inspect_model(str(tmp_path / "gone"), name="rr")
    assert info.value.message.startswith("rr: ")
    assert str(tmp_path / "gone") in info.value.message


# --- the offline Hugging Face cache ----------------------------------------------------------


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache that `HF_HUB_CACHE` points at, with every other cache variable unset."""
    cache = tmp_path / "hub"
    cache.mkdir()
    for variable in ("HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # so no relative folder shadows an id
    return cache


def cached_snapshot(hub: Path, repo_id: str, revision: str, *, ref: bool = True) -> Path:
    """A snapshot laid out as huggingface_hub writes it (models--org--name/snapshots/<rev>)."""
    root = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = make_model(root / "snapshots" / revision, {"architectures": ["BertModel"]})
    if ref:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / "main").write_text(revision, encoding="utf-8")
    return snapshot


def test_cached_id_resolves_to_the_main_snapshot(hub: Path) -> None:
    older = cached_snapshot(hub, "acme/tiny-embed", "ffff0000", ref=False)
    main = cached_snapshot(hub, "acme/tiny-embed", "aaaa1111")
    os.utime(older, (time.time() + 60, time.time() + 60))  # newer on disk, but not `main`
    assert resolve_path("acme/tiny-embed") == main
    spec = inspect_model("acme/tiny-embed")
    assert (spec.name, spec.source, spec.path) == ("acme/tiny-embed", "acme/tiny-embed", main)


def test_without_a_ref_the_newest_snapshot_is_used(hub: Path) -> None:
    old = cached_snapshot(hub, "acme/m", "bbbb", ref=False)
    new = cached_snapshot(hub, "acme/m", "aaaa", ref=False)
    os.utime(old, (1_000_000, 1_000_000))
    assert resolve_path("acme/m") == new


def test_a_ref_to_a_missing_snapshot_falls_back(hub: Path) -> None:
    snapshot = cached_snapshot(hub, "acme/m", "cccc")
    (hub / "models--acme--m" / "refs" / "main").write_text("gone", encoding="utf-8")
    assert resolve_path("acme/m") == snapshot


def test_legacy_id_without_an_org(hub: Path) -> None:
    snapshot = cached_snapshot(hub, "bert-tiny", "dddd")
    assert resolve_path("bert-tiny") == snapshot


def test_id_not_in_the_cache_names_the_cache_and_never_downloads(hub: Path) -> None:
    with pytest.raises(ModelError, match="never downloads") as info:
        resolve_path("acme/absent")
    assert "acme/absent" in info.value.message
    assert str(hub) in info.value.message


def test_hf_home_is_used_without_hf_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    snapshot = cached_snapshot(tmp_path / "hf" / "hub", "acme/m", "eeee")
    assert resolve_path("acme/m") == snapshot


def test_a_local_folder_wins_over_the_cache(hub: Path, tmp_path: Path) -> None:
    cached_snapshot(hub, "acme/m", "ffff")
    local = make_model(tmp_path / "acme" / "m")
    assert resolve_path("acme/m") == local.resolve()


# --- artifact keys ---------------------------------------------------------------------------


def test_folder_digest_follows_content_not_docs(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m")
    before = folder_digest(folder)
    (folder / "README.md").write_text("docs change nothing", encoding="utf-8")
    assert folder_digest(folder) == before
    write_json(folder / "config.json", {**BERT, "hidden_size": 64})
    assert folder_digest(folder) != before


def test_the_stat_digest_follows_names_sizes_and_mtimes_but_not_docs(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m")
    before = folder_digest(folder, content=False)
    assert before != folder_digest(folder)  # another recipe, never mistaken for the content hash
    (folder / "README.md").write_text("docs change nothing", encoding="utf-8")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_text("", encoding="utf-8")
    assert folder_digest(folder, content=False) == before
    config = folder / "config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert folder_digest(folder, content=False) != before


def _two_dense_model(tmp_path: Path) -> Path:
    """A stella-shaped folder: modules.json lists 2_Dense; 2_Dense_16 is the other choice."""
    layout = st_layout({"pooling_mode_mean_tokens": True}, normalize=False)
    modules = layout["modules.json"]
    assert isinstance(modules, list)
    modules.append(
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    )
    folder = make_model(tmp_path / "stella", files=layout)
    for name, out in (("2_Dense", 8), ("2_Dense_16", 16)):
        write_json(
            folder / name / "config.json",
            {
                "in_features": 32,
                "out_features": out,
                "bias": False,
                "activation_function": "x.y.Identity",
            },
        )
        (folder / name / "model.safetensors").write_bytes(b"")
    return folder


def test_dense_modules_set_the_width_and_dense_path_picks_one(tmp_path: Path) -> None:
    folder = _two_dense_model(tmp_path)
    spec = inspect_model(str(folder))
    assert [(d.folder.name, d.out_features, d.bias, d.activation) for d in spec.dense] == [
        ("2_Dense", 8, False, "Identity")
    ]
    assert spec.dimension == 8
    chosen = inspect_model(str(folder), dense_path="2_Dense_16")
    assert [d.folder.name for d in chosen.dense] == ["2_Dense_16"]
    assert chosen.dimension == 16
    with pytest.raises(ModelError, match="2_Dense_99"):
        inspect_model(str(folder), dense_path="2_Dense_99")
