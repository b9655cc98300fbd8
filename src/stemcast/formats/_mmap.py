"""The ``mmap_mode`` parameter shared by the readers that memory-map their files."""

from __future__ import annotations

from typing import Literal

from stemcast.errors import ParameterError

#: Modes a reader accepts: read-only, read-write (eager only) and copy-on-write.
MmapMode = Literal["r", "r+", "c"]
MMAP_MODES: tuple[MmapMode, ...] = ("r", "r+", "c")


def resolve_mmap_mode(mmap_mode: str | None, lazy: bool) -> MmapMode:
    """Check ``mmap_mode`` and apply the reference default.

    Parameters
    ----------
    mmap_mode
        The user's value: ``None`` (``"r"`` when lazy, else ``"c"``), ``"r"``, ``"r+"`` or
        ``"c"``. ``"w+"`` is refused: it would overwrite the source file.
    lazy
        Whether the data are loaded lazily (which excludes ``"r+"``).

    Returns
    -------
    str
        The mode to pass to :class:`numpy.memmap`.
    """
    if mmap_mode is None:
        return "r" if lazy else "c"
    if mmap_mode == "w+":
        raise ParameterError(
            "'w+' would overwrite the source file; stemcast never modifies sources",
            parameter="mmap_mode",
        )
    if mmap_mode not in MMAP_MODES:
        raise ParameterError(f"{mmap_mode!r} is not one of {MMAP_MODES}", parameter="mmap_mode")
    if lazy and mmap_mode == "r+":
        raise ParameterError(
            "lazy loading does not support in-place writing ('r+')", parameter="mmap_mode"
        )
    return mmap_mode
