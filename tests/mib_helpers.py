"""Merlin files built from their stored frames, for tests of the byte layout and the readers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stemcast.writers.mib import write_mib


def write_stored(path: Path, frames: Any, **options: Any) -> Path:
    """Write a Merlin file whose frames, rows in file order, are ``frames``.

    ``write_mib`` takes frames as ``file_reader`` returns them, flipped vertically, and writes
    them back in stored order; tests about the stored layout start from the stored rows.
    """
    return write_mib(path, np.asarray(frames)[..., ::-1, :], **options)
