"""What fuzzing the readers found, one corruption each, built by hand from valid files.

Files come from stemcast's writers (and the Velox helper written from the format
specification); each test corrupts the bytes the finding was about, found through h5py or
the format's layout, and checks that the reader refuses the file with a ``stemcast.errors``
exception naming it. Corruptions that hung or crashed the reader are read in a child process,
so that a regression fails the test instead of stopping the suite.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

import stemcast
from stemcast.errors import FormatError, TruncatedError, UnsupportedError
from stemcast.formats.blockfile.spec import HEADER_DTYPE
from stemcast.formats.emd.writer import file_writer as write_emd
from stemcast.formats.mib.writer import write_mib
from stemcast.writers.blockfile import file_writer as write_blockfile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from readers.emd_support import Detector, random_cube, write_velox

#: A variable-length UTF-8 string type as HDF5 stores it in an attribute message: class 9
#: (version 1), flags "string, null-terminated, UTF-8", size 16.
VLEN_UTF8_STRING = bytes.fromhex("19 01 01 00 10 00 00 00")


def _ncem(path: Path, **options: object) -> Path:
    """A small NCEM file whose axes carry variable-length string names and units."""
    data = np.arange(2 * 3 * 4 * 4, dtype=np.uint16).reshape(2, 3, 4, 4)
    axes = [
        {"name": name, "units": "nm", "scale": 1.0, "offset": 0.0, "size": size}
        for name, size in zip(("y", "x", "ky", "kx"), data.shape, strict=True)
    ]
    write_emd(path, {"data": data, "axes": axes, "metadata": {}}, **options)
    return path


def _read_in_child(path: Path, **options: object) -> subprocess.CompletedProcess[str]:
    """Read ``path`` with ``stemcast.load`` in a child; print the error's type and text."""
    code = textwrap.dedent(
        f"""
        import stemcast
        try:
            for signal in stemcast.load({str(path)!r}, **{options!r}):
                signal["data"][...]
        except Exception as error:
            print(type(error).__name__, error)
        else:
            print("read")
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_a_global_heap_that_never_ends_is_refused_not_parsed_forever(tmp_path: Path) -> None:
    # HDF5 walks a global heap collection object by object, each size moving it on; a free
    # space object (index 0) of size 0 never does, and HDF5 2.0 loops forever on it.
    path = _ncem(tmp_path / "heap.emd")
    raw = bytearray(path.read_bytes())
    collection = raw.index(b"GCOL")
    size = int.from_bytes(raw[collection + 8 : collection + 16], "little")
    position = collection + 16
    while int.from_bytes(raw[position : position + 2], "little") != 0:
        length = int.from_bytes(raw[position + 8 : position + 16], "little")
        position += 16 + -(-length // 8) * 8
    assert position < collection + size  # the free space object of the collection
    raw[position + 8 : position + 16] = bytes(8)
    path.write_bytes(raw)

    result = _read_in_child(path)

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("FormatError"), result.stdout
    assert str(path) in result.stdout
    assert f"byte {collection}" in result.stdout
    assert "global heap object 0" in result.stdout


def test_a_variable_length_type_of_unknown_kind_is_refused_not_crashing(
    tmp_path: Path,
) -> None:
    # The low 4 bits of a variable-length type say sequence (0) or string (1); HDF5 2.0
    # crashes reading a value whose type says anything else.
    path = _ncem(tmp_path / "kind.emd")
    raw = bytearray(path.read_bytes())
    at = raw.index(VLEN_UTF8_STRING)
    raw[at + 1] = 0x0F
    path.write_bytes(raw)

    result = _read_in_child(path)

    assert result.returncode == 0, f"the reader died with status {result.returncode}"
    assert result.stdout.startswith("FormatError"), result.stdout
    assert str(path) in result.stdout
    assert "variable-length type of unknown kind 15" in result.stdout


def _velox(path: Path) -> Path:
    write_velox(path, [Detector("SuperXG21", random_cube((2, 3, 4, 16), seed=3, mean=0.5))])
    return path


def _json_descriptor(path: Path, name: str) -> int:
    """Offset of the stored value (length, heap collection, index) of a JSON dataset."""
    with h5py.File(path, "r") as file:
        offset = file[name].id.get_offset()
    assert offset is not None
    return int(offset)


#: A JSON dataset read for its metadata (a bad one is skipped with a warning), and one the
#: reader needs (a bad one refuses the file).
DISPLAY = "/Displays/ImageDisplay/9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a"
SETTINGS = f"/Data/SpectrumStream/01{'f' * 30}/AcquisitionSettings"


def test_a_failed_read_leaves_h5py_usable_from_other_threads(tmp_path: Path) -> None:
    # h5py's group views iterate holding its global lock; an error raised inside a loop over
    # one left the view suspended with the lock until the garbage collector closed it, and
    # every other thread then waited for h5py forever.
    path = _velox(tmp_path / "velox.emd")
    raw = bytearray(path.read_bytes())
    at = _json_descriptor(path, DISPLAY)
    raw[at + 4 : at + 12] = b"\xff" * 8  # the heap collection of the value: nowhere
    path.write_bytes(raw)
    other = _ncem(tmp_path / "other.emd")

    with pytest.raises(FormatError) as error:
        stemcast.load(path)
    assert error.value.path == str(path)

    read: list[int] = []
    thread = threading.Thread(target=lambda: read.append(len(stemcast.load(other))), daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert read == [1], "another thread could not use h5py after the failed read"


def test_a_value_longer_than_the_file_is_refused_before_it_is_allocated(
    tmp_path: Path,
) -> None:
    # HDF5 allocates and clears a variable-length value from its stored length before it
    # looks for it: spaces over the length cost half a gigabyte.
    path = _velox(tmp_path / "velox.emd")
    raw = bytearray(path.read_bytes())
    at = _json_descriptor(path, SETTINGS)
    raw[at : at + 4] = b"    "
    path.write_bytes(raw)

    with pytest.raises(FormatError, match="claims 538976288 bytes") as error:
        stemcast.load(path)
    assert error.value.path == str(path)
    assert error.value.offset == at


def test_a_chunked_dataset_far_larger_than_it_stores_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.emd"
    with h5py.File(path, "w") as file:
        file.attrs["version_major"] = 0
        file.attrs["version_minor"] = 2
        group = file.create_group("data/huge")
        group.attrs["emd_group_type"] = 1
        # 2 TB declared, no chunk written: a corrupt dataspace looks like this.
        group.create_dataset("data", shape=(2**20, 2**20), dtype=np.uint16, chunks=(64, 64))

    for lazy in (False, True):
        with pytest.raises(FormatError, match="declares 2199023255552 bytes") as error:
            stemcast.load(path, lazy=lazy)
        assert error.value.path == str(path)


def test_a_corrupt_chunk_read_lazily_names_the_file(tmp_path: Path) -> None:
    path = _ncem(tmp_path / "lazy.emd", compression="gzip")
    with h5py.File(path, "r") as file:
        [name] = [key for key in file["signals"]]
        chunk = file[f"signals/{name}/data"].id.get_chunk_info(0)
    raw = bytearray(path.read_bytes())
    raw[chunk.byte_offset : chunk.byte_offset + chunk.size] = b"\x55" * chunk.size
    path.write_bytes(raw)

    [signal] = stemcast.load(path, lazy=True)
    with pytest.raises(FormatError, match="corrupt HDF5 file") as error:
        signal["data"].compute(scheduler="synchronous")
    assert error.value.path == str(path)


def test_an_unparsable_merlin_timestamp_names_the_file_and_the_header(tmp_path: Path) -> None:
    frames = np.zeros((6, 16, 16), dtype=np.uint16)
    path = write_mib(tmp_path / "stamp.mib", frames, scan_shape=(3, 2))
    path.with_suffix(".hdr").unlink()  # without it, the scan shape comes from the timestamps
    raw = bytearray(path.read_bytes())
    record = len(raw) // 6
    header = raw[2 * record : 3 * record]
    stamp = header.index(b"MQ1A,") + len(b"MQ1A,")
    raw[2 * record + stamp : 2 * record + stamp + 7] = b"2024-13"  # month 13
    path.write_bytes(raw)

    with pytest.raises(FormatError, match="no valid MQ1A timestamp") as error:
        stemcast.load(path)
    assert error.value.path == str(path)
    assert error.value.offset == 2 * record


def _blockfile(path: Path) -> Path:
    data = np.arange(2 * 3 * 8 * 8, dtype=np.uint8).reshape(2, 3, 8, 8)
    write_blockfile(path, {"data": data}, show_progressbar=False)
    return path


def _set_field(path: Path, name: str, value: int) -> int:
    offset = int(HEADER_DTYPE.fields[name][1])  # type: ignore[index]
    size = HEADER_DTYPE.fields[name][0].itemsize  # type: ignore[index]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + size] = value.to_bytes(size, "little")
    path.write_bytes(raw)
    return offset


def test_a_blockfile_frame_too_large_for_numpy_is_unsupported(tmp_path: Path) -> None:
    path = _blockfile(tmp_path / "big.blo")
    offset = _set_field(path, "DP_SZ", 65535)
    path.write_bytes(path.read_bytes() + b"\x00" * 1024)

    with pytest.raises(UnsupportedError, match="65535 x 65535") as error:
        stemcast.load(path)
    assert error.value.path == str(path)
    assert error.value.offset == offset


def test_a_blockfile_navigator_past_the_end_is_not_read_for(tmp_path: Path) -> None:
    # Data_offset_1 says where the note ends; 4 GB on a 5 kB file made the reader ask for
    # 4 GB of note.
    path = _blockfile(tmp_path / "far.blo")
    _set_field(path, "Data_offset_1", 2**32 - 16)
    _set_field(path, "Data_offset_2", 2**32 - 1)

    with pytest.raises(TruncatedError, match="0 complete frames") as error:
        stemcast.load(path)
    assert error.value.path == str(path)


def _attribute_value_offset(raw: bytes, name: bytes) -> int:
    """Offset of the stored value of attribute ``name``, from the attribute message layout.

    File format specification IV.A.2.m: version 1 is ``version, reserved, name size, datatype
    size, dataspace size`` (2 bytes each but the first two) then name, datatype and dataspace,
    each padded to 8 bytes; version 3 adds an encoding byte and pads nothing.
    """
    at = raw.index(name + b"\x00")
    for start, version in ((at - 8, 1), (at - 9, 3)):
        if raw[start] == version:
            sizes = [int.from_bytes(raw[start + k : start + k + 2], "little") for k in (2, 4, 6)]
            if version == 1:
                return at + sum(-(-size // 8) * 8 for size in sizes)
            return at + sum(sizes)
    raise AssertionError(f"no attribute message for {name!r}")


def _ncem_with_text_attributes(path: Path, libver: str, extra: int = 0) -> Path:
    with h5py.File(path, "w", libver=libver) as file:
        file.attrs["version_major"] = 0
        file.attrs["version_minor"] = 2
        group = file.create_group("data/a")
        group.attrs["emd_group_type"] = 1
        group["data"] = np.arange(6, dtype=np.uint8).reshape(2, 3)
        for index, (name, size) in enumerate((("y", 3), ("x", 2)), start=1):
            dim = group.create_dataset(f"dim{index}", data=np.arange(size, dtype=float))
            dim.attrs["name"] = name
            dim.attrs["units"] = "nm"
        metadata = file.create_group("microscope")
        for index in range(extra):  # beyond 8, "latest" stores attributes densely
            metadata.attrs[f"note{index}"] = f"text {index}"
    return path


def test_an_attribute_value_longer_than_the_file_is_refused_before_it_is_allocated(
    tmp_path: Path,
) -> None:
    path = _ncem_with_text_attributes(tmp_path / "text.emd", "earliest")
    raw = bytearray(path.read_bytes())
    at = _attribute_value_offset(bytes(raw), b"units")
    assert int.from_bytes(raw[at : at + 4], "little") == 2  # "nm"
    raw[at : at + 4] = (2**31 - 1).to_bytes(4, "little")
    path.write_bytes(raw)

    with pytest.raises(FormatError, match="claims 2147483647 bytes") as error:
        stemcast.load(path)
    assert error.value.path == str(path)
    assert error.value.offset == at


@pytest.mark.parametrize(("libver", "extra"), [("earliest", 12), ("latest", 0), ("latest", 12)])
def test_text_attributes_read_whatever_the_object_header_version(
    tmp_path: Path, libver: str, extra: int
) -> None:
    # Version 2 object headers ("latest"), with attributes in the header or stored densely.
    path = _ncem_with_text_attributes(tmp_path / "text.emd", libver, extra)
    [signal] = stemcast.load(path)
    assert [axis["name"] for axis in signal["axes"]] == ["x", "y"]
    assert [axis["units"] for axis in signal["axes"]] == ["nm", "nm"]
    notes = signal["original_metadata"]["microscope"]
    assert {key: str(value) for key, value in notes.items()} == {
        f"note{index}": f"text {index}" for index in range(extra)
    }
