"""The byte order under both spellings: ``endianess`` (the seed API) and ``endianness``.

RosettaSciIO spells the parameter ``endianness`` since its 0.13; where it accepts the same
call, it reads our files (and the real test2.blo) to the same data. The byte layout expected of
a big-endian file (frame marker 0x55AA and serial number in the given order) is the spec's.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import shared_file
from stemcast.convert.options import check_options
from stemcast.errors import ParameterError
from stemcast.readers.blockfile import file_reader, read_header, read_navigator
from stemcast.writers.blockfile import BlockfileWriter, file_writer

rsciio_blockfile = pytest.importorskip("rsciio.blockfile")


def _signal(data: np.ndarray) -> dict[str, Any]:
    names = ["y", "x", "dy", "dx"]
    return {
        "data": data,
        "axes": [
            {
                "name": name,
                "size": size,
                "scale": 1.0,
                "offset": 0.0,
                "units": "nm" if index < 2 else "cm",
                "navigate": index < 2,
                "index_in_array": index,
            }
            for index, (name, size) in enumerate(zip(names, data.shape, strict=True))
        ],
        "metadata": {},
        "original_metadata": {},
        "attributes": {"_lazy": False},
    }


def _frames() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (3, 4, 8, 8), dtype=np.uint8)


def _reference(path: Path, **kwargs: Any) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rsciio_blockfile.file_reader(str(path), **kwargs)[0]  # type: ignore[no-any-return]


def _first_record(path: Path, order: str) -> tuple[int, int]:
    """Marker and serial number of the first frame record of a file we wrote in ``order``."""
    raw = path.read_bytes()
    (offset,) = struct.unpack_from(order + "I", raw, 12)  # Data_offset_2
    return struct.unpack_from(order + "HI", raw, offset)  # type: ignore[return-value]


@pytest.mark.parametrize("order", ["<", ">"])
def test_writer_spellings_write_the_same_bytes(tmp_path: Path, order: str) -> None:
    data = _frames()
    old, new = tmp_path / "old.blo", tmp_path / "new.blo"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither spelling warns
        file_writer(old, _signal(data), show_progressbar=False, endianess=order)
        file_writer(new, _signal(data), show_progressbar=False, endianness=order)
    assert new.read_bytes() == old.read_bytes()
    assert _first_record(new, order) == (0x55AA, 0)


@pytest.mark.parametrize("order", ["<", ">"])
def test_the_reference_reads_a_file_written_with_endianness(tmp_path: Path, order: str) -> None:
    data = _frames()
    path = tmp_path / "ours.blo"
    file_writer(path, _signal(data), show_progressbar=False, endianness=order)
    np.testing.assert_array_equal(_reference(path, endianness=order)["data"], data)
    np.testing.assert_array_equal(file_reader(path, endianness=order)[0]["data"], data)


def test_reader_spellings_read_test2_as_the_reference() -> None:
    test2 = shared_file("blockfile", "test2.blo")
    expected = _reference(test2, endianness="<")["data"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kwargs in ({"endianness": "<"}, {"endianess": "<"}, {}):
            np.testing.assert_array_equal(file_reader(test2, **kwargs)[0]["data"], expected)
    np.testing.assert_array_equal(
        file_reader(test2, False, None, "<", endianness="<")[0]["data"], expected
    )


def test_reader_reads_a_reference_big_endian_file_with_endianness(tmp_path: Path) -> None:
    data = _frames()
    path = tmp_path / "ref.blo"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rsciio_blockfile.file_writer(
            str(path), _signal(data), show_progressbar=False, endianness=">"
        )
    np.testing.assert_array_equal(file_reader(path, endianness=">")[0]["data"], data)
    np.testing.assert_array_equal(
        read_navigator(path, endianness=">"), read_navigator(path, endianess=">")
    )
    assert read_header(path, endianness=">").nx == 4


def test_streaming_writer_takes_endianness(tmp_path: Path) -> None:
    data = _frames()
    path = tmp_path / "stream.blo"
    with BlockfileWriter(path, (4, 3), 8, endianness=">") as writer:
        writer.write(data.reshape(-1, 8, 8))
    assert _first_record(path, ">") == (0x55AA, 0)
    np.testing.assert_array_equal(_reference(path, endianness=">")["data"], data)


def _conflicting_calls(tmp_path: Path) -> list[Any]:
    test2 = shared_file("blockfile", "test2.blo")
    data = _frames()
    return [
        lambda: file_reader(test2, endianess="<", endianness=">"),
        lambda: file_reader(test2, False, None, ">", endianness="<"),
        lambda: read_header(test2, "<", endianness=">"),
        lambda: read_navigator(test2, endianess=">", endianness="<"),
        lambda: file_writer(tmp_path / "out.blo", _signal(data), endianess="<", endianness=">"),
        lambda: BlockfileWriter(tmp_path / "out.blo", (4, 3), 8, endianess=">", endianness="<"),
    ]


def test_disagreeing_spellings_are_refused(tmp_path: Path) -> None:
    for call in _conflicting_calls(tmp_path):
        with pytest.raises(ParameterError, match="disagree") as error:
            call()
        assert error.value.parameter == "endianness"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("spelling", ["endianess", "endianness"])
def test_a_bad_value_names_the_spelling_given(tmp_path: Path, spelling: str) -> None:
    test2 = shared_file("blockfile", "test2.blo")
    with pytest.raises(ParameterError) as error:
        file_reader(test2, **{spelling: "big"})
    assert error.value.parameter == spelling
    with pytest.raises(ParameterError) as error:
        file_writer(tmp_path / "out.blo", _signal(_frames()), **{spelling: "="})
    assert error.value.parameter == spelling


def test_conversion_options_take_both_spellings_as_one_request() -> None:
    new = check_options(["blockfile"], {"blockfile": {"endianness": ">"}})
    old = check_options(["blockfile"], {"blockfile": {"endianess": ">"}})
    both = check_options(["blockfile"], {"blockfile": {"endianess": ">", "endianness": ">"}})
    assert new == old == both == {"blockfile": {"endianess": ">"}}
    assert check_options(["blockfile"], {"blockfile": {"endianness": "<"}}) == {"blockfile": {}}


@pytest.mark.parametrize(
    ("given", "parameter"),
    [
        ({"endianess": ">", "endianness": "<"}, "options.blockfile.endianness"),
        ({"endianness": "big"}, "options.blockfile.endianness"),
        ({"endianess": "big"}, "options.blockfile.endianess"),
    ],
)
def test_bad_endianness_options_are_refused(given: dict[str, str], parameter: str) -> None:
    with pytest.raises(ParameterError) as error:
        check_options(["blockfile"], {"blockfile": given})
    assert error.value.parameter == parameter
