"""Bad EMD input fails with a stemcast error that names the file and the problem."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from stemcast.errors import FormatError, ParameterError, StemcastError
from stemcast.readers.emd import file_reader


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="no such file"):
        file_reader(tmp_path / "absent.emd")


def test_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "text.emd"
    path.write_bytes(b"MQ1,000001,00384,01,0256,0256,U16,   1x1,01,2020-01-01")
    with pytest.raises(FormatError, match="not an HDF5 file") as error:
        file_reader(path)
    assert error.value.path == str(path)


def test_hdf5_of_neither_flavour(tmp_path: Path) -> None:
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as file:
        file["x"] = np.arange(3)
    with pytest.raises(FormatError, match=r"neither an NCEM EMD file.*nor a Velox EMD file"):
        file_reader(path)


def test_velox_version_that_is_not_a_number(tmp_path: Path) -> None:
    path = tmp_path / "version.emd"
    with h5py.File(path, "w") as file:
        file.create_dataset(
            "Version",
            data=np.array([b'{"version": "eleven", "format": "Velox"}'], dtype=object),
            dtype=h5py.string_dtype("ascii"),
        )
    with pytest.raises(FormatError, match="Velox version 'eleven'"):
        file_reader(path)


def test_dataset_path_that_is_a_group(tmp_path: Path) -> None:
    path = tmp_path / "ncem.emd"
    with h5py.File(path, "w") as file:
        file.attrs["version_major"] = 0
        file.attrs["version_minor"] = 2
        group = file.create_group("signals/a")
        group.attrs["emd_group_type"] = 1
        group["data"] = np.arange(4)
    with pytest.raises(ParameterError, match="no dataset 'signals/a'"):
        file_reader(path, dataset_path="signals/a")


def test_errors_are_value_errors_for_reference_callers(tmp_path: Path) -> None:
    path = tmp_path / "empty.emd"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.emd") as error:
        file_reader(path)
    assert isinstance(error.value, StemcastError)
