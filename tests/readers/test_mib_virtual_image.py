"""``virtual_image``: per-frame sums under a mask, without loading the frames.

Expected values are the sums of the frames the tests wrote (flipped to the reader's
orientation), or of RosettaSciIO's arrays for the real processed files.
"""

from __future__ import annotations

import warnings
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_mib_raw import spec_decode_1bit

from mib_helpers import write_stored
from stemcast.errors import ParameterError, StemcastError
from stemcast.formats.mib import virtual as _virtual
from stemcast.readers import mib as ours
from stemcast.writers.mib import MibWriter, write_mib

DTYPES = {1: np.uint8, 6: np.uint8, 12: np.uint16, 24: np.uint32}
START = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "quantumdetector"


def random_frames(count: int, shape: tuple[int, int], depth: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**depth, size=(count, *shape), endpoint=False).astype(DTYPES[depth])


def expected_totals(frames: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Sums of the frames as the reader orients them (rows flipped), under the mask."""
    oriented = frames[:, ::-1].astype(np.uint64)
    if mask is not None:
        oriented = oriented * mask
    return oriented.sum(axis=(1, 2))


def disk_mask(shape: tuple[int, int], seed: int = 3) -> np.ndarray:
    rows, cols = np.indices(shape)
    disk = (rows - shape[0] / 3) ** 2 + (cols - shape[1] / 2) ** 2 < (min(shape) / 3) ** 2
    return disk & (np.random.default_rng(seed).random(shape) < 0.8)


CASES = [
    # (counter depth, raw, quad, gap, frame shape)
    (1, True, False, False, (256, 256)),
    (6, True, False, False, (256, 256)),
    (12, True, False, False, (256, 256)),
    (24, True, False, False, (256, 256)),
    (1, True, True, False, (512, 512)),
    (1, True, True, True, (514, 514)),
    (12, True, True, True, (514, 514)),
    (1, False, False, False, (32, 48)),
    (12, False, False, False, (32, 48)),
    (24, False, False, False, (32, 48)),
    (12, False, True, False, (64, 512)),
]


@pytest.mark.parametrize(("depth", "raw", "quad", "gap", "shape"), CASES)
@pytest.mark.parametrize("masked", [False, True])
def test_totals_of_every_kind_of_file(
    tmp_path: Path,
    depth: int,
    raw: bool,
    quad: bool,
    gap: bool,
    shape: tuple[int, int],
    masked: bool,
) -> None:
    frames = random_frames(12, shape, depth)
    if gap:  # gap pixels are not stored: they read as zero
        frames[:, shape[0] // 2 - 1 : shape[0] // 2 + 1] = 0
        frames[:, :, 256:258] = 0
    path = write_stored(
        tmp_path / "run.mib", frames, counter_depth=depth, raw=raw, quad=quad, gap=gap
    )
    mask = disk_mask(shape) if masked else None
    result = ours.virtual_image(path, mask)
    assert result.dtype == np.uint64
    np.testing.assert_array_equal(result, expected_totals(frames, mask))


def test_navigation_shape_and_frame_range_follow_file_reader(tmp_path: Path) -> None:
    frames = random_frames(24, (16, 16), 12, seed=5)
    path = write_mib(
        tmp_path / "scan.mib", frames.reshape(4, 6, 16, 16), counter_depth=12, hdr_scan_size=True
    )
    totals = expected_totals(frames, None)
    assert ours.file_reader(str(path))[0]["data"].shape == (4, 6, 16, 16)
    np.testing.assert_array_equal(ours.virtual_image(path), totals.reshape(4, 6))
    np.testing.assert_array_equal(
        ours.virtual_image(path, navigation_shape=(4, 6)), totals.reshape(6, 4)
    )
    for selection, expected in (
        ({"first_frame": -10}, totals[-10:]),
        ({"first_frame": 3, "last_frame": 9}, totals[3:9]),
        ({"first_frame": 6, "last_frame": 18}, totals[6:18]),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shape = ours.file_reader(str(path), **selection)[0]["data"].shape[:-2]
            result = ours.virtual_image(path, **selection)
        np.testing.assert_array_equal(result, expected.reshape(shape))


def test_run_split_over_files_is_summed_whole(tmp_path: Path) -> None:
    frames = random_frames(10, (16, 64), 1, seed=7)
    for part, (start, stop) in enumerate(((0, 4), (4, 10)), start=1):
        with MibWriter(
            tmp_path / f"run{part}.mib",
            frame_shape=(16, 64),
            counter_depth=1,
            raw=True,
            first_sequence=start + 1,
            start_time=START + timedelta(milliseconds=start),
            frame_interval_s=0.001,
            write_hdr=False,
        ) as writer:
            writer.write(frames[start:stop])
    np.testing.assert_array_equal(
        ours.virtual_image(tmp_path / "run2.mib"), expected_totals(frames, None)
    )


def test_packed_path_never_unpacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = random_frames(8, (256, 256), 1, seed=9)
    path = write_mib(tmp_path / "raw1.mib", frames, counter_depth=1, raw=True)

    def no_decoding(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("1-bit RAW frames were decoded")

    monkeypatch.setattr(ours.MibLayout, "decode", no_decoding)
    np.testing.assert_array_equal(ours.virtual_image(path), expected_totals(frames, None))


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.ones((16, 15), bool), "mask has shape"),
        (np.full((16, 16), 2), "boolean"),
    ],
)
def test_bad_masks_are_refused(tmp_path: Path, mask: np.ndarray, message: str) -> None:
    path = write_mib(tmp_path / "m.mib", random_frames(3, (16, 16), 12), counter_depth=12)
    with pytest.raises(ParameterError, match=message) as caught:
        ours.virtual_image(path, mask)
    assert caught.value.parameter == "mask"


def test_not_a_mib_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.mib"
    path.write_bytes(b"not a merlin file" * 100)
    with pytest.raises(StemcastError, match=r"bad\.mib"):
        ours.virtual_image(path)


def test_blocks_cover_every_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_virtual, "_BLOCK_BYTES", 1)  # one frame per block
    frames = random_frames(7, (16, 16), 6, seed=11)
    path = write_mib(tmp_path / "b.mib", frames, counter_depth=6, raw=True)
    np.testing.assert_array_equal(ours.virtual_image(path), expected_totals(frames, None))


def _zip_members(suffix: str) -> list[str]:
    archive = SHARED / "Merlin_Single_Quad.zip"
    if not archive.exists():
        return []
    with zipfile.ZipFile(archive) as opened:
        return sorted(name for name in opened.namelist() if name.endswith(suffix))


@pytest.mark.parametrize(
    "name", [name for name in _zip_members(".mib") if not name.endswith("RAW.mib")]
)
def test_real_processed_files_match_reference_sums(merlin_dir: Path, name: str) -> None:
    rsciio = pytest.importorskip("rsciio.quantumdetector")
    path = merlin_dir / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = ours.MIBProperties.from_path(path).frame_number_in_file
        data = rsciio.file_reader(str(path), navigation_shape=(frames,))[0]["data"]
    mask = disk_mask(data.shape[-2:])
    np.testing.assert_array_equal(
        ours.virtual_image(path, navigation_shape=(len(data),)),
        np.asarray(data).sum(axis=(-2, -1), dtype=np.uint64),
    )
    np.testing.assert_array_equal(
        ours.virtual_image(path, mask, navigation_shape=(len(data),)),
        (np.asarray(data, dtype=np.uint64) * mask).sum(axis=(-2, -1)),
    )


def spec_totals(path: Path, mask: np.ndarray | None) -> np.ndarray:
    """Totals of a single-chip 1-bit RAW file decoded with the spec's word rule (stored rows
    flipped to the reader's orientation)."""
    data = path.read_bytes()
    header_size = int(data[11:16])
    record = header_size + 256 * 256 // 8
    totals = []
    for offset in range(0, len(data) - record + 1, record):
        payload = data[offset + header_size : offset + record]
        pixels = spec_decode_1bit(payload).reshape(256, 256)[::-1].astype(np.uint64)
        totals.append(int((pixels if mask is None else pixels * mask).sum()))
    return np.array(totals, dtype=np.uint64)


@pytest.mark.parametrize("name", _zip_members("RAW.mib"))
def test_real_raw_files_match_the_spec_decoding(merlin_dir: Path, name: str) -> None:
    path = merlin_dir / name
    frames = ours.MIBProperties.from_path(path).frame_number_in_file
    result = ours.virtual_image(path, navigation_shape=(frames,)).reshape(-1)
    if name.startswith("Single"):
        np.testing.assert_array_equal(result, spec_totals(path, None))
        mask = disk_mask((256, 256))
        masked = ours.virtual_image(path, mask, navigation_shape=(frames,)).reshape(-1)
        np.testing.assert_array_equal(masked, spec_totals(path, mask))
    else:  # every stored bit is a pixel: a quad frame's total is its payload's bit count
        size = path.stat().st_size // frames
        raw = np.frombuffer(path.read_bytes(), np.uint8).reshape(frames, size)
        bits = np.unpackbits(raw[:, size - 4 * 256 * 256 // 8 :], axis=1).sum(axis=1)
        np.testing.assert_array_equal(result, bits.astype(np.uint64))
