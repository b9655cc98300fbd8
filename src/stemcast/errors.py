"""One exception family for everything stemcast refuses.

Every exception names what it is about (a file and, where known, the byte offset, or a
parameter) and the problem, so that a log line alone tells an operator what went wrong.
The classes also derive from the matching built-in exception (``ValueError``,
``NotImplementedError``) so code written against the reference library keeps working.
"""

from __future__ import annotations

import os

__all__ = [
    "StemcastError",
    "FormatError",
    "TruncatedError",
    "ParameterError",
    "UnsupportedError",
    "OutputError",
]


class StemcastError(Exception):
    """Base class of every error stemcast raises on purpose.

    Parameters
    ----------
    problem
        What is wrong, as a short sentence.
    path
        The file concerned, if any.
    offset
        The byte offset in ``path`` where the problem was found, if known.
    parameter
        The name of the offending parameter, if the problem is a parameter.
    """

    def __init__(
        self,
        problem: str,
        *,
        path: str | os.PathLike[str] | None = None,
        offset: int | None = None,
        parameter: str | None = None,
    ) -> None:
        self.problem = problem
        self.path = os.fspath(path) if path is not None else None
        self.offset = offset
        self.parameter = parameter
        super().__init__(self._message())

    def _message(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.offset is not None:
            where.append(f"byte {self.offset}")
        if self.parameter is not None:
            where.append(f"parameter {self.parameter!r}")
        return f"{', '.join(where)}: {self.problem}" if where else self.problem


class FormatError(StemcastError, ValueError):
    """A file is not of the expected format, or its content is inconsistent."""


class TruncatedError(FormatError):
    """A file ends before the data its headers announce."""


class ParameterError(StemcastError, ValueError):
    """A parameter has a value that cannot be used."""


class UnsupportedError(StemcastError, NotImplementedError):
    """A valid file uses a feature that stemcast does not handle."""


class OutputError(StemcastError, OSError):
    """An output cannot be written: unwritable folder, no space left on device, ...

    The message names the output and the operating system's reason, e.g.
    ``cannot write /data/out/scan.emd: [Errno 28] No space left on device``.
    """

    def _message(self) -> str:
        if self.path is None:
            return self.problem
        return f"cannot write {self.path}: {self.problem}"
