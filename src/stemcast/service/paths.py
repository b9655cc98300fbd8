"""Which paths the service may read: files within its folders, after following links."""

from __future__ import annotations

import os

__all__ = ["inside"]


def inside(path: str, root: str) -> bool:
    """Whether the resolved ``path`` is ``root`` or lies under it.

    Parameters
    ----------
    path
        A path resolved with :func:`os.path.realpath` (symbolic links followed).
    root
        A folder, resolved the same way.

    Returns
    -------
    bool
        ``True`` for ``root`` itself and anything below it; a sibling whose name merely
        starts like ``root`` (``/data/watch2`` for ``/data/watch``) is not inside.
    """
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
