"""The HTTP control API of a real daemon (a subprocess), called over real HTTP on loopback."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from live import Daemon, Drain, call, start_daemon, wait_until

from stemcast.simulate import simulate_mib

TOKEN = "a-long-random-token-for-the-tests"


@dataclass
class Site:
    daemon: Daemon
    drain: Drain
    base: Path
    camera: Path
    second: Path
    archive: Path
    outside: Path

    @property
    def url(self) -> str:
        assert self.daemon.http is not None
        return self.daemon.http

    def run(self, name: str, folder: Path | None = None, **kwargs: Any) -> dict[str, Any]:
        """Write a small complete Merlin run; return its recorded row once it has ended."""
        simulate_mib(
            folder or self.camera,
            name=name,
            scan_shape=(6, 4),
            frame_size=32,
            counter_depth=6,
            hdr_scan_size=True,
            **kwargs,
        )
        end = self.drain.end_of(f"{name}.mib")
        status, run = call("GET", f"{self.url}/runs/{end['series']}")
        assert status == 200
        return run

    def job(self, job_id: str) -> dict[str, Any]:
        status, job = call("GET", f"{self.url}/jobs/{job_id}")
        assert status == 200
        return job

    def finished(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = wait_until(
            lambda: self.job(job_id),
            lambda job: job["status"] in ("done", "failed", "cancelled"),
        )
        return job


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("api")
    folders = [base / name for name in ("camera", "second", "archive", "outside")]
    for folder in folders:
        folder.mkdir()
    (base / "token").write_text(TOKEN + "\n")
    (base / "stemcast.toml").write_text(f'input_roots = ["{base / "archive"}"]\n')
    daemon = start_daemon(
        base / "camera", base / "daemon.log",
        "--watch", str(base / "second"), "--config", str(base / "stemcast.toml"),
        "--output", str(base / "out"), "--token-file", str(base / "token"),
        "--idle-timeout", "60",
    )  # fmt: skip
    drain = Drain(daemon.data)
    try:
        yield Site(daemon, drain, base, *folders)
    finally:
        # Stopped while the drain still consumes: the runs it follows end at once.
        code = daemon.stop()
        drain.close()
    assert code == 0
    assert "Traceback" not in daemon.log_text()


def test_runs_are_listed_with_their_shape_evidence_and_jobs(site: Site) -> None:
    run = site.run("listed")
    assert run["status"] == "complete"
    assert run["reason"] == "all 24 frames announced by the .hdr"
    assert run["frames"] == run["frames_expected"] == 24
    assert run["detector"] == "merlin"
    assert run["frame_shape"] == [32, 32]
    assert run["dtype"] == "|u1"
    assert run["nav_shape"] == run["nav_shape_intended"] == [6, 4]
    assert run["nav_evidence"] == "hdr"
    assert run["nav_detail"]
    assert run["sources"] == [str(site.camera / "listed.mib")]
    assert run["jobs"] == []
    status, listed = call("GET", f"{site.url}/runs?status=complete")
    assert status == 200
    assert run["id"] in [row["id"] for row in listed["runs"]]
    status, newest = call("GET", f"{site.url}/runs?limit=1")
    assert status == 200
    assert [row["id"] for row in newest["runs"]] == [run["id"]]


def test_unknown_things_and_bad_queries_are_json_errors(site: Site) -> None:
    assert call("GET", f"{site.url}/runs/no-such-run") == (404, {"error": "no run no-such-run"})
    assert call("GET", f"{site.url}/jobs/no-such-job") == (404, {"error": "no job no-such-job"})
    status, body = call("GET", f"{site.url}/runs?status=sleeping")
    assert status == 400
    assert body["error"].startswith("status: ")
    assert '"sleeping"' in body["error"]
    status, body = call("GET", f"{site.url}/jobs?limit=many")
    assert status == 400
    assert "limit" in body["error"]
    status, body = call("GET", f"{site.url}/nowhere")
    assert status == 404
    assert "Not Found" in body["error"]
    status, body = call("PUT", f"{site.url}/runs", {}, token=TOKEN)
    assert status == 405
    assert "error" in body


def test_changes_need_the_bearer_token(site: Site) -> None:
    run = site.run("guarded")
    url = f"{site.url}/runs/{run['id']}/convert"
    status, body = call("POST", url, {"targets": "emd"})
    assert status == 401
    assert "missing bearer token" in body["error"]
    status, body = call("POST", url, {"targets": "emd"}, token="not-" + TOKEN)
    assert status == 401
    assert body == {"error": "wrong bearer token"}
    status, body = call("DELETE", f"{site.url}/jobs/whatever")
    assert status == 401
    assert call("GET", f"{site.url}/runs/{run['id']}")[1]["jobs"] == []
    status, job = call("POST", url, {"targets": "emd"}, token=TOKEN)
    assert status == 202
    assert job["existing"] is False


def test_the_same_conversion_asked_twice_runs_once(site: Site) -> None:
    from rsciio.emd import file_reader as read_emd
    from rsciio.quantumdetector import file_reader as read_mib

    run = site.run("twice")
    url = f"{site.url}/runs/{run['id']}/convert"
    request = {"targets": ["emd"], "options": {"emd": {"compression": "gzip"}}}
    status, job = call("POST", url, request, token=TOKEN)
    assert status == 202
    assert job["existing"] is False
    assert job["run_id"] == run["id"]
    assert job["targets"] == ["emd"]
    assert job["options"] == {"emd": {"compression": "gzip", "compression_opts": 4}}
    assert job["navigation_shape"] == [6, 4]
    done = site.finished(job["id"])
    assert done["status"] == "done"
    assert done["progress"] == {"frames_done": 24, "frames_total": 24, "fraction": 1.0}
    output = Path(done["outputs"]["emd"])
    # Not the run's usual options (none are configured): the output's name says so.
    assert output.parent == site.base / "out" / "camera"
    assert re.fullmatch(r"twice\.[0-9a-f]{8}\.emd", output.name)
    before = output.stat()
    status, again = call("POST", url, request, token=TOKEN)
    assert status == 200
    assert again["existing"] is True
    assert again["id"] == job["id"]
    after = output.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    status, jobs = call("GET", f"{site.url}/jobs?run_id={run['id']}")
    assert status == 200
    assert [listed["id"] for listed in jobs["jobs"]] == [job["id"]]
    shown = call("GET", f"{site.url}/runs/{run['id']}")[1]
    assert [listed["outputs"] for listed in shown["jobs"]] == [{"emd": str(output)}]
    [converted] = read_emd(str(output))
    [source] = read_mib(str(site.camera / "twice.mib"))
    np.testing.assert_array_equal(converted["data"], source["data"])
    status, body = call("DELETE", f"{site.url}/jobs/{job['id']}", token=TOKEN)
    assert status == 409
    assert "already ended: done" in body["error"]
    assert call("DELETE", f"{site.url}/jobs/nothing", token=TOKEN)[0] == 404


def test_bad_requests_say_what_is_wrong(site: Site) -> None:
    run = site.run("malformed")
    url = f"{site.url}/runs/{run['id']}/convert"
    status, body = call("POST", url, raw=b"{not json", token=TOKEN)
    assert status == 400
    assert "not JSON" in body["error"]
    status, body = call("POST", url, ["emd"], token=TOKEN)
    assert status == 400
    assert "JSON object" in body["error"]
    status, body = call("POST", url, {"target": "emd"}, token=TOKEN)
    assert status == 400
    assert body["error"] == "target: unknown field; expected navigation_shape, options, targets"
    status, body = call("POST", url, {"targets": "tiff"}, token=TOKEN)
    assert status == 400
    assert "'tiff' is not a target" in body["error"]
    status, body = call(
        "POST", url, {"targets": "emd", "options": {"emd": {"compression": "zip"}}}, token=TOKEN
    )
    assert status == 400
    assert "options.emd.compression" in body["error"]
    status, body = call("POST", url, {}, token=TOKEN)
    assert status == 400
    assert "no targets" in body["error"]
    status, body = call("POST", f"{site.url}/convert", {"targets": "emd"}, token=TOKEN)
    assert status == 400
    assert body["error"] == "path: required"
    assert call("GET", f"{site.url}/jobs?run_id={run['id']}")[1]["jobs"] == []


def test_paths_stay_inside_the_watch_folders_and_input_roots(site: Site) -> None:
    [archived] = simulate_mib(
        site.archive, name="archived", scan_shape=(4, 4), frame_size=32, counter_depth=6
    )
    [secret] = simulate_mib(
        site.outside, name="secret", scan_shape=(4, 4), frame_size=32, counter_depth=6
    )
    (site.archive / "escape.mib").symlink_to(secret)
    (site.archive / "notes.txt").write_text("not a run")
    url = f"{site.url}/convert"

    def post(path: str) -> tuple[int, dict[str, Any]]:
        return call("POST", url, {"path": path, "targets": "emd"}, token=TOKEN)

    for refused in (
        str(secret),
        str(site.archive / ".." / "outside" / "secret.mib"),
        "../outside/secret.mib",
        str(site.archive / "escape.mib"),
        "escape.mib",
    ):
        status, body = post(refused)
        assert status == 403, refused
        assert "'..'" in body["error"] or "outside the folders" in body["error"]
    status, body = post(str(site.archive / "missing.mib"))
    assert status == 404
    status, body = post(str(site.archive / "notes.txt"))
    assert status == 400
    assert "not a Merlin .mib or TVIPS .tvips file" in body["error"]
    status, job = post("archived.mib")
    assert status == 202
    assert job["source"] == str(archived)
    assert job["run_id"] is None
    status, same = post(str(archived))
    assert status == 200
    assert same["id"] == job["id"]
    done = site.finished(job["id"])
    assert done["status"] == "done"
    assert done["outputs"] == {"emd": str(site.base / "out" / "archive" / "archived.emd")}
    assert not (site.base / "out" / "outside" / "secret.emd").exists()


def test_runs_being_followed_or_failed_are_not_converted(site: Site) -> None:
    [growing] = simulate_mib(
        site.second, name="growing", scan_shape=(8, 8), frame_size=32, interrupt_after=12
    )
    [doomed] = simulate_mib(
        site.camera, name="doomed", scan_shape=(8, 8), frame_size=32, interrupt_after=9
    )

    def run_of(path: Path) -> dict[str, Any] | None:
        runs = call("GET", f"{site.url}/runs")[1]["runs"]
        return next((run for run in runs if run["path"] == str(path)), None)

    following = wait_until(lambda: run_of(growing), lambda run: run is not None)
    assert following["status"] == "following"
    status, body = call(
        "POST", f"{site.url}/runs/{following['id']}/convert", {"targets": "emd"}, token=TOKEN
    )
    assert status == 409
    assert "still being followed" in body["error"]
    status, body = call(
        "POST", f"{site.url}/convert", {"path": str(growing), "targets": "emd"}, token=TOKEN
    )
    assert status == 409
    assert "following this run" in body["error"]
    wait_until(lambda: run_of(doomed), lambda run: run is not None)
    doomed.unlink()
    failed = wait_until(
        lambda: run_of(doomed), lambda run: run is not None and run["status"] == "failed"
    )
    status, body = call(
        "POST", f"{site.url}/runs/{failed['id']}/convert", {"targets": "emd"}, token=TOKEN
    )
    assert status == 409
    assert "is failed" in body["error"]


def test_without_a_token_changes_are_refused_and_reading_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    camera = tmp_path / "camera"
    camera.mkdir()
    monkeypatch.delenv("STEMCAST_TOKEN", raising=False)
    daemon = start_daemon(camera, tmp_path / "daemon.log", "--output", str(tmp_path / "out"))
    try:
        assert daemon.http is not None
        assert call("GET", f"{daemon.http}/runs") == (200, {"runs": []})
        status, body = call("POST", f"{daemon.http}/convert", {"path": "x.mib"}, token=TOKEN)
        assert status == 403
        assert "token_file" in body["error"]
        assert "STEMCAST_TOKEN" in body["error"]
    finally:
        assert daemon.stop() == 0
