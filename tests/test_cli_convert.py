"""``stemcast convert``: the command as a user runs it (a real subprocess).

Expected frames come from the reference library (rosettasciio reads the source and the
outputs); the cluster tests run a real ``LocalCluster`` whose scheduler the command reaches
over TCP.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from stemcast.simulate import simulate_mib, simulate_tvips

rsciio_qd = pytest.importorskip("rsciio.quantumdetector")
rsciio_tvips = pytest.importorskip("rsciio.tvips")
rsciio_emd = pytest.importorskip("rsciio.emd")
rsciio_blockfile = pytest.importorskip("rsciio.blockfile")


def stemcast(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stemcast.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def quietly(function: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def emd_frames(path: Path) -> np.ndarray:
    return np.asarray(quietly(rsciio_emd.file_reader, str(path))[0]["data"])


def mib_frames(path: Path) -> np.ndarray:
    return np.asarray(quietly(rsciio_qd.file_reader, str(path))[0]["data"])


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    """A Merlin run (8 x 6) and a TVIPS series (5 x 5 scan, three parts)."""
    camera = tmp_path / "camera"
    camera.mkdir()
    [mib] = simulate_mib(camera, name="merlin", scan_shape=(8, 6), frame_size=32)
    parts = simulate_tvips(
        camera, name="tvips", scan_shape=(5, 5), frame_size=32, max_file_size=20_000
    )
    assert len(parts) >= 3
    return [mib, parts[1]]


def test_convert_writes_every_target_of_every_run_and_prints_the_paths(
    runs: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = stemcast(
        "convert", *runs, "--to", "emd,blockfile", "--output", out,
        "--option", "blockfile.intensity_scaling=minmax",
        "--option", "emd.compression=gzip", "--option", "emd.compression_opts=2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = [out / name for name in ("merlin.blo", "merlin.emd", "tvips.blo", "tvips.emd")]
    assert done.stdout.split() == [str(path) for path in expected]
    np.testing.assert_array_equal(emd_frames(out / "merlin.emd"), mib_frames(runs[0]))
    series = quietly(
        rsciio_tvips.file_reader, str(runs[1].with_name("tvips_000.tvips")), scan_shape="auto"
    )
    np.testing.assert_array_equal(emd_frames(out / "tvips.emd"), series[0]["data"])
    with h5py.File(out / "merlin.emd") as file:
        data = file["signals/merlin/data"]
        assert (data.compression, data.compression_opts) == ("gzip", 2)
    blockfile = quietly(rsciio_blockfile.file_reader, str(out / "merlin.blo"))[0]["data"]
    assert (blockfile.min(), blockfile.max()) == (0, 255)


def test_endianness_option_writes_a_big_endian_blockfile(runs: list[Path], tmp_path: Path) -> None:
    done = stemcast(
        "convert", runs[0], "--to", "blockfile", "--output", tmp_path,
        "--option", "blockfile.endianness=>", "--option", "blockfile.intensity_scaling=minmax",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    path = tmp_path / "merlin.blo"
    raw = path.read_bytes()
    (offset,) = struct.unpack_from(">I", raw, 12)  # Data_offset_2, big-endian header
    assert struct.unpack_from(">HI", raw, offset) == (0x55AA, 0)
    frames = quietly(rsciio_blockfile.file_reader, str(path), endianness=">")[0]["data"]
    assert frames.shape == mib_frames(runs[0]).shape
    assert (frames.min(), frames.max()) == (0, 255)


def test_a_navigation_shape_is_used_for_every_run(runs: list[Path], tmp_path: Path) -> None:
    done = stemcast(
        "convert", runs[0], "--to", "emd", "--output", tmp_path, "--navigation-shape", "16x3"
    )
    assert done.returncode == 0, done.stderr
    frames = emd_frames(tmp_path / "merlin.emd")
    np.testing.assert_array_equal(frames, mib_frames(runs[0]).reshape(3, 16, 32, 32))


def test_bad_paths_fail_alone_with_one_line_each(runs: list[Path], tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a run")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the output folder should be")
    done = stemcast(
        "convert", tmp_path / "missing.mib", runs[0], tmp_path / "notes.txt",
        "--to", "emd", "--output", tmp_path / "out",
    )  # fmt: skip
    assert done.returncode == 1
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("stemcast convert: error: ")
    assert "missing.mib" in errors[0]
    assert "no such file" in errors[0]
    assert "notes.txt" in errors[1]
    assert done.stdout.split() == [str(tmp_path / "out" / "merlin.emd")]
    unwritable = stemcast("convert", runs[0], "--to", "emd", "--output", blocked / "out")
    assert unwritable.returncode == 1
    assert unwritable.stderr.count("\n") == 1
    assert f"cannot write {blocked / 'out' / 'merlin.emd'}" in unwritable.stderr


def test_files_of_one_run_convert_it_once(tmp_path: Path) -> None:
    files = simulate_mib(
        tmp_path, name="split", scan_shape=(8, 4), frame_size=32, frames_per_file=8
    )
    done = stemcast("convert", *files, "--to", "emd", "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / "out" / "split1.emd")]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--to", "emd", "--option", "emd.level=3"], "options.emd.level"),
        (["--to", "emd", "--option", "blockfile.endianess=>"], "options.blockfile"),
        (["--to", "tiff"], "'tiff' is not a target"),
    ],
)
def test_bad_targets_and_options_stop_before_any_conversion(
    runs: list[Path], tmp_path: Path, arguments: list[str], message: str
) -> None:
    done = stemcast("convert", runs[0], "--output", tmp_path / "out", *arguments)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "out").exists()


def test_an_option_without_a_target_is_a_usage_error(runs: list[Path], tmp_path: Path) -> None:
    done = stemcast("convert", runs[0], "--to", "emd", "--output", tmp_path, "--option", "gzip")
    assert done.returncode == 2
    assert "target.name=value" in done.stderr


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """A local cluster reachable over TCP: two worker threads in this process."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        yield cluster.scheduler_address


def test_a_scheduler_converts_one_task_per_run(
    scheduler: str, runs: list[Path], tmp_path: Path
) -> None:
    third = simulate_mib(tmp_path / "camera", name="third", scan_shape=(4, 4), frame_size=32)[0]
    done = stemcast(
        "convert", *runs, third, tmp_path / "missing.mib",
        "--to", "emd,blockfile", "--output", tmp_path / "out", "--scheduler", scheduler,
    )  # fmt: skip
    assert done.returncode == 1
    assert "missing.mib" in done.stderr
    names = sorted(Path(line).name for line in done.stdout.split())
    assert names == [
        f"{run}.{ext}" for run in ("merlin", "third", "tvips") for ext in ("blo", "emd")
    ]
    np.testing.assert_array_equal(emd_frames(tmp_path / "out" / "third.emd"), mib_frames(third))
    np.testing.assert_array_equal(emd_frames(tmp_path / "out" / "merlin.emd"), mib_frames(runs[0]))


def test_a_failing_run_on_the_cluster_is_reported_and_the_others_finish(
    scheduler: str, runs: list[Path], tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "merlin.emd").mkdir()  # the output cannot be renamed into place
    done = stemcast(
        "convert", *runs, "--to", "emd", "--output", tmp_path / "out", "--scheduler", scheduler
    )
    assert done.returncode == 1
    assert "cannot write" in done.stderr
    assert "merlin.emd" in done.stderr
    assert done.stdout.split() == [str(tmp_path / "out" / "tvips.emd")]
