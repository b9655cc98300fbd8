"""Conversion jobs in one process: dedupe, order, cancel, failure, resume after a restart.

Real SQLite registry, real conversions to real files; the HTTP and daemon layers are tested
in test_api.py and test_conversion_service.py.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from stemcast.errors import ParameterError
from stemcast.service.config import ServiceSettings
from stemcast.service.jobs.manager import JobConflict, JobManager
from stemcast.service.state.registry import Registry
from stemcast.simulate import simulate_mib

T = TypeVar("T")
#: EMD options that make a conversion slow enough to be caught running.
SLOW = {"emd": {"compression": "gzip", "compression_opts": 9}}


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main())


async def until(read: Callable[[], T], done: Callable[[T], bool], timeout_s: float = 30.0) -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    value = read()
    while not done(value):
        assert loop.time() < deadline, f"condition not met in time; last value: {value!r}"
        await asyncio.sleep(0.02)
        value = read()
    return value


def small_run(folder: Path, name: str) -> Path:
    [path] = simulate_mib(
        folder,
        name=name,
        scan_shape=(6, 4),
        frame_size=32,
        counter_depth=6,
        hdr_scan_size=True,
        seed=len(name),
    )
    return path


def big_run(folder: Path, name: str) -> Path:
    [path] = simulate_mib(
        folder, name=name, scan_shape=(32, 16), frame_size=256, hdr_scan_size=True, pattern_pool=2
    )
    return path


@pytest.fixture
def camera(tmp_path: Path) -> Path:
    folder = tmp_path / "camera"
    folder.mkdir()
    return folder


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Callable[..., Awaitable[JobManager]]]:
    """Start job managers on the registry of ``tmp_path``; stop them and close it after."""
    opened: list[tuple[JobManager, Registry]] = []

    async def start(**fields: Any) -> JobManager:
        settings = ServiceSettings(watch=[tmp_path / "camera"], output=tmp_path / "out", **fields)
        registry = Registry(tmp_path / "registry.sqlite3")
        jobs = JobManager(settings, registry)
        opened.append((jobs, registry))
        await jobs.start()
        return jobs

    yield start
    for _, registry in opened:
        registry.close()


def finished(jobs: JobManager, job_id: str) -> Callable[[], dict[str, Any]]:
    return lambda: jobs.registry.job(job_id) or {}


def ended(job: dict[str, Any]) -> bool:
    return job["status"] in ("done", "failed", "cancelled")


def test_the_same_request_twice_is_one_job_and_one_conversion(
    manager: Callable[..., Awaitable[JobManager]], camera: Path
) -> None:
    path = small_run(camera, "same")

    async def main() -> None:
        jobs = await manager()
        first, created = await jobs.request(path, "emd,blockfile", None, relative_to=camera)
        again, created_again = await jobs.request(
            str(path), ["blockfile", "emd"], {"emd": {}}, relative_to=str(camera)
        )
        assert created
        assert not created_again
        assert again["id"] == first["id"]
        done = await until(finished(jobs, first["id"]), ended)
        assert done["status"] == "done"
        emd = Path(done["outputs"]["emd"])
        before = emd.stat()
        third, created_third = await jobs.request(path, "emd,blockfile", None, relative_to=camera)
        assert not created_third
        assert third["id"] == first["id"]
        await asyncio.sleep(0.3)
        after = emd.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert len(jobs.registry.jobs()) == 1
        await jobs.stop()

    run(main)


def test_changed_files_options_or_shape_make_a_new_job(
    manager: Callable[..., Awaitable[JobManager]], camera: Path
) -> None:
    path = small_run(camera, "changes")

    async def main() -> None:
        jobs = await manager()
        first, _ = await jobs.request(path, "emd", None)
        await until(finished(jobs, first["id"]), ended)
        other_options, created = await jobs.request(path, "emd", {"emd": {"compression": "lzf"}})
        assert created
        other_shape, created = await jobs.request(path, "emd", None, navigation_shape=(4, 6))
        assert created
        stamp = path.stat().st_mtime_ns + 10**9
        os.utime(path, ns=(stamp, stamp))
        touched, created = await jobs.request(path, "emd", None)
        assert created
        ids = {first["id"], other_options["id"], other_shape["id"], touched["id"]}
        assert len(ids) == 4
        for job_id in ids:
            assert (await until(finished(jobs, job_id), ended))["status"] == "done"
        await jobs.stop()

    run(main)


def test_a_done_job_whose_output_is_gone_converts_again(
    manager: Callable[..., Awaitable[JobManager]], camera: Path
) -> None:
    path = small_run(camera, "gone")

    async def main() -> None:
        jobs = await manager()
        first, _ = await jobs.request(path, "emd", None)
        done = await until(finished(jobs, first["id"]), ended)
        Path(done["outputs"]["emd"]).unlink()
        second, created = await jobs.request(path, "emd", None)
        assert created
        assert second["id"] != first["id"]
        redone = await until(finished(jobs, second["id"]), ended)
        assert redone["status"] == "done"
        assert Path(redone["outputs"]["emd"]).is_file()
        await jobs.stop()

    run(main)


def test_jobs_run_one_at_a_time_in_request_order(
    manager: Callable[..., Awaitable[JobManager]], camera: Path
) -> None:
    paths = [small_run(camera, name) for name in ("first", "second", "third")]

    async def main() -> None:
        jobs = await manager(convert_workers=1)
        requested = [(await jobs.request(path, "emd", None))[0] for path in paths]
        rows = [await until(finished(jobs, job["id"]), ended) for job in requested]
        assert [row["status"] for row in rows] == ["done"] * 3
        for earlier, later in itertools.pairwise(rows):
            assert earlier["ended_at"] <= later["started_at"]
        await jobs.stop()

    run(main)


def test_cancelling_a_queued_job_is_immediate_and_a_running_one_leaves_no_output(
    manager: Callable[..., Awaitable[JobManager]], camera: Path, tmp_path: Path
) -> None:
    running_path = big_run(camera, "long")
    queued_path = small_run(camera, "waiting")

    async def main() -> None:
        jobs = await manager(convert_workers=1)
        running, _ = await jobs.request(running_path, "emd", SLOW)
        queued, _ = await jobs.request(queued_path, "emd", None)
        now = jobs.cancel(queued["id"])
        assert now is not None
        assert now["status"] == "cancelled"
        progressed = await until(
            finished(jobs, running["id"]),
            lambda job: job["status"] == "running" and job["frames_done"] > 0,
        )
        assert progressed["frames_total"] == 512
        asked = jobs.cancel(running["id"])
        assert asked is not None
        assert asked["status"] == "running"
        stopped = await until(finished(jobs, running["id"]), ended)
        assert stopped["status"] == "cancelled"
        assert stopped["outputs"] == {}
        assert list((tmp_path / "out").iterdir()) == []
        with pytest.raises(JobConflict, match="already ended: cancelled"):
            jobs.cancel(running["id"])
        assert jobs.cancel("no-such-job") is None
        # A cancelled conversion may be asked for again.
        again, created = await jobs.request(queued_path, "emd", None)
        assert created
        assert (await until(finished(jobs, again["id"]), ended))["status"] == "done"
        await jobs.stop()

    run(main)


def test_a_failed_job_says_why_and_the_next_job_runs(
    manager: Callable[..., Awaitable[JobManager]], camera: Path, tmp_path: Path
) -> None:
    (camera / "sub").mkdir()
    blocked = small_run(camera / "sub", "blocked")
    fine = small_run(camera, "fine")
    (tmp_path / "out" / "camera").mkdir(parents=True)
    # The output folder of the first run is taken by a file: it cannot be created.
    (tmp_path / "out" / "camera" / "sub").write_text("not a folder")

    async def main() -> None:
        jobs = await manager()
        bad, _ = await jobs.request(blocked, "emd", None, relative_to=camera)
        good, _ = await jobs.request(fine, "emd", None, relative_to=camera)
        failed = await until(finished(jobs, bad["id"]), ended)
        assert failed["status"] == "failed"
        assert "cannot write" in failed["error"]
        assert "sub" in failed["error"]
        assert (await until(finished(jobs, good["id"]), ended))["status"] == "done"
        await jobs.stop()

    run(main)


def test_stopping_leaves_a_running_job_queued_and_a_restart_finishes_it(
    manager: Callable[..., Awaitable[JobManager]], camera: Path, tmp_path: Path
) -> None:
    path = big_run(camera, "resumed")

    async def first_life() -> str:
        jobs = await manager()
        job, _ = await jobs.request(path, "emd", SLOW)
        await until(
            finished(jobs, job["id"]),
            lambda row: row["status"] == "running" and row["frames_done"] > 0,
        )
        await jobs.stop()
        assert jobs.registry.job(job["id"])["status"] == "queued"  # type: ignore[index]
        return str(job["id"])

    job_id = run(first_life)
    assert not (tmp_path / "out" / "resumed.emd").exists()
    assert [entry.name for entry in (tmp_path / "out").iterdir()] == []

    async def second_life() -> None:
        jobs = await manager()
        done = await until(finished(jobs, job_id), ended)
        assert done["status"] == "done"
        assert done["frames_done"] == done["frames_total"] == 512
        assert Path(done["outputs"]["emd"]).is_file()
        await jobs.stop()

    run(second_life)


def test_requests_are_checked_before_a_job_is_recorded(
    manager: Callable[..., Awaitable[JobManager]], camera: Path, tmp_path: Path
) -> None:
    path = small_run(camera, "checked")
    (camera / "notes.txt").write_text("not a run")

    async def main() -> None:
        jobs = await manager()
        with pytest.raises(ParameterError, match="'tiff' is not a target"):
            await jobs.request(path, "tiff", None)
        with pytest.raises(ParameterError, match=r"options\.emd\.compression"):
            await jobs.request(path, "emd", {"emd": {"compression": "zip"}})
        with pytest.raises(ParameterError, match="navigation_shape"):
            await jobs.request(path, "emd", None, navigation_shape=(0, 4))
        with pytest.raises(ValueError, match=r"notes\.txt"):
            await jobs.request(camera / "notes.txt", "emd", None)
        # Known only from the run: refused before a job is recorded, not failed later.
        # The run is 6 x 4 frames of 32 x 32: the data is (4, 6, 32, 32) in array order.
        with pytest.raises(ParameterError, match=r"\[1, 1\] has 2 axes; the data has 4"):
            await jobs.request(path, "emd", {"emd": {"chunks": [1, 1]}})
        with pytest.raises(ParameterError, match="larger than the data"):
            await jobs.request(path, "emd", {"emd": {"chunks": [1, 1, 33, 32]}})
        with pytest.raises(ParameterError, match="do not fill one line"):
            await jobs.request(path, "emd", None, navigation_shape=(25, 1))
        # A Merlin scan line of length 1 is dropped, as the reader does: (24,) frames.
        with pytest.raises(ParameterError, match="has 4 axes; the data has 3"):
            await jobs.request(
                path, "emd", {"emd": {"chunks": [1, 1, 32, 32]}}, navigation_shape=(24, 1)
            )
        assert jobs.registry.jobs() == []
        whole, created = await jobs.request(path, "emd", {"emd": {"chunks": [4, 6, 32, 32]}})
        stack, created_stack = await jobs.request(
            path, "emd", {"emd": {"chunks": [24, 32, 32]}}, navigation_shape=(24, 1)
        )
        assert created
        assert created_stack
        for job in (whole, stack):
            assert (await until(finished(jobs, job["id"]), ended))["status"] == "done"
        await jobs.stop()

    run(main)
    settings = ServiceSettings(watch=[camera])

    async def without_output() -> None:
        with Registry(tmp_path / "other.sqlite3") as registry:
            jobs = JobManager(settings, registry)
            await jobs.start()
            with pytest.raises(ParameterError, match="no output root"):
                await jobs.request(path, "emd", None)
            await jobs.stop()

    run(without_output)


def read(path: Path | str) -> np.ndarray:
    if str(path).endswith(".emd"):
        from rsciio.emd import file_reader
    else:
        from rsciio.quantumdetector import file_reader
    [signal_dict] = file_reader(str(path))
    return np.asarray(signal_dict["data"])


def test_jobs_with_other_options_or_shapes_never_share_an_output(
    manager: Callable[..., Awaitable[JobManager]], camera: Path, tmp_path: Path
) -> None:
    [path] = simulate_mib(
        camera, name="shared", scan_shape=(16, 16), frame_size=64, hdr_scan_size=True
    )
    source = read(path)
    assert source.shape == (16, 16, 64, 64)

    async def main() -> None:
        jobs = await manager()

        async def done(*args: Any, **kwargs: Any) -> dict[str, Any]:
            job, created = await jobs.request(path, "emd", *args, run_shape=(16, 16), **kwargs)
            assert created
            return await until(finished(jobs, job["id"]), ended)

        usual = await done(None, relative_to=camera)
        reshaped = await done(None, navigation_shape=(2, 100), relative_to=camera)
        compressed = await done({"emd": {"compression": "lzf"}}, relative_to=camera)
        outputs = [Path(job["outputs"]["emd"]) for job in (usual, reshaped, compressed)]
        assert outputs[0] == tmp_path / "out" / "camera" / "shared.emd"
        assert len(set(outputs)) == 3
        for output in outputs[1:]:
            assert output.parent == outputs[0].parent
            assert re.fullmatch(r"shared\.[0-9a-f]{8}\.emd", output.name)
        np.testing.assert_array_equal(read(outputs[0]), source)
        np.testing.assert_array_equal(
            read(outputs[1]), source.reshape(256, 64, 64)[:200].reshape(100, 2, 64, 64)
        )
        np.testing.assert_array_equal(read(outputs[2]), source)
        # Asked again, the usual conversion is the first job, its file still its own.
        again, created = await jobs.request(
            path, "emd", None, run_shape=(16, 16), relative_to=camera
        )
        assert not created
        assert again["id"] == usual["id"]
        np.testing.assert_array_equal(read(again["outputs"]["emd"]), source)
        await jobs.stop()

    run(main)


def test_the_runs_configured_options_keep_the_plain_output_name(
    manager: Callable[..., Awaitable[JobManager]], camera: Path, tmp_path: Path
) -> None:
    path = small_run(camera, "configured")

    async def main() -> None:
        jobs = await manager(convert_options={"emd": {"compression": "gzip"}})
        configured, _ = await jobs.request(path, "emd", {"emd": {"compression": "gzip"}})
        plain, _ = await jobs.request(path, "emd", None)
        configured = await until(finished(jobs, configured["id"]), ended)
        plain = await until(finished(jobs, plain["id"]), ended)
        assert configured["outputs"] == {"emd": str(tmp_path / "out" / "configured.emd")}
        assert re.fullmatch(r"configured\.[0-9a-f]{8}\.emd", Path(plain["outputs"]["emd"]).name)
        await jobs.stop()

    run(main)


def test_existing_is_answered_only_while_the_output_is_the_file_the_job_wrote(
    manager: Callable[..., Awaitable[JobManager]], camera: Path
) -> None:
    path = small_run(camera, "kept")
    source = read(path)

    async def main() -> None:
        jobs = await manager()
        first, _ = await jobs.request(path, "emd", None)
        first = await until(finished(jobs, first["id"]), ended)
        output = Path(first["outputs"]["emd"])
        again, created = await jobs.request(path, "emd", None)
        assert (again["id"], created) == (first["id"], False)
        # Replaced by another file of the same name: a new job writes it again.
        other, _ = await jobs.request(path, "emd", {"emd": {"compression": "lzf"}})
        other = await until(finished(jobs, other["id"]), ended)
        shutil.copyfile(other["outputs"]["emd"], output.with_suffix(".new"))
        os.replace(output.with_suffix(".new"), output)
        second, created = await jobs.request(path, "emd", None)
        assert created
        assert second["id"] != first["id"]
        second = await until(finished(jobs, second["id"]), ended)
        assert second["outputs"] == first["outputs"]
        np.testing.assert_array_equal(read(output), source)
        # Rewritten in place (same inode and size, another modification time): again.
        stamp = output.stat().st_mtime_ns + 10**9
        os.utime(output, ns=(stamp, stamp))
        third, created = await jobs.request(path, "emd", None)
        assert created
        assert (await until(finished(jobs, third["id"]), ended))["status"] == "done"
        same, created = await jobs.request(path, "emd", None)
        assert (same["id"], created) == (third["id"], False)
        await jobs.stop()

    run(main)


def conversion_processes() -> list[int]:
    """Process ids of the spawned workers among this process's children."""
    children = [
        int(pid)
        for task in Path("/proc/self/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    return [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_a_crashed_conversion_process_fails_its_job_and_the_next_job_runs(
    manager: Callable[..., Awaitable[JobManager]], camera: Path, tmp_path: Path
) -> None:
    crashing = big_run(camera, "crashing")
    after = small_run(camera, "after")

    async def main() -> None:
        jobs = await manager()
        job, _ = await jobs.request(crashing, "emd", SLOW, relative_to=camera)
        await until(
            finished(jobs, job["id"]),
            lambda row: row["status"] == "running" and row["frames_done"] > 0,
        )
        # What HDF5 does to a process on some write errors: a segmentation fault.
        workers = conversion_processes()
        assert workers
        for pid in workers:
            os.kill(pid, signal.SIGSEGV)
        failed = await until(finished(jobs, job["id"]), ended)
        assert failed["status"] == "failed"
        assert "conversion process ended without finishing" in failed["error"]
        assert failed["outputs"] == {}
        assert not (tmp_path / "out" / "camera" / "crashing.emd").exists()
        # The service goes on: a new pool converts the next job.
        next_job, _ = await jobs.request(after, "emd", None, relative_to=camera)
        assert (await until(finished(jobs, next_job["id"]), ended))["status"] == "done"
        await jobs.stop()

    run(main)
