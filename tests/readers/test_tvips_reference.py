"""The TVIPS reader reads as the reference reader (rosettasciio) does.

* the real files of ../shared/data/tvips, with every parameter of ``file_reader``;
* every file the reference writer makes (versions 1 and 2, padded frame headers, split
  series, stacks and scans, 8 to 32 bits), which must also hold the data that was written.

The reference is a black box: the same call is made on both and the results compared (see
``tvips_helpers.assert_same_read`` for the allowed differences). The reference reads local
time, so these comparisons run with the process time zone set to UTC; the deviation is pinned
in ``test_date_and_time_are_utc_whatever_the_machine_zone``.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
from reductions import assert_same_reductions, force_threads

from conftest import shared_file
from stemcast.errors import StemcastError
from stemcast.formats.frame_sums import FrameArray
from stemcast.readers.tvips import file_reader
from tvips_helpers import assert_same_read, machine_time_zone, ref_read, ref_write, signal_dict

REAL = ["test_tvips_2233_000.tvips", "test_tvips_2345_000.tvips"]

CASES: list[dict[str, Any]] = [
    {},
    {"lazy": True},
    {"lazy": True, "rechunking": False},
    {"lazy": True, "rechunking": {0: 1, 1: None, 2: None}},
    {"scan_shape": (2, 2)},
    {"scan_shape": [2, 2], "scan_start_frame": 2},
    {"scan_shape": (1, 2, 2), "lazy": True},
    {"scan_shape": (2, 3), "winding_scan_axis": "x", "hysteresis": 1},
    {"scan_shape": (2, 2), "scan_start_frame": 2, "winding_scan_axis": "x", "hysteresis": -1},
    {"scan_shape": (3, 2), "winding_scan_axis": "y", "hysteresis": 1, "lazy": True},
    {"scan_shape": (2, 2), "winding_scan_axis": 0},
    {"scan_shape": (2, 3), "lazy": True, "rechunking": False},
    {"winding_scan_axis": "x"},
]


@pytest.fixture(autouse=True)
def _utc_machine() -> Iterator[None]:
    with machine_time_zone("UTC"):
        yield


def our_read(path: Path | str, **kwargs: Any) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = file_reader(path, **kwargs)
    assert len(result) == 1
    return result[0]


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("kwargs", CASES, ids=str)
def test_real_file_reads_as_the_reference(name: str, kwargs: dict[str, Any]) -> None:
    path = shared_file("tvips", name)
    try:
        expected = ref_read(path, **kwargs)
    except ValueError:
        with pytest.raises(StemcastError):
            our_read(path, **kwargs)
        return
    ours = our_read(path, **kwargs)
    assert_same_read(ours, expected)
    if kwargs.get("lazy") and "scan_shape" not in kwargs:
        assert ours["data"].chunks == expected["data"].chunks


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("kwargs", [{}, {"lazy": True}, {"scan_shape": (2, 2)}], ids=str)
def test_real_file_sums_and_means_are_the_reference_ones(
    name: str, kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    force_threads(monkeypatch)
    path = shared_file("tvips", name)
    ours = our_read(path, **kwargs)["data"]
    if not kwargs.get("lazy"):
        assert isinstance(ours, FrameArray)
    assert_same_reductions(ours, ref_read(path, **kwargs)["data"])


def test_auto_scan_of_real_file_is_the_reference_grid() -> None:
    path = shared_file("tvips", "test_tvips_2233_000.tvips")
    ours = our_read(path, scan_shape="auto")
    assert_same_read(ours, ref_read(path, scan_shape="auto"))
    assert ours["original_metadata"]["scan_shape"]["evidence"] == "rotator"
    assert ours["data"].shape == (2, 2, 3, 3)


def test_auto_without_a_square_rotator_scan_is_a_stack_with_a_warning() -> None:
    path = shared_file("tvips", "test_tvips_2345_000.tvips")
    with pytest.raises(ValueError, match="not square"):
        ref_read(path, scan_shape="auto")
    with pytest.warns(UserWarning, match="found no scan"):
        ours = file_reader(path, scan_shape="auto")[0]
    assert_same_read(ours, ref_read(path))
    assert ours["original_metadata"]["scan_shape"]["evidence"] == "none"


def test_name_without_000_reads_the_series() -> None:
    path = shared_file("tvips", "test_tvips_2345_000.tvips")
    ours = our_read(path.with_name("test_tvips_2345.tvips"))
    assert_same_read(ours, ref_read(path))
    assert ours["metadata"]["General"]["original_filename"] == "test_tvips_2345_000.tvips"


def test_upper_case_extension_reads(tmp_path: Path) -> None:
    source = shared_file("tvips", "test_tvips_2233_000.tvips")
    path = tmp_path / "scan_000.TVIPS"
    shutil.copyfile(source, path)
    assert_same_read(our_read(path), ref_read(path))


def test_date_and_time_are_utc_whatever_the_machine_zone() -> None:
    path = shared_file("tvips", "test_tvips_2345_000.tvips")
    with machine_time_zone("America/New_York"):
        ours = our_read(path)["metadata"]["General"]
        reference = ref_read(path)["metadata"]["General"]
    # 740399696 s after the epoch is 1993-06-18 10:34:56 UTC; the reference gives New York
    # local time and calls it UTC.
    assert (ours["date"], ours["time"], ours["time_zone"]) == ("1993-06-18", "10:34:56", "UTC")
    assert (reference["time"], reference["time_zone"]) == ("06:34:56", "UTC")


def test_original_metadata_says_where_the_shape_came_from() -> None:
    path = shared_file("tvips", "test_tvips_2345_000.tvips")
    original = our_read(path, scan_shape=(2, 3))["original_metadata"]
    assert original["scan_shape"]["shape"] == (3, 2)
    assert original["scan_shape"]["evidence"] == "user"
    assert original["files"] == [str(path)]


# --------------------------------------------------------------------------------------------
# Files written by the reference writer
# --------------------------------------------------------------------------------------------

SHAPES = [(6, 4, 5), (2, 3, 4, 5), (2, 2, 3, 3, 2)]


def _data(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    values = np.arange(int(np.prod(shape)), dtype=np.uint64) * 7919
    return (values % (np.iinfo(dtype).max + 1)).astype(dtype).reshape(shape)


def _metadata() -> dict[str, Any]:
    return {
        "General": {"date": "2021-03-04", "time": "05:06:07", "time_zone": "UTC"},
        "Acquisition_instrument": {
            "TEM": {
                "beam_energy": 300.0,
                "magnification": 5000.0,
                "beam_current": 1.5,
                "Stage": {"x": 1.0, "y": 2.0, "z": 3.0},
            }
        },
    }


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("extra", [0, 9])
@pytest.mark.parametrize("max_file_size", [None, 700])
def test_reads_what_the_reference_writes(
    tmp_path: Path,
    shape: tuple[int, ...],
    dtype: str,
    version: int,
    extra: int,
    max_file_size: int | None,
) -> None:
    data = _data(shape, dtype)
    units = {"sig_units": "nm"} if len(shape) == 3 else {}
    signal = signal_dict(data, metadata=_metadata(), **units)
    ref_write(
        tmp_path / "ref.tvips",
        signal,
        version=version,
        frame_header_extra_bytes=extra,
        max_file_size=max_file_size,
    )
    parts = sorted(tmp_path.glob("ref_*.tvips"))
    assert (len(parts) > 1) == (max_file_size is not None)
    ours = our_read(tmp_path / "ref_000.tvips")
    np.testing.assert_array_equal(ours["data"], data.reshape(-1, *shape[-2:]))
    assert ours["original_metadata"]["files"] == [str(part) for part in parts]
    if version == 2:
        assert_same_read(ours, ref_read(tmp_path / "ref_000.tvips"))
    else:
        # The reference refuses its own version-1 files (it expects 12-byte frame headers
        # but writes 60-byte ones).
        with pytest.raises(ValueError, match="frame header"):
            ref_read(tmp_path / "ref_000.tvips")
    if len(shape) > 3:
        scan = our_read(tmp_path / "ref_000.tvips", scan_shape=shape[:-2], lazy=True)
        np.testing.assert_array_equal(scan["data"].compute(), data)


def test_reads_what_the_reference_writes_from_dask(tmp_path: Path) -> None:
    data = _data((4, 6, 8, 8), "uint16")
    lazy = da.from_array(data, chunks=(1, 3, 8, 8))
    ref_write(tmp_path / "lazy.tvips", signal_dict(lazy, metadata=_metadata()), max_file_size=2000)
    for kwargs in ({"scan_shape": (4, 6)}, {"scan_shape": (4, 6), "lazy": True}):
        assert_same_read(
            our_read(tmp_path / "lazy_000.tvips", **kwargs),
            ref_read(tmp_path / "lazy_000.tvips", **kwargs),
        )


def test_reference_auto_scan_of_its_own_square_file(tmp_path: Path) -> None:
    data = _data((3, 3, 4, 4), "uint16")
    ref_write(tmp_path / "sq.tvips", signal_dict(data), max_file_size=500)
    ours = our_read(tmp_path / "sq_000.tvips", scan_shape="auto")
    assert_same_read(ours, ref_read(tmp_path / "sq_000.tvips", scan_shape="auto"))
    np.testing.assert_array_equal(ours["data"], data)
