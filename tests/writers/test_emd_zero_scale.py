"""Axis calibrations in EMD files: a scale of 0.0 is kept, only a missing one becomes 1.0.

TVIPS files whose frames carry no time step (test_tvips_2345) have a time axis of scale 0.0 s;
the expected axes come from the reference reader of the source (rsciio.tvips), and the written
files are read back with stemcast and with the reference EMD reader.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import shared_file
from stemcast.readers.emd import file_reader
from stemcast.readers.tvips import file_reader as read_tvips
from stemcast.writers.emd import file_writer

rsciio_emd = pytest.importorskip("rsciio.emd")
rsciio_tvips = pytest.importorskip("rsciio.tvips")

READERS = {"stemcast": file_reader, "rosettasciio": rsciio_emd.file_reader}


def _read(reader: str, path: Path) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return READERS[reader](str(path))[0]  # type: ignore[no-any-return]


def _axis(name: str, size: int, index: int, **calibration: Any) -> dict[str, Any]:
    return {"name": name, "units": "s", "size": size, "index_in_array": index, **calibration}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_zero_scale_is_kept(tmp_path: Path, reader: str) -> None:
    data = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    axes = [
        _axis("time", 3, 0, scale=0.0, offset=12.5),
        _axis("dy", 4, 1, scale=0.25, offset=0.0),
        _axis("dx", 5, 2, scale=0, offset=-1.0),
    ]
    path = tmp_path / "zero.emd"
    file_writer(path, {"data": data, "axes": axes, "metadata": {}})
    read = _read(reader, path)
    np.testing.assert_array_equal(read["data"], data)
    assert [float(axis["scale"]) for axis in read["axes"]] == [0.0, 0.25, 0.0]
    assert [float(axis["offset"]) for axis in read["axes"]] == [12.5, 0.0, -1.0]


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_missing_scale_or_offset_defaults(tmp_path: Path, reader: str) -> None:
    data = np.zeros((2, 3, 4), dtype=np.uint8)
    axes = [
        _axis("time", 2, 0, scale=None, offset=None),
        _axis("dy", 3, 1),
        _axis("dx", 4, 2, scale=2.0),
    ]
    path = tmp_path / "missing.emd"
    file_writer(path, {"data": data, "axes": axes, "metadata": {}})
    read = _read(reader, path)
    assert [float(axis["scale"]) for axis in read["axes"]] == [1.0, 1.0, 2.0]
    assert [float(axis["offset"]) for axis in read["axes"]] == [0.0, 0.0, 0.0]


def _reference_tvips_axes(path: Path) -> list[tuple[str, float, float]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = rsciio_tvips.file_reader(str(path))[0]["axes"]
    return [(axis["name"], float(axis["scale"]), float(axis["offset"])) for axis in axes]


@pytest.mark.parametrize("reader", sorted(READERS))
def test_the_time_axis_of_tvips_2345_survives_emd(tmp_path: Path, reader: str) -> None:
    source = shared_file("tvips", "test_tvips_2345_000.tvips")
    expected = _reference_tvips_axes(source)
    assert expected[0][:2] == ("time", 0.0)  # what this test is about
    signal = read_tvips(source)[0]
    path = tmp_path / "2345.emd"
    file_writer(path, signal)
    read = _read(reader, path)
    np.testing.assert_array_equal(read["data"], signal["data"])
    found = [(axis["name"], float(axis["scale"]), float(axis["offset"])) for axis in read["axes"]]
    assert found == expected


def test_converting_tvips_2345_to_emd_keeps_the_zero_time_step(tmp_path: Path) -> None:
    source = shared_file("tvips", "test_tvips_2345_000.tvips")
    expected = _reference_tvips_axes(source)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stemcast.cli",
            "convert",
            source,
            "--to",
            "emd",
            "--output",
            tmp_path,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    read = _read("rosettasciio", tmp_path / "test_tvips_2345.emd")
    found = [(axis["name"], float(axis["scale"]), float(axis["offset"])) for axis in read["axes"]]
    assert found == expected
