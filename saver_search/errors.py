"""The exceptions users see: a problem with their input or state, stated with the fix.

Messages name options as ``<name>`` or ``<name=value>``, ``name`` being the parameter of the Python API.
``str(error)`` shows them as Python (``overwrite=True``); the CLI shows its flags instead (``--force``), so
one message serves both. Every error is a :class:`SaverSearchError`.
"""

from __future__ import annotations

import re
from typing import Any, Callable

OPTION = re.compile(r"<([a-z_]+)(?:=([^<>]*))?>")


class SaverSearchError(Exception):
    """Bad input or state the user can fix. The CLI prints it as one line and exits with code 2."""

    def render(self, option: Callable[[str, str | None], str]) -> str:
        """The message with each ``<name[=value]>`` replaced by ``option(name, value)``."""
        return OPTION.sub(lambda match: option(match.group(1), match.group(2)), super().__str__())

    def __str__(self) -> str:
        return self.render(lambda name, value: name if value is None else f"{name}={value}")


class InvalidParameter(SaverSearchError):
    """A parameter value that cannot be used; ``parameter`` is its name in the Python API."""

    def __init__(self, parameter: str, problem: str) -> None:
        self.parameter = parameter
        self.problem = problem
        super().__init__(f"<{parameter}> {problem}")


class UnknownModel(SaverSearchError):
    """A model name that the data (or timm) does not have."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(message)


class CorruptStore(SaverSearchError):
    """A prediction store file that cannot be read as written."""

    def __init__(self, path: object, message: str) -> None:
        self.path = path
        super().__init__(message)


class StudyMismatch(SaverSearchError):
    """A stored study was created with other settings or data than the ones given to resume it."""

    def __init__(self, study_name: str, key: str, stored: Any, given: Any) -> None:
        self.study_name = study_name
        self.key = key
        self.stored = stored
        self.given = given
        super().__init__(
            f"study '{study_name}' was created with {key}={_short(stored)}, not {_short(given)}; "
            f"resume it with the same {key} or give another <study_name>"
        )


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, for one-line errors that wrap it."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
