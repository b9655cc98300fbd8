"""Converting finished runs to blockfile and EMD (``stemcast.convert.run``).

Expected frames come from the reference library: rosettasciio reads the source, and its
blockfile writer makes the reference blockfile; our outputs, read back with rosettasciio, must
hold the same frames. RAW Merlin runs, which the reference cannot read, are compared with
stemcast's own reader (checked against the format specification in ``tests/readers``).
Runs are written by the camera simulator (real Merlin and TVIPS writers).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from conftest import shared_file
from stemcast.convert import run as convert
from stemcast.convert.run import (
    Cancelled,
    check_options,
    convert_on_worker,
    convert_run,
    output_paths,
    parse_targets,
    run_source,
)
from stemcast.errors import FormatError, OutputError, ParameterError, TruncatedError
from stemcast.readers.mib import file_reader as stemcast_mib_reader
from stemcast.simulate import simulate_mib, simulate_tvips
from stemcast.writers.tvips import TvipsWriter

rsciio_qd = pytest.importorskip("rsciio.quantumdetector")
rsciio_tvips = pytest.importorskip("rsciio.tvips")
rsciio_blockfile = pytest.importorskip("rsciio.blockfile")
rsciio_emd = pytest.importorskip("rsciio.emd")

BOTH = ["blockfile", "emd"]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def quietly(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def reference_mib(path: Path, **kwargs: Any) -> dict[str, Any]:
    """The reference reader's signal of a Merlin file."""
    return quietly(rsciio_qd.file_reader, str(path), **kwargs)[0]  # type: ignore[no-any-return]


def read_emd(path: str | Path) -> dict[str, Any]:
    return quietly(rsciio_emd.file_reader, str(path))[0]  # type: ignore[no-any-return]


def read_blockfile(path: str | Path) -> np.ndarray:
    return np.asarray(quietly(rsciio_blockfile.file_reader, str(path))[0]["data"])


def signal_of(data: np.ndarray) -> dict[str, Any]:
    """A plain signal dictionary of ``data`` (two signal axes), as writers take it."""
    axes = [
        {
            "name": "",
            "size": size,
            "scale": 1.0,
            "offset": 0.0,
            "units": "",
            "navigate": index < data.ndim - 2,
            "index_in_array": index,
        }
        for index, size in enumerate(data.shape)
    ]
    return {"data": data, "axes": axes, "metadata": {}, "original_metadata": {}}


def reference_blockfile(data: np.ndarray, folder: Path, **kwargs: Any) -> np.ndarray:
    """The frames of the blockfile the reference writer makes of ``data``.

    Without a scaling, the one stemcast converts with by default: the data's range for
    sources wider than 8 bits (the reference's own default would wrap them), none for 8-bit.
    """
    kwargs.setdefault("intensity_scaling", None if data.dtype == np.uint8 else "minmax")
    path = folder / "reference.blo"
    signal = {**signal_of(np.asarray(data)), "attributes": {"_lazy": False}}
    quietly(rsciio_blockfile.file_writer, str(path), signal, show_progressbar=False, **kwargs)
    frames = read_blockfile(path)
    path.unlink()
    return frames


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Content hash and modification time of every file in ``folder``."""
    return {
        entry.name: (hashlib.sha256(entry.read_bytes()).hexdigest(), entry.stat().st_mtime_ns)
        for entry in sorted(folder.iterdir())
        if entry.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    """Files (not folders) anywhere under ``folder``."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def merlin_run(folder: Path, **options: Any) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {"scan_shape": (8, 6), "frame_size": 32, "counter_depth": 12}
    settings.update(options)
    return simulate_mib(folder, name="scan", **settings)


@pytest.fixture
def run12(tmp_path: Path) -> Path:
    """A complete 8 x 6 scan of 32 x 32 12-bit frames."""
    return merlin_run(tmp_path / "camera")[0]


# --------------------------------------------------------------------------------------------
# Targets, options, sources and output names
# --------------------------------------------------------------------------------------------


def test_targets_are_sorted_unique_and_checked() -> None:
    assert parse_targets("emd,blockfile") == ("blockfile", "emd")
    assert parse_targets(["emd", "EMD", " blockfile "]) == ("blockfile", "emd")
    for bad in ("", "emd,tiff", [], ["zarr"]):
        with pytest.raises(ParameterError) as raised:
            parse_targets(bad)
        assert raised.value.parameter == "targets"


def test_options_are_normalised_so_equal_requests_are_equal() -> None:
    defaults = check_options(["emd", "blockfile"], None)
    assert defaults == {"blockfile": {}, "emd": {}}
    spelled_out = check_options(
        ["emd", "blockfile"],
        {
            "emd": {"compression": None, "shuffle": False, "chunks": None},
            "blockfile": {"intensity_scaling": "auto", "endianess": "<"},
        },
    )
    assert spelled_out == defaults
    assert check_options(["blockfile"], {"blockfile": {"intensity_scaling": None}}) == {
        "blockfile": {"intensity_scaling": None}
    }
    gzip = check_options(["emd"], {"emd": {"compression": "gzip"}})
    assert gzip == check_options(["emd"], {"emd": {"compression_opts": 4, "compression": "gzip"}})
    assert gzip == {"emd": {"compression": "gzip", "compression_opts": 4}}
    chosen = check_options(
        ["blockfile", "emd"],
        {
            "blockfile": {"intensity_scaling": (10, 4000), "endianess": ">"},
            "emd": {"chunks": (1, 2, 32, 32), "compression": "lzf", "shuffle": True},
        },
    )
    assert chosen == {
        "blockfile": {"endianess": ">", "intensity_scaling": [10.0, 4000.0]},
        "emd": {"chunks": [1, 2, 32, 32], "compression": "lzf", "shuffle": True},
    }
    assert json.loads(json.dumps(chosen, sort_keys=True)) == chosen
    assert json.dumps(chosen) == json.dumps(chosen, sort_keys=True)


BLO_SCALING = "options.blockfile.intensity_scaling"
GZIP_LEVEL = "options.emd.compression_opts"
BAD_OPTIONS: list[tuple[list[str], Any, str]] = [
    (["emd"], {"blockfile": {}}, "options.blockfile"),
    (["emd"], {"emd": {"level": 3}}, "options.emd.level"),
    (["emd"], {"emd": {"chunks": [1, 0, 4, 4]}}, "options.emd.chunks"),
    (["emd"], {"emd": {"chunks": "auto"}}, "options.emd.chunks"),
    (["emd"], {"emd": {"chunks": [1, True, 4, 4]}}, "options.emd.chunks"),
    (["emd"], {"emd": {"compression": "zstd"}}, "options.emd.compression"),
    (["emd"], {"emd": {"compression": "gzip", "compression_opts": 11}}, GZIP_LEVEL),
    (["emd"], {"emd": {"compression": "lzf", "compression_opts": 3}}, GZIP_LEVEL),
    (["emd"], {"emd": {"shuffle": "yes"}}, "options.emd.shuffle"),
    (["emd"], {"emd": {"shuffle": True}}, "options.emd.shuffle"),
    (["blockfile"], {"blockfile": {"intensity_scaling": "full"}}, BLO_SCALING),
    (["blockfile"], {"blockfile": {"intensity_scaling": [5, 5]}}, BLO_SCALING),
    (["blockfile"], {"blockfile": {"intensity_scaling": [0, "high"]}}, BLO_SCALING),
    (["blockfile"], {"blockfile": {"endianess": "big"}}, "options.blockfile.endianess"),
    (["blockfile"], {"blockfile": []}, "options.blockfile"),
    (["blockfile"], ["blockfile"], "options"),
]  # fmt: skip


@pytest.mark.parametrize(("targets", "options", "parameter"), BAD_OPTIONS)
def test_bad_options_name_the_option(targets: list[str], options: Any, parameter: str) -> None:
    with pytest.raises(ParameterError) as raised:
        check_options(targets, options)
    assert raised.value.parameter == parameter


def test_run_source_finds_the_first_file_of_the_run(tmp_path: Path) -> None:
    split = merlin_run(tmp_path / "merlin", frames_per_file=16)
    assert [path.name for path in split] == ["scan1.mib", "scan2.mib", "scan3.mib"]
    assert run_source(split[2]) == split[0]
    assert run_source(split[0]) == split[0]
    (tmp_path / "tvips").mkdir()
    parts = simulate_tvips(tmp_path / "tvips", scan_shape=(4, 4), frame_size=32, max_file_size=9000)
    assert len(parts) > 2
    assert run_source(parts[2]) == parts[0]
    assert run_source(parts[0]) == parts[0]


def test_run_source_refuses_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="no such file") as raised:
        run_source(tmp_path / "gone.mib")
    assert raised.value.path == str(tmp_path / "gone.mib")
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(FormatError, match="not a Merlin"):
        run_source(tmp_path / "notes.txt")
    (tmp_path / "fake.mib").write_bytes(b"MQ1,000001,00384,01,0256,0256,U16," + b"\0" * 400)
    with pytest.raises(FormatError):
        run_source(tmp_path / "fake.mib")
    (tmp_path / "lonely_003.tvips").write_bytes(b"\0" * 100)
    with pytest.raises(FormatError, match=r"lonely_000\.tvips"):
        run_source(tmp_path / "lonely_003.tvips")


def test_output_paths_keep_the_folder_below_relative_to(tmp_path: Path) -> None:
    source = tmp_path / "camera" / "2026" / "day1" / "scan.mib"
    expected = tmp_path / "out" / "2026" / "day1"
    paths = output_paths(
        source, ["emd", "blockfile"], tmp_path / "out", relative_to=tmp_path / "camera"
    )
    assert paths == {"blockfile": expected / "scan.blo", "emd": expected / "scan.emd"}
    elsewhere = output_paths(source, ["emd"], tmp_path / "out", relative_to=tmp_path / "other")
    assert elsewhere == {"emd": tmp_path / "out" / "scan.emd"}
    series = output_paths(tmp_path / "s" / "series_000.tvips", ["blockfile"], "out")
    assert series == {"blockfile": Path(os.path.abspath("out")) / "series.blo"}


def test_output_tags_go_between_the_run_name_and_the_suffix(tmp_path: Path) -> None:
    source = tmp_path / "scan.mib"
    paths = output_paths(source, ["emd", "blockfile"], tmp_path, tags={"emd": "3f9a1c2e"})
    assert paths == {"emd": tmp_path / "scan.3f9a1c2e.emd", "blockfile": tmp_path / "scan.blo"}
    for bad in ("", "../x", ".hidden", "a/b", "a b"):
        with pytest.raises(ParameterError, match=r"tags\.emd"):
            output_paths(source, ["emd"], tmp_path, tags={"emd": bad})


# --------------------------------------------------------------------------------------------
# Outputs equal what the reference reads from the source
# --------------------------------------------------------------------------------------------


def test_a_12_bit_run_reads_back_as_the_reference_reads_the_source(
    run12: Path, tmp_path: Path
) -> None:
    result = convert_run(run12, BOTH, tmp_path / "out")
    source = reference_mib(run12)
    assert source["data"].shape == (6, 8, 32, 32)
    emd = read_emd(result.outputs["emd"])
    np.testing.assert_array_equal(emd["data"], source["data"])
    assert [axis["size"] for axis in emd["axes"]] == [6, 8, 32, 32]
    expected = reference_blockfile(source["data"], tmp_path)
    np.testing.assert_array_equal(read_blockfile(result.outputs["blockfile"]), expected)
    assert result.outputs == {
        "blockfile": str(tmp_path / "out" / "scan.blo"),
        "emd": str(tmp_path / "out" / "scan.emd"),
    }
    assert (result.frames, result.navigation_shape) == (48, (8, 6))
    # Twice: the default scaling of 12-bit counts takes a first pass for their range.
    assert result.bytes_read == 2 * run12.stat().st_size
    assert result.bytes_written == sum(
        Path(path).stat().st_size for path in result.outputs.values()
    )
    assert json.loads(json.dumps(result.as_dict()))["navigation_shape"] == [8, 6]


@pytest.mark.parametrize("counter_depth", [1, 6, 24])
def test_other_counter_depths_read_back_as_the_reference_reads_them(
    tmp_path: Path, counter_depth: int
) -> None:
    [path] = merlin_run(tmp_path / "camera", counter_depth=counter_depth)
    result = convert_run(path, ["emd"], tmp_path / "out")
    np.testing.assert_array_equal(
        read_emd(result.outputs["emd"])["data"], reference_mib(path)["data"]
    )


def test_a_raw_run_reads_back_as_the_decoded_frames(tmp_path: Path) -> None:
    [path] = merlin_run(tmp_path / "camera", counter_depth=12, raw=True)
    result = convert_run(
        path, BOTH, tmp_path / "out", options={"blockfile": {"intensity_scaling": "dtype"}}
    )
    decoded = np.asarray(stemcast_mib_reader(path)[0]["data"])
    assert decoded.shape == (6, 8, 32, 32)
    np.testing.assert_array_equal(read_emd(result.outputs["emd"])["data"], decoded)
    expected = reference_blockfile(decoded, tmp_path, intensity_scaling="dtype")
    np.testing.assert_array_equal(read_blockfile(result.outputs["blockfile"]), expected)


def test_an_interrupted_run_split_over_files_keeps_its_complete_lines(tmp_path: Path) -> None:
    files = merlin_run(tmp_path / "camera", frames_per_file=16, interrupt_after=29)
    assert len(files) == 2
    # The reference reads one file at a time: its frames, concatenated, are the run.
    frames = np.concatenate(
        [
            np.asarray(reference_mib(path, navigation_shape=(count,))["data"])
            for path, count in zip(files, (16, 13), strict=True)
        ]
    )
    expected = frames[:24].reshape(3, 8, 32, 32)
    result = convert_run(files[1], BOTH, tmp_path / "out")
    assert (result.frames, result.navigation_shape) == (24, (8, 3))
    np.testing.assert_array_equal(read_emd(result.outputs["emd"])["data"], expected)
    np.testing.assert_array_equal(
        read_blockfile(result.outputs["blockfile"]), reference_blockfile(expected, tmp_path)
    )
    assert Path(result.outputs["emd"]).name == "scan1.emd"


def test_a_tvips_series_reads_back_as_the_reference_finds_its_scan(tmp_path: Path) -> None:
    (tmp_path / "camera").mkdir()
    parts = simulate_tvips(
        tmp_path / "camera",
        scan_shape=(6, 6),
        frame_size=32,
        max_file_size=20_000,
        flyback_frames=0,
    )
    assert len(parts) > 2
    source = quietly(rsciio_tvips.file_reader, str(parts[0]), scan_shape="auto")[0]
    assert source["data"].shape == (6, 6, 32, 32)
    result = convert_run(parts[-1], BOTH, tmp_path / "out")
    emd = read_emd(result.outputs["emd"])
    np.testing.assert_array_equal(emd["data"], source["data"])
    for ours, theirs in zip(emd["axes"], source["axes"], strict=True):
        assert (ours["name"], ours["size"], ours["units"]) == (
            theirs["name"],
            theirs["size"],
            theirs["units"],
        )
        assert ours["scale"] == pytest.approx(float(theirs["scale"]))
    np.testing.assert_array_equal(
        read_blockfile(result.outputs["blockfile"]), reference_blockfile(source["data"], tmp_path)
    )
    assert Path(result.outputs["blockfile"]).name == "scan.blo"


def test_a_given_navigation_shape_is_used_and_cut_to_complete_lines(
    run12: Path, tmp_path: Path
) -> None:
    expected = reference_mib(run12, navigation_shape=(12, 4))["data"]
    assert expected.shape == (4, 12, 32, 32)
    result = convert_run(run12, BOTH, tmp_path / "out", navigation_shape=(12, 5))
    assert (result.frames, result.navigation_shape) == (48, (12, 4))
    np.testing.assert_array_equal(read_emd(result.outputs["emd"])["data"], expected)
    np.testing.assert_array_equal(
        read_blockfile(result.outputs["blockfile"]), reference_blockfile(expected, tmp_path)
    )


def test_fewer_frames_than_one_line_are_written_as_a_stack(run12: Path, tmp_path: Path) -> None:
    expected = reference_mib(run12, navigation_shape=(48,))["data"]
    result = convert_run(run12, BOTH, tmp_path / "out", navigation_shape=(64, 2))
    assert (result.frames, result.navigation_shape) == (48, (48,))
    np.testing.assert_array_equal(read_emd(result.outputs["emd"])["data"], expected)
    blockfile = read_blockfile(result.outputs["blockfile"])
    np.testing.assert_array_equal(
        blockfile.reshape(48, 32, 32), reference_blockfile(expected, tmp_path)
    )


def test_bad_navigation_shapes_are_refused(run12: Path, tmp_path: Path) -> None:
    for shape in ([0, 4], [2.5, 3], "8x6"):
        with pytest.raises(ParameterError) as raised:
            convert_run(run12, ["emd"], tmp_path / "out", navigation_shape=shape)  # type: ignore[arg-type]
        assert raised.value.parameter == "navigation_shape"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size", [100, 400])
def test_a_run_without_a_complete_frame_is_truncated(
    run12: Path, tmp_path: Path, size: int
) -> None:
    path = tmp_path / "short.mib"
    path.write_bytes(run12.read_bytes()[:size])  # in the first header, then in the first frame
    with pytest.raises(TruncatedError):
        convert_run(path, ["emd"], tmp_path / "out")


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def test_emd_options_are_visible_in_the_hdf5_dataset(run12: Path, tmp_path: Path) -> None:
    options = {
        "emd": {
            "compression": "gzip",
            "compression_opts": 6,
            "shuffle": True,
            "chunks": [2, 4, 32, 32],
        }
    }
    result = convert_run(run12, ["emd"], tmp_path / "out", options=options)
    with h5py.File(result.outputs["emd"]) as file:
        data = file["signals/scan/data"]
        assert (data.compression, data.compression_opts, data.shuffle) == ("gzip", 6, True)
        assert data.chunks == (32, 32, 4, 2)  # stored transposed
    np.testing.assert_array_equal(
        read_emd(result.outputs["emd"])["data"], reference_mib(run12)["data"]
    )
    lzf = convert_run(run12, ["emd"], tmp_path / "lzf", options={"emd": {"compression": "lzf"}})
    with h5py.File(lzf.outputs["emd"]) as file:
        assert file["signals/scan/data"].compression == "lzf"
    np.testing.assert_array_equal(
        read_emd(lzf.outputs["emd"])["data"], reference_mib(run12)["data"]
    )


def test_chunks_must_have_one_size_per_axis(run12: Path, tmp_path: Path) -> None:
    with pytest.raises(ParameterError) as raised:
        convert_run(run12, ["emd"], tmp_path / "out", options={"emd": {"chunks": [1, 32, 32]}})
    assert raised.value.parameter == "options.emd.chunks"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("scaling", ["minmax", "dtype", [100, 3000]])
def test_blockfile_scaling_matches_the_reference(run12: Path, tmp_path: Path, scaling: Any) -> None:
    options = {"blockfile": {"intensity_scaling": scaling}}
    result = convert_run(run12, ["blockfile"], tmp_path / "out", options=options)
    reference = tuple(scaling) if isinstance(scaling, list) else scaling
    expected = reference_blockfile(
        reference_mib(run12)["data"], tmp_path, intensity_scaling=reference
    )
    np.testing.assert_array_equal(read_blockfile(result.outputs["blockfile"]), expected)
    if scaling == "minmax":
        assert expected.min() == 0
        assert expected.max() == 255
        assert result.bytes_read == 2 * run12.stat().st_size  # the first pass for the range


def test_a_big_endian_blockfile_holds_the_same_frames(run12: Path, tmp_path: Path) -> None:
    from stemcast.readers.blockfile import file_reader, read_header

    little = convert_run(run12, ["blockfile"], tmp_path / "little")
    options = {"blockfile": {"endianess": ">"}}
    big = convert_run(run12, ["blockfile"], tmp_path / "big", options=options)
    assert read_header(big.outputs["blockfile"], ">").nx == 8
    np.testing.assert_array_equal(
        file_reader(big.outputs["blockfile"], endianess=">")[0]["data"],
        read_blockfile(little.outputs["blockfile"]),
    )


def test_minmax_of_a_tvips_series_matches_the_reference(tmp_path: Path) -> None:
    (tmp_path / "camera").mkdir()
    parts = simulate_tvips(tmp_path / "camera", scan_shape=(5, 5), frame_size=32)
    source = quietly(rsciio_tvips.file_reader, str(parts[0]), scan_shape="auto")[0]
    result = convert_run(
        parts[0],
        ["blockfile"],
        tmp_path / "out",
        options={"blockfile": {"intensity_scaling": "minmax"}},
    )
    expected = reference_blockfile(source["data"], tmp_path, intensity_scaling="minmax")
    np.testing.assert_array_equal(read_blockfile(result.outputs["blockfile"]), expected)


# --------------------------------------------------------------------------------------------
# The source is never touched; outputs appear whole or not at all
# --------------------------------------------------------------------------------------------


def test_the_source_is_never_modified(tmp_path: Path) -> None:
    files = merlin_run(tmp_path / "camera", frames_per_file=20, interrupt_after=30)
    before = snapshot(tmp_path / "camera")
    assert len(before) == 3  # two .mib files and the .hdr
    convert_run(
        files[0], BOTH, tmp_path / "out", options={"blockfile": {"intensity_scaling": "minmax"}}
    )
    with pytest.raises(OutputError):
        convert_run(files[0], BOTH, tmp_path / "camera" / "scan1.mib" / "out")
    assert snapshot(tmp_path / "camera") == before


def test_cancelling_leaves_no_output(
    run12: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(convert, "_BATCH_BYTES", 10 * 32 * 32 * 2)  # 10 frames per batch
    seen: list[tuple[int, int]] = []

    def cancelled() -> bool:
        return len(seen) >= 3

    with pytest.raises(Cancelled):
        convert_run(
            run12,
            BOTH,
            tmp_path / "out",
            progress=lambda d, t: seen.append((d, t)),
            cancelled=cancelled,
        )
    assert seen == [(0, 48), (10, 48), (20, 48)]
    assert leftovers(tmp_path / "out") == []
    with pytest.raises(Cancelled):
        convert_run(
            run12,
            BOTH,
            tmp_path / "minmax",
            options={"blockfile": {"intensity_scaling": "minmax"}},
            cancelled=lambda: True,
        )
    assert leftovers(tmp_path / "minmax") == []


def test_progress_is_reported_after_every_batch(
    run12: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(convert, "_BATCH_BYTES", 16 * 32 * 32 * 2)
    seen: list[tuple[int, int]] = []
    convert_run(run12, ["emd"], tmp_path / "out", progress=lambda d, t: seen.append((d, t)))
    assert seen == [(0, 48), (16, 48), (32, 48), (48, 48)]


def test_an_output_folder_below_a_file_fails_with_an_output_error(
    run12: Path, tmp_path: Path
) -> None:
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(
        OutputError, match=r"cannot write .*scan\.(blo|emd): \[Errno 20\]"
    ) as raised:
        convert_run(run12, BOTH, tmp_path / "blocker" / "out")
    assert raised.value.path is not None
    assert "blocker" in raised.value.path


def test_a_read_only_output_folder_fails_with_an_output_error(run12: Path, tmp_path: Path) -> None:
    target = tmp_path / "readonly"
    target.mkdir()
    script = (
        "import sys\n"
        "from stemcast.errors import OutputError\n"
        "from stemcast.convert.run import convert_run\n"
        "try:\n"
        "    convert_run(sys.argv[1], ['emd', 'blockfile'], sys.argv[2])\n"
        "except OutputError as error:\n"
        "    print('OutputError', error)\n"
    )
    done = in_mount_namespace(f"mount -t tmpfs -o size=1m,ro tmpfs {target}", script, run12, target)
    assert done.startswith("OutputError cannot write"), done
    assert "Read-only file system" in done


def in_mount_namespace(mount: str, script: str, *args: Path) -> str:
    """Run ``script`` after ``mount`` in a private mount namespace; return its stdout."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare is not available")
    flags = ["-m"] if os.geteuid() == 0 else ["-r", "-m"]
    command = [
        unshare,
        *flags,
        "sh",
        "-c",
        f'{mount} && exec "$@"',
        "sh",
        sys.executable,
        "-c",
        script,
        *map(str, args),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 and ("mount" in done.stderr or "unshare" in done.stderr):
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


FULL_DISK = """
import json, os, sys
from stemcast.errors import OutputError
from stemcast.convert.run import convert_run
source, folder, targets = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    convert_run(source, targets.split(","), os.path.join(folder, "out"))
    outcome = {"error": None}
except OutputError as error:
    outcome = {"error": type(error).__name__, "message": str(error)}
outcome["left"] = sorted(
    os.path.relpath(os.path.join(root, name), folder)
    for root, _, names in os.walk(folder)
    for name in names
)
print(json.dumps(outcome))
"""


@pytest.mark.parametrize("targets", ["blockfile", "emd", "blockfile,emd"])
def test_a_full_disk_fails_cleanly_and_leaves_nothing(tmp_path: Path, targets: str) -> None:
    [source] = merlin_run(tmp_path / "camera", scan_shape=(24, 24), frame_size=64)
    assert 576 * 64 * 64 > 2 * 2**20  # even the uint8 frames of the blockfile fill the disk
    before = snapshot(tmp_path / "camera")
    disk = tmp_path / "disk"
    disk.mkdir()
    out = in_mount_namespace(
        f"mount -t tmpfs -o size=2m tmpfs {disk}", FULL_DISK, source, disk, Path(targets)
    )
    outcome = json.loads(out)
    assert outcome["error"] == "OutputError"
    assert "No space left on device" in outcome["message"]
    assert "cannot write" in outcome["message"]
    assert str(disk / "out") in outcome["message"]
    assert outcome["left"] == []
    assert snapshot(tmp_path / "camera") == before


def test_a_failing_target_removes_the_outputs_already_written(run12: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "scan.emd").mkdir(parents=True)  # the EMD cannot be renamed into place
    with pytest.raises(OutputError, match=r"scan\.emd"):
        convert_run(run12, BOTH, out)
    assert leftovers(out) == []
    assert not (out / "scan.blo").exists()


def test_partial_files_of_dead_processes_are_removed(run12: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = out / f".scan.emd.{int(dead.stdout)}.partial"
    alive = out / ".scan.blo.1.partial"  # process 1 is running
    other = out / f".other.emd.{int(dead.stdout)}.partial"
    for path in (stale, alive, other):
        path.write_bytes(b"left behind")
    convert_run(run12, BOTH, out)
    assert not stale.exists()
    assert alive.exists()
    assert other.exists()
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [alive.name, other.name, "scan.blo", "scan.emd"]
    )


def test_non_square_frames_refuse_a_blockfile_before_writing(tmp_path: Path) -> None:
    folder = tmp_path / "camera"
    folder.mkdir()
    with TvipsWriter(folder / "wide_000.tvips", (16, 24), np.uint16) as writer:
        writer.write(np.ones((4, 16, 24), np.uint16))
    with pytest.raises(ParameterError, match="square") as raised:
        convert_run(folder / "wide_000.tvips", BOTH, tmp_path / "out")
    assert raised.value.parameter == "targets"
    assert not (tmp_path / "out").exists()
    result = convert_run(folder / "wide_000.tvips", ["emd"], tmp_path / "out")
    reference = quietly(rsciio_tvips.file_reader, str(folder / "wide_000.tvips"), scan_shape="auto")
    expected = reference[0]["data"]
    assert expected.shape == (2, 2, 16, 24)
    np.testing.assert_array_equal(read_emd(result.outputs["emd"])["data"], expected)


def test_memory_stays_bounded_by_the_batch_not_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [source] = merlin_run(tmp_path / "camera", scan_shape=(32, 32), frame_size=128)
    assert source.stat().st_size > 32 * 2**20
    monkeypatch.setattr(convert, "_BATCH_BYTES", 2**20)
    tracemalloc.start()
    try:
        convert_run(
            source, BOTH, tmp_path / "out", options={"blockfile": {"intensity_scaling": "minmax"}}
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A few batches (records, decoded frames, the one read ahead, the EMD's transposed copy).
    assert peak < 12 * 2**20


# --------------------------------------------------------------------------------------------
# Real files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Single_9_Frame_CounterDepth_12_Rows_256.mib",
        "Quad_9_Frame_CounterDepth_1_Rows_256.mib",
        "Single_1_Frame_CounterDepth_24_Rows_256.mib",
    ],
)
def test_real_merlin_files_read_back_as_the_reference_reads_them(
    merlin_dir: Path, tmp_path: Path, name: str
) -> None:
    path = merlin_dir / name
    source = reference_mib(path)
    result = convert_run(
        path, BOTH, tmp_path / "out", options={"blockfile": {"intensity_scaling": "minmax"}}
    )
    emd = read_emd(result.outputs["emd"])
    np.testing.assert_array_equal(emd["data"], source["data"])
    expected = reference_blockfile(source["data"], tmp_path, intensity_scaling="minmax")
    np.testing.assert_array_equal(
        read_blockfile(result.outputs["blockfile"]).reshape(expected.shape), expected
    )


def test_a_real_raw_merlin_file_reads_back_as_its_decoded_frames(
    merlin_dir: Path, tmp_path: Path
) -> None:
    path = merlin_dir / "Single_9_Frame_CounterDepth_1_Rows_256RAW.mib"
    result = convert_run(path, ["emd"], tmp_path / "out")
    np.testing.assert_array_equal(
        read_emd(result.outputs["emd"])["data"], np.asarray(stemcast_mib_reader(path)[0]["data"])
    )


def test_real_tvips_files_read_back_as_the_reference_reads_them(tmp_path: Path) -> None:
    square = shared_file("tvips", "test_tvips_2233_000.tvips")
    source = quietly(rsciio_tvips.file_reader, str(square), scan_shape="auto")[0]
    result = convert_run(square, BOTH, tmp_path / "out")
    np.testing.assert_array_equal(read_emd(result.outputs["emd"])["data"], source["data"])
    np.testing.assert_array_equal(
        read_blockfile(result.outputs["blockfile"]), reference_blockfile(source["data"], tmp_path)
    )
    stack = shared_file("tvips", "test_tvips_2345_000.tvips")
    with pytest.raises(ParameterError, match="square"):
        convert_run(stack, BOTH, tmp_path / "stack")
    result = convert_run(stack, ["emd"], tmp_path / "stack")
    expected = quietly(rsciio_tvips.file_reader, str(stack))[0]["data"]
    np.testing.assert_array_equal(read_emd(result.outputs["emd"])["data"], expected)


# --------------------------------------------------------------------------------------------
# dask.distributed
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as connected,
    ):
        yield connected


def test_runs_convert_in_parallel_on_a_cluster(client: Any, tmp_path: Path) -> None:
    sources = [
        merlin_run(tmp_path / f"camera{index}", scan_shape=(8, 4 + index))[0] for index in range(3)
    ]
    futures = [
        client.submit(
            convert_on_worker,
            f"job{index}",
            str(path),
            ["emd", "blockfile"],
            str(tmp_path / "out"),
            relative_to=str(tmp_path),
            pure=False,
        )
        for index, path in enumerate(sources)
    ]
    results = client.gather(futures)
    for index, (path, result) in enumerate(zip(sources, results, strict=True)):
        assert result["navigation_shape"] == [8, 4 + index]
        assert result["outputs"]["emd"] == str(tmp_path / "out" / f"camera{index}" / "scan.emd")
        np.testing.assert_array_equal(
            read_emd(result["outputs"]["emd"])["data"], reference_mib(path)["data"]
        )
    from distributed import Variable

    final = Variable("stemcast-progress-job2", client=client).get(timeout=5)
    assert final == {"frames_done": 48, "frames_total": 48}


def test_a_set_cancel_event_cancels_the_task(client: Any, run12: Path, tmp_path: Path) -> None:
    from distributed import Event

    Event("stemcast-cancel-early", client=client).set()
    future = client.submit(
        convert_on_worker, "early", str(run12), ["emd"], str(tmp_path / "out"), pure=False
    )
    with pytest.raises(Cancelled):
        future.result(timeout=30)
    assert leftovers(tmp_path / "out") == []


def test_a_running_task_stops_when_its_cancel_event_is_set(
    client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import Event, Variable

    [source] = merlin_run(tmp_path / "camera", scan_shape=(40, 40), frame_size=32)
    monkeypatch.setattr(convert, "_BATCH_BYTES", 32 * 32 * 2)  # one frame per batch
    monkeypatch.setattr(convert, "_WORKER_POLL_S", 0.0)
    future = client.submit(
        convert_on_worker,
        "running",
        str(source),
        ["emd", "blockfile"],
        str(tmp_path / "out"),
        pure=False,
    )
    progress = Variable("stemcast-progress-running", client=client)
    deadline = time.monotonic() + 30
    while True:
        seen = progress.get(timeout=30)
        if seen["frames_done"] > 0 or time.monotonic() > deadline:
            break
    Event("stemcast-cancel-running", client=client).set()
    with pytest.raises(Cancelled):
        future.result(timeout=30)
    assert seen["frames_total"] == 1600
    assert 0 < seen["frames_done"] < 1600
    assert leftovers(tmp_path / "out") == []
