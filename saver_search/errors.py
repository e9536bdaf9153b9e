"""The exceptions users see: a problem with their input or state, stated with the fix.

Library errors name the parameter or study key at fault; the CLI maps them to its flags and prints one line.
"""

from __future__ import annotations

from typing import Any


class SaverSearchError(Exception):
    """Bad input or state the user can fix. The CLI prints it as one line and exits with code 2."""


class InvalidParameter(SaverSearchError):
    """A parameter value that cannot be used; ``parameter`` is its name in the Python API."""

    def __init__(self, parameter: str, problem: str) -> None:
        self.parameter = parameter
        self.problem = problem
        super().__init__(f"{parameter} {problem}")


class StudyMismatch(SaverSearchError):
    """A stored study was created with other settings or data than the ones given to resume it."""

    def __init__(self, study_name: str, key: str, stored: Any, given: Any) -> None:
        self.study_name = study_name
        self.key = key
        self.stored = stored
        self.given = given
        super().__init__(
            f"study '{study_name}' was created with {key}={_short(stored)}, not {_short(given)}; "
            f"resume it with the same {key} or give another study name"
        )


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
