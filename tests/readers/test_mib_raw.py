"""RAW (``R64``) Merlin frames: real files against their processed twins, synthetic files
against payloads built here from the byte rules of the spec (docs: specs/mib.md, section 5).

The expected payloads are built only from the spec's rules (big-endian 64-bit words, pixel 0 in
the lowest bits; chip placement table of section 5.4), never from the code under test.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mib_helpers import write_stored
from stemcast.errors import UnsupportedError
from stemcast.readers import mib as ours
from stemcast.writers.mib import MibWriter

ZIP = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "data"
    / "quantumdetector"
    / "Merlin_Single_Quad.zip"
)


def _raw_names() -> list[str]:
    if not ZIP.exists():
        return []
    with zipfile.ZipFile(ZIP) as archive:
        return sorted(name for name in archive.namelist() if name.endswith("RAW.mib"))


RAW_NAMES = _raw_names()
CHIP = 256
START = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
DTYPES = {1: np.uint8, 6: np.uint8, 12: np.uint16, 24: np.uint32}


def read(path: Path | str, **kwargs: Any) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ours.file_reader(str(path), **kwargs)[0]


def twin(name: str) -> str:
    return name.replace("RAW.mib", ".mib")


# --------------------------------------------------------------------------------------------
# Independent encoders/decoders, written from the spec (section 5.1 word rules)


def spec_word_bytes(pixels: np.ndarray, depth: int) -> bytes:
    """Payload bytes of a row-major run of pixels (a multiple of one 64-bit word)."""
    flat = np.asarray(pixels).ravel()
    if depth == 1:
        # W = big-endian uint64 of the 8 stored bytes; pixel k = (W >> k) & 1.
        bits = flat.reshape(-1, 64).astype(np.uint64)
        shifts = np.arange(64, dtype=np.uint64)
        words = np.bitwise_or.reduce(bits << shifts, axis=1)
        return words.astype(">u8").tobytes()
    if depth == 6:
        # pixel k = byte b[7 - k]
        return flat.reshape(-1, 8)[:, ::-1].astype(np.uint8).tobytes()
    if depth == 12:
        # pixel k = big-endian u16 at bytes (6 - 2k, 7 - 2k)
        return flat.reshape(-1, 4)[:, ::-1].astype(">u2").tobytes()
    raise AssertionError(depth)


def spec_decode_1bit(payload: bytes) -> np.ndarray:
    words = np.frombuffer(payload, dtype=">u8").astype(np.uint64)
    shifts = np.arange(64, dtype=np.uint64)
    return ((words[:, None] >> shifts) & np.uint64(1)).astype(np.uint8).ravel()


def spec_single_payload(frame: np.ndarray, depth: int) -> bytes:
    if depth == 24:
        # Section 5.3: two 12-bit images, the first holds the most significant 12 bits.
        frame = frame.astype(np.uint32)
        return spec_word_bytes(frame >> 12, 12) + spec_word_bytes(frame & 0xFFF, 12)
    return spec_word_bytes(frame, depth)


def spec_quad_stored(frame: np.ndarray, gap: bool) -> np.ndarray:
    """The stored 256 x 1024 rows (chips A, B, C, D) of an assembled quad frame (table 5.4)."""
    size = frame.shape[0]
    right = CHIP + (2 if gap else 0)
    stored = np.zeros((CHIP, 4 * CHIP), dtype=frame.dtype)
    for r in range(CHIP):
        bottom = size - 1 - r
        stored[r, 3 * CHIP :] = frame[r, :CHIP]  # D -> top-left, as stored
        stored[r, 2 * CHIP : 3 * CHIP] = frame[r, right:]  # C -> top-right, as stored
        stored[r, CHIP : 2 * CHIP] = frame[bottom, :CHIP][::-1]  # B -> bottom-left, reversed
        stored[r, :CHIP] = frame[bottom, right:][::-1]  # A -> bottom-right, reversed
    return stored


def spec_quad_payload(frame: np.ndarray, depth: int, gap: bool) -> bytes:
    return spec_word_bytes(spec_quad_stored(frame, gap), depth)


def record_payloads(path: Path, header_size: int, payload_size: int) -> list[bytes]:
    content = path.read_bytes()
    record = header_size + payload_size
    assert len(content) % record == 0
    return [
        content[start + header_size : start + record] for start in range(0, len(content), record)
    ]


def header_fields(path: Path, header_size: int) -> list[str]:
    return path.read_bytes()[:header_size].decode("latin-1").split(",")


# --------------------------------------------------------------------------------------------
# Real RAW files


needs_files = pytest.mark.skipif(not RAW_NAMES, reason="real Merlin files not available")


@needs_files
def test_zip_holds_four_raw_files() -> None:
    assert RAW_NAMES == [
        "Quad_1_Frame_CounterDepth_1_Rows_256RAW.mib",
        "Quad_9_Frame_CounterDepth_1_Rows_256RAW.mib",
        "Single_1_Frame_CounterDepth_1_Rows_256RAW.mib",
        "Single_9_Frame_CounterDepth_1_Rows_256RAW.mib",
    ]


@pytest.mark.parametrize("name", RAW_NAMES)
def test_real_raw_header_and_size_follow_the_spec(merlin_dir: Path, name: str) -> None:
    path = merlin_dir / name
    quad = name.startswith("Quad")
    header_size = 768 if quad else 384
    fields = header_fields(path, header_size)
    assert fields[6] == "R64"
    assert (fields[4], fields[5]) == (("1024", "0256") if quad else ("0256", "0256"))
    payload = 32768 if quad else 8192
    frames = int(re.search(r"_(\d+)_Frame_", name).group(1))  # type: ignore[union-attr]
    assert path.stat().st_size == frames * (header_size + payload)
    props = read(path)["original_metadata"]["mib_properties"]
    assert props["raw"] is True
    assert props["head_size"] == header_size


@pytest.mark.parametrize("name", RAW_NAMES)
def test_real_raw_matches_the_spec_decoding(merlin_dir: Path, name: str) -> None:
    path = merlin_dir / name
    quad = name.startswith("Quad")
    header_size, payload = (768, 32768) if quad else (384, 8192)
    expected = []
    for raw in record_payloads(path, header_size, payload):
        if quad:
            stored = spec_decode_1bit(raw).reshape(CHIP, 4 * CHIP)
            frame = np.zeros((2 * CHIP, 2 * CHIP), np.uint8)
            for r in range(CHIP):
                frame[r, :CHIP] = stored[r, 3 * CHIP :]
                frame[r, CHIP:] = stored[r, 2 * CHIP : 3 * CHIP]
                frame[2 * CHIP - 1 - r, :CHIP] = stored[r, CHIP : 2 * CHIP][::-1]
                frame[2 * CHIP - 1 - r, CHIP:] = stored[r, :CHIP][::-1]
        else:
            frame = spec_decode_1bit(raw).reshape(CHIP, CHIP)
        expected.append(frame)
    stack = np.stack(expected)
    mine = ours.load_mib_data(str(path))  # unflipped, decoded
    np.testing.assert_array_equal(np.asarray(mine).reshape(stack.shape), stack)
    flipped = np.asarray(read(path)["data"]).reshape(stack.shape)
    np.testing.assert_array_equal(flipped, stack[:, ::-1, :])


@pytest.mark.parametrize("name", RAW_NAMES)
def test_real_raw_frames_look_like_processed_twin(merlin_dir: Path, name: str) -> None:
    raw = read(merlin_dir / name)
    processed = read(merlin_dir / twin(name))
    data, reference = np.asarray(raw["data"]), np.asarray(processed["data"])
    assert data.shape == reference.shape
    assert data.dtype == reference.dtype == np.uint8
    assert set(np.unique(data)) <= {0, 1}
    assert [a["size"] for a in raw["axes"]] == [a["size"] for a in processed["axes"]]
    total, expected_total = int(data.sum()), int(reference.sum())
    assert abs(total - expected_total) <= 0.01 * expected_total
    image = data.reshape(-1, *data.shape[-2:]).sum(axis=0).astype(float)
    twin_image = reference.reshape(-1, *reference.shape[-2:]).sum(axis=0).astype(float)
    assert np.corrcoef(image.ravel(), twin_image.ravel())[0, 1] > 0.99
    # Orientation matters: the same frames upside down or mirrored do not match.
    assert np.corrcoef(image[::-1].ravel(), twin_image.ravel())[0, 1] < 0.9
    assert np.corrcoef(image[:, ::-1].ravel(), twin_image.ravel())[0, 1] < 0.9


@needs_files
@pytest.mark.parametrize(
    ("name", "raw_sum", "processed_sum"),
    [
        ("Single_1_Frame_CounterDepth_1_Rows_256RAW.mib", 2394, 2398),
        ("Quad_1_Frame_CounterDepth_1_Rows_256RAW.mib", 10348, 10331),
    ],
)
def test_real_raw_sums_are_those_of_the_spec(
    merlin_dir: Path, name: str, raw_sum: int, processed_sum: int
) -> None:
    assert int(np.asarray(read(merlin_dir / name)["data"]).sum()) == raw_sum
    assert int(np.asarray(read(merlin_dir / twin(name))["data"]).sum()) == processed_sum


def _binned(image: np.ndarray, k: int) -> np.ndarray:
    rows, cols = image.shape
    return image.reshape(rows // k, k, cols // k, k).sum(axis=(1, 3))


@pytest.mark.parametrize("name", [name for name in RAW_NAMES if name.startswith("Quad")])
def test_real_raw_quadrants_match_processed_quadrants(merlin_dir: Path, name: str) -> None:
    data = np.asarray(read(merlin_dir / name)["data"]).reshape(-1, 512, 512).sum(axis=0)
    reference = np.asarray(read(merlin_dir / twin(name))["data"]).reshape(-1, 512, 512).sum(0)
    quadrants = [(slice(0, 256), slice(0, 256)), (slice(0, 256), slice(256, 512))]
    quadrants += [(slice(256, 512), slice(0, 256)), (slice(256, 512), slice(256, 512))]
    for index, where in enumerate(quadrants):
        raw_q = _binned(data[where].astype(float), 4).ravel()
        correlations = [
            np.corrcoef(raw_q, _binned(reference[other].astype(float), 4).ravel())[0, 1]
            for other in quadrants
        ]
        assert correlations[index] > 0.99
        assert int(np.argmax(correlations)) == index
        quadrant_sum, twin_sum = int(data[where].sum()), int(reference[where].sum())
        assert abs(quadrant_sum - twin_sum) <= 0.01 * twin_sum


@pytest.mark.parametrize("name", RAW_NAMES)
def test_real_raw_lazy_and_chunked_equal_eager(merlin_dir: Path, name: str) -> None:
    path = merlin_dir / name
    eager = np.asarray(read(path)["data"])
    lazy = read(path, lazy=True)["data"]
    assert lazy.dtype.isnative
    np.testing.assert_array_equal(lazy.compute(), eager)
    frames = eager.reshape(-1, *eager.shape[-2:]).shape[0]
    chunked = read(path, lazy=True, navigation_shape=(frames,), chunks=(2, 100, 96))["data"]
    np.testing.assert_array_equal(chunked.compute(), eager.reshape(chunked.shape))


@pytest.mark.parametrize("name", RAW_NAMES)
def test_reference_refuses_raw_files(merlin_dir: Path, name: str) -> None:
    rsciio_qd = pytest.importorskip("rsciio.quantumdetector")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NotImplementedError):
            rsciio_qd.file_reader(str(merlin_dir / name))


# --------------------------------------------------------------------------------------------
# Synthetic RAW round trips, checked byte by byte against the spec


SINGLE_PAYLOAD = {1: 8192, 6: 65536, 12: 131072, 24: 262144}  # table of section 5.1, 256x256


def _random_frames(rng: np.random.Generator, depth: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 2**depth, size=shape, dtype=np.int64).astype(DTYPES[depth])


@pytest.mark.parametrize("depth", [1, 6, 12, 24])
@pytest.mark.parametrize("rows", [256, 64])
def test_single_chip_raw_payload_follows_the_spec(tmp_path: Path, depth: int, rows: int) -> None:
    rng = np.random.default_rng(depth)
    frames = _random_frames(rng, depth, (3, rows, CHIP))
    path = write_stored(
        tmp_path / "raw.mib", frames, counter_depth=depth, raw=True, start_time=START
    )
    payload_size = SINGLE_PAYLOAD[depth] * rows // CHIP
    payloads = record_payloads(path, 384, payload_size)
    assert len(payloads) == 3
    for frame, payload in zip(frames, payloads, strict=True):
        assert payload == spec_single_payload(frame, depth)
    fields = header_fields(path, 384)
    assert fields[6] == "R64"
    assert fields[5] == f"{rows:04d}"
    assert fields[-2] == str(depth)  # MQ1A counter depth (RAW depth is not in field 6)
    data = read(path)["data"]
    assert data.dtype == DTYPES[depth]
    np.testing.assert_array_equal(data, frames[:, ::-1, :])
    np.testing.assert_array_equal(ours.load_mib_data(str(path)), frames)


@pytest.mark.parametrize("width_field", ["0256", "0512"])
def test_24bit_raw_reads_whatever_the_width_field(tmp_path: Path, width_field: str) -> None:
    # Section 5.3: LiberTEM says 24-bit RAW headers give a doubled width; unverified, so both
    # a doubled and a plain width must decode the same two-image payload.
    rng = np.random.default_rng(24)
    frames = _random_frames(rng, 24, (2, CHIP, CHIP))
    path = write_stored(tmp_path / "raw24.mib", frames, counter_depth=24, raw=True)
    content = bytearray(path.read_bytes())
    record = 384 + SINGLE_PAYLOAD[24]
    assert len(content) == 2 * record
    for start in range(0, len(content), record):
        assert content[start + 20 : start + 25] in (b"0256,", b"0512,")
        content[start + 20 : start + 24] = width_field.encode()
    path.write_bytes(bytes(content))
    np.testing.assert_array_equal(ours.load_mib_data(str(path)), frames)


@pytest.mark.parametrize("depth", [1, 6, 12])
@pytest.mark.parametrize("gap", [False, True])
def test_quad_raw_payload_follows_the_spec(tmp_path: Path, depth: int, gap: bool) -> None:
    rng = np.random.default_rng(depth + 100 * gap)
    size = 514 if gap else 512
    frames = _random_frames(rng, depth, (2, size, size))
    path = write_stored(
        tmp_path / "quad.mib", frames, counter_depth=depth, raw=True, quad=True, gap=gap
    )
    fields = header_fields(path, 768)
    assert (fields[4], fields[5], fields[6]) == ("1024", "0256", "R64")
    assert fields[7].strip() == ("2x2G" if gap else "2x2")
    payload_size = 4 * CHIP * CHIP * {1: 1, 6: 8, 12: 16}[depth] // 8
    payloads = record_payloads(path, 768, payload_size)
    for frame, payload in zip(frames, payloads, strict=True):
        assert payload == spec_quad_payload(frame, depth, gap)
    expected = frames.copy()
    if gap:
        expected[:, 256:258, :] = 0  # gap pixels are not stored: they read as zero
        expected[:, :, 256:258] = 0
    data = read(path)["data"]
    assert data.shape == (2, size, size)
    np.testing.assert_array_equal(data, expected[:, ::-1, :])


@pytest.mark.parametrize("depth", [1, 6, 12])
@pytest.mark.parametrize("gap", [False, True])
def test_quad_raw_chip_placement(tmp_path: Path, depth: int, gap: bool) -> None:
    """Frame q lights only quadrant q; the table of section 5.4 says which chip stores it."""
    size = 514 if gap else 512
    low, high = slice(0, CHIP), slice(size - CHIP, size)
    quadrants = {"top-left": (low, low), "top-right": (low, high)}
    quadrants |= {"bottom-left": (high, low), "bottom-right": (high, high)}
    chip_of = {"top-left": 3, "top-right": 2, "bottom-left": 1, "bottom-right": 0}  # D C B A
    value = 1 if depth == 1 else 2**depth - 1
    frames = np.zeros((4, size, size), DTYPES[depth])
    for index, where in enumerate(quadrants.values()):
        frames[(index, *where)] = value
    path = write_stored(
        tmp_path / "q.mib", frames, counter_depth=depth, raw=True, quad=True, gap=gap
    )
    chip_row = CHIP * {1: 1, 6: 8, 12: 16}[depth] // 8  # bytes of one chip row
    payloads = record_payloads(path, 768, 4 * CHIP * chip_row)
    full = b"\xff" * chip_row if depth == 1 else spec_word_bytes(np.full(CHIP, value), depth)
    for payload, name in zip(payloads, quadrants, strict=True):
        rows = np.frombuffer(payload, np.uint8).reshape(CHIP, 4, chip_row)
        for chip in range(4):
            expected = full if chip == chip_of[name] else bytes(chip_row)
            assert all(bytes(row) == expected for row in rows[:, chip]), (name, chip)
    np.testing.assert_array_equal(read(path)["data"], frames[:, ::-1, :])


def test_quad_raw_rotation_of_bottom_chips(tmp_path: Path) -> None:
    """One pixel per quadrant: stored row and column of each, from table 5.4."""
    frame = np.zeros((512, 512), np.uint8)
    frame[10, 20] = 1  # top-left: chip D, stored row 10, column 20
    frame[30, 256 + 40] = 2  # top-right: chip C, stored row 30, column 40
    frame[511 - 50, 60] = 3  # bottom-left: chip B, stored row 50, column 255 - 60
    frame[511 - 70, 256 + 80] = 4  # bottom-right: chip A, stored row 70, column 255 - 80
    path = write_stored(tmp_path / "p.mib", frame[None], counter_depth=6, raw=True, quad=True)
    (payload,) = record_payloads(path, 768, 4 * CHIP * CHIP)
    stored = np.frombuffer(payload, np.uint8).reshape(-1, 8)[:, ::-1].reshape(CHIP, 4 * CHIP)
    expected = np.zeros((CHIP, 4 * CHIP), np.uint8)
    expected[10, 3 * CHIP + 20] = 1
    expected[30, 2 * CHIP + 40] = 2
    expected[50, CHIP + 255 - 60] = 3
    expected[70, 255 - 80] = 4
    np.testing.assert_array_equal(stored, expected)


def test_frame_by_frame_raw_equals_write_at_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    frames = _random_frames(rng, 12, (3, 512, 512))
    options = {"counter_depth": 12, "raw": True, "quad": True, "start_time": START}
    write_stored(tmp_path / "once.mib", frames, **options)
    with MibWriter(tmp_path / "each.mib", frame_shape=(512, 512), **options) as writer:
        for frame in frames:
            writer.write(frame)
    assert (tmp_path / "each.mib").read_bytes() == (tmp_path / "once.mib").read_bytes()


def test_24bit_quad_raw_is_unsupported(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError):
        MibWriter(tmp_path / "w.mib", frame_shape=(512, 512), counter_depth=24, raw=True, quad=True)
    with pytest.raises(UnsupportedError):
        write_stored(
            tmp_path / "x.mib",
            np.zeros((1, 512, 512), np.uint32),
            counter_depth=24,
            raw=True,
            quad=True,
        )
    assert not (tmp_path / "x.mib").exists()
    # A 12-bit quad RAW file whose MQ1A block claims 24 bits: the reader refuses it.
    path = write_stored(
        tmp_path / "q.mib",
        np.zeros((1, 512, 512), np.uint16),
        counter_depth=12,
        raw=True,
        quad=True,
    )
    content = path.read_bytes()
    assert content.count(b"ns,12,") == 1
    path.write_bytes(content.replace(b"ns,12,", b"ns,24,"))
    with pytest.raises(UnsupportedError):
        read(path)
    with pytest.raises(UnsupportedError):
        ours.load_mib_data(str(path))
