"""HyperSpy users read with ``hs.load(path, reader=stemcast)`` and write with stemcast's writers.

The expected signals are HyperSpy's own: ``hs.load(path)`` with its RosettaSciIO readers, and
files HyperSpy itself saves. Real instrument files of every format are used; the tests skip
when they are absent.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import stemcast
from conftest import shared_file
from stemcast.readers.mib import file_reader as read_mib
from stemcast.writers import blockfile, emd, tvips
from stemcast.writers.mib import write_mib

hs = pytest.importorskip("hyperspy.api")

MERLIN = [
    "Single_9_Frame_CounterDepth_12_Rows_256.mib",
    "Single_1_Frame_CounterDepth_24_Rows_256.mib",
    "Quad_9_Frame_CounterDepth_6_Rows_256.mib",
    "Quad_1_Frame_CounterDepth_1_Rows_256.mib",
]
MERLIN_RAW = [
    "Single_9_Frame_CounterDepth_1_Rows_256RAW.mib",
    "Quad_1_Frame_CounterDepth_1_Rows_256RAW.mib",
]
TVIPS = ["test_tvips_2233_000.tvips", "test_tvips_2345_000.tvips"]
EMD = [
    "Si100_3D.emd",
    "example_axis_len_1.emd",
    "example_bytes_string_metadata.emd",
    "example_image.emd",
    "example_metadata.emd",
    "example_object_dtype_data.emd",
    "example_signal.emd",
    "example_spectrum.emd",
    "fei_example_tem_stack.emd",
]
VELOX = ["Test SI 16x16 215 kx.emd", "Test SI 16x16 ReducedData 215 kx.emd"]


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """HyperSpy logs unknown signal types and deprecations; the tests compare results only."""
    logger = logging.getLogger("hyperspy")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def velox_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    archive = shared_file("emd", "velox_emd_version11.zip")
    target = tmp_path_factory.mktemp("velox")
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(target)
    return target


def signals(loaded: Any) -> list[Any]:
    return loaded if isinstance(loaded, list) else [loaded]


def axes(signal: Any) -> list[tuple[Any, ...]]:
    return [
        (str(axis.name), axis.size, str(axis.units), axis.navigate)
        for axis in signal.axes_manager._axes
    ]


def calibrations(signal: Any) -> list[tuple[float, float]]:
    return [(float(axis.scale), float(axis.offset)) for axis in signal.axes_manager._axes]


def assert_same_signal(ours: Any, theirs: Any) -> None:
    assert type(ours).__name__ == type(theirs).__name__
    assert ours.metadata.General.title == theirs.metadata.General.title
    np.testing.assert_array_equal(np.asarray(ours.data), np.asarray(theirs.data))
    assert axes(ours) == axes(theirs)
    # TVIPS time steps: integer milliseconds in stemcast, a float difference in the reference.
    for mine, reference in zip(calibrations(ours), calibrations(theirs), strict=True):
        assert mine == pytest.approx(reference, rel=1e-4)


def assert_same_load(path: Path, **kwargs: Any) -> None:
    ours = signals(hs.load(path, reader=stemcast, **kwargs))
    theirs = signals(hs.load(path, **kwargs))
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine._lazy is bool(kwargs.get("lazy"))
        assert_same_signal(mine, reference)
        assert mine.metadata.General.FileIO["0"].io_plugin == "stemcast"


def signal_dict(signal: Any) -> dict[str, Any]:
    """The signal dictionary stemcast's writers take, from HyperSpy's public API."""
    return {
        "data": signal.data,
        "axes": list(signal.axes_manager.as_dictionary().values()),
        "metadata": signal.metadata.as_dictionary(),
        "original_metadata": signal.original_metadata.as_dictionary(),
    }


# --------------------------------------------------------------------------------------------
# Reading


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("name", MERLIN)
def test_merlin_files_load_as_hyperspy_loads_them(merlin_dir: Path, name: str, lazy: bool) -> None:
    assert_same_load(merlin_dir / name, lazy=lazy)


@pytest.mark.parametrize("name", MERLIN_RAW)
def test_raw_merlin_files_load_as_stemcast_reads_them(merlin_dir: Path, name: str) -> None:
    # HyperSpy's reader cannot decode RAW frames; stemcast's own reader is the reference.
    loaded = hs.load(merlin_dir / name, reader=stemcast)
    expected = read_mib(merlin_dir / name)[0]
    np.testing.assert_array_equal(loaded.data, expected["data"])
    assert [axis.size for axis in loaded.axes_manager._axes] == list(expected["data"].shape)


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("name", TVIPS)
def test_tvips_series_load_as_hyperspy_loads_them(name: str, lazy: bool) -> None:
    assert_same_load(shared_file("tvips", name), lazy=lazy)


@pytest.mark.parametrize("lazy", [False, True])
def test_blockfile_loads_as_hyperspy_loads_it(lazy: bool) -> None:
    assert_same_load(shared_file("blockfile", "test2.blo"), lazy=lazy)


def _emd_cases() -> list[Any]:
    return [
        pytest.param(name, lazy, id=f"{name}-{'lazy' if lazy else 'eager'}")
        for name in EMD
        for lazy in (False, True)
        # The reference cannot load object data lazily (dask cannot size its chunks).
        if not (lazy and name == "example_object_dtype_data.emd")
    ]


@pytest.mark.parametrize(("name", "lazy"), _emd_cases())
def test_emd_files_load_as_hyperspy_loads_them(name: str, lazy: bool) -> None:
    assert_same_load(shared_file("emd", name), lazy=lazy)


def test_object_data_load_lazily_as_hyperspy_loads_them_eagerly() -> None:
    path = shared_file("emd", "example_object_dtype_data.emd")
    lazy = hs.load(path, reader=stemcast, lazy=True)
    assert lazy._lazy
    lazy.compute()
    assert_same_signal(lazy, hs.load(path))


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("name", VELOX)
def test_every_signal_of_a_velox_file_loads(velox_dir: Path, name: str, lazy: bool) -> None:
    assert_same_load(velox_dir / name, lazy=lazy)


def test_file_format_takes_the_module_as_reader_does() -> None:
    path = shared_file("blockfile", "test2.blo")
    assert_same_signal(hs.load(path, file_format=stemcast), hs.load(path, reader=stemcast))


def test_reader_keywords_reach_the_format_reader(merlin_dir: Path) -> None:
    path = merlin_dir / "Single_9_Frame_CounterDepth_12_Rows_256.mib"
    loaded = hs.load(path, reader=stemcast, navigation_shape=(3, 3))
    assert loaded.axes_manager.navigation_shape == (3, 3)
    np.testing.assert_array_equal(loaded.data, hs.load(path).data.reshape(3, 3, 256, 256))


# --------------------------------------------------------------------------------------------
# Writing


def _saved_by_hyperspy(signal: Any, path: Path) -> Any:
    signal.save(path, overwrite=True)
    return hs.load(path)


@pytest.mark.parametrize("lazy", [False, True])
def test_a_signal_written_as_blockfile_loads_as_hyperspys_own(tmp_path: Path, lazy: bool) -> None:
    signal = hs.load(shared_file("blockfile", "test2.blo"), reader=stemcast, lazy=lazy)
    path = tmp_path / "ours.blo"
    blockfile.file_writer(path, signal_dict(signal), show_progressbar=False)
    expected = _saved_by_hyperspy(signal, tmp_path / "hyperspy.blo")
    assert_same_signal(hs.load(path), expected)
    assert_same_signal(hs.load(path, reader=stemcast), expected)


def test_a_signal_written_as_emd_loads_as_hyperspys_own(tmp_path: Path) -> None:
    signal = hs.load(shared_file("tvips", "test_tvips_2233_000.tvips"), reader=stemcast)
    path = tmp_path / "ours.emd"
    emd.file_writer(path, signal_dict(signal))
    expected = _saved_by_hyperspy(signal, tmp_path / "hyperspy.emd")
    assert_same_signal(hs.load(path), expected)
    assert_same_signal(hs.load(path, reader=stemcast), expected)


def test_a_signal_written_as_tvips_loads_as_its_source(tmp_path: Path) -> None:
    # HyperSpy's own TVIPS writer stores a pixel size of 0 for this series, so the expected
    # signal is the source as HyperSpy loads it.
    source = shared_file("tvips", "test_tvips_2345_000.tvips")
    signal = hs.load(source, reader=stemcast)
    tvips.file_writer(tmp_path / "ours.tvips", signal_dict(signal), show_progressbar=False)
    ours = tmp_path / "ours_000.tvips"
    assert_same_signal(hs.load(ours), hs.load(source))
    assert_same_signal(hs.load(ours, reader=stemcast), hs.load(source))


@pytest.mark.parametrize("name", MERLIN)
def test_a_signal_written_as_mib_loads_back(merlin_dir: Path, tmp_path: Path, name: str) -> None:
    # HyperSpy has no Merlin writer: the expected signal is the one loaded from the source.
    signal = hs.load(merlin_dir / name, reader=stemcast)
    path = write_mib(tmp_path / "ours.mib", signal.data)
    assert_same_signal(hs.load(path), hs.load(merlin_dir / name))
    assert_same_signal(hs.load(path, reader=stemcast), signal)
