"""Bad files, vanishing folders and hostile links never stop the service nor leave a run hanging.

Each test drops into the watch folders what the adversarial runs of the service found
harmful (docs/operations.md, "Tested faults") and checks, on the real daemon, that it stays
up, says what is wrong once, ends every run with a ``series_end`` and a registry row, and
goes on following the runs that come after.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from faults import (
    claiming,
    corrupt_timestamp,
    frame_header,
    good_run,
    lines,
    negative_count_hdr,
    ready,
    runs,
)
from live import Daemon, Drain, Receiver, call, daemons, start_daemon, wait_until
from rsciio.quantumdetector import file_reader as read_mib

from stemcast.simulate import simulate_mib, simulate_tvips

TOKEN = "a-long-random-token-for-the-fault-tests"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    with daemons(tmp_path) as start:
        yield start


def test_a_symlink_loop_and_a_missing_watch_folder_do_not_stop_the_service(
    tmp_path: Path,
) -> None:
    camera, share = tmp_path / "camera", tmp_path / "share"
    camera.mkdir()
    (camera / "self.mib").symlink_to("self.mib")
    with daemons(tmp_path) as start:
        # Polling: the watcher itself trips on the loop there.
        service = start("--watch", str(share), "--polling", "--idle-timeout", "1")
        drain = Drain(service.data)
        status, checks = ready(service)
        assert status == 503
        assert not checks[f"watch {share}"]["ok"]
        assert checks[f"watch {camera}"]["ok"]
        share.mkdir()
        wait_until(lambda: ready(service)[0], lambda status: status == 200)
        good_run(share, "late")
        good_run(camera, "here")
        assert drain.end_of("late.mib")["status"] == "complete"
        assert drain.end_of("here.mib")["status"] == "complete"
        time.sleep(1.5)  # three more listings of the loop
        drain.close()
        assert service.process.poll() is None
    assert len(lines(service, "self.mib: skipped: Too many levels of symbolic links")) == 1
    assert len(lines(service, f"watch folder {share} cannot be listed")) == 1


@pytest.mark.parametrize("polling", [False, True], ids=["events", "polling"])
def test_a_watch_folder_that_vanishes_is_followed_again_when_it_comes_back(
    daemon: Callable[..., Daemon], tmp_path: Path, polling: bool
) -> None:
    camera = tmp_path / "camera"
    service = daemon("--idle-timeout", "1", *(["--polling"] if polling else []))
    drain = Drain(service.data)
    good_run(camera, "before")
    assert drain.end_of("before.mib")["status"] == "complete"
    shutil.rmtree(camera)  # an unmounted share
    _, checks = wait_until(lambda: ready(service), lambda answer: answer[0] == 503)
    assert checks[f"watch {camera}"]["detail"] == "cannot list: No such file or directory"
    wait_until(lambda: lines(service, "cannot be listed"), bool)
    camera.mkdir()  # mounted again: another folder under the same name
    wait_until(lambda: ready(service)[0], lambda status: status == 200)
    good_run(camera, "after")
    end = drain.end_of("after.mib")
    drain.close()
    assert (end["status"], end["frames"]) == ("complete", 16)
    assert service.process.poll() is None
    assert len(lines(service, "cannot be listed")) == 1
    assert len(lines(service, "can be listed again")) == 1


def _without_root_powers() -> None:
    """Drop the capabilities that let root list any folder (effective from the exec on)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        libc.prctl(24, capability, 0, 0, 0)  # PR_CAPBSET_DROP


def test_an_unreadable_watch_folder_makes_the_service_unready_until_it_can_be_read(
    tmp_path: Path,
) -> None:
    camera = tmp_path / "camera"
    camera.mkdir()
    service = start_daemon(
        camera, tmp_path / "daemon.log", "--idle-timeout", "1", preexec=_without_root_powers
    )
    try:
        drain = Drain(service.data)
        camera.chmod(0)
        _, checks = wait_until(lambda: ready(service), lambda answer: answer[0] == 503)
        assert checks[f"watch {camera}"]["detail"] == "cannot list: Permission denied"
        wait_until(lambda: lines(service, "(Permission denied)"), bool)
        camera.chmod(0o755)
        wait_until(lambda: ready(service)[0], lambda status: status == 200)
        good_run(camera, "readable")
        assert drain.end_of("readable.mib")["frames"] == 16
        drain.close()
        assert service.process.poll() is None
    finally:
        camera.chmod(0o755)
        service.stop()


def test_a_corrupt_frame_fails_the_run_after_its_valid_frames_are_published(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    output = str(tmp_path / "out")
    service = daemon("--idle-timeout", "60", "--token-file", str(token), "--output", output)
    receiver = Receiver(service.data)
    source = tmp_path / "source"
    source.mkdir()
    [clean] = simulate_mib(source, name="stamp", scan_shape=(8, 8), frame_size=32)
    expected = np.asarray(read_mib(str(clean), navigation_shape=(8, 8))[0]["data"])
    camera = tmp_path / "camera"
    shutil.copy(source / "stamp.hdr", camera)
    (camera / "stamp.mib").write_bytes(corrupt_timestamp(clean, 20))
    [series] = receiver.series(1)
    assert series.end is not None
    assert series.end["status"] == "failed"
    assert "(frame 20)" in series.end["reason"]
    assert "stamp.mib" in series.end["reason"]
    assert len(series.frames) == 20
    np.testing.assert_array_equal(np.stack(series.frames), expected.reshape(64, 32, 32)[:20])
    [row] = runs(service)
    assert (row["status"], row["frames"], row["reason"]) == ("failed", 20, series.end["reason"])
    # A conversion request is told how the run ended, not that it is still followed.
    status, body = call(
        "POST", f"{service.http}/runs/{row['id']}/convert", {"targets": ["emd"]}, token=TOKEN
    )
    assert status == 409
    assert f"run {row['id']} is failed" in body["error"]
    assert service.process.poll() is None


def _peak_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        [line] = [line for line in status if line.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024


def test_memory_is_bounded_by_batches_and_absurd_frames_are_refused(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon("--idle-timeout", "1")
    drain = Drain(service.data)
    source = tmp_path / "source"
    small = good_run(source, "small")
    camera = tmp_path / "camera"
    # 33,000 x 33,000 pixels: 2.2 GB a frame, on 1 KB of disk.
    claiming(small, camera / "huge.mib", 33_000, 2)
    wait_until(lambda: lines(service, "huge.mib"), bool)
    # 20 frames of 4096 x 4096 on 84 KB of disk: followed, a few frames at a time.
    record = claiming(small, camera / "sparse.mib", 4096, 20)
    end = drain.end_of("sparse.mib")
    good_run(camera, "next")
    assert drain.end_of("next.mib")["status"] == "complete"
    drain.close()
    assert (end["status"], end["frames"]) == ("complete", 20)
    assert _peak_rss_bytes(service.process.pid) < 20 * record
    [refused] = lines(service, "huge.mib")
    assert "33000 x 33000 pixels" in refused
    assert "max_frame_bytes" in refused
    assert [row["path"] for row in runs(service)] == [
        str(camera / n) for n in ("next.mib", "sparse.mib")
    ]
    assert service.process.poll() is None


def test_a_hdr_with_a_negative_frame_count_is_ignored_and_the_run_followed(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon("--idle-timeout", "1")
    receiver = Receiver(service.data)
    source, camera = tmp_path / "source", tmp_path / "camera"
    source.mkdir()
    [mib] = simulate_mib(source, name="neg", scan_shape=(8, 8), frame_size=32)
    (camera / "neg.hdr").write_bytes(negative_count_hdr(source / "neg.hdr"))
    shutil.copy(mib, camera)
    [series] = receiver.series(1)
    assert series.end is not None
    assert (series.end["status"], len(series.frames)) == ("complete", 64)
    assert series.end["nav_shape"] == [8, 8]
    assert len(lines(service, "Frames in Acquisition (Number) is -5, not a count: ignored")) == 1


def test_a_hdr_written_after_the_mib_is_read_when_it_parses(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon("--idle-timeout", "30")
    receiver = Receiver(service.data)
    source, camera = tmp_path / "source", tmp_path / "camera"
    source.mkdir()
    [mib] = simulate_mib(source, name="late", scan_shape=(8, 8), frame_size=32)
    (camera / "late.hdr").write_bytes(b"")
    shutil.copy(mib, camera)
    wait_until(lambda: receiver.found, bool)
    time.sleep(0.5)
    shutil.copy(source / "late.hdr", camera)
    # Ended by the frame count the .hdr announces, long before the idle timeout.
    [series] = receiver.series(1, timeout_s=20)
    assert series.end is not None
    assert series.end["status"] == "complete"
    assert series.end["reason"] == "all 64 frames announced by the .hdr"
    assert len(series.frames) == 64
    assert "late.hdr" not in "".join(lines(service, "WARNING"))


def test_a_garbage_hdr_is_ignored_with_one_warning(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon("--idle-timeout", "1")
    receiver = Receiver(service.data)
    source, camera = tmp_path / "source", tmp_path / "camera"
    source.mkdir()
    [mib] = simulate_mib(source, name="noise", scan_shape=(8, 8), frame_size=32)
    (camera / "noise.hdr").write_bytes(np.random.default_rng(3).bytes(2048))
    shutil.copy(mib, camera)
    [series] = receiver.series(1)
    assert series.end is not None
    assert (series.end["status"], len(series.frames)) == ("complete", 64)
    assert series.end["nav_shape"] == [8, 8]
    [warning] = lines(service, "noise.hdr")
    assert "not a Merlin acquisition header" in warning
    assert "followed without it" in warning


def test_a_name_reused_after_its_run_ended_is_a_new_run(tmp_path: Path) -> None:
    camera, source = tmp_path / "camera", tmp_path / "source"
    with daemons(tmp_path) as start:
        service = start("--idle-timeout", "1")
        drain = Drain(service.data)
        source.mkdir()
        [first] = simulate_mib(source, name="reused", scan_shape=(8, 8), frame_size=32)
        shutil.copy(source / "reused.hdr", camera)
        shutil.copy(first, camera)
        wait_until(lambda: len(drain.ends), lambda count: count == 1)
        # Deleted, then written again under the same names.
        (camera / "reused.mib").unlink()
        (camera / "reused.hdr").unlink()
        [second] = simulate_mib(camera, name="reused", scan_shape=(4, 4), frame_size=32)
        wait_until(lambda: len(drain.ends), lambda count: count == 2)
        # Again, as large: the file system may even give it the inode just freed.
        second.unlink()
        simulate_mib(camera, name="reused", scan_shape=(4, 4), frame_size=32, seed=1)
        wait_until(lambda: len(drain.ends), lambda count: count == 3)
        # Rewritten in place, smaller: the same inode.
        smaller = b"".join(
            frame_header(second, frame)[1] + bytes(32 * 32 * 2) for frame in range(4)
        )
        with open(second, "r+b") as stream:
            stream.truncate(0)
            stream.write(smaller)
        wait_until(lambda: len(drain.ends), lambda count: count == 4)
        drain.close()
        service.stop()
        # A restart leaves the ended run alone; a new file under its name is a new run.
        service = start("--idle-timeout", "1")
        drain = Drain(service.data)
        (camera / "reused.mib").unlink()
        shutil.copy(source / "reused.hdr", camera)
        shutil.copy(first, camera / "reused.mib")
        wait_until(lambda: len(drain.ends), lambda count: count == 1)
        drain.close()
        recorded = runs(service)
    assert [row["frames"] for row in recorded] == [64, 4, 16, 16, 64]
    assert {row["path"] for row in recorded} == {str(camera / "reused.mib")}
    assert len({row["id"] for row in recorded}) == 5


def test_links_are_followed_only_within_the_watch_folders(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    camera = tmp_path / "camera"
    (camera / "kept").mkdir(parents=True)
    good_run(camera / "kept", "inside")
    (camera / "passwd.mib").symlink_to("/etc/passwd")
    service = daemon("--idle-timeout", "1")
    drain = Drain(service.data)
    (camera / "alias.mib").symlink_to(camera / "kept" / "inside.mib")
    (camera / "outside.mib").symlink_to(good_run(tmp_path / "elsewhere", "outside"))
    end = drain.end_of("alias.mib")
    time.sleep(1.5)  # more listings
    drain.close()
    assert (end["status"], end["frames"]) == ("complete", 16)
    assert [row["path"] for row in runs(service)] == [str(camera / "alias.mib")]
    for name in ("passwd.mib", "outside.mib"):
        [warning] = lines(service, name)
        assert "a symbolic link to a file outside the watch folders" in warning
    assert "root:x:0" not in service.log_text()
    assert service.process.poll() is None


def test_later_tvips_parts_are_parts_not_runs(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon("--idle-timeout", "1")
    receiver = Receiver(service.data)
    record = 76 + 32 * 32 * 2
    # A part every 3 frames at 500 frames/s: faster than the run looks for its next part.
    parts = simulate_tvips(
        tmp_path / "camera", name="tv", scan_shape=(8, 8), frame_size=32,
        max_file_size=256 + 3 * record, fps=500,
    )  # fmt: skip
    [series] = receiver.series(1)
    assert series.end is not None
    assert len(parts) > 5
    assert len(series.frames) == 64
    assert series.end["sources"] == [str(part) for part in parts]
    assert lines(service, "ERROR") == []


def test_a_file_too_short_for_the_header_it_announces_is_told_once(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    service = daemon("--idle-timeout", "1")
    small = good_run(tmp_path / "source", "small")
    start = bytearray(small.read_bytes()[:3000])
    start[11:16] = b"99999"
    (tmp_path / "camera" / "short.mib").write_bytes(bytes(start))
    wait_until(lambda: lines(service, "short.mib"), bool)
    time.sleep(2.0)
    [told] = lines(service, "short.mib")
    assert "its first frame header announces 99999 bytes, the file holds 3000" in told
    assert runs(service) == []


def test_runs_left_alone_at_start_are_counted_in_one_line(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    camera = tmp_path / "camera"
    camera.mkdir()
    for name in ("old1", "old2"):
        path = good_run(camera, name)
        os.utime(path, (time.time() - 3600,) * 2)
    service = daemon()
    wait_until(lambda: lines(service, "left alone"), bool)
    [summary] = lines(service, "left alone")
    assert "left alone 2 run files last changed over 10 s before the start" in summary
    assert "existing_max_age_s" in summary
