"""Conversions by the live daemon (a subprocess): automatic, on request, across restarts and
faults, and on a dask.distributed cluster. Outputs are read back with rosettasciio and
compared with rosettasciio reading the source."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from live import Daemon, Drain, call, daemons, wait_until

from stemcast.simulate import simulate_mib, simulate_tvips

TOKEN = "conversion-tests-token"
#: EMD options that make a 512-frame conversion take a few seconds: long enough to act on.
SLOW_EMD = 'convert_options = { emd = { compression = "gzip", compression_opts = 9 } }\n'


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    (tmp_path / "token").write_text(TOKEN)
    with daemons(tmp_path) as start:
        yield start


@pytest.fixture
def drains() -> Iterator[Callable[[Daemon], Drain]]:
    opened: list[Drain] = []

    def start(service: Daemon) -> Drain:
        opened.append(Drain(service.data))
        return opened[-1]

    yield start
    for drain in opened:
        drain.close()


def read(path: Path | str, **kwargs: Any) -> np.ndarray:
    """The data of a file as rosettasciio reads it."""
    suffix = Path(path).suffix
    if suffix == ".emd":
        from rsciio.emd import file_reader
    elif suffix == ".blo":
        from rsciio.blockfile import file_reader
    elif suffix == ".mib":
        from rsciio.quantumdetector import file_reader
    else:
        from rsciio.tvips import file_reader
    [signal_dict] = file_reader(str(path), **kwargs)
    return np.asarray(signal_dict["data"])


def jobs_of(service: Daemon, run_id: str) -> list[dict[str, Any]]:
    assert service.http is not None
    status, run = call("GET", f"{service.http}/runs/{run_id}")
    assert status == 200
    jobs: list[dict[str, Any]] = run["jobs"]
    return jobs


def converted(service: Daemon, run_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """Wait for the one job of a run to end; return it."""
    [job] = wait_until(
        lambda: jobs_of(service, run_id),
        lambda jobs: len(jobs) == 1 and jobs[0]["status"] in ("done", "failed", "cancelled"),
        timeout_s,
    )
    return job


def running(service: Daemon, job_id: str) -> dict[str, Any]:
    """Wait for a job to be converting with some frames done; return it."""
    assert service.http is not None
    job: dict[str, Any] = wait_until(
        lambda: call("GET", f"{service.http}/jobs/{job_id}")[1],
        lambda job: job["status"] == "running" and job["progress"]["frames_done"] > 0,
    )
    return job


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def big_run(folder: Path, name: str) -> Path:
    [path] = simulate_mib(
        folder, name=name, scan_shape=(32, 16), frame_size=256, hdr_scan_size=True, pattern_pool=2
    )
    return path


def test_a_complete_merlin_run_is_converted_to_both_targets(
    daemon: Callable[..., Daemon], drains: Callable[[Daemon], Drain], tmp_path: Path
) -> None:
    service = daemon("--output", str(tmp_path / "out"), "--convert", "emd,blockfile")
    drain = drains(service)
    [source] = simulate_mib(
        tmp_path / "camera", name="whole", scan_shape=(8, 6), frame_size=64, counter_depth=6,
        hdr_scan_size=True,
    )  # fmt: skip
    before = digest(source)
    end = drain.end_of("whole.mib")
    job = converted(service, end["series"])
    assert job["status"] == "done"
    assert job["outputs"] == {
        "blockfile": str(tmp_path / "out" / "camera" / "whole.blo"),
        "emd": str(tmp_path / "out" / "camera" / "whole.emd"),
    }
    assert job["progress"] == {"frames_done": 48, "frames_total": 48, "fraction": 1.0}
    expected = read(source)
    assert expected.shape == (6, 8, 64, 64)
    np.testing.assert_array_equal(read(tmp_path / "out" / "camera" / "whole.emd"), expected)
    np.testing.assert_array_equal(read(tmp_path / "out" / "camera" / "whole.blo"), expected)
    assert digest(source) == before
    assert sorted(os.listdir(tmp_path / "out" / "camera")) == ["whole.blo", "whole.emd"]


def test_an_interrupted_run_keeps_its_complete_lines(
    daemon: Callable[..., Daemon], drains: Callable[[Daemon], Drain], tmp_path: Path
) -> None:
    service = daemon(
        "--output", str(tmp_path / "out"), "--convert", "emd,blockfile", "--idle-timeout", "0.5"
    )
    drain = drains(service)
    [source] = simulate_mib(
        tmp_path / "camera", name="cut", scan_shape=(8, 8), frame_size=64, counter_depth=6,
        interrupt_after=20, hdr_scan_size=True,
    )  # fmt: skip
    end = drain.end_of("cut.mib")
    assert end["status"] == "interrupted"
    job = converted(service, end["series"])
    assert job["status"] == "done"
    assert job["navigation_shape"] == [8, 2]
    expected = read(source)
    assert expected.shape == (2, 8, 64, 64)
    np.testing.assert_array_equal(read(job["outputs"]["emd"]), expected)
    np.testing.assert_array_equal(read(job["outputs"]["blockfile"]), expected)


def test_rules_choose_targets_per_detector_and_folder(
    daemon: Callable[..., Daemon], drains: Callable[[Daemon], Drain], tmp_path: Path
) -> None:
    fast = tmp_path / "fast"
    fast.mkdir()
    config = tmp_path / "stemcast.toml"
    config.write_text(
        f"""
output = "{tmp_path / "out"}"
convert = ["emd"]

[[conversion_rules]]
folder = "{fast}"
targets = ["emd"]
options = {{ emd = {{ compression = "gzip", compression_opts = 1 }} }}

[[conversion_rules]]
detector = "tvips"
targets = ["blockfile"]
"""
    )
    service = daemon("--watch", str(fast), "--config", str(config), "--idle-timeout", "0.5")
    drain = drains(service)
    simulate_mib(
        tmp_path / "camera", name="plain", scan_shape=(4, 4), frame_size=32, hdr_scan_size=True
    )
    simulate_mib(fast, name="squeezed", scan_shape=(4, 4), frame_size=32, hdr_scan_size=True)
    parts = simulate_tvips(
        tmp_path / "camera", name="rolled", scan_shape=(4, 4), frame_size=32, bits=8
    )
    jobs = {
        name: converted(service, drain.end_of(name)["series"])
        for name in ("plain.mib", "squeezed.mib", "rolled_000.tvips")
    }
    assert {name: job["status"] for name, job in jobs.items()} == dict.fromkeys(jobs, "done")
    assert jobs["plain.mib"]["targets"] == ["emd"]
    assert jobs["plain.mib"]["options"] == {"emd": {}}
    assert jobs["squeezed.mib"]["targets"] == ["emd"]
    assert jobs["squeezed.mib"]["options"] == {
        "emd": {"compression": "gzip", "compression_opts": 1}
    }
    assert jobs["rolled_000.tvips"]["targets"] == ["blockfile"]
    with h5py.File(tmp_path / "out" / "fast" / "squeezed.emd") as squeezed:
        [group] = squeezed["signals"].values()
        assert group["data"].compression == "gzip"
    with h5py.File(tmp_path / "out" / "camera" / "plain.emd") as plain:
        [group] = plain["signals"].values()
        assert group["data"].compression is None
    stack = read(parts[0])
    blockfile = read(tmp_path / "out" / "camera" / "rolled.blo")
    assert blockfile.shape == (4, 4, 32, 32)
    np.testing.assert_array_equal(blockfile.reshape(stack.shape), stack.astype(np.uint8))


def test_a_running_job_reports_progress_and_can_be_cancelled(
    daemon: Callable[..., Daemon], drains: Callable[[Daemon], Drain], tmp_path: Path
) -> None:
    service = daemon("--output", str(tmp_path / "out"), "--token-file", str(tmp_path / "token"))
    assert service.http is not None
    drain = drains(service)
    big_run(tmp_path / "camera", "long")
    run_id = drain.end_of("long.mib")["series"]
    request = {
        "targets": ["emd"],
        "options": {"emd": {"compression": "gzip", "compression_opts": 9}},
    }
    status, job = call("POST", f"{service.http}/runs/{run_id}/convert", request, token=TOKEN)
    assert status == 202
    now = running(service, job["id"])
    progress = now["progress"]
    assert progress["frames_total"] == 512
    assert 0 < progress["frames_done"] < 512
    assert progress["fraction"] == pytest.approx(progress["frames_done"] / 512, abs=1e-4)
    status, asked = call("DELETE", f"{service.http}/jobs/{job['id']}", token=TOKEN)
    assert status == 202
    assert asked["cancel_requested"] is True
    stopped = wait_until(
        lambda: call("GET", f"{service.http}/jobs/{job['id']}")[1],
        lambda job: job["status"] != "running",
    )
    assert stopped["status"] == "cancelled"
    assert stopped["outputs"] == {}
    assert os.listdir(tmp_path / "out" / "camera") == []
    status, listed = call("GET", f"{service.http}/jobs?status=cancelled")
    assert [row["id"] for row in listed["jobs"]] == [job["id"]]


def test_a_restart_neither_republishes_runs_nor_redoes_conversions(
    daemon: Callable[..., Daemon], drains: Callable[[Daemon], Drain], tmp_path: Path
) -> None:
    flags = ("--output", str(tmp_path / "out"), "--convert", "emd")
    first = daemon(*flags)
    drain = drains(first)
    simulate_mib(tmp_path / "camera", name="before", scan_shape=(6, 4), frame_size=32)
    run_id = drain.end_of("before.mib")["series"]
    job = converted(first, run_id)
    assert job["status"] == "done"
    output = Path(job["outputs"]["emd"])
    stamp = output.stat()
    assert first.stop() == 0
    second = daemon(*flags)
    later = drains(second)
    simulate_mib(tmp_path / "camera", name="after", scan_shape=(6, 4), frame_size=32)
    after = later.end_of("after.mib")
    assert converted(second, after["series"])["status"] == "done"
    # The first run (written seconds ago, so young enough to be followed at start-up) is
    # known to the registry as finished: never published again, never converted again.
    assert [Path(start["sources"][0]).name for start in later.starts] == ["after.mib"]
    assert second.http is not None
    jobs = call("GET", f"{second.http}/jobs")[1]["jobs"]
    assert sorted(row["run_id"] for row in jobs) == sorted([run_id, after["series"]])
    assert call("GET", f"{second.http}/runs/{run_id}")[1]["status"] == "complete"
    now = output.stat()
    assert (now.st_ino, now.st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)


def test_a_conversion_killed_midway_leaves_no_output_and_completes_after_restart(
    daemon: Callable[..., Daemon], drains: Callable[[Daemon], Drain], tmp_path: Path
) -> None:
    config = tmp_path / "stemcast.toml"
    config.write_text(SLOW_EMD)
    flags = ("--config", str(config), "--output", str(tmp_path / "out"), "--convert", "emd")
    first = daemon(*flags)
    drain = drains(first)
    source = big_run(tmp_path / "camera", "killed")
    before = digest(source)
    run_id = drain.end_of("killed.mib")["series"]
    [job] = wait_until(lambda: jobs_of(first, run_id), lambda jobs: len(jobs) == 1)
    running(first, job["id"])
    first.process.send_signal(signal.SIGKILL)
    assert first.process.wait(10) == -signal.SIGKILL
    # Only the temporary file of the killed service's conversion process, never the final
    # name; that process dies with the service, so nothing renames an output later.
    [partial] = os.listdir(tmp_path / "out" / "camera")
    match = re.fullmatch(r"\.killed\.emd\.(\d+)\.partial", partial)
    assert match is not None, partial
    wait_until(lambda: Path(f"/proc/{match[1]}").exists(), lambda alive: not alive, 10)
    assert os.listdir(tmp_path / "out" / "camera") == [partial]
    second = daemon(*flags)
    drains(second)
    done = converted(second, run_id, timeout_s=60)
    assert done["id"] == job["id"]
    assert done["status"] == "done"
    assert os.listdir(tmp_path / "out" / "camera") == ["killed.emd"]
    np.testing.assert_array_equal(read(done["outputs"]["emd"]), read(source))
    assert digest(source) == before


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """Mount a tmpfs at ``folder`` (skip the test where mounting is not permitted)."""
    folder.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        pytest.skip("no mount command")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_fails_the_job_clearly_and_the_next_run_converts(
    daemon: Callable[..., Daemon], drains: Callable[[Daemon], Drain], tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "out", "size=2m") as out:
        service = daemon("--output", str(out), "--convert", "blockfile")
        drain = drains(service)
        # 256 frames of 128 x 128 bytes: 4 MiB of blockfile for 2 MiB of disk.
        [source] = simulate_mib(
            tmp_path / "camera", name="huge", scan_shape=(16, 16), frame_size=128,
            counter_depth=6, hdr_scan_size=True,
        )  # fmt: skip
        before = digest(source)
        failed = converted(service, drain.end_of("huge.mib")["series"])
        assert failed["status"] == "failed"
        assert failed["error"].startswith(f"cannot write {out / 'camera' / 'huge.blo'}: ")
        assert "No space left on device" in failed["error"]
        assert failed["outputs"] == {}
        assert digest(source) == before
        simulate_mib(
            tmp_path / "camera", name="tiny", scan_shape=(4, 4), frame_size=32, counter_depth=6
        )
        done = converted(service, drain.end_of("tiny.mib")["series"])
        assert done["status"] == "done"
        assert os.listdir(out) == ["camera"]
        assert os.listdir(out / "camera") == ["tiny.blo"]
        assert service.stop() == 0


def test_an_unwritable_output_root_fails_the_job_and_the_service_goes_on(
    daemon: Callable[..., Daemon], drains: Callable[[Daemon], Drain], tmp_path: Path
) -> None:
    with contextlib.ExitStack() as stack:
        out = tmp_path / "out"
        if os.geteuid() == 0:
            # Permissions do not stop root: a read-only file system does.
            stack.enter_context(tmpfs(out, "ro,size=64m"))
        else:
            out.mkdir(mode=0o555)
            stack.callback(out.chmod, 0o755)
        service = daemon("--output", str(out), "--convert", "emd")
        drain = drains(service)
        [source] = simulate_mib(tmp_path / "camera", name="first", scan_shape=(4, 4), frame_size=32)
        before = digest(source)
        failed = converted(service, drain.end_of("first.mib")["series"])
        assert failed["status"] == "failed"
        assert failed["error"].startswith(f"cannot write {out / 'camera' / 'first.emd'}: ")
        assert "Read-only file system" in failed["error"] or "Permission denied" in failed["error"]
        assert digest(source) == before
        simulate_mib(tmp_path / "camera", name="second", scan_shape=(4, 4), frame_size=32)
        assert drain.end_of("second.mib")["status"] == "complete"
        assert service.process.poll() is None
        assert f"job {failed['id']} failed: cannot write" in service.log_text()
        assert service.stop() == 0


def test_conversions_run_on_a_dask_cluster(
    daemon: Callable[..., Daemon], drains: Callable[[Daemon], Drain], tmp_path: Path
) -> None:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
        host="127.0.0.1", dashboard_address=None,
    ) as cluster:  # fmt: skip
        service = daemon(
            "--output", str(tmp_path / "out"), "--convert", "emd",
            "--scheduler", cluster.scheduler_address,
        )  # fmt: skip
        drain = drains(service)
        sources = [
            simulate_mib(
                tmp_path / "camera", name=name, scan_shape=(6, 4), frame_size=32,
                hdr_scan_size=True,
            )[0]
            for name in ("one", "two")
        ]  # fmt: skip
        for path in sources:
            job = converted(service, drain.end_of(path.name)["series"])
            assert job["status"] == "done"
            assert job["progress"]["frames_done"] == 24
            np.testing.assert_array_equal(read(job["outputs"]["emd"]), read(path))
        assert service.stop() == 0
