"""Error kinds. Code raises a kind; `ember.http.errors` alone maps kinds to HTTP statuses."""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    VALIDATION = "validation"
    TOO_LARGE = "too_large"
    OVERLOADED = "overloaded"
    NOT_READY = "not_ready"
    WRONG_TASK = "wrong_task"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    BACKEND = "backend"
    MODEL = "model"


class EmberError(Exception):
    """An error with a kind and a message a person can act on."""

    kind: ErrorKind = ErrorKind.BACKEND

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class InvalidInput(EmberError):
    kind = ErrorKind.VALIDATION


class TooLarge(EmberError):
    kind = ErrorKind.TOO_LARGE


class Overloaded(EmberError):
    kind = ErrorKind.OVERLOADED


class NotReady(EmberError):
    kind = ErrorKind.NOT_READY


class WrongTask(EmberError):
    kind = ErrorKind.WRONG_TASK


class Unauthorized(EmberError):
    kind = ErrorKind.UNAUTHORIZED


class UnknownModel(EmberError):
    kind = ErrorKind.NOT_FOUND


class BackendFailure(EmberError):
    """Inference raised; the message is safe to show (no internals)."""

    kind = ErrorKind.BACKEND


class ModelError(EmberError):
    """A model could not be resolved or loaded (missing folder, bad config, corrupt artifact)."""

    kind = ErrorKind.MODEL
