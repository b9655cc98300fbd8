"""Why a run failed, told in one short line that never carries a file's contents.

A failure's message goes to the log, the registry and the ``series_end`` of the run. Error
messages may quote a few bytes of a file (a bad magic number, a header field); a file in a
watch folder can be anything, so the text is cut to a bounded length and every character
that is not printable is escaped: one log line per failure, whatever the file holds.
"""

from __future__ import annotations

import os

from stemcast.errors import StemcastError

__all__ = ["MAX_REASON", "bounded", "describe"]

#: Most characters of a failure's description.
MAX_REASON = 300


def describe(error: BaseException, path: str | os.PathLike[str]) -> str:
    """Describe why the run whose first file is ``path`` failed, in one bounded line.

    Parameters
    ----------
    error
        What was raised. Errors of the :mod:`stemcast.errors` family name their file; any
        other is prefixed with ``path`` and its type (``ValueError: ...``), unless its
        message already names ``path`` (an ``OSError``).
    path
        The run's first file.

    Returns
    -------
    str
        At most :data:`MAX_REASON` printable characters.
    """
    where = os.fspath(path)
    text = str(error) or type(error).__name__
    if not isinstance(error, StemcastError):
        if not isinstance(error, OSError):
            text = f"{type(error).__name__}: {text}"
        if where not in text:
            text = f"{where}: {text}"
    return bounded(text)


def bounded(text: str, limit: int = MAX_REASON) -> str:
    """Return ``text`` with non-printable characters escaped, cut to ``limit`` characters."""
    shown = "".join(
        character if character.isprintable() else repr(character)[1:-1] for character in text
    )
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."
