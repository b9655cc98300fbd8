"""``write_mib`` is the inverse of ``file_reader``: data, orientation and scan shape come back.

The expected values are the frames given to ``write_mib`` (random, or read from the real
Merlin files); the reference reader (rosettasciio) must read the written files to the same
data and navigation shape as stemcast.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stemcast.readers.mib import file_reader, parse_hdr_file
from stemcast.writers.mib import write_mib

DTYPES = {1: np.uint8, 6: np.uint8, 12: np.uint16, 24: np.uint32}
GEOMETRIES = {
    "single": ((256, 256), {}),
    "quad": ((512, 512), {"quad": True}),
    "quad-gap": ((514, 514), {"quad": True, "gap": True}),
}
#: Navigation shapes in array order: scans (y, x), a stack, a single frame.
NAVIGATIONS = {"scan3x3": (3, 3), "scan2x4": (2, 4), "stack": (5,), "frame": ()}


def read(path: Path, **kwargs: Any) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return file_reader(str(path), **kwargs)[0]


def reference(path: Path) -> dict[str, Any]:
    rsciio_qd = pytest.importorskip("rsciio.quantumdetector")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rsciio_qd.file_reader(str(path))[0]  # type: ignore[no-any-return]


def signal_data(navigation: tuple[int, ...], frame: tuple[int, int], depth: int, gap: bool):
    rng = np.random.default_rng(depth + len(navigation))
    data = rng.integers(0, 2**depth, (*navigation, *frame), dtype=np.int64).astype(DTYPES[depth])
    data.reshape(-1)[:2] = 2**depth - 1, 0
    if gap:  # RAW does not store the gap pixels between the chips: they read as zero
        data[..., 256:258, :] = 0
        data[..., :, 256:258] = 0
    return data


def assert_scan_shape(result: dict[str, Any], navigation: tuple[int, ...]) -> None:
    found = result["original_metadata"]["scan_shape"]
    if len(navigation) == 2:
        assert found["shape"] == navigation[::-1]  # (x, y)
        assert found["evidence"] == "hdr"
    else:
        assert found["shape"] == (navigation or (1,))
        assert found["evidence"] == "none"


def _cases() -> list[Any]:
    cases = []
    for geometry, (_, options) in GEOMETRIES.items():
        for depth in (1, 6, 12, 24):
            for raw in (False, True):
                if raw and depth == 24 and options.get("quad"):
                    continue  # 24-bit RAW quad frames cannot be written
                for name in NAVIGATIONS:
                    label = f"{geometry}-{depth}bit-{'raw' if raw else 'processed'}-{name}"
                    cases.append(pytest.param(geometry, depth, raw, name, id=label))
    return cases


@pytest.mark.parametrize(("geometry", "depth", "raw", "navigation"), _cases())
def test_file_reader_gets_back_what_write_mib_wrote(
    tmp_path: Path, geometry: str, depth: int, raw: bool, navigation: str
) -> None:
    frame, options = GEOMETRIES[geometry]
    nav = NAVIGATIONS[navigation]
    data = signal_data(nav, frame, depth, gap=raw and geometry == "quad-gap")
    path = write_mib(tmp_path / "rt.mib", data, counter_depth=depth, raw=raw, **options)
    result = read(path)
    assert result["data"].shape == data.shape
    assert result["data"].dtype.newbyteorder("=") == DTYPES[depth]
    np.testing.assert_array_equal(result["data"], data)
    np.testing.assert_array_equal(read(path, lazy=True)["data"].compute(), data)
    assert_scan_shape(result, nav)
    assert [axis["size"] for axis in result["axes"]] == list(data.shape)
    if not raw:  # the reference reads no RAW data
        theirs = reference(path)
        assert theirs["data"].shape == data.shape
        np.testing.assert_array_equal(theirs["data"], data)


def test_a_scan_is_written_to_the_hdr_as_the_readers_expect(tmp_path: Path) -> None:
    data = signal_data((3, 4), (32, 32), 12, gap=False)
    write_mib(tmp_path / "s.mib", data)
    hdr = parse_hdr_file(tmp_path / "s.hdr")
    assert (hdr["ScanX"], hdr["ScanY"]) == ("4", "3")
    assert hdr["Frames per Trigger (Number)"] == "4"  # one trigger per scan line
    assert hdr["Frames in Acquisition (Number)"] == "12"


@pytest.mark.parametrize(("dtype", "depth"), [(np.uint8, 6), (np.uint16, 12), (np.uint32, 24)])
def test_the_counter_depth_follows_the_dtype(tmp_path: Path, dtype: Any, depth: int) -> None:
    data = signal_data((2, 2), (16, 16), depth, gap=False).astype(dtype)
    path = write_mib(tmp_path / "d.mib", data)
    assert parse_hdr_file(tmp_path / "d.hdr")["Counter Depth (number)"] == str(depth)
    header = path.read_bytes()[:384].decode("latin-1").split(",")
    assert header[-2] == str(depth)  # the MQ1A counter depth (spec 2.1)
    result = read(path)
    assert result["data"].dtype.newbyteorder("=") == dtype
    np.testing.assert_array_equal(result["data"], data)


def test_an_iterable_with_a_scan_shape_comes_back_as_that_scan(tmp_path: Path) -> None:
    data = signal_data((3, 2), (16, 16), 12, gap=False)
    batches = iter([data[0], data[1:].reshape(-1, 16, 16)])
    path = write_mib(tmp_path / "i.mib", batches, frame_shape=(16, 16), scan_shape=(2, 3))
    result = read(path)
    np.testing.assert_array_equal(result["data"], data)
    np.testing.assert_array_equal(reference(path)["data"], data)


def test_scan_axes_of_length_one_are_dropped_as_the_readers_do(tmp_path: Path) -> None:
    data = signal_data((1, 4), (16, 16), 12, gap=False)
    path = write_mib(tmp_path / "line.mib", data)
    np.testing.assert_array_equal(read(path)["data"], data[0])
    np.testing.assert_array_equal(reference(path)["data"], data[0])


def _real_names() -> list[str]:
    names = []
    for geometry in ("Single", "Quad"):
        for count in (1, 9):
            for depth in (1, 6, 12, 24):
                names.append(f"{geometry}_{count}_Frame_CounterDepth_{depth}_Rows_256.mib")
            names.append(f"{geometry}_{count}_Frame_CounterDepth_1_Rows_256RAW.mib")
    return names


def _written_like(name: str) -> dict[str, Any]:
    """The writer options of the real file ``name``, from its name."""
    depth = int(name.split("CounterDepth_")[1].split("_")[0])
    return {"counter_depth": depth, "quad": name.startswith("Quad"), "raw": "RAW" in name}


@pytest.mark.parametrize("name", _real_names())
def test_real_files_round_trip(merlin_dir: Path, tmp_path: Path, name: str) -> None:
    source = read(merlin_dir / name)
    data = np.asarray(source["data"])
    for label, options in (("like", _written_like(name)), ("default", {})):
        path = write_mib(tmp_path / f"{label}.mib", source["data"], **options)
        again = read(path)
        assert again["data"].shape == data.shape, label
        assert again["data"].dtype.newbyteorder("=") == data.dtype.newbyteorder("="), label
        np.testing.assert_array_equal(again["data"], data, err_msg=label)
        if not options.get("raw"):
            theirs = reference(path)
            assert theirs["data"].shape == data.shape, label
            np.testing.assert_array_equal(theirs["data"], data, err_msg=label)
    lazy = read(merlin_dir / name, lazy=True)["data"]
    path = write_mib(tmp_path / "lazy.mib", lazy, **_written_like(name))
    np.testing.assert_array_equal(read(path)["data"], data)
