"""What a model does: the task enum, shared by model inspection and artifact manifests."""

from __future__ import annotations

from enum import StrEnum


class Task(StrEnum):
    EMBED = "embed"
    RERANK = "rerank"
    CLASSIFY = "classify"
