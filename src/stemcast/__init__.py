"""stemcast: live acquisition and fast file formats for 4D-STEM cameras.

The format packages are imported on first use, so ``import stemcast`` and ``stemcast --help``
stay fast: ``stemcast.readers.mib.file_reader`` is the Merlin reader.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("stemcast")
except PackageNotFoundError:
    __version__ = "0+unknown"

__all__ = ["__version__", "load"]


def load(path: str | os.PathLike[str], **kwargs: Any) -> list[dict[str, Any]]:
    """Read a data file with the reader of its format (see :func:`stemcast.formats.load`)."""
    from stemcast.formats.detect import load as load_file

    return load_file(path, **kwargs)
