"""Errors a user can cause. Each says what is wrong and what to do."""

from __future__ import annotations


class LeukodxError(Exception):
    """An error caused by user input: printed as one line, no traceback (unless --debug)."""

    def __init__(self, problem: str, hint: str = ""):
        self.problem = problem
        self.hint = hint
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.problem} {self.hint}".strip() if self.hint else self.problem


class ImageError(LeukodxError):
    """An image that cannot be used: unreadable, wrong format, too small or too large."""

    def __init__(self, path: str, reason: str, hint: str = ""):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}.", hint)


class DatasetError(LeukodxError):
    """A data folder that is missing, empty, or in no known layout."""


class ModelError(LeukodxError):
    """A model directory, architecture or weights file that does not fit."""
