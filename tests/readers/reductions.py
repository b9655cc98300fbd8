"""Check that the reductions users start with agree between two readers' arrays."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import pytest

from stemcast.formats import frame_sums


def force_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the frame arrays of small test files take the threaded path."""
    monkeypatch.setattr(frame_sums, "MIN_PARALLEL_BYTES", 0)
    monkeypatch.setattr(frame_sums, "_cores", lambda: 2)


def assert_same_reductions(mine: Any, theirs: Any, signal_ndim: int = 2) -> None:
    """Signal sums (virtual images), navigation sums and means, and totals must be equal.

    Both arrays may be numpy or dask arrays; values and dtypes are compared exactly.
    """
    signal = tuple(range(-signal_ndim, 0))
    navigation = tuple(range(mine.ndim - signal_ndim))
    for reduce in (
        lambda data: data.sum(axis=signal),
        lambda data: data.sum(axis=navigation),
        lambda data: data.mean(axis=navigation),
        lambda data: data.sum(),
    ):
        expected = np.asarray(da.compute(reduce(theirs))[0])
        result = np.asarray(da.compute(reduce(mine))[0])
        np.testing.assert_array_equal(result, expected, strict=True)
