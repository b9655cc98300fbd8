"""The blockfile writer: ASTAR's layout field by field, exact scaling, interoperability.

Expected bytes come from the format specification (shared/specs/blockfile.md): the header
table (section 2), the navigator and offsets (section 4), the frame records (section 5) and
the intensity mapping (section 8.4), which :func:`spec_uint8` implements independently. The
reference library (rosettasciio) is used as a black box: it must read our files as we expect,
and we must read its files as it does.
"""

from __future__ import annotations

import shutil
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import shared_file
from stemcast.readers.blockfile import file_reader, read_header, read_navigator
from stemcast.writers.blockfile import file_writer

rsciio_blockfile = pytest.importorskip("rsciio.blockfile")

#: Header layout of the spec's table (little-endian), up to Acquisition_time; then 22 doubles.
HEAD = "6sHIIIHHHHHddIHId"
HEAD_NAMES = [
    "ID",
    "MAGIC",
    "Data_offset_1",
    "Data_offset_2",
    "UNKNOWN1",
    "DP_SZ",
    "DP_rotation",
    "NX",
    "NY",
    "Scan_rotation",
    "SX",
    "SY",
    "Beam_energy",
    "SDP",
    "Camera_length",
    "Acquisition_time",
]
SCALINGS: list[Any] = [None, "dtype", "minmax", "crop", (5, 200), (300.5, 4000)]


def spec_uint8(data: np.ndarray, scaling: Any) -> np.ndarray:
    """The mapping of spec section 8.4, written from the spec."""
    if scaling is None:
        return data.astype(np.uint8)
    if scaling == "dtype":
        info = np.iinfo(data.dtype)
        low, high = float(info.min), float(info.max)
    elif scaling == "minmax":
        low, high = float(data.min()), float(data.max())
    elif scaling == "crop":
        low, high = 0.0, 255.0
    else:
        low, high = map(float, scaling)
    values = np.clip(data.astype(np.float64), low, high)
    if low != high:
        return ((values - low) / (high - low) * 255).astype(np.uint8)
    return np.clip(values, 0, 255).astype(np.uint8)


def axes(shape: tuple[int, ...], nav_scale: float = 12.5, sig_scale: float = 0.02) -> list[dict]:
    nav_ndim = len(shape) - 2
    names = [*["y", "x"][2 - nav_ndim :], "dy", "dx"]
    return [
        {
            "name": name,
            "size": size,
            "scale": nav_scale if index < nav_ndim else sig_scale,
            "offset": 0.0,
            "units": "nm" if index < nav_ndim else "cm",
            "navigate": index < nav_ndim,
            "index_in_array": index,
        }
        for index, (name, size) in enumerate(zip(names, shape, strict=True))
    ]


def signal(data: Any, **extra: Any) -> dict[str, Any]:
    return {
        "data": data,
        "axes": axes(data.shape),
        "metadata": {},
        "original_metadata": {},
        "attributes": {"_lazy": False},
        **extra,
    }


def sample(dtype: Any, shape: tuple[int, ...] = (3, 4, 16, 16), seed: int = 0) -> np.ndarray:
    """Frames with the edges of the dtype and, for uint16, every multiple of 257."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return (rng.random(shape) * 700 - 100).astype(dtype)
    info = np.iinfo(dtype)
    data = rng.integers(max(info.min, -1000), min(info.max, 5000), shape, endpoint=True)
    data = data.astype(dtype)
    flat = data.reshape(-1)
    flat[:2] = info.min, info.max
    if np.dtype(dtype) == np.uint16:
        flat[2 : 2 + 256] = np.arange(256) * 257
    return data


def write_ours(path: Path, sig: dict[str, Any], **kwargs: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        file_writer(path, sig, show_progressbar=False, **kwargs)


def write_ref(path: Path, sig: dict[str, Any], endianess: str = "<", **kwargs: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rsciio_blockfile.file_writer(
            str(path), sig, show_progressbar=False, endianness=endianess, **kwargs
        )


def read_ref(path: Path, endianess: str = "<") -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rsciio_blockfile.file_reader(str(path), endianness=endianess)[0]  # type: ignore[no-any-return]


def _cases() -> list[Any]:
    cases = []
    for dtype in (np.uint16, np.uint8, np.int16, np.float32):
        for scaling in SCALINGS:
            if scaling == "dtype" and np.dtype(dtype).kind == "f":
                continue
            cases.append(pytest.param(dtype, scaling, id=f"{np.dtype(dtype).name}-{scaling}"))
    return cases


@pytest.mark.parametrize("endianess", ["<", ">"])
@pytest.mark.parametrize(("dtype", "scaling"), _cases())
def test_interoperates_with_the_reference(
    tmp_path: Path, dtype: Any, scaling: Any, endianess: str
) -> None:
    data = sample(dtype)
    expected = spec_uint8(data, scaling)
    ours, ref = tmp_path / "ours.blo", tmp_path / "ref.blo"
    write_ours(ours, signal(data), intensity_scaling=scaling, endianess=endianess)
    write_ref(ref, signal(data), endianess, intensity_scaling=scaling)

    np.testing.assert_array_equal(file_reader(ours, endianess=endianess)[0]["data"], expected)
    by_reference = read_ref(ours, endianess)
    np.testing.assert_array_equal(by_reference["data"], expected)
    assert [axis["scale"] for axis in by_reference["axes"]] == [12.5, 12.5, 0.02, 0.02]

    # The reference writes its header little-endian whatever ``endianness`` says, so it can
    # only read back its own files with "<"; stemcast reads them with either.
    np.testing.assert_array_equal(read_ref(ref)["data"], expected)
    np.testing.assert_array_equal(file_reader(ref, endianess=endianess)[0]["data"], expected)
    np.testing.assert_array_equal(read_navigator(ours, endianess), read_navigator(ref, endianess))


def test_every_uint16_value_maps_as_the_reference_for_dtype_scaling(tmp_path: Path) -> None:
    data = np.arange(65536, dtype=np.uint16).reshape(16, 16, 16, 16)
    write_ours(tmp_path / "ours.blo", signal(data), intensity_scaling="dtype")
    write_ref(tmp_path / "ref.blo", signal(data), intensity_scaling="dtype")
    ours = file_reader(tmp_path / "ours.blo")[0]["data"]
    np.testing.assert_array_equal(ours, file_reader(tmp_path / "ref.blo")[0]["data"])
    np.testing.assert_array_equal(ours, spec_uint8(data, "dtype"))


def test_uint32_and_float64_go_through_scikit_image(tmp_path: Path) -> None:
    for data, scaling in [
        (sample(np.uint32), "dtype"),
        (sample(np.uint32), (100, 70000)),
        (sample(np.float64), "minmax"),
    ]:
        write_ours(tmp_path / "ours.blo", signal(data), intensity_scaling=scaling)
        write_ref(tmp_path / "ref.blo", signal(data), intensity_scaling=scaling)
        ours = file_reader(tmp_path / "ours.blo")[0]["data"]
        np.testing.assert_array_equal(ours, file_reader(tmp_path / "ref.blo")[0]["data"])
        np.testing.assert_array_equal(ours, spec_uint8(data, scaling))
        np.testing.assert_array_equal(
            read_navigator(tmp_path / "ours.blo"), read_navigator(tmp_path / "ref.blo")
        )


def _unpack(raw: bytes, endianess: str = "<") -> dict[str, Any]:
    values = struct.unpack_from(endianess + HEAD, raw, 0)
    fields = dict(zip(HEAD_NAMES, values, strict=True))
    doubles = struct.unpack_from("<22d", raw, 64)
    fields["centering"], fields["distortion"] = doubles[:8], doubles[8:]
    return fields


@pytest.mark.parametrize("endianess", ["<", ">"])
def test_files_have_the_layout_of_astar_files(tmp_path: Path, endianess: str) -> None:
    data = sample(np.uint8, (3, 4, 16, 16))
    path = tmp_path / "astar.blo"
    write_ours(path, signal(data), endianess=endianess)
    raw = path.read_bytes()
    fields = _unpack(raw, endianess)
    frames, record = 12, 6 + 16 * 16
    assert fields["ID"] == b"IMGBLO"
    assert fields["MAGIC"] == 0x0102
    assert fields["Data_offset_1"] == 4096
    assert fields["Data_offset_2"] == 4112  # 4096 + 12, rounded up to 16 as ASTAR does
    assert fields["UNKNOWN1"] == 131135  # the value of ASTAR-written files
    assert (fields["DP_SZ"], fields["NX"], fields["NY"]) == (16, 4, 3)
    assert (fields["DP_rotation"], fields["Scan_rotation"]) == (0, 0)
    assert (fields["SX"], fields["SY"]) == (12.5, 12.5)
    assert fields["SDP"] == 5000  # 100 / 0.02 cm
    assert (fields["Beam_energy"], fields["Camera_length"]) == (0, 0)
    assert fields["Acquisition_time"] == 25570.0
    assert fields["centering"] == (0.0,) * 8
    assert fields["distortion"] == (0.0,) * 14
    assert set(raw[240:4096]) == {0}  # empty note, NUL padded
    navigator = np.frombuffer(raw[4096 : 4096 + frames], np.uint8)
    np.testing.assert_array_equal(navigator, data.mean(axis=(2, 3)).astype(np.uint8).ravel())
    assert set(raw[4096 + frames : 4112]) == {0}
    assert len(raw) == 4112 + frames * record
    for index in range(frames):
        offset = 4112 + index * record
        marker, serial = struct.unpack_from(endianess + "HI", raw, offset)
        assert (marker, serial) == (0x55AA, index)
        pattern = np.frombuffer(raw[offset + 6 : offset + record], np.uint8).reshape(16, 16)
        np.testing.assert_array_equal(pattern, data.reshape(-1, 16, 16)[index])
    if endianess == "<":
        assert raw[4112:4114] == b"\xaa\x55"


def test_test2_round_trip_keeps_every_header_field(tmp_path: Path) -> None:
    source = shared_file("blockfile", "test2.blo")
    path = tmp_path / "test2.blo"
    sig = file_reader(source)[0]
    write_ours(path, sig)
    again = file_reader(path)[0]
    np.testing.assert_array_equal(again["data"], sig["data"])
    assert again["axes"] == sig["axes"]
    assert again["metadata"] == sig["metadata"]
    before = sig["original_metadata"]["blockfile_header"]
    after = again["original_metadata"]["blockfile_header"]
    assert {key: value for key, value in after.items() if key != "Data_offset_2"} == {
        key: value for key, value in before.items() if key != "Data_offset_2"
    }
    assert (before["Data_offset_2"], after["Data_offset_2"]) == (4108, 4112)
    np.testing.assert_array_equal(read_navigator(path), read_navigator(source))


def test_test2_read_by_the_reference_then_written_by_us(tmp_path: Path) -> None:
    source = shared_file("blockfile", "test2.blo")
    path = tmp_path / "test2.blo"
    sig = read_ref(source)
    sig["attributes"] = {"_lazy": False}
    write_ours(path, sig)
    again = read_ref(path)
    np.testing.assert_array_equal(again["data"], sig["data"])
    assert again["axes"] == sig["axes"]
    assert again["metadata"] == sig["metadata"]


def test_the_reference_drifts_sdp_and_we_do_not(tmp_path: Path) -> None:
    sig = signal(sample(np.uint8, (2, 2, 8, 8)))
    sig["axes"][-1]["scale"] = sig["axes"][-2]["scale"] = 100 / 11  # SDP = 11
    write_ours(tmp_path / "ours.blo", sig)
    write_ref(tmp_path / "ref.blo", sig)
    assert read_header(tmp_path / "ours.blo").fields["SDP"] == 11
    assert read_header(tmp_path / "ref.blo").fields["SDP"] == 10  # truncated (spec 8.1)


def test_header_from_metadata_when_there_is_no_blockfile_header(tmp_path: Path) -> None:
    sig = signal(sample(np.uint8, (2, 3, 8, 8)))
    sig["metadata"] = {
        "General": {
            "date": "2015-12-01",
            "time": "15:43:09.828000",
            "time_zone": "UTC",
            "notes": "Precession angle : 0.5\r\nCamera gamma : on",
        },
        "Acquisition_instrument": {
            "TEM": {"beam_energy": 200.0, "camera_length": 0.2, "rotation": 25.0}
        },
    }
    path = tmp_path / "meta.blo"
    write_ours(path, sig)
    header = read_header(path)
    assert header.fields["Beam_energy"] == 200000
    assert header.fields["Camera_length"] == 2000
    assert header.fields["Scan_rotation"] == 2500
    assert header.fields["Acquisition_time"] == pytest.approx(42339.654974861114, abs=1e-9)
    assert header.note == "Precession angle : 0.5\r\nCamera gamma : on"
    general = read_ref(path)["metadata"]["General"]
    assert file_reader(path)[0]["metadata"]["General"] == general


def test_blockfile_header_wins_over_metadata(tmp_path: Path) -> None:
    sig = signal(sample(np.uint8, (2, 3, 8, 8)))
    sig["original_metadata"] = {"blockfile_header": {"Beam_energy": 300000, "Note": "kept"}}
    sig["metadata"] = {
        "General": {"notes": "ignored"},
        "Acquisition_instrument": {"TEM": {"beam_energy": 200.0}},
    }
    write_ours(tmp_path / "both.blo", sig)
    header = read_header(tmp_path / "both.blo")
    assert header.fields["Beam_energy"] == 300000
    assert header.note == "kept"


def test_units_are_converted_to_nm_and_cm(tmp_path: Path) -> None:
    sig = signal(sample(np.uint8, (2, 3, 8, 8)))
    for axis in sig["axes"][:2]:
        axis.update(units="µm", scale=0.064)
    for axis in sig["axes"][2:]:
        axis.update(units="mm", scale=0.16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        file_writer(tmp_path / "units.blo", sig, show_progressbar=False)
    header = read_header(tmp_path / "units.blo")
    assert header.fields["SX"] == pytest.approx(64.0)
    assert header.fields["SDP"] == 6250


def test_unconvertible_units_warn_and_are_written_as_is(tmp_path: Path) -> None:
    sig = signal(sample(np.uint8, (2, 3, 8, 8)))
    for axis in sig["axes"][2:]:
        axis.update(units="1/nm", scale=0.01)
    with pytest.warns(UserWarning, match="expects cm units in signal dimensions"):
        file_writer(tmp_path / "recip.blo", sig, show_progressbar=False)
    assert read_header(tmp_path / "recip.blo").fields["SDP"] == 10000


def test_a_note_of_a_16_bit_file_loses_its_bit_depth_line(tmp_path: Path) -> None:
    sig = signal(sample(np.uint8, (2, 3, 8, 8)))
    sig["original_metadata"] = {
        "blockfile_header": {"MAGIC": 0x0103, "Note": "Blo Bit Depth: 16 bits\r\nCamera gamma : on"}
    }
    write_ours(tmp_path / "eight.blo", sig)
    header = read_header(tmp_path / "eight.blo")
    assert header.fields["MAGIC"] == 0x0102
    assert header.note == "Camera gamma : on"
    assert header.bit_depth == 8


def test_a_too_long_note_is_cut_with_a_warning(tmp_path: Path) -> None:
    sig = signal(sample(np.uint8, (2, 3, 8, 8)))
    sig["original_metadata"] = {"blockfile_header": {"Note": "x" * 5000}}
    with pytest.warns(UserWarning, match="note is cut to the 3856 bytes"):
        file_writer(tmp_path / "long.blo", sig, show_progressbar=False)
    assert read_header(tmp_path / "long.blo").note == "x" * 3856


@pytest.mark.parametrize("scaling", [None, "dtype", (0, 1000)])
def test_navigator_array_is_scaled_like_the_reference(tmp_path: Path, scaling: Any) -> None:
    data = sample(np.uint16, (3, 4, 8, 8))
    navigator = np.arange(12, dtype=np.uint16).reshape(3, 4) * 50
    write_ours(tmp_path / "ours.blo", signal(data), intensity_scaling=scaling, navigator=navigator)
    write_ref(tmp_path / "ref.blo", signal(data), intensity_scaling=scaling, navigator=navigator)
    np.testing.assert_array_equal(
        read_navigator(tmp_path / "ours.blo"), read_navigator(tmp_path / "ref.blo")
    )


def test_navigator_none_stores_zeros_and_hyperspy_cache_is_used(tmp_path: Path) -> None:
    data = sample(np.uint8, (3, 4, 8, 8))
    write_ours(tmp_path / "zero.blo", signal(data), navigator=None)
    assert not read_navigator(tmp_path / "zero.blo").any()
    cached = np.full((3, 4), 7)
    sig = signal(data, metadata={"_HyperSpy": {"_sig_navigator": {"data": cached}}})
    write_ours(tmp_path / "cached.blo", sig)
    write_ref(tmp_path / "ref.blo", sig)
    np.testing.assert_array_equal(read_navigator(tmp_path / "cached.blo"), cached)
    np.testing.assert_array_equal(read_navigator(tmp_path / "ref.blo"), cached)


@pytest.mark.parametrize("shape", [(6, 8, 8), (8, 8)])
def test_one_and_zero_navigation_dimensions(tmp_path: Path, shape: tuple[int, ...]) -> None:
    data = sample(np.uint8, shape)
    write_ours(tmp_path / "ours.blo", signal(data))
    header = read_header(tmp_path / "ours.blo")
    assert (header.nx, header.ny) == ((6, 1) if len(shape) == 3 else (1, 1))
    np.testing.assert_array_equal(file_reader(tmp_path / "ours.blo")[0]["data"], data)
    np.testing.assert_array_equal(read_ref(tmp_path / "ours.blo")["data"], data)


def test_default_warning_for_non_uint8_data_without_scaling(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="does not have uint8 dtype"):
        file_writer(tmp_path / "wrap.blo", signal(sample(np.uint16)), show_progressbar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        file_writer(tmp_path / "fine.blo", signal(sample(np.uint8)), show_progressbar=False)


def test_progressbar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file_writer(tmp_path / "bar.blo", signal(sample(np.uint8)))
    assert "Writing blockfile" in capsys.readouterr().err


def test_existing_file_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "out.blo"
    shutil.copyfile(shared_file("blockfile", "test2.blo"), path)
    data = sample(np.uint8, (2, 2, 4, 4))
    write_ours(path, signal(data))
    np.testing.assert_array_equal(file_reader(path)[0]["data"], data)
    assert sorted(item.name for item in tmp_path.iterdir()) == ["out.blo"]


@pytest.mark.parametrize(
    ("time_zone", "expected"),
    [("UTC", "15:43:09.828"), ("Europe/Paris", "16:43:09.828"), (None, "15:43:09.828")],
)
def test_metadata_time_zones(tmp_path: Path, time_zone: str | None, expected: str) -> None:
    sig = signal(sample(np.uint8, (2, 2, 4, 4)))
    sig["metadata"] = {"General": {"date": "2015-12-01", "time": expected}}
    if time_zone:
        sig["metadata"]["General"]["time_zone"] = time_zone
    write_ours(tmp_path / "zone.blo", sig)
    serial = read_header(tmp_path / "zone.blo").fields["Acquisition_time"]
    assert serial == pytest.approx(42339.654974861114, abs=1e-9)


def test_unknown_time_zone_and_bad_dates_warn(tmp_path: Path) -> None:
    sig = signal(sample(np.uint8, (2, 2, 4, 4)))
    sig["metadata"] = {"General": {"date": "2015-12-01", "time": "15:43:09", "time_zone": "XYZ"}}
    with pytest.warns(UserWarning, match="unknown time zone 'XYZ'"):
        file_writer(tmp_path / "zone.blo", sig, show_progressbar=False)
    sig["metadata"] = {"General": {"date": "1st of December"}}
    with pytest.warns(UserWarning, match="not ISO 8601"):
        file_writer(tmp_path / "date.blo", sig, show_progressbar=False)
    assert read_header(tmp_path / "date.blo").fields["Acquisition_time"] == 25570.0


def test_navigator_none_with_one_navigation_dimension(tmp_path: Path) -> None:
    data = sample(np.uint8, (5, 4, 4))
    write_ours(tmp_path / "line.blo", signal(data), navigator=None)
    assert read_navigator(tmp_path / "line.blo").shape == (1, 5)
    assert not read_navigator(tmp_path / "line.blo").any()
