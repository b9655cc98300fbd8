"""Every processed real Merlin file reads as the reference reader (rosettasciio) reads it.

The reference is used as a black box: the same call is made on both libraries and the results
are compared. Known, intended deviations are tested explicitly:

* ``Quad_9_Frame_CounterDepth_24_Rows_256.mib``: the reference turns 10 ns timestamp jitter into
  a (3, 3) scan; stemcast returns the 9-frame stack it really is (evidence ``"none"``).
* lazy arrays and ``load_mib_data(return_mmap=False)`` are native-endian in stemcast (values
  equal, byte order differs).
* stemcast records a plain stack as navigation shape ``(n,)`` in ``mib_properties`` where the
  reference writes ``(n, 1)`` (its timestamp inference gives a width of 1).
"""

from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
from reductions import assert_same_reductions, force_threads

from stemcast.errors import ParameterError
from stemcast.formats.frame_sums import FrameMemmap
from stemcast.readers import mib as ours

rsciio_qd = pytest.importorskip("rsciio.quantumdetector")
rsciio_api = pytest.importorskip("rsciio.quantumdetector._api")

ZIP = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "data"
    / "quantumdetector"
    / "Merlin_Single_Quad.zip"
)


def _processed_names() -> list[str]:
    if not ZIP.exists():
        return []
    with zipfile.ZipFile(ZIP) as archive:
        return sorted(
            name
            for name in archive.namelist()
            if name.endswith(".mib") and not name.endswith("RAW.mib")
        )


PROCESSED = _processed_names()
JITTER = "Quad_9_Frame_CounterDepth_24_Rows_256.mib"
#: Files whose inferred navigation shape is the reference's.
REGULAR = [name for name in PROCESSED if name != JITTER]


def _frames(name: str) -> int:
    match = re.search(r"_(\d+)_Frame_", name)
    assert match, name
    return int(match.group(1))


def ref_call(function: str, *args: Any, **kwargs: Any) -> Any:
    """Call the reference quietly (it logs and warns about timestamps with a 'Z')."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(rsciio_qd, function)(*args, **kwargs)


def ref_read(path: Path, **kwargs: Any) -> dict[str, Any]:
    return ref_call("file_reader", str(path), **kwargs)[0]


def our_read(path: Path, **kwargs: Any) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ours.file_reader(str(path), **kwargs)
    assert len(result) == 1
    return result[0]


def squeezed(shape: Any) -> tuple[int, ...]:
    return tuple(int(size) for size in shape if size != 1)


def assert_metadata_equal(mine: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert mine["metadata"] == theirs["metadata"]
    mine_props = mine["original_metadata"]["mib_properties"]
    their_props = theirs["original_metadata"]["mib_properties"]
    assert set(mine_props) == set(their_props)
    for key in their_props:
        if key == "navigation_shape":
            # stemcast writes a stack as (n,), the reference as (n, 1).
            assert squeezed(mine_props[key]) == squeezed(their_props[key])
        else:
            assert mine_props[key] == their_props[key], key
    assert "hdr_file" in theirs["original_metadata"]
    mine_hdr = mine["original_metadata"]["hdr_file"]
    their_hdr = theirs["original_metadata"]["hdr_file"]
    assert set(mine_hdr) == set(their_hdr)
    for key, value in their_hdr.items():
        assert mine_hdr[key] == value, key


def assert_same_values(mine: Any, theirs: Any) -> None:
    mine = np.asarray(mine)
    theirs = np.asarray(theirs)
    assert mine.shape == theirs.shape
    np.testing.assert_array_equal(mine, theirs)


needs_files = pytest.mark.skipif(not PROCESSED, reason="real Merlin files not available")


@needs_files
def test_zip_holds_the_expected_processed_files() -> None:
    assert len(PROCESSED) == 16
    assert JITTER in PROCESSED


# --------------------------------------------------------------------------------------------
# file_reader, default parameters


@pytest.mark.parametrize("name", REGULAR)
def test_default_read_matches_reference(merlin_dir: Path, name: str) -> None:
    path = merlin_dir / name
    theirs = ref_read(path)
    mine = our_read(path)
    assert isinstance(mine["data"], np.ndarray)
    assert mine["data"].dtype == theirs["data"].dtype  # big-endian kept, as the reference
    assert mine["data"].shape == theirs["data"].shape
    assert_same_values(mine["data"], theirs["data"])
    assert mine["axes"] == theirs["axes"]
    assert mine["mapping"] == theirs["mapping"]
    assert_metadata_equal(mine, theirs)


@pytest.mark.parametrize("name", REGULAR)
def test_default_read_flips_frames_vertically(merlin_dir: Path, name: str) -> None:
    path = merlin_dir / name
    stored = np.asarray(ref_call("load_mib_data", str(path)))  # (frames, rows, cols), unflipped
    assert stored.ndim == 3
    mine = np.asarray(our_read(path)["data"]).reshape(stored.shape)
    np.testing.assert_array_equal(mine, stored[:, ::-1, :])


@needs_files
def test_jitter_file_is_a_stack_not_a_3x3_scan(merlin_dir: Path) -> None:
    path = merlin_dir / JITTER
    theirs = ref_read(path)
    mine = our_read(path)
    assert theirs["data"].shape == (3, 3, 512, 512)
    assert mine["data"].shape == (9, 512, 512)
    assert mine["data"].dtype == theirs["data"].dtype == np.dtype(">u4")
    assert_same_values(mine["data"], theirs["data"].reshape(9, 512, 512))
    scan = mine["original_metadata"]["scan_shape"]
    assert scan["evidence"] == "none"
    assert tuple(scan["shape"]) == (9,)
    assert [axis["navigate"] for axis in mine["axes"]] == [True, False, False]
    assert [axis["size"] for axis in mine["axes"]] == [9, 512, 512]
    assert mine["metadata"] == theirs["metadata"]
    assert mine["original_metadata"]["hdr_file"] == theirs["original_metadata"]["hdr_file"]
    assert mine["original_metadata"]["mib_properties"]["navigation_shape"] == (9,)


@needs_files
def test_jitter_file_with_user_shape_matches_reference(merlin_dir: Path) -> None:
    path = merlin_dir / JITTER
    theirs = ref_read(path, navigation_shape=(3, 3))
    mine = our_read(path, navigation_shape=(3, 3))
    assert mine["data"].dtype == theirs["data"].dtype
    assert_same_values(mine["data"], theirs["data"])
    assert mine["axes"] == theirs["axes"]
    assert mine["original_metadata"]["scan_shape"]["evidence"] == "user"


# --------------------------------------------------------------------------------------------
# file_reader, non-default parameters


@pytest.mark.parametrize("name", PROCESSED)
def test_lazy_read_matches_reference_values(merlin_dir: Path, name: str) -> None:
    path = merlin_dir / name
    theirs = ref_read(path)
    mine = our_read(path, lazy=True)
    assert isinstance(mine["data"], da.Array)
    assert mine["data"].dtype.isnative
    assert mine["data"].dtype == theirs["data"].dtype.newbyteorder("=")
    expected = theirs["data"]
    if name == JITTER:
        expected = expected.reshape(mine["data"].shape)
    else:
        assert mine["axes"] == theirs["axes"]
        assert_metadata_equal(mine, theirs)
    assert_same_values(mine["data"].compute(), expected)


def _navigation_cases() -> list[tuple[str, tuple[int, ...]]]:
    cases = []
    for name in PROCESSED:
        if _frames(name) == 9:
            shapes = [(3, 3), (9,), (9, 1), (1, 9), (4, 2), (2, 4), (5, 5), (2, 3)]
        else:
            shapes = [(1,), (1, 1)]
        cases += [(name, shape) for shape in shapes]
    return cases


@pytest.mark.parametrize(("name", "navigation_shape"), _navigation_cases())
def test_navigation_shape_matches_reference(
    merlin_dir: Path, name: str, navigation_shape: tuple[int, ...]
) -> None:
    path = merlin_dir / name
    theirs = ref_read(path, navigation_shape=navigation_shape)
    mine = our_read(path, navigation_shape=navigation_shape)
    assert mine["data"].dtype == theirs["data"].dtype
    assert_same_values(mine["data"], theirs["data"])
    assert mine["axes"] == theirs["axes"]
    assert mine["original_metadata"]["scan_shape"]["evidence"] == "user"
    props = mine["original_metadata"]["mib_properties"]
    their_props = theirs["original_metadata"]["mib_properties"]
    assert tuple(props["navigation_shape"]) == tuple(their_props["navigation_shape"])
    assert props["xy"] == their_props["xy"]


FRAME_RANGES_9 = [
    (2, 5, None),
    (-4, None, None),
    (None, -2, None),
    (-4, -1, None),
    (0, 9, None),
    (-100, 100, None),
    (3, None, (3, 2)),
    (3, None, (3, 3)),  # fewer frames than the shape: a stack
    (-3, None, (3, 3)),
    (1, None, (5, 5)),  # interrupted branch with first_frame > 0: a stack
    (1, 8, (2, 2)),  # more frames than the shape: the first 4 are used
]
FRAME_RANGES_1 = [(0, 1, None), (-1, None, None), (-1, 1, None), (0, None, (1, 1))]


def _frame_range_cases() -> list[tuple[str, int | None, int | None, tuple[int, ...] | None]]:
    cases = []
    for name in PROCESSED:
        ranges = FRAME_RANGES_9 if _frames(name) == 9 else FRAME_RANGES_1
        cases += [(name, *item) for item in ranges]
    return cases


@pytest.mark.parametrize(("name", "first", "last", "nav"), _frame_range_cases())
def test_first_last_frame_match_reference(
    merlin_dir: Path,
    name: str,
    first: int | None,
    last: int | None,
    nav: tuple[int, ...] | None,
) -> None:
    path = merlin_dir / name
    kwargs = {"first_frame": first, "last_frame": last, "navigation_shape": nav}
    if nav is None and name == JITTER:
        kwargs["navigation_shape"] = (9,)  # keep the known deviation out of this test
    theirs = ref_read(path, **kwargs)
    mine = our_read(path, **kwargs)
    assert mine["data"].dtype == theirs["data"].dtype
    assert_same_values(mine["data"], theirs["data"])
    assert mine["axes"] == theirs["axes"]
    lazy = our_read(path, lazy=True, **kwargs)["data"]
    assert_same_values(lazy.compute(), theirs["data"])


@pytest.mark.parametrize("name", PROCESSED)
@pytest.mark.parametrize(("first", "last"), [(4, 4), (20, None), (None, -20), (-1, 0)])
def test_selecting_no_frame_is_refused(
    merlin_dir: Path, name: str, first: int | None, last: int | None
) -> None:
    # Deviation: the reference returns an empty array for a 9-frame file and crashes (dask
    # auto-chunking divides by zero) for a 1-frame one; stemcast names the parameter.
    path = merlin_dir / name
    with pytest.raises(ParameterError, match="frame"):
        our_read(path, first_frame=first, last_frame=last)
    with pytest.raises(ParameterError, match="frame"):
        our_read(path, first_frame=first, last_frame=last, lazy=True)
    with pytest.raises(ParameterError, match="frame"):
        ours.load_mib_data(str(path), first_frame=first, last_frame=last)


@pytest.mark.parametrize("name", PROCESSED)
def test_mmap_mode_r_matches_reference(merlin_dir: Path, name: str) -> None:
    path = merlin_dir / name
    nav = (_frames(name),)
    theirs = ref_read(path, mmap_mode="r", navigation_shape=nav)
    mine = our_read(path, mmap_mode="r", navigation_shape=nav)
    assert mine["data"].dtype == theirs["data"].dtype
    assert_same_values(mine["data"], theirs["data"])
    assert not mine["data"].flags.writeable


def _chunk_cases() -> list[tuple[str, tuple[int, ...]]]:
    cases = []
    for name in PROCESSED:
        if _frames(name) == 9:
            chunks = [(2, 100, 256), (9, 64, 50), (4, -1, -1)]
            if name.startswith("Single"):
                chunks.append((1, 32, 256))  # many small chunks
        else:
            chunks = [(1, 100, 64), (1, -1, 128)]
        cases += [(name, chunk) for chunk in chunks]
    return cases


@pytest.mark.parametrize(("name", "chunks"), _chunk_cases())
def test_explicit_chunks_match_reference(
    merlin_dir: Path, name: str, chunks: tuple[int, ...]
) -> None:
    path = merlin_dir / name
    nav = (_frames(name),)
    theirs = ref_read(path, lazy=True, chunks=chunks, navigation_shape=nav)["data"]
    mine = our_read(path, lazy=True, chunks=chunks, navigation_shape=nav)["data"]
    shape = (nav[0], *theirs.shape[-2:])
    expected = da.core.normalize_chunks(chunks, shape, dtype=mine.dtype)
    if nav[0] == 1:
        expected = expected[1:]  # the single frame's axis is squeezed away
    else:
        assert mine.chunks[0] == theirs.chunks[0] == expected[0]
    # The reference flips after chunking, so its row chunks come out reversed: compare sizes.
    assert sorted(mine.chunks[-2]) == sorted(theirs.chunks[-2]) == sorted(expected[-2])
    assert mine.chunks[-1] == theirs.chunks[-1] == expected[-1]
    assert mine.npartitions == theirs.npartitions
    assert_same_values(mine.compute(), theirs.compute())


# --------------------------------------------------------------------------------------------
# load_mib_data


@pytest.mark.parametrize("name", PROCESSED)
def test_load_mib_data_memmap_matches_reference(merlin_dir: Path, name: str) -> None:
    path = str(merlin_dir / name)
    theirs = ref_call("load_mib_data", path)
    mine = ours.load_mib_data(path)
    assert isinstance(mine, np.memmap)
    assert mine.dtype == theirs.dtype
    assert mine.shape == theirs.shape
    assert_same_values(mine, theirs)
    lazy_mine = ours.load_mib_data(path, lazy=True)
    assert isinstance(lazy_mine, np.memmap)
    assert_same_values(lazy_mine, ref_call("load_mib_data", path, lazy=True))


@pytest.mark.parametrize("name", PROCESSED)
@pytest.mark.parametrize("lazy", [False, True])
def test_load_mib_data_without_memmap_matches_reference(
    merlin_dir: Path, name: str, lazy: bool
) -> None:
    path = str(merlin_dir / name)
    theirs = ref_call("load_mib_data", path, return_mmap=False, lazy=lazy)
    mine = ours.load_mib_data(path, return_mmap=False, lazy=lazy)
    assert isinstance(mine, da.Array) is lazy
    assert mine.dtype.isnative
    assert mine.dtype == theirs.dtype.newbyteorder("=")
    if lazy:
        mine, theirs = mine.compute(), theirs.compute()
    assert_same_values(mine, theirs)


@pytest.mark.parametrize("name", PROCESSED)
def test_load_mib_data_navigation_and_frames_match_reference(merlin_dir: Path, name: str) -> None:
    path = str(merlin_dir / name)
    n = _frames(name)
    calls = [{"navigation_shape": (n, 1)}, {"first_frame": -1}, {"last_frame": n}]
    if n == 9:
        calls += [
            {"last_frame": -1},
            {"navigation_shape": (3, 3)},
            {"navigation_shape": (3, 3), "first_frame": 1},
            {"navigation_shape": (2, 2), "first_frame": -5, "last_frame": -1},
            {"navigation_shape": (4, 4)},  # interrupted: two complete lines
        ]
    for kwargs in calls:
        for return_mmap in (True, False):
            theirs = ref_call("load_mib_data", path, return_mmap=return_mmap, **kwargs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mine = ours.load_mib_data(path, return_mmap=return_mmap, **kwargs)
            assert np.asarray(mine).shape == np.asarray(theirs).shape, kwargs
            assert_same_values(mine, theirs)


@pytest.mark.parametrize("name", [name for name in PROCESSED if _frames(name) == 9])
def test_shape_larger_than_the_selection_warns_and_gives_a_stack(
    merlin_dir: Path, name: str
) -> None:
    path = str(merlin_dir / name)
    with pytest.warns(UserWarning, match="navigation_shape"):
        mine = ours.load_mib_data(path, navigation_shape=(3, 3), first_frame=1)
    assert mine.shape[0] == 8
    assert mine.ndim == 3


@pytest.mark.parametrize("name", PROCESSED)
def test_return_headers_match_reference(merlin_dir: Path, name: str) -> None:
    path = str(merlin_dir / name)
    their_data, their_headers = ref_call("load_mib_data", path, return_headers=True)
    my_data, my_headers = ours.load_mib_data(path, return_headers=True)
    assert my_headers.dtype == their_headers.dtype
    assert my_headers.shape == their_headers.shape
    assert [bytes(h) for h in my_headers.ravel()] == [bytes(h) for h in their_headers.ravel()]
    assert_same_values(my_data, their_data)
    assert my_data.dtype == their_data.dtype


@needs_files
def test_return_headers_needs_return_mmap(merlin_dir: Path) -> None:
    path = str(merlin_dir / PROCESSED[0])
    with pytest.raises(ValueError, match="return_mmap"):
        ref_call("load_mib_data", path, return_headers=True, return_mmap=False)
    with pytest.raises(ValueError, match="return_mmap"):
        ours.load_mib_data(path, return_headers=True, return_mmap=False)


@pytest.mark.parametrize("name", PROCESSED)
def test_parse_exposures_and_timestamps_match_reference(merlin_dir: Path, name: str) -> None:
    path = str(merlin_dir / name)
    _, headers = ours.load_mib_data(path, return_headers=True)
    n = headers.size
    for function in ("parse_exposures", "parse_timestamps"):
        mine = getattr(ours, function)
        for max_index in (10000, 3, 1):
            theirs = ref_call(function, headers, max_index=max_index)
            assert mine(headers, max_index=max_index) == theirs
            assert len(theirs) == min(n, max_index)
        # The reference's -1 drops the last header (slice [:-1]); stemcast reads them all.
        everything = mine(headers, max_index=-1)
        assert len(everything) == n
        assert everything[:-1] == ref_call(function, headers, max_index=-1)
        assert everything == ref_call(function, headers, max_index=n)
        single = bytes(headers.ravel()[0])
        assert mine(single) == ref_call(function, single)
    exposures = ours.parse_exposures(headers)
    assert all(value > 0 for value in exposures)
    stamps = ours.parse_timestamps(headers)
    assert all(stamp.endswith("Z") and "T" in stamp for stamp in stamps)


@pytest.mark.parametrize("name", PROCESSED)
def test_parse_hdr_file_matches_reference(merlin_dir: Path, name: str) -> None:
    hdr = merlin_dir / name.replace(".mib", ".hdr")
    theirs = rsciio_api.parse_hdr_file(str(hdr))
    mine = ours.parse_hdr_file(hdr)
    assert mine == theirs
    assert "Frames in Acquisition (Number)" in mine


# --------------------------------------------------------------------------------------------
# Reductions of the returned arrays (fast exact sums; threads forced on these small files)


@pytest.mark.parametrize("name", REGULAR)
@pytest.mark.parametrize("lazy", [False, True])
def test_virtual_image_and_mean_pattern_match_reference(
    merlin_dir: Path, name: str, lazy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    force_threads(monkeypatch)
    theirs = ref_read(merlin_dir / name, lazy=lazy)["data"]
    mine = our_read(merlin_dir / name, lazy=lazy)["data"]
    if not lazy:
        assert isinstance(mine, FrameMemmap)
    assert_same_reductions(mine, theirs)
