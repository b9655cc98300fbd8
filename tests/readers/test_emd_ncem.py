"""NCEM EMD files built here: prismatic depth stacks, units, dataset selection, DE5, laziness."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from emd_support import assert_same_signal

from stemcast.errors import ParameterError
from stemcast.formats.emd.units import compact_unit, normalise_ncem_units
from stemcast.readers.emd import file_reader

rsciio_emd = pytest.importorskip("rsciio.emd")


def _dims(group: h5py.Group, sizes: tuple[int, ...], names: tuple[str, ...], units: str) -> None:
    for index, (size, name) in enumerate(zip(sizes, names, strict=True)):
        dim = group.create_dataset(
            f"dim{index + 1}", data=(np.arange(size) * 0.5 + index).astype(np.float32)
        )
        dim.attrs["name"] = np.bytes_(name.encode())
        dim.attrs["units"] = np.bytes_(units.encode())


def _prismatic(path: Path, *, depths: int, tile_z: float, z_start: float = 0.0) -> Path:
    """A prismatic output: CBED datacubes and annular images at several depths."""
    with h5py.File(path, "w") as file:
        root = file.create_group("4DSTEM_simulation")
        root.attrs["emd_group_type"] = np.int32(2)
        root.attrs["version_major"] = np.int32(0)
        root.attrs["version_minor"] = np.int32(5)
        for depth in range(depths):
            cube = root.create_group(f"data/datacubes/CBED_array_depth{depth:04d}")
            cube.attrs["emd_group_type"] = np.int32(1)
            cube["datacube"] = (np.arange(3 * 4 * 5 * 6).reshape(3, 4, 5, 6) + 1000 * depth).astype(
                np.float32
            )
            _dims(cube, (3, 4, 5, 6), ("R_x", "R_y", "Q_x", "Q_y"), "[n_m]")
            image = root.create_group(f"data/realslices/annular_detector_depth{depth:04d}")
            image.attrs["emd_group_type"] = np.int32(1)
            image["realslice"] = (np.arange(12).reshape(3, 4) + 10 * depth).astype(np.float32)
            _dims(image, (3, 4), ("R_x", "R_y"), "[n_m]")
        potential = root.create_group("data/realslices/ppotential")
        potential.attrs["emd_group_type"] = np.int32(1)
        potential["realslice"] = np.ones((3, 4, 2), np.float32)
        _dims(potential, (3, 4, 2), ("R_x", "R_y", "R_z"), "[n_m]")
        parameters = root.create_group("metadata/metadata_0/original/simulation_parameters")
        parameters.attrs["ns"] = np.int32(2)
        parameters.attrs["s"] = np.float32(1.3575)
        parameters.attrs["zs"] = np.float32(z_start)
        parameters.attrs["c"] = np.array([5.43, 5.43, 5.43], np.float32)
        parameters.attrs["t"] = np.array([1, 1, tile_z], np.float32)
        parameters.attrs["3D"] = np.int32(1)
        parameters.attrs["4D"] = np.int32(0)
        parameters.attrs["custom"] = np.int32(7)
    return path


def _compare(path: Path, **kwargs: Any) -> list[dict[str, Any]]:
    ours = file_reader(path, **kwargs)
    reference = rsciio_emd.file_reader(path, **kwargs)
    assert len(ours) == len(reference)
    for mine, theirs in zip(ours, reference, strict=True):
        assert_same_signal(mine, theirs)
    return ours


@pytest.mark.parametrize(("tile_z", "z_start"), [(1.0, 0.0), (1.0, 6.0), (3.0, 0.0)])
@pytest.mark.parametrize("stack_group", [None, False])
def test_prismatic_depth_stacks_read_as_reference(
    tmp_path: Path, tile_z: float, z_start: float, stack_group: bool | None
) -> None:
    path = _prismatic(tmp_path / "prismatic.emd", depths=2, tile_z=tile_z, z_start=z_start)
    _compare(path, stack_group=stack_group)


def test_prismatic_depth_axis_is_calibrated_from_slices(tmp_path: Path) -> None:
    path = _prismatic(tmp_path / "prismatic.emd", depths=2, tile_z=1.0)
    cbed, annular, potential = file_reader(path)
    assert cbed["data"].shape == (2, 3, 4, 5, 6)
    assert cbed["metadata"]["General"]["title"] == "CBED_array"
    assert cbed["metadata"]["Signal"]["signal_type"] == "electron_diffraction"
    depth = cbed["axes"][0]
    assert (depth["name"], depth["units"]) == ("CBED_array_depth", "Å")
    assert depth["scale"] == depth["offset"] == pytest.approx(2 * 1.3575)
    assert [axis["navigate"] for axis in cbed["axes"]] == [True, True, True, False, False]
    np.testing.assert_array_equal(cbed["data"][1, 0, 0, 0], np.arange(6) + 1000)
    # Realslices are transposed (legacy layout) and stacked along depth.
    assert annular["data"].shape == (2, 4, 3)
    np.testing.assert_array_equal(annular["data"][1], (np.arange(12).reshape(3, 4) + 10).T)
    assert potential["metadata"]["General"]["title"] == "ppotential"
    parameters = cbed["original_metadata"]["simulation_parameters"]
    assert parameters["numSlices"] == 2
    assert parameters["custom"] == 7


def test_prismatic_inconsistent_depth_falls_back_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _prismatic(tmp_path / "prismatic.emd", depths=2, tile_z=3.0)
    with caplog.at_level(logging.WARNING):
        cbed = file_reader(path)[0]
    assert "Depth axis is non-uniform" in caplog.text
    assert (cbed["axes"][0]["scale"], cbed["axes"][0]["units"]) == (1.0, None)


def _legacy(path: Path) -> Path:
    with h5py.File(path, "w") as file:
        file.attrs["version_major"] = 0
        file.attrs["version_minor"] = 2
        for name, shape in (("first", (2, 3, 4)), ("second", (5,))):
            group = file.create_group(f"experimental/{name}")
            group.attrs["emd_group_type"] = 1
            group["data"] = np.arange(np.prod(shape)).reshape(shape)
            for index, size in enumerate(shape):
                dim = group.create_dataset(f"dim{index + 1}", data=np.arange(size) * (index + 2.0))
                dim.attrs["name"] = f"axis{index + 1}"
                dim.attrs["units"] = "[n_m]"
        file.create_group("microscope").attrs["voltage"] = "300kV"
    return path


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"dataset_path": "experimental/second/data"},
        {"dataset_path": "/experimental/first/data", "stack_group": True},
        {"dataset_path": ["experimental/second/data", "experimental/first/data"]},
        {"lazy": True},
    ],
)
def test_dataset_selection_reads_as_reference(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    _compare(_legacy(tmp_path / "legacy.emd"), **kwargs)


def test_legacy_array_is_transposed_and_dim1_describes_its_last_axis(tmp_path: Path) -> None:
    first = file_reader(_legacy(tmp_path / "legacy.emd"), dataset_path="experimental/first/data")
    (signal,) = first
    np.testing.assert_array_equal(signal["data"], np.arange(24).reshape(2, 3, 4).T)
    assert [axis["name"] for axis in signal["axes"]] == ["axis3", "axis2", "axis1"]
    assert [axis["scale"] for axis in signal["axes"]] == [4.0, 3.0, 2.0]
    assert signal["original_metadata"]["microscope"] == {"voltage": "300kV"}


def test_de5_file_reads_with_ncem_rules(tmp_path: Path) -> None:
    path = _legacy(tmp_path / "camera.de5")
    assert [s["data"].shape for s in file_reader(path)] == [(4, 3, 2), (5,)]


def test_lazy_signal_keeps_no_file_open_and_pickles(tmp_path: Path) -> None:
    path = _legacy(tmp_path / "legacy.emd")
    signal = file_reader(path, lazy=True, dataset_path="experimental/first/data")[0]
    # The file is closed: it can be replaced while the lazy signal exists.
    with h5py.File(path, "a") as file:
        file.attrs["touched"] = 1
    restored = pickle.loads(pickle.dumps(signal["data"]))
    np.testing.assert_array_equal(restored.compute(), np.arange(24).reshape(2, 3, 4).T)


def test_missing_dataset_path_names_the_path(tmp_path: Path) -> None:
    path = _legacy(tmp_path / "legacy.emd")
    with pytest.raises(ParameterError, match=r"dataset_path.*'nope'") as error:
        file_reader(path, dataset_path=["experimental/first/data", "nope"])
    assert error.value.path == str(path)


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        ("[n_m]", "nm"),
        ("[1_/_n_m]", "1 / nm"),
        ("[n_m^-1]", "1 / nm"),
        ("[mrad]", "mrad"),
        ("[µ_m]", "µm"),
        ("A", "Å"),
        ("A^-1", "1 / Å"),
        ("um", "µm"),
        ("nm^2", "nm ** 2"),
        ("nm/s", "nm / s"),
        ("[n_m] [s]", "nm * s"),
        ("[]", "[]"),
        ("", ""),
        ("test_units", "test_units"),
        ("pixels", "pixel"),
    ],
)
def test_units_normalised_as_reference(tmp_path: Path, units: str, expected: str) -> None:
    assert normalise_ncem_units(units) == expected
    path = tmp_path / "units.emd"
    with h5py.File(path, "w") as file:
        file.attrs["version_major"] = 0
        file.attrs["version_minor"] = 2
        group = file.create_group("g")
        group.attrs["emd_group_type"] = 1
        group["data"] = np.arange(3)
        dim = group.create_dataset("dim1", data=[0.0, 2.0, 4.0])
        dim.attrs["units"] = units
    (reference,) = rsciio_emd.file_reader(path)
    assert reference["axes"][0]["units"] == expected


@pytest.mark.parametrize(
    ("scale", "units", "half", "expected_units", "expected_scale"),
    [
        (3.599249e-9, "m", 8, "nm", 3.599249),
        (1.5866e-7, "m", 10, "µm", 0.15866),
        (8.17e-12, "m", 1.5, "pm", 8.17),
        (585389.74, "1/m", 16, "1 / µm", 0.58538974),
        (0.8, "s", 2, "s", 0.8),
        (0.288, "s", 2, "ms", 288.0),
    ],
)
def test_velox_calibration_gets_the_si_prefix_of_the_whole_axis(
    scale: float, units: str, half: float, expected_units: str, expected_scale: float
) -> None:
    chosen, factor = compact_unit(scale, units, half)
    assert chosen == expected_units
    assert scale * factor == pytest.approx(expected_scale)
