"""The viewer's page, files and WebSocket, served by the daemon (a subprocess), with a client
that does what the page does. Expected images are the detectors applied with numpy to what
rosettasciio reads from the simulator's files."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from live import Daemon, call, daemons, wait_until
from rsciio.quantumdetector import file_reader as read_mib
from rsciio.tvips import file_reader as read_tvips
from test_viewer_sums import reference
from viewer_page import Page

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    with daemons(tmp_path) as start:
        yield start


def simulate(folder: Path, *flags: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "stemcast.cli", "simulate", str(folder), *flags]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, text=True)


def offline(path: Path, scan: tuple[int, int], detector: dict) -> np.ndarray:
    """The detector applied to the run's frames as rosettasciio reads them: ``(y, x)``."""
    data = np.asarray(read_mib(str(path), navigation_shape=scan)[0]["data"])
    return reference(data.reshape(-1, *data.shape[-2:]), detector).reshape(scan[1], scan[0])


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with _HTTP.open(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def test_the_page_and_its_files_ship_in_the_package_and_are_only_read(
    daemon: Callable[..., Daemon],
) -> None:
    http = daemon().http
    status, headers, body = get(http + "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert b'id="frames"' in body
    assert b"/viewer/viewer.js" in body
    assert b"http" not in body.replace(b"http://www.w3.org/2000/svg", b"")  # nothing fetched
    status, headers, script = get(http + "/viewer/viewer.js")
    assert status == 200
    assert headers["Content-Type"].startswith("text/javascript")
    assert b"window.stemcastViewer" in script
    assert get(http + "/viewer/viewer.css")[0] == 200
    assert get(http + "/viewer/other.js")[0] == 404
    # The same rules as the rest of the API: reading is open, anything else needs the token.
    assert call("POST", http + "/")[0] == 403


def test_a_page_of_another_site_cannot_open_the_socket(daemon: Callable[..., Daemon]) -> None:
    http = daemon().http

    async def connect() -> None:
        async with Page(http, origin="http://elsewhere.example"):
            pass

    with pytest.raises(Exception, match="403"):
        asyncio.run(connect())


def test_a_page_follows_a_run_live_and_changing_the_detector_recomputes_its_image(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    http = daemon().http
    camera = tmp_path / "camera"
    scan = (8, 6)

    async def watch() -> None:
        async with Page(http) as page:
            await page.wait(lambda page: page.runs is not None)
            writer = simulate(camera, "--scan", "8x6", "--frame-size", "64", "--fps", "100")
            await page.wait(lambda page: page.view is not None)
            await page.wait(lambda page: page.image is not None and page.image["filled"] == 48)
            assert writer.wait(30) == 0
            await page.wait(lambda page: page.runs and page.runs[0]["status"] == "complete")
            [run] = page.runs
            assert run["id"] == page.view["run"]
            assert run["frames"] == 48
            assert run["scan"]["shape"] == list(scan)
            assert run["scan"]["evidence"] == "timestamps"
            assert run["name"] == "scan.mib"
            assert run["frame_shape"] == [64, 64]
            path = camera / "scan.mib"
            # The bright-field disk the service found, applied offline.
            detector = page.detector
            assert detector["kind"] == "disk"
            np.testing.assert_array_equal(page.image_values(), offline(path, scan, detector))
            # Frames: the newest at most ten times a second, each acknowledged as drawn.
            indices = [frame["index"] for frame in page.frames]
            assert indices == sorted(set(indices))
            assert indices[-1] == 47
            np.testing.assert_array_equal(
                page.pixels, np.asarray(read_mib(str(path))[0]["data"]).reshape(-1, 64, 64)[47]
            )
            for spec in (
                {"kind": "annulus", "cx": 30.0, "cy": 33.5, "inner": 6.0, "outer": 25.0},
                {"kind": "com_y"},
            ):
                await page.send({"type": "detector", "detector": spec})
                await page.wait(
                    lambda page, spec=spec: (
                        page.image["detector"] == spec and page.image["filled"] == 48
                    )
                )
                np.testing.assert_allclose(page.image_values(), offline(path, scan, spec))

    asyncio.run(watch())


def test_bad_messages_are_answered_with_an_error_and_the_page_stays(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    http = daemon().http
    assert simulate(tmp_path / "camera", "--scan", "4x4", "--frame-size", "32").wait(30) == 0

    async def watch() -> None:
        async with Page(http) as page:
            await page.wait(lambda page: page.image is not None and page.image["filled"] == 16)
            await page.send({"type": "detector", "detector": {"kind": "disk", "cx": 1}})
            await page.send({"type": "unknown"})
            await page.send({"type": "view", "run": 3})
            await page.wait(lambda page: len(page.errors) == 3)
            for problem in (
                "parameter 'detector': cy must be a number",
                "parameter 'type': unknown message type 'unknown'",
                "parameter 'run': run must be a run id or null",
            ):
                assert any(problem in error for error in page.errors), (problem, page.errors)
            await page.send({"type": "view", "run": "no-such-run"})
            await page.wait(lambda page: len(page.errors) == 4)
            assert "run no-such-run cannot be shown" in page.errors[3]
            await page.send({"type": "view", "run": None})
            await page.wait(lambda page: page.view is not None and not page.view["pinned"])

    asyncio.run(watch())


def test_a_run_that_ended_before_the_service_started_is_shown_from_its_files(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    first = daemon("--idle-timeout", "1")
    assert simulate(tmp_path / "camera", "--scan", "5x4", "--frame-size", "32").wait(30) == 0
    [run] = wait_until(
        lambda: call("GET", first.http + "/runs")[1]["runs"],
        lambda runs: runs and runs[0]["status"] == "complete",
    )
    first.stop()
    http = daemon().http

    async def watch() -> None:
        async with Page(http) as page:
            await page.wait(lambda page: page.runs)
            await page.send({"type": "view", "run": run["id"]})
            await page.wait(lambda page: page.image is not None and page.image["filled"] == 20)
            assert page.view["pinned"]
            path = tmp_path / "camera" / "scan.mib"
            np.testing.assert_array_equal(page.image_values(), offline(path, (5, 4), page.detector))
            assert page.frames[-1]["index"] == 19

    asyncio.run(watch())


def test_pages_follow_each_new_run_unless_they_keep_one_and_see_its_conversion(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    http = daemon("--output", str(tmp_path / "converted"), "--convert", "emd").http
    camera = tmp_path / "camera"

    async def watch() -> None:
        async with Page(http) as following, Page(http) as keeping:
            flags = ("--scan", "4x3", "--frame-size", "32")
            assert simulate(camera, *flags, "--name", "first").wait(30) == 0
            await following.wait(lambda page: page.image is not None and page.image["filled"] == 12)
            first = following.view["run"]
            await keeping.send({"type": "view", "run": first})
            await keeping.wait(lambda page: page.view is not None and page.view["pinned"])
            assert simulate(camera, *flags, "--name", "second").wait(30) == 0
            await following.wait(lambda page: page.view["run"] != first)
            await following.wait(lambda page: page.image is not None and page.image["filled"] == 12)
            assert not following.view["pinned"]
            assert keeping.view["run"] == first

            def converted(page: Page) -> bool:
                runs = page.runs
                return len(runs) == 2 and all(
                    run["jobs"] and run["jobs"][0]["status"] == "done" for run in runs
                )

            await keeping.wait(converted, timeout_s=60)
            second, listed_first = keeping.runs
            assert (listed_first["id"], listed_first["name"]) == (first, "first.mib")
            assert second["name"] == "second.mib"
            [job] = listed_first["jobs"]
            assert job["targets"] == ["emd"]
            assert job["progress"]["fraction"] == 1.0
            assert Path(job["outputs"]["emd"]).name == "first.emd"
            assert Path(job["outputs"]["emd"]).exists()

    asyncio.run(watch())


def test_a_tvips_scan_found_from_its_rotator_index_places_each_frame_at_its_position(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    http = daemon().http
    camera = tmp_path / "camera"

    async def watch() -> None:
        async with Page(http) as page:
            writer = simulate(
                camera, "--format", "tvips", "--scan", "6x4", "--frame-size", "32",
                "--depth", "16", "--frames-before-scan", "3", "--frames-after-scan", "2",
                "--fps", "100",
            )  # fmt: skip
            assert writer.wait(30) == 0
            await page.wait(lambda page: page.runs and page.runs[0]["status"] == "complete")
            await page.wait(
                lambda page: (
                    page.image is not None
                    and page.image["width"] == 6
                    and page.image["filled"] == page.runs[0]["frames"]
                )
            )
            assert page.runs[0]["scan"]["evidence"] == "rotator"
            # The simulator's scan: 3 frames before it (rotator index 0), 24 scan positions
            # in order (index 1 to 24), then frames after it.
            data = np.asarray(read_tvips(str(camera / "scan_000.tvips"))[0]["data"])
            expected = reference(data[3:27], page.detector).reshape(4, 6)
            np.testing.assert_array_equal(page.image_values(), expected)

    asyncio.run(watch())


def test_a_detector_changed_mid_run_is_computed_from_the_files_and_keeps_following(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    http = daemon().http
    camera = tmp_path / "camera"
    annulus = {"kind": "annulus", "cx": 31.0, "cy": 32.0, "inner": 5.0, "outer": 20.0}

    async def watch() -> None:
        async with Page(http) as page:
            writer = simulate(camera, "--scan", "10x10", "--frame-size", "64", "--fps", "60")
            await page.wait(lambda page: page.image is not None and page.image["filled"] >= 20)
            await page.send({"type": "detector", "detector": annulus})
            await page.wait(lambda page: page.image["detector"] == annulus)
            changed_at = page.image["filled"]
            await page.wait(lambda page: page.image["filled"] == 100)
            assert writer.wait(30) == 0
            assert changed_at < 100  # the new detector was computed while the run went on
            expected = offline(camera / "scan.mib", (10, 10), annulus)
            np.testing.assert_array_equal(page.image_values(), expected)

    asyncio.run(watch())


def test_the_service_stops_with_pages_open_and_tells_them(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    running = daemon()
    assert simulate(tmp_path / "camera", "--scan", "4x4", "--frame-size", "32").wait(30) == 0

    async def watch() -> None:
        async with Page(running.http) as page:
            await page.wait(lambda page: page.image is not None and page.image["filled"] == 16)
            assert await asyncio.to_thread(running.stop) == 0
            await page.wait(lambda page: page.closed is not None)
            assert page.closed == 1001  # going away

    asyncio.run(watch())
    assert "Traceback" not in running.log_text()
