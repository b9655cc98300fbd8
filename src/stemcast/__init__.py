"""stemcast: live acquisition and fast file formats for 4D-STEM cameras.

The format packages are imported on first use, so ``import stemcast`` and ``stemcast --help``
stay fast: ``stemcast.readers.mib.file_reader`` is the Merlin reader. :func:`file_reader`
reads a file of any format, which makes the package a HyperSpy reader:
``hyperspy.api.load(path, file_format=stemcast)``.
"""

from __future__ import annotations

import functools
import os
from typing import Any

__all__ = ["__version__", "file_reader", "load"]


def __getattr__(name: str) -> Any:
    # ``__version__`` is looked up on first use: importlib.metadata alone takes longer to
    # import than numpy's core, and a conversion run as a command pays it for nothing.
    if name == "__version__":
        return _version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _version() -> str:
    """Return the installed package's version (``0+unknown`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stemcast")
    except PackageNotFoundError:
        return "0+unknown"


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
