"""Signal dictionaries whose axes carry no ``index_in_array`` (HyperSpy's) are in array order."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stemcast.readers.tvips import file_reader
from stemcast.writers.tvips import file_writer

rsciio_tvips = pytest.importorskip("rsciio.tvips")


def _axes(time_scale: float, indexed: bool) -> list[dict[str, Any]]:
    axes = [
        {"name": "time", "units": "s", "size": 4, "scale": time_scale, "offset": 0.0},
        {"name": "dy", "units": "1/nm", "size": 8, "scale": 1.0, "offset": 0.0},
        {"name": "dx", "units": "1/nm", "size": 8, "scale": 1.0, "offset": 0.0},
    ]
    for index, axis in enumerate(axes):
        axis["navigate"] = index == 0
        if indexed:
            axis["index_in_array"] = index
    return axes


@pytest.mark.parametrize("indexed", [True, False])
@pytest.mark.parametrize("time_scale", [0.005, 0.0])
def test_the_time_axis_gives_the_frame_interval(
    tmp_path: Path, indexed: bool, time_scale: float
) -> None:
    data = np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8)
    signal = {"data": data, "axes": _axes(time_scale, indexed), "metadata": {}}
    file_writer(tmp_path / "t.tvips", signal, show_progressbar=False)
    path = tmp_path / "t_000.tvips"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = rsciio_tvips.file_reader(str(path))[0]
    assert float(theirs["axes"][0]["scale"]) == pytest.approx(time_scale, abs=1e-6)
    assert file_reader(path)[0]["axes"][0]["scale"] == pytest.approx(time_scale, abs=1e-6)
    np.testing.assert_array_equal(file_reader(path)[0]["data"], data)
