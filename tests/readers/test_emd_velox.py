"""Velox files written here from the spec: every spectrum-stream option gives the expected cube."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from emd_support import (
    Detector,
    VeloxFile,
    assert_same_signal,
    json_text,
    metadata_columns,
    needs_sparse,
    random_cube,
    write_velox,
)

from stemcast.errors import FormatError, ParameterError
from stemcast.readers.emd import file_reader

rsciio_emd = pytest.importorskip("rsciio.emd")

SHAPE = (3, 5, 7, 64)  # frames, ny, nx, channels


@pytest.fixture(scope="module")
def velox(tmp_path_factory: pytest.TempPathFactory) -> VeloxFile:
    detectors = [
        Detector("SuperXG21", random_cube(SHAPE, seed=1, mean=0.3)),
        Detector("SuperXG22", random_cube(SHAPE, seed=2, mean=0.3), azimuth=2.356194490192345),
    ]
    return write_velox(tmp_path_factory.mktemp("velox") / "si.emd", detectors)


def _spectrum_image(path: Path, **kwargs: Any) -> list[dict[str, Any]]:
    return file_reader(path, select_type="spectrum_image", **kwargs)


def test_default_sums_frames_and_detectors(velox: VeloxFile) -> None:
    (si,) = _spectrum_image(velox.path)
    expected = sum(detector.cube for detector in velox.detectors).sum(axis=0)
    np.testing.assert_array_equal(si["data"], expected)
    assert si["data"].dtype == np.uint16
    y, x, energy = si["axes"]
    assert (y["size"], x["size"], energy["size"]) == (5, 7, 64)
    assert (x["units"], x["scale"], x["offset"]) == ("nm", pytest.approx(3.6), pytest.approx(-40))
    assert (energy["name"], energy["scale"], energy["offset"]) == ("X-ray energy", 0.01, -0.25)
    assert [axis["navigate"] for axis in si["axes"]] == [True, True, False]
    imported = si["original_metadata"]["ImportedDataParameter"]
    assert imported == {
        "First_frame": 0,
        "Last_frame": 3,
        "Number_of_frames": 3,
        "Rebin_energy": 1,
        "Number_of_channels": 64,
    }


@pytest.mark.parametrize(("first", "last"), [(0, None), (1, 3), (2, 3), (0, 1)])
@pytest.mark.parametrize("rebin", [1, 4])
def test_frames_kept_apart_with_range_and_rebinning(
    velox: VeloxFile, first: int, last: int | None, rebin: int
) -> None:
    (si,) = _spectrum_image(
        velox.path, sum_frames=False, first_frame=first, last_frame=last, rebin_energy=rebin
    )
    stop = 3 if last is None else last
    cube = sum(detector.cube for detector in velox.detectors)[first:stop]
    expected = cube.reshape(*cube.shape[:3], 64 // rebin, rebin).sum(axis=-1)
    np.testing.assert_array_equal(si["data"], expected)
    time_axis, *_, energy = si["axes"]
    assert (time_axis["name"], time_axis["size"], time_axis["navigate"]) == (
        "Time",
        stop - first,
        True,
    )
    assert energy["scale"] == pytest.approx(0.01 * rebin)


def test_each_detector_alone_in_the_requested_dtype(velox: VeloxFile) -> None:
    signals = _spectrum_image(velox.path, sum_EDS_detectors=False, SI_dtype=np.int32)
    assert len(signals) == 2
    for signal, detector in zip(signals, velox.detectors, strict=True):
        np.testing.assert_array_equal(signal["data"], detector.cube.sum(axis=0))
        assert signal["data"].dtype == np.int32
        assert signal["metadata"]["General"]["title"] == f"EDS - {detector.name}"
        eds = signal["metadata"]["Acquisition_instrument"]["TEM"]["Detector"]["EDS"]
        assert eds["azimuth_angle"] == f"{np.degrees(detector.azimuth):.3f}"
        assert eds["elevation_angle"] == 0.314


def test_lazy_spectrum_image_decodes_on_compute(velox: VeloxFile) -> None:
    (si,) = _spectrum_image(velox.path, lazy=True, sum_frames=False, first_frame=1)
    assert si["data"].chunks[0] == (1, 1)
    expected = sum(detector.cube for detector in velox.detectors)[1:]
    np.testing.assert_array_equal(si["data"].compute(), expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"sum_frames": False},
        {"sum_frames": False, "first_frame": 1, "last_frame": 3, "rebin_energy": 4},
        {"SI_dtype": np.uint8, "select_type": "spectrum_image"},
        {"load_SI_image_stack": True, "select_type": "images"},
        {"select_type": "single_spectrum"},
        {"lazy": True},
    ],
)
@needs_sparse
def test_synthetic_file_reads_as_reference(velox: VeloxFile, kwargs: dict[str, Any]) -> None:
    ours = file_reader(velox.path, **kwargs)
    reference = rsciio_emd.file_reader(velox.path, **kwargs)
    assert len(ours) == len(reference)
    for mine, theirs in zip(ours, reference, strict=True):
        if theirs["data"].ndim == 1 and kwargs.get("rebin_energy", 1) > 1:
            # Deliberate: the reference multiplies the energy scale of (not rebinned)
            # single spectra by rebin_energy.
            theirs["axes"][0]["scale"] /= kwargs["rebin_energy"]
        assert_same_signal(mine, theirs)


def test_images_single_spectrum_and_metadata(velox: VeloxFile) -> None:
    spectrum, haadf, si = file_reader(velox.path)
    np.testing.assert_array_equal(spectrum["data"], velox.spectrum)
    assert spectrum["axes"][0]["units"] == "keV"
    np.testing.assert_array_equal(haadf["data"], velox.haadf[0])
    assert haadf["metadata"]["General"]["title"] == "HAADF"
    general = si["metadata"]["General"]
    assert (general["title"], general["original_filename"]) == ("EDS", "si.emd")
    tem = si["metadata"]["Acquisition_instrument"]["TEM"]
    assert (tem["beam_energy"], tem["camera_length"]) == (300.0, pytest.approx(115.9))
    assert (tem["magnification"], tem["microscope"]) == (225000.0, "Titan")
    assert tem["Stage"]["tilt_alpha"] == pytest.approx(0.005)
    assert tem["Stage"]["x"] == pytest.approx(-0.000416)
    assert si["metadata"]["Sample"]["elements"] == ["C", "O", "Cu"]
    (stack,) = file_reader(velox.path, select_type="image", load_SI_image_stack=True)
    np.testing.assert_array_equal(stack["data"], velox.haadf)
    assert (stack["axes"][0]["name"], stack["axes"][0]["units"]) == ("Time", "s")
    assert stack["axes"][0]["scale"] == pytest.approx(0.6)


def test_stream_without_frame_table_or_final_marker(tmp_path: Path) -> None:
    cube = random_cube(SHAPE, seed=5, mean=0.3)
    cube[-1, -1, -1, 3] = 2  # the last pixel has events, so its missing marker matters
    velox = write_velox(
        tmp_path / "plain.emd",
        [Detector("SuperXG21", cube, omit_final_marker=True)],
        frame_table=False,
        declare_frames=False,
    )
    (si,) = _spectrum_image(velox.path, sum_frames=False)
    np.testing.assert_array_equal(si["data"], cube)


def test_scan_shape_comes_from_the_pixel_count_not_the_last_image(tmp_path: Path) -> None:
    velox = write_velox(tmp_path / "two.emd", [Detector("SuperXG21", random_cube(SHAPE, seed=6))])
    with h5py.File(velox.path, "a") as file:
        other = file.create_group("Data/Image/ffffffffffffffffffffffffffffffff")
        other["Data"] = np.zeros((9, 9, 1), np.uint16)
        other.copy(file["Data/Image/0a3f1c2e9b8d4f7a8c6e5d4b3a291807/Metadata"], "Metadata")
    (si,) = _spectrum_image(velox.path)
    assert si["data"].shape == (5, 7, 64)


def test_last_frame_beyond_the_stream(velox: VeloxFile) -> None:
    with pytest.raises(ParameterError, match="cannot be greater than the number of frames, 3"):
        _spectrum_image(velox.path, last_frame=4)


def test_rebin_that_does_not_divide_the_channels(velox: VeloxFile) -> None:
    with pytest.raises(ParameterError, match="divisor"):
        _spectrum_image(velox.path, rebin_energy=3)


def test_unknown_select_type(velox: VeloxFile) -> None:
    with pytest.raises(ParameterError, match="select_type"):
        file_reader(velox.path, select_type="eels")


def test_corrupt_stream_names_file_and_dataset(tmp_path: Path) -> None:
    velox = write_velox(tmp_path / "bad.emd", [Detector("SuperXG21", random_cube(SHAPE, seed=7))])
    with h5py.File(velox.path, "a") as file:
        data = file["Data/SpectrumStream/01ffffffffffffffffffffffffffffff/Data"]
        data[5, 0] = 1000
    with pytest.raises(
        FormatError, match=r"SpectrumStream/01f+/Data'.*element 5 holds 1000"
    ) as error:
        _spectrum_image(velox.path)
    assert error.value.path == str(velox.path.resolve())


def test_pruned_file_warns_and_returns_no_spectrum_image(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    velox = write_velox(tmp_path / "pruned.emd", [Detector("SuperXG21", random_cube(SHAPE))])
    with h5py.File(velox.path, "a") as file:
        del file["Data/SpectrumStream"]
    with caplog.at_level(logging.WARNING):
        signals = file_reader(velox.path)
    assert "No spectrum stream" in caplog.text
    assert [signal["data"].ndim for signal in signals] == [1, 2]


def _image_metadata(file: h5py.File, uuid: str) -> dict[str, Any]:
    raw = bytes(file[f"Data/Image/{uuid}/Metadata"][:, 0]).rstrip(b"\x00")
    return dict(json.loads(raw))


HAADF_UUID = "0a3f1c2e9b8d4f7a8c6e5d4b3a291807"
FFT_UUID = "ffff0000ffff0000ffff0000ffff0000"


def _velox9_with_fft(path: Path) -> tuple[VeloxFile, np.ndarray]:
    """A Velox 9 file: titles from Operations, labels from Presentation, a half-plane FFT."""
    velox = write_velox(path, [Detector("SuperXG21", random_cube((2, 5, 7, 64), seed=8))])
    fft = np.zeros((6, 4, 1), [("realFloatHalfEven", "<f4"), ("imagFloatHalfEven", "<f4")])
    fft["realFloatHalfEven"] = np.arange(24).reshape(6, 4, 1)
    fft["imagFloatHalfEven"] = -1.5
    with h5py.File(path, "a") as file:
        del file["Version"], file["Displays"]
        del file["SharedProperties/EDSSpectrumQuantificationSettings"]
        json_text(file, "Version", {"version": "9", "format": "Velox"})
        haadf = f"/Data/Image/{HAADF_UUID}"
        display = {"display": {"label": "HAADF%20A"}, "dataPath": haadf}
        json_text(file, "Presentation/Displays/ImageDisplay/" + "a" * 32, display)
        operation = {"dataPath": haadf, "detector": "HAADF"}
        json_text(file, "Operations/StemInputOperation/" + "b" * 32, operation)
        json_text(
            file,
            "Operations/ImageQuantificationOperation/" + "c" * 32,
            {"elementSelection": [26, 8]},
        )
        json_text(
            file,
            "Operations/FftOperation/" + "d" * 32,
            {"imageOutputPath": f"/Data/Image/{FFT_UUID}"},
        )
        group = file.create_group(f"Data/Image/{FFT_UUID}")
        group.create_dataset("Data", data=fft, chunks=(6, 4, 1))
        metadata = _image_metadata(file, HAADF_UUID)
        metadata["BinaryResult"]["PixelUnitX"] = "1/m"
        metadata["BinaryResult"]["PixelSize"] = {"width": "585389.74", "height": "585389.74"}
        metadata_columns(group, [metadata])
    return velox, fft[..., 0]


def test_velox9_titles_elements_and_half_fft(tmp_path: Path) -> None:
    velox, fft = _velox9_with_fft(tmp_path / "v9.emd")
    spectrum, haadf, half_fft, si = file_reader(velox.path)
    # Velox < 11: the SI image is titled by its (URL-decoded) display label.
    assert haadf["metadata"]["General"]["title"] == "HAADF A"
    assert half_fft["metadata"]["General"]["title"] == "Half FFT"
    assert half_fft["data"].dtype == np.complex64
    np.testing.assert_array_equal(
        half_fft["data"], fft["realFloatHalfEven"] + 1j * fft["imagFloatHalfEven"]
    )
    assert half_fft["axes"][1]["units"] == "1 / µm"
    assert half_fft["axes"][1]["scale"] == pytest.approx(0.58538974)
    assert si["metadata"]["Sample"]["elements"] == ["Fe", "O"]
    # The scan shape comes from the stream, not from the last image (the FFT) as the
    # reference takes it.
    np.testing.assert_array_equal(si["data"], velox.detectors[0].cube.sum(axis=0))
    reference = rsciio_emd.file_reader(velox.path, select_type="single_spectrum")
    assert_same_signal(spectrum, reference[0])
    reference_fft = rsciio_emd.file_reader(velox.path, select_type="images")[1]
    assert_same_signal(half_fft, reference_fft)


@needs_sparse
def test_velox13_eels_cubes(tmp_path: Path) -> None:
    velox = write_velox(tmp_path / "v13.emd", [Detector("SuperXG21", random_cube((2, 5, 7, 64)))])
    stored = np.arange(7 * 32 * 5, dtype=np.uint16).reshape(7, 32, 5)  # (x, energy, y)
    with h5py.File(velox.path, "a") as file:
        del file["Version"]
        json_text(file, "Version", {"version": "13", "format": "Velox"})
        group = file.create_group("Data/EelsSpectrumImage/" + "e" * 32)
        group["Data"] = stored
        acquisition = np.zeros((500, 1), np.uint8)
        raw = json.dumps({"Data": {"offset": "480.0", "dispersion": "0.1692"}}).encode()
        acquisition[: len(raw), 0] = np.frombuffer(raw, np.uint8)
        group["AcquisitionMetadata"] = acquisition
        metadata_columns(group, [{"Core": {"MetadataDefinitionVersion": "7"}}])
    (eels, eds) = file_reader(velox.path, select_type="spectrum_image")
    np.testing.assert_array_equal(eels["data"], stored.transpose(2, 0, 1))
    y, x, energy = eels["axes"]
    assert (y["size"], x["size"], x["units"]) == (5, 7, "nm")
    assert (energy["name"], energy["offset"], energy["scale"], energy["units"]) == (
        "Energy-loss",
        480.0,
        0.1692,
        "eV",
    )
    assert eels["metadata"] == {
        "General": {"title": "EELS", "original_filename": "v13.emd"},
        "Signal": {"signal_type": "EELS"},
    }
    assert eels["original_metadata"] == {"Core": {"MetadataDefinitionVersion": "7"}}
    reference = rsciio_emd.file_reader(velox.path, select_type="spectrum_image")
    np.testing.assert_array_equal(eels["data"], reference[0]["data"])
    np.testing.assert_array_equal(eds["data"], reference[1]["data"])
