"""Recognise a file's format from its name and first bytes, and find its reader."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stemcast.errors import FormatError

Reader = Callable[..., list[dict[str, Any]]]


def detect_format(path: str | os.PathLike[str]) -> str:
    """Return the format name of ``path`` (``"mib"``, ``"tvips"``, ``"blockfile"``, ``"emd"``).

    Parameters
    ----------
    path
        A data file.

    Returns
    -------
    str
        The format name.
    """
    file = Path(path)
    if file.suffix.lower() == ".tvips":
        # NAME.tvips names the series NAME_000.tvips, NAME_001.tvips, ...
        return "tvips"
    if not file.is_file():
        raise FormatError("no such file", path=file)
    with open(file, "rb") as stream:
        start = stream.read(8)
    suffix = file.suffix.lower()
    if start[:4] == b"MQ1," or suffix == ".mib":
        return "mib"
    if start[:6] == b"IMGBLO" or suffix == ".blo":
        return "blockfile"
    if start == b"\x89HDF\r\n\x1a\n" or suffix in (".emd", ".de5"):
        return "emd"
    raise FormatError(
        f"unrecognised format (suffix {file.suffix!r}, first bytes {start!r}); "
        "supported: Merlin .mib, TVIPS .tvips, NanoMegas .blo, EMD (HDF5)",
        path=file,
    )


def reader_for(path: str | os.PathLike[str]) -> Reader:
    """Return the ``file_reader`` function for the format of ``path``."""
    name = detect_format(path)
    if name == "mib":
        from stemcast.formats.mib.reader import file_reader

        return file_reader
    if name == "tvips":
        from stemcast.formats.tvips.reader import file_reader as read_tvips

        return read_tvips
    if name == "blockfile":
        from stemcast.formats.blockfile.reader import file_reader as read_blockfile

        return read_blockfile
    if name == "emd":
        from stemcast.formats.emd.reader import file_reader as read_emd

        return read_emd
    raise FormatError(f"no reader for format {name!r}", path=path)


def load(path: str | os.PathLike[str], **kwargs: Any) -> list[dict[str, Any]]:
    """Read a data file with the reader of its format.

    Parameters
    ----------
    path
        A data file.
    **kwargs
        Passed to the format's ``file_reader``.

    Returns
    -------
    list of dict
        The reader's result (``data``, ``axes``, ``metadata``, ``original_metadata``).
    """
    return reader_for(path)(path, **kwargs)
