"""The run and job registry: real SQLite files that survive closing, reopening and SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stemcast.errors import FormatError, ParameterError, StemcastError, UnsupportedError
from stemcast.service.state.registry import (
    JOB_STATES,
    RUN_STATES,
    Registry,
    default_registry_path,
)


def add_run(registry: Registry, run_id: str, path: str = "/data/run.mib", **fields: Any) -> None:
    values: dict[str, Any] = {
        "path": path,
        "detector": "merlin",
        "sources": [path],
        "frame_shape": [256, 256],
        "dtype": ">u2",
        "frames_expected": 16,
        "watch_root": "/data",
    }
    values.update(fields)
    registry.add_run(run_id, **values)


def add_job(registry: Registry, job_id: str, key: str = "key", **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "source": "/data/run.mib",
        "run_id": None,
        "targets": ["blockfile", "emd"],
        "options": {"intensity_scaling": "crop"},
        "output_dir": "/out",
        "navigation_shape": None,
        "relative_to": None,
    }
    values.update(fields)
    return registry.add_job(job_id, key=key, **values)


def parse_time(text: str) -> datetime:
    assert text.endswith("Z")
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() == timedelta(0)
    return moment


@pytest.fixture
def registry(tmp_path: Path) -> Any:
    with Registry(tmp_path / "registry.sqlite3") as opened:
        yield opened


def test_a_run_comes_back_as_it_was_recorded(registry: Registry) -> None:
    before = datetime.now(UTC)
    registry.add_run(
        "0b6c",
        path="/data/a/run.mib",
        detector="merlin",
        sources=["/data/a/run.mib", "/data/a/run2.mib"],
        frame_shape=[512, 512],
        dtype=">u2",
        frames_expected=None,
        watch_root=None,
    )
    run = registry.run("0b6c")
    assert run is not None
    assert {key: run[key] for key in ("id", "path", "detector", "sources", "frame_shape")} == {
        "id": "0b6c",
        "path": "/data/a/run.mib",
        "detector": "merlin",
        "sources": ["/data/a/run.mib", "/data/a/run2.mib"],
        "frame_shape": [512, 512],
    }
    assert run["dtype"] == ">u2"
    assert run["frames_expected"] is None
    assert run["watch_root"] is None
    assert run["status"] == "following"
    assert run["frames"] == 0
    assert run["ended_at"] is None
    assert before <= parse_time(run["started_at"]) <= datetime.now(UTC)
    assert run["created_at"] == run["started_at"]
    assert json.loads(json.dumps(run)) == run
    assert registry.run("missing") is None


def test_update_run_changes_only_the_given_fields(registry: Registry) -> None:
    add_run(registry, "r1")
    registry.update_run("r1", frames=7, nav_shape=[4, 2], nav_evidence="timestamps")
    run = registry.run("r1")
    assert run is not None
    assert run["frames"] == 7
    assert run["nav_shape"] == [4, 2]
    assert run["nav_evidence"] == "timestamps"
    assert run["status"] == "following"
    assert run["ended_at"] is None
    assert run["sources"] == ["/data/run.mib"]

    registry.update_run(
        "r1",
        status="interrupted",
        reason="no new frame for 10 s",
        sources=["/data/run.mib", "/data/run_2.mib"],
        nav_shape_intended=[4, 4],
        nav_detail="7 frames of a 4 x 4 scan",
    )
    run = registry.run("r1")
    assert run is not None
    assert run["frames"] == 7
    assert run["nav_shape"] == [4, 2]
    assert run["nav_shape_intended"] == [4, 4]
    assert run["nav_detail"] == "7 frames of a 4 x 4 scan"
    assert run["status"] == "interrupted"
    assert run["reason"] == "no new frame for 10 s"
    assert run["sources"] == ["/data/run.mib", "/data/run_2.mib"]
    assert parse_time(run["ended_at"]) >= parse_time(run["started_at"])


def test_unknown_ids_raise_key_error(registry: Registry) -> None:
    with pytest.raises(KeyError, match="nope"):
        registry.update_run("nope", frames=1)
    with pytest.raises(KeyError, match="nope"):
        registry.update_job("nope", frames_done=1)


def test_unknown_states_and_bad_values_are_parameter_errors(registry: Registry) -> None:
    add_run(registry, "r1")
    add_job(registry, "j1")
    with pytest.raises(ParameterError, match=r"'status'.*'done'.*following"):
        registry.update_run("r1", status="done")
    with pytest.raises(ParameterError, match=r"'status'.*'complete'.*queued"):
        registry.update_job("j1", status="complete")
    with pytest.raises(ParameterError, match="'status'"):
        registry.runs(status="Complete")
    with pytest.raises(ParameterError, match="'status'"):
        registry.jobs(status="finished")
    with pytest.raises(ParameterError, match="'frames'"):
        registry.update_run("r1", frames=-1)
    with pytest.raises(ParameterError, match="'limit'"):
        registry.jobs(limit=-1)
    with pytest.raises(ParameterError, match="'options'"):
        add_job(registry, "j2", options={"scale": float("nan")})
    with pytest.raises(ParameterError, match="'options'"):
        add_job(registry, "j3", options={"array": object()})
    with pytest.raises(ParameterError, match=r"'run_id'.*'r1' is already"):
        add_run(registry, "r1")
    with pytest.raises(ParameterError, match=r"'job_id'.*'j1' is already"):
        add_job(registry, "j1")
    # Nothing of the refused calls was stored.
    run = registry.run("r1")
    assert run is not None
    assert (run["status"], run["frames"]) == ("following", 0)
    assert [job["id"] for job in registry.jobs()] == ["j1"]
    assert registry.job("j1") == registry.jobs()[0]


def test_rows_survive_closing_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "state" / "registry.sqlite3"
    with Registry(path) as registry:
        add_run(registry, "r1", path="/data/a.mib")
        registry.update_run("r1", frames=16, status="complete", nav_shape=[4, 4])
        add_run(registry, "r2", path="/data/b.mib")
        add_job(registry, "j1", key="k1", run_id="r1", navigation_shape=[4, 4])
        registry.update_job("j1", status="running")
        registry.update_job(
            "j1", frames_done=16, outputs={"emd": "/out/a.emd"}, bytes_written=123, status="done"
        )
        add_job(registry, "j2", key="k2", relative_to="/data")
        runs, jobs = registry.runs(), registry.jobs()
    assert path.is_file()
    with Registry(path) as reopened:
        assert reopened.runs() == runs
        assert reopened.jobs() == jobs
        assert reopened.run("r1") == runs[1]
        assert reopened.job("j1") == jobs[1]
    assert jobs[1]["outputs"] == {"emd": "/out/a.emd"}
    assert jobs[1]["navigation_shape"] == [4, 4]
    assert jobs[0]["relative_to"] == "/data"
    direct = sqlite3.connect(path)
    assert direct.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    direct.close()


_WRITER = """
import sys
from stemcast.service.state.registry import Registry

registry = Registry(sys.argv[1])
index = 0
while True:
    run_id = f"run-{index}"
    registry.add_run(run_id, path=f"/data/{run_id}.mib", detector="merlin",
                     sources=[f"/data/{run_id}.mib"], frame_shape=[64, 64], dtype=">u2",
                     frames_expected=4, watch_root="/data")
    registry.update_run(run_id, frames=4, status="complete")
    registry.add_job(f"job-{index}", key=run_id, source=f"/data/{run_id}.mib", run_id=run_id,
                     targets=["emd"], options={"index": index}, output_dir="/out",
                     navigation_shape=[2, 2], relative_to=None)
    registry.update_job(f"job-{index}", status="running", frames_done=index)
    print(index, flush=True)
    index += 1
"""


def test_committed_rows_survive_a_writer_killed_mid_way(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    try:
        reported = -1
        while reported < 2000:
            line = writer.stdout.readline()
            assert line, f"the writer stopped on its own (exit {writer.poll()})"
            reported = int(line)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL

    direct = sqlite3.connect(path)
    assert direct.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    direct.close()
    with Registry(path) as registry:
        runs = {run["id"]: run for run in registry.runs()}
        jobs = {job["id"]: job for job in registry.jobs()}
        for index in range(reported + 1):
            run = runs[f"run-{index}"]
            assert (run["status"], run["frames"]) == ("complete", 4)
            job = jobs[f"job-{index}"]
            assert (job["status"], job["frames_done"]) == ("running", index)
            assert job["options"] == {"index": index}
        # The killed process may have committed a few more rows after its last report,
        # never a partial one: every job after the last reported refers to a recorded run.
        assert len(runs) >= reported + 1
        assert all(job["run_id"] in runs for job in jobs.values())
        add_run(registry, "after-restart")
        assert registry.run("after-restart") is not None


def test_finished_paths_are_every_file_of_ended_runs(registry: Registry) -> None:
    ends = {"complete": "a", "interrupted": "b", "failed": "c", "abandoned": "d"}
    for status, name in ends.items():
        add_run(registry, name, path=f"/data/{name}_1.tvips", sources=[f"/data/{name}_1.tvips"])
        registry.update_run(
            name, status=status, sources=[f"/data/{name}_1.tvips", f"/data/{name}_2.tvips"]
        )
    add_run(registry, "e", path="/data/e.mib")
    assert registry.finished_paths() == {
        "/data/a_1.tvips",
        "/data/a_2.tvips",
        "/data/b_1.tvips",
        "/data/b_2.tvips",
        "/data/c_1.tvips",
        "/data/c_2.tvips",
    }


def test_job_by_key_finds_live_jobs_and_lets_failed_ones_be_requested_again(
    registry: Registry,
) -> None:
    assert registry.job_by_key("k") is None
    add_job(registry, "j1", key="k")
    assert registry.job_by_key("k") == registry.job("j1")
    registry.update_job("j1", status="running")
    assert registry.job_by_key("k") == registry.job("j1")
    registry.update_job("j1", status="failed", error="disk full")
    assert registry.job_by_key("k") is None
    add_job(registry, "j2", key="k")
    registry.update_job("j2", status="cancelled")
    assert registry.job_by_key("k") is None
    add_job(registry, "j3", key="k")
    registry.update_job("j3", status="running")
    registry.update_job("j3", status="done")
    assert registry.job_by_key("k") == registry.job("j3")
    add_job(registry, "j4", key="k")
    assert registry.job_by_key("k") == registry.job("j4")
    assert registry.job_by_key("other") is None


def test_lists_keep_insertion_order_even_when_times_tie(registry: Registry) -> None:
    ids = [f"job-{index:03d}" for index in range(60)]
    # Ids sorted differently from insertion, so an order by id would show.
    order = ids[::2] + ids[1::2]
    for job_id in order:
        add_job(registry, job_id, run_id="r1" if job_id in ids[:10] else None)
    for job_id in order[5:15]:
        registry.update_job(job_id, status="running")
    for job_id in order[15:20]:
        registry.update_job(job_id, status="done")
    assert [job["id"] for job in registry.jobs()] == order[::-1]
    assert [job["id"] for job in registry.jobs(limit=3)] == order[::-1][:3]
    assert registry.jobs(limit=0) == []
    assert [job["id"] for job in registry.jobs(status="running")] == order[5:15][::-1]
    expected_run_jobs = [job_id for job_id in order[::-1] if job_id in ids[:10]]
    assert [job["id"] for job in registry.jobs(run_id="r1")] == expected_run_jobs
    assert [job["id"] for job in registry.jobs(run_id="r1", status="running", limit=2)] == [
        job_id for job_id in expected_run_jobs if job_id in order[5:15]
    ][:2]
    unfinished = order[:15] + order[20:]
    assert [job["id"] for job in registry.unfinished_jobs()] == unfinished

    for index in range(5):
        add_run(registry, f"run-{4 - index}")
    registry.update_run("run-2", status="failed")
    assert [run["id"] for run in registry.runs()] == ["run-0", "run-1", "run-2", "run-3", "run-4"]
    assert [run["id"] for run in registry.runs(limit=2)] == ["run-0", "run-1"]
    assert [run["id"] for run in registry.runs(status="following")] == [
        "run-0",
        "run-1",
        "run-3",
        "run-4",
    ]


def test_counts_list_every_state(registry: Registry) -> None:
    assert registry.count_runs() == dict.fromkeys(RUN_STATES, 0)
    assert registry.count_jobs() == dict.fromkeys(JOB_STATES, 0)
    for index in range(4):
        add_run(registry, f"r{index}")
        add_job(registry, f"j{index}")
    registry.update_run("r0", status="complete")
    registry.update_run("r1", status="complete")
    registry.update_run("r2", status="abandoned")
    registry.update_job("j0", status="running")
    registry.update_job("j1", status="cancelled")
    assert registry.count_runs() == {
        "following": 1,
        "complete": 2,
        "interrupted": 0,
        "failed": 0,
        "abandoned": 1,
    }
    assert registry.count_jobs() == {
        "queued": 2,
        "running": 1,
        "done": 0,
        "failed": 0,
        "cancelled": 1,
    }


def test_job_times_follow_its_states(registry: Registry) -> None:
    queued = add_job(registry, "j1")
    assert queued["status"] == "queued"
    assert (queued["started_at"], queued["ended_at"], queued["duration_s"]) == (None, None, None)
    assert (queued["frames_done"], queued["bytes_written"], queued["outputs"]) == (0, 0, {})
    running = registry.update_job("j1", status="running", frames_total=64)
    assert parse_time(running["started_at"]) >= parse_time(running["created_at"])
    assert (running["ended_at"], running["duration_s"]) == (None, None)
    # A restart puts an interrupted job back in the queue, then runs it again.
    requeued = registry.update_job("j1", status="queued")
    assert requeued["started_at"] == running["started_at"]
    again = registry.update_job("j1", status="running")
    assert parse_time(again["started_at"]) >= parse_time(running["started_at"])
    done = registry.update_job("j1", status="done", frames_done=64, bytes_written=4096)
    assert (done["frames_done"], done["frames_total"], done["bytes_written"]) == (64, 64, 4096)
    started, ended = parse_time(done["started_at"]), parse_time(done["ended_at"])
    assert ended >= started
    assert done["duration_s"] == (ended - started).total_seconds()
    assert done == registry.job("j1")
    assert json.loads(json.dumps(done)) == done

    add_job(registry, "j2")
    cancelled = registry.update_job("j2", status="cancelled")
    assert cancelled["started_at"] is None
    created, ended = parse_time(cancelled["created_at"]), parse_time(cancelled["ended_at"])
    assert cancelled["duration_s"] == (ended - created).total_seconds()


def test_threads_updating_at_once_lose_nothing(registry: Registry) -> None:
    workers, jobs_each, steps = 4, 25, 5
    failures: list[BaseException] = []
    done_writing = threading.Event()

    def convert(worker: int) -> None:
        try:
            for index in range(jobs_each):
                job_id = f"w{worker}-{index}"
                add_job(registry, job_id, key=job_id)
                registry.update_job(job_id, status="running", frames_total=steps)
                for step in range(1, steps + 1):
                    registry.update_job(job_id, frames_done=step, bytes_written=step * 100)
                registry.update_job(job_id, status="done")
                add_run(registry, job_id)
                registry.update_run(job_id, frames=index, status="complete")
        except BaseException as error:  # reported to the main thread below
            failures.append(error)

    def watch() -> None:
        try:
            while not done_writing.is_set():
                # Jobs are only ever added, and a job's updates commit in order.
                counted = sum(registry.count_jobs().values())
                listed = registry.jobs()
                assert counted <= len(listed)
                for job in listed:
                    if job["status"] == "done":
                        assert job["frames_done"] == steps
                registry.unfinished_jobs()
                registry.finished_paths()
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=convert, args=(worker,)) for worker in range(workers)]
    watcher = threading.Thread(target=watch)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done_writing.set()
    watcher.join()
    assert failures == []
    total = workers * jobs_each
    assert registry.count_jobs()["done"] == total
    assert registry.count_runs()["complete"] == total
    for job in registry.jobs():
        assert (job["frames_done"], job["bytes_written"]) == (steps, steps * 100)
    for worker in range(workers):
        for index in range(jobs_each):
            run = registry.run(f"w{worker}-{index}")
            assert run is not None
            assert run["frames"] == index


def test_a_corrupt_file_is_a_format_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    contents = os.urandom(8192)
    path.write_bytes(contents)
    with pytest.raises(FormatError, match=r"registry\.sqlite3: not an SQLite registry"):
        Registry(path)
    assert path.read_bytes() == contents


def test_an_sqlite_file_of_another_application_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE photos (name TEXT)")
    other.close()
    with pytest.raises(FormatError, match=r"other\.sqlite3: .*photos.*not a stemcast registry"):
        Registry(path)


def test_a_newer_schema_version_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    with Registry(path) as registry:
        add_run(registry, "r1")
    direct = sqlite3.connect(path)
    version = direct.execute("PRAGMA user_version").fetchone()[0]
    direct.execute(f"PRAGMA user_version = {version + 1}")
    direct.close()
    with pytest.raises(
        UnsupportedError, match=rf"registry\.sqlite3: .*version {version + 1}.*newer"
    ):
        Registry(path)


#: The jobs table of schema version 1 (the runs table is the same in version 2).
_JOBS_V1 = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL,
    source TEXT NOT NULL,
    run_id TEXT,
    targets TEXT NOT NULL,
    options TEXT NOT NULL,
    output_dir TEXT NOT NULL,
    navigation_shape TEXT,
    relative_to TEXT,
    status TEXT NOT NULL,
    frames_done INTEGER NOT NULL DEFAULT 0,
    frames_total INTEGER,
    outputs TEXT NOT NULL DEFAULT '{}',
    bytes_written INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT
)
"""


def test_a_version_1_registry_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    with Registry(path) as registry:
        add_run(registry, "r1")
    direct = sqlite3.connect(path, isolation_level=None)
    direct.execute("DROP TABLE jobs")
    direct.execute(_JOBS_V1)
    direct.execute(
        "INSERT INTO jobs (id, key, source, targets, options, output_dir, status, outputs,"
        " created_at, started_at, ended_at) VALUES ('old', 'k', '/data/run.mib', '[\"emd\"]',"
        " '{}', '/out', 'done', '{\"emd\": \"/out/run.emd\"}', '2025-01-01T00:00:00.000000Z',"
        " '2025-01-01T00:00:01.000000Z', '2025-01-01T00:00:02.000000Z')"
    )
    direct.execute("PRAGMA user_version = 1")
    direct.close()
    with Registry(path) as registry:
        old = registry.job("old")
        assert old is not None
        assert old["status"] == "done"
        assert old["outputs"] == {"emd": "/out/run.emd"}
        # Written before fingerprints were kept: nothing says the file is still that job's.
        assert old["tags"] == {}
        assert old["fingerprints"] is None
        assert registry.run("r1") is not None
        new = add_job(registry, "new", tags={"emd": "1f2e3d4c"})
        assert new["tags"] == {"emd": "1f2e3d4c"}
        done = registry.update_job("new", status="done", fingerprints={"emd": [1, 2, 3, 4]})
        assert done["fingerprints"] == {"emd": [1, 2, 3, 4]}
    direct = sqlite3.connect(path)
    assert direct.execute("PRAGMA user_version").fetchone()[0] == 2
    direct.close()


def test_a_folder_in_place_of_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StemcastError, match=r"cannot open the registry") as caught:
        Registry(tmp_path)
    assert caught.value.path == str(tmp_path)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(options=st.dictionaries(st.text(), _JSON, max_size=6), key=st.text())
def test_job_options_and_keys_round_trip(
    registry: Registry, options: dict[str, Any], key: str
) -> None:
    job_id = str(uuid.uuid4())
    added = add_job(registry, job_id, key=key, options=options)
    assert added["options"] == options
    stored = registry.job(job_id)
    assert stored is not None
    assert stored["options"] == options
    assert stored["key"] == key
    assert registry.job_by_key(key) == stored


def test_default_path_follows_xdg_state_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_registry_path() == tmp_path / "state" / "stemcast" / "registry.sqlite3"
    fallback = Path.home() / ".local" / "state" / "stemcast" / "registry.sqlite3"
    for unusable in ("", "relative/state"):
        monkeypatch.setenv("XDG_STATE_HOME", unusable)
        assert default_registry_path() == fallback
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_registry_path() == fallback
