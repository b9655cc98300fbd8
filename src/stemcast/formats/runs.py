"""Runs that grow frame by frame (Merlin, TVIPS): which file starts a run, and opening it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from stemcast.errors import FormatError, ParameterError
from stemcast.formats.mib.run import MibRun
from stemcast.formats.tvips.run import (
    TvipsSeries,
    first_part,
    is_first_part,
    is_tvips,
    series_name,
)
from stemcast.source import Source

__all__ = ["RunKind", "open_run", "run_kind", "run_name", "run_source"]

RunKind = Literal["mib", "tvips"]


def run_kind(path: str | os.PathLike[str]) -> RunKind | None:
    """Say which kind of run ``path`` starts: ``"mib"``, ``"tvips"`` (first part) or ``None``.

    Parameters
    ----------
    path
        A file name.

    Returns
    -------
    str or None
        ``"mib"`` for a Merlin ``.mib`` file, ``"tvips"`` for the ``_000`` part of a TVIPS
        series; ``None`` for anything else (``.hdr`` files, later TVIPS parts).
    """
    if os.fspath(path).lower().endswith(".mib"):
        return "mib"
    if is_first_part(path):
        return "tvips"
    return None


def run_source(path: str | os.PathLike[str]) -> Path:
    """Return the first file of the run that ``path`` belongs to.

    Parameters
    ----------
    path
        A ``.mib`` file (of a run in one file or split over several), or any part of a TVIPS
        series (``NAME_NNN.tvips``, or ``NAME.tvips`` for ``NAME_000.tvips``).

    Returns
    -------
    pathlib.Path
        The ``.mib`` file that starts the run, or the ``_000`` part of the series.

    Raises
    ------
    ParameterError
        When ``path`` does not exist.
    FormatError
        When ``path`` is not a file of a Merlin run or a TVIPS series.
    """
    given = Path(path)
    if not given.exists():
        raise ParameterError("no such file", path=given, parameter="source")
    if not given.is_file():
        raise FormatError("not a file", path=given)
    if given.suffix.lower() == ".mib":
        return Path(MibRun.open(given).path)
    if is_tvips(given):
        first = first_part(given)
        if not first.is_file():
            raise FormatError(f"the first part of the series, {first.name}, is missing", path=given)
        return first
    raise FormatError("not a Merlin .mib file or a part of a TVIPS .tvips series", path=given)


def run_name(path: str | os.PathLike[str]) -> str:
    """Return the name of the run that ``path`` starts, for its outputs.

    Parameters
    ----------
    path
        The run's first file (see :func:`run_source`).

    Returns
    -------
    str
        The ``.mib`` file's stem, or the series name (``NAME`` of ``NAME_000.tvips``).
    """
    return series_name(path) if is_tvips(path) else Path(path).stem


def open_run(path: str | os.PathLike[str]) -> Source:
    """Open the run whose first file is ``path`` (see :func:`run_source`).

    Parameters
    ----------
    path
        A ``.mib`` file or the ``_000`` part of a TVIPS series.

    Returns
    -------
    Source
        The run, counted as far as its complete records go.

    Raises
    ------
    FormatError
        When the file is not the first file of a run, or not of its format.
    """
    kind = run_kind(path)
    if kind == "mib":
        return MibRun.open(path)
    if kind == "tvips":
        return TvipsSeries.open(path)
    raise FormatError("not the first file of a Merlin or TVIPS run", path=path)
