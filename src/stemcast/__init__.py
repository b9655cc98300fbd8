"""stemcast: live acquisition and fast file formats for 4D-STEM cameras.

The format packages are imported on first use, so ``import stemcast`` and ``stemcast --help``
stay fast: ``stemcast.readers.mib.file_reader`` is the Merlin reader. :func:`file_reader`
reads a file of any format, which makes the package a HyperSpy reader:
``hyperspy.api.load(path, file_format=stemcast)``.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("stemcast")
except PackageNotFoundError:
    __version__ = "0+unknown"

__all__ = ["__version__", "file_reader", "load"]


def load(path: str | os.PathLike[str], **kwargs: Any) -> list[dict[str, Any]]:
    """Read a data file with the reader of its format (see :func:`stemcast.formats.load`)."""
    from stemcast.formats.detect import load as load_file

    return load_file(path, **kwargs)


def file_reader(filename: str | os.PathLike[str], **kwds: Any) -> list[dict[str, Any]]:
    """Read a data file of any supported format: the reader interface HyperSpy calls.

    ``hyperspy.api.load(path, file_format=stemcast)`` (``reader=stemcast`` before HyperSpy
    2.4) reads ``path`` with stemcast. The format (Merlin ``.mib``, TVIPS ``.tvips``, NanoMegas
    ``.blo``, EMD) is recognised from the file's name and first bytes, as :func:`load` does.

    Parameters
    ----------
    filename : str, pathlib.Path
        The file to read (for a TVIPS series, any of its files).
    **kwds
        Passed to the format's ``file_reader`` (HyperSpy passes ``lazy``), e.g.
        ``navigation_shape`` for Merlin files or ``scan_shape`` for TVIPS series.

    Returns
    -------
    list of dict
        One dictionary per signal (``data``, ``axes``, ``metadata``, ``original_metadata``),
        as the format's reader returns them.
    """
    from stemcast.formats.detect import load as load_file

    return load_file(filename, **kwds)
