"""Errors that reach users: each names the file, the field and what was expected."""

from __future__ import annotations

from os import PathLike


class InputError(ValueError):
    """A user-supplied file is missing, malformed or inconsistent.

    The message reads ``<file>: <field>: expected <expected>[, found <found>]`` so a user
    can fix the input without reading a traceback.
    """

    def __init__(
        self,
        path: str | PathLike | None,
        field: str,
        expected: str,
        found: object | None = None,
    ) -> None:
        self.path = str(path) if path is not None else "<input>"
        self.field = field
        self.expected = expected
        self.found = found
        msg = f"{self.path}: {field}: expected {expected}"
        if found is not None:
            msg += f", found {found}"
        super().__init__(msg)
