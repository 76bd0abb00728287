"""Render an overlay the way `kubectl kustomize` does, for the subset of kustomize our base and
`ember deploy`'s overlays use: `resources` (files and folders), strategic-merge `patches` by
path, `images` and `namespace`. Used to print the final manifests without kubectl; the tests
check it against `kubectl kustomize` wherever kubectl is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ember.deploy.report import DeployError

MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}
"""Lists Kubernetes merges item by item (patchMergeKey in its OpenAPI schema), by this field;
every other list is replaced whole."""

Doc = dict[str, Any]


def merge(base: Any, patch: Any, *, field: str = "") -> Any:
    """`patch` applied to `base` by the strategic-merge rules for the fields above."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = merge(out[key], value, field=key)
            else:
                out[key] = value
        return out
    key = MERGE_KEYS.get(field)
    if key and isinstance(base, list) and isinstance(patch, list):
        # kustomize's order: the patch's items first (merged into their base items), then the
        # base items the patch does not name.
        by_key = {item.get(key): item for item in base}
        named = {item.get(key) for item in patch}
        merged = [
            merge(by_key[item.get(key)], item) if item.get(key) in by_key else item
            for item in patch
        ]
        return merged + [item for item in base if item.get(key) not in named]
    return patch


def _load(path: Path) -> list[Doc]:
    import yaml

    try:
        return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    except (OSError, yaml.YAMLError) as exc:
        raise DeployError(f"cannot read {path}: {exc}") from None


def _retag(image: str, entry: dict[str, str]) -> str:
    name = image.split("@", 1)[0]
    if name.rfind(":") > name.rfind("/"):
        name, tag = name.rsplit(":", 1)
    else:
        tag = ""
    if name != entry["name"]:
        return image
    name = entry.get("newName", name)
    if "digest" in entry:
        return f"{name}@{entry['digest']}"
    tag = entry.get("newTag", tag)
    return f"{name}:{tag}" if tag else name


def build(folder: Path) -> list[Doc]:
    """The manifests `kubectl kustomize folder` would print (as data, in resource order)."""
    kustomization = _load(folder / "kustomization.yaml")
    if not kustomization:
        raise DeployError(f"{folder / 'kustomization.yaml'} is empty")
    spec = kustomization[0]
    docs: list[Doc] = []
    for resource in spec.get("resources", []):
        path = folder / resource
        docs += build(path) if path.is_dir() else _load(path)
    for patch_ref in spec.get("patches", []):
        for patch in _load(folder / patch_ref["path"]):
            target = (patch.get("kind"), patch.get("metadata", {}).get("name"))
            index = next(
                (
                    i
                    for i, d in enumerate(docs)
                    if (d.get("kind"), d.get("metadata", {}).get("name")) == target
                ),
                None,
            )
            if index is None:
                raise DeployError(f"patch {patch_ref['path']}: no {target[0]} {target[1]!r}")
            docs[index] = merge(docs[index], patch)
    for entry in spec.get("images", []):
        for doc in docs:
            pod = doc.get("spec", {}).get("template", {}).get("spec", {})
            for group in ("initContainers", "containers"):
                for container in pod.get(group, []):
                    container["image"] = _retag(container["image"], entry)
    if spec.get("namespace"):
        for doc in docs:
            doc["metadata"] = {**doc.get("metadata", {}), "namespace": spec["namespace"]}
    return docs
