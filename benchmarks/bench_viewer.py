"""Does the live viewer slow the data channel? Throughput with 0 and with 10 open pages.

As in ``bench_live.py``: the camera simulator (``stemcast simulate``) writes 12-bit
256 x 256 Merlin runs as fast as it can (a pool of patterns), the service (``stemcast
serve``, a subprocess) follows them, and this script receives every frame on the data
channel with :class:`stemcast.client.Subscriber`, checking that each arrives, in order,
once; the figure is frames/s from the first to the last frame received. Each round runs
the same acquisition with no page open and then with ``--pages`` pages of each kind open,
all following the newest run (the latest frame, the bright-field image, the runs list):

* ``sockets``: WebSocket clients in a separate process that do what the page does, without
  drawing (decode each message, say each frame is drawn at once): the service's side of
  the viewer at full load, 10 frames and 10 image updates a second per page;
* ``chromium``: real pages in a headless Chromium (the system's ``chromium`` and
  ``chromium-driver``, driven through selenium), each in its own window, the browser run at
  ``--browser-nice`` (a browser drawing ten pages is a heavy process of its own: on a small
  acquisition machine it competes for the processor with everything else; at a lower
  priority it takes what the acquisition leaves, as a browser on the person's own computer
  costs the acquisition machine nothing).

The medians over the rounds are compared with the median without pages.

Last, with one page client on a finished run, the time a new detector takes to be computed
over all its frames from the files (a disk, an annulus, the centre of mass), and for
comparison the same disk applied with numpy to the frames read with ``stemcast.load``. Each run also
reports the processor time the service used per 1000 frames (``/proc``; Linux), a figure that
other work on the machine disturbs less than the throughput.

Usage::

    python benchmarks/bench_viewer.py [--frames 4000] [--rounds 3] [--pages 10]
                                      [--kinds sockets,chromium] [--browser-nice 19]
                                      [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from machine import describe_machine
from stemcast.client import Frame, SeriesEnd, SeriesStart, Subscriber

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "service"))
from browser import FLAGS, executables
from viewer_page import Page

FRAME_BYTES = 256 * 256 * 2
_READY = re.compile(r"data (?P<data>tcp://\S+), preview \S+, http (?P<http>http://\S+)")


def start_service(directory: Path, registry: Path) -> tuple[subprocess.Popen[str], str, str]:
    command = [
        sys.executable, "-m", "stemcast.cli", "serve", "--quiet", "--watch", str(directory),
        "--data-endpoint", "tcp://127.0.0.1:0", "--preview-endpoint", "tcp://127.0.0.1:0",
        "--http", "127.0.0.1:0", "--registry", str(registry),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    match = _READY.search(process.stdout.readline())
    assert match is not None, "the service did not start"
    return process, match["data"], match["http"]


def simulate(directory: Path, name: str, frames: int) -> subprocess.Popen[str]:
    width = 100
    command = [
        sys.executable, "-m", "stemcast.cli", "simulate", str(directory), "--name", name,
        "--scan", f"{width}x{frames // width}", "--frame-size", "256", "--depth", "12",
        "--fps", "0", "--pattern-pool", "4", "--flyback", "0",
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, text=True)


def receive(subscriber: Subscriber, frames: int) -> float:
    """Receive one series, checking order and count; return its frames/s."""
    arrivals: list[float] = []
    for event in subscriber:
        now = time.perf_counter()
        if isinstance(event, SeriesStart):
            arrivals = []
        elif isinstance(event, Frame):
            assert event.index == len(arrivals), (event.index, len(arrivals))
            assert event.data.nbytes == FRAME_BYTES
            arrivals.append(now)
        elif isinstance(event, SeriesEnd):
            assert event.header["frames"] == len(arrivals) == frames, event.header
            return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    raise AssertionError("unreachable: the subscriber iterates until it times out")


def wait(condition: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


class Pages:
    """Viewer pages of one kind, open while a run is acquired."""

    def shown(self) -> list[tuple[int, int]]:
        """Per page: the frames its virtual image holds, and the frames it drew."""
        raise NotImplementedError


class BrowserPages(Pages):
    """Pages in a headless Chromium, each in its own window."""

    def __init__(self, driver: Any, http: str, count: int) -> None:
        self.driver = driver
        driver.get(http + "/")
        for _ in range(count - 1):
            driver.switch_to.new_window("window")
            driver.get(http + "/")
        for handle in driver.window_handles:
            driver.switch_to.window(handle)
            wait(lambda: driver.find_element("id", "connection").text == "connected")

    def shown(self) -> list[tuple[int, int]]:
        found = []
        for handle in self.driver.window_handles:
            self.driver.switch_to.window(handle)
            frames = int(self.driver.find_element("id", "frames").text)
            run = self.driver.execute_script("return window.stemcastViewer.run().id")
            log = self.driver.execute_script("return window.stemcastViewer.frameLog()")
            found.append((frames, sum(entry["run"] == run for entry in log)))
        return found


@contextlib.contextmanager
def browser_pages(http: str, count: int, nice: int) -> Iterator[Pages]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = executables()
    assert found is not None, "install chromium and chromium-driver"
    browser, driver_path = found
    with tempfile.TemporaryDirectory(prefix="bench-viewer-chromium-") as folder:
        if nice:
            # The browser's processes inherit the priority of the script that starts it.
            wrapper = Path(folder) / "nice-chromium"
            wrapper.write_text(f'#!/bin/sh\nexec nice -n {nice} {browser} "$@"\n')
            wrapper.chmod(0o755)
            browser = str(wrapper)
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in [*FLAGS, f"--user-data-dir={folder}/profile"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
        try:
            yield BrowserPages(driver, http, count)
        finally:
            driver.quit()


class SocketPages(Pages):
    """WebSocket clients that act as pages, in a process of their own (see :func:`clients`)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    def shown(self) -> list[tuple[int, int]]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write("shown\n")
        self.process.stdin.flush()
        return [tuple(page) for page in json.loads(self.process.stdout.readline())]


@contextlib.contextmanager
def socket_pages(http: str, count: int) -> Iterator[Pages]:
    command = [sys.executable, __file__, "--clients", http, "--pages", str(count)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        yield SocketPages(process)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(30)


async def clients(http: str, count: int) -> None:
    """Run ``count`` page clients until stdin closes; answer ``shown`` with their counts."""
    async with contextlib.AsyncExitStack() as stack:
        pages = [await stack.enter_async_context(Page(http)) for _ in range(count)]
        for page in pages:
            await page.wait(lambda page: page.runs is not None)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if line.strip() == "shown":
                counts = []
                for page in pages:
                    run = page.view["run"] if page.view else None
                    drawn = sum(frame["run"] == run for frame in page.frames)
                    counts.append((page.image["filled"] if page.image else 0, drawn))
                print(json.dumps(counts), flush=True)


def processor_s(pid: int) -> float:
    """Processor time (user and system, every thread) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(
    endpoint: str, folder: Path, name: str, frames: int, service: int
) -> tuple[float, float]:
    """Acquire one run; return the frames/s received and the service's processor s/1000 frames."""
    with Subscriber(endpoint, start="live", timeout_s=120) as subscriber:
        time.sleep(0.2)  # subscribed before the run starts: the next series is its
        used = processor_s(service)
        writer = simulate(folder, name, frames)
        fps = receive(subscriber, frames)
        used = processor_s(service) - used
        assert writer.wait(120) == 0
    return fps, used / frames * 1000


async def recompute(http: str, frames: int) -> list[tuple[str, float]]:
    """Seconds until each new detector's image holds every frame, for one page client."""
    found = []
    async with Page(http) as page:
        await page.wait(lambda page: page.image is not None and page.image["filled"] == frames)
        for spec in (
            {"kind": "disk", "cx": 127.5, "cy": 127.0, "r": 30.0},
            {"kind": "annulus", "cx": 127.5, "cy": 127.0, "inner": 40.0, "outer": 100.0},
            {"kind": "com_x"},
        ):
            started = time.perf_counter()
            await page.send({"type": "detector", "detector": spec})
            await page.wait(
                lambda page, spec=spec: (
                    page.image["detector"] == spec and page.image["filled"] == frames
                ),
                timeout_s=300,
            )
            found.append((spec["kind"], time.perf_counter() - started))
    return found


def numpy_disk(path: Path, frames: int) -> float:
    """Seconds to read a run with ``stemcast.load`` and sum a disk of each frame with numpy."""
    import numpy as np

    import stemcast

    started = time.perf_counter()
    data = np.asarray(stemcast.load(path, navigation_shape=(100, frames // 100))[0]["data"])
    rows, cols = np.mgrid[0:256, 0:256]
    mask = (cols - 127.5) ** 2 + (rows - 127.0) ** 2 <= 30.0**2
    (data * mask).sum(axis=(-2, -1))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--kinds", default="sockets,chromium")
    parser.add_argument("--browser-nice", type=int, default=19)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--clients", metavar="HTTP", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients:
        asyncio.run(clients(args.clients, args.pages))
        return
    kinds = args.kinds.split(",")
    describe_machine(["numpy", "zmq", "aiohttp", "selenium"])
    if "chromium" in kinds:
        found = executables()
        assert found is not None, "install chromium and chromium-driver"
        version = subprocess.run([found[0], "--version"], capture_output=True, text=True).stdout
        print(f"browser: {version.strip()}, run at nice {args.browser_nice}")
    rates: dict[str, list[float]] = {"none": [], **{kind: [] for kind in kinds}}
    costs: dict[str, list[float]] = {kind: [] for kind in rates}
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-viewer-") as scratch:
        folder = Path(scratch) / "camera"
        folder.mkdir()
        service, endpoint, http = start_service(folder, Path(scratch) / "registry.sqlite3")
        try:
            run = 0
            for number in range(1, args.rounds + 1):
                for kind in rates:
                    run += 1
                    name = f"run{run}"
                    if kind == "none":
                        fps, cost = one_run(endpoint, folder, name, args.frames, service.pid)
                        note = ""
                    else:
                        opened = (
                            socket_pages(http, args.pages)
                            if kind == "sockets"
                            else browser_pages(http, args.pages, args.browser_nice)
                        )
                        with opened as pages:
                            fps, cost = one_run(endpoint, folder, name, args.frames, service.pid)
                            ended = time.monotonic()
                            wait(lambda pages=pages: all(
                                filled == args.frames for filled, _ in pages.shown()
                            ))  # fmt: skip
                            after = time.monotonic() - ended
                            drawn = [count for _, count in pages.shown()]
                        note = (
                            f"; every page's image complete {after:.2f} s after the last frame "
                            f"received, frames drawn per page {min(drawn)}-{max(drawn)}"
                        )
                    rates[kind].append(fps)
                    costs[kind].append(cost)
                    print(
                        f"round {number}, {kind:8}: {fps:6.0f} frames/s, service "
                        f"{cost:.3f} processor s/1000 frames{note}",
                        flush=True,
                    )
                    (folder / f"{name}.mib").unlink()
            one_run(endpoint, folder, "recompute", args.frames, service.pid)
            timed = asyncio.run(recompute(http, args.frames))
            reference = numpy_disk(folder / "recompute.mib", args.frames)
        finally:
            service.terminate()
            service.wait(30)
    none = statistics.median(rates["none"])
    print(
        f"median without pages: {none:.0f} frames/s, service "
        f"{statistics.median(costs['none']):.3f} processor s/1000 frames"
    )
    for kind in kinds:
        median = statistics.median(rates[kind])
        verdict = "within" if median >= 0.95 * none else "NOT within"
        print(
            f"median with {args.pages} {kind} pages: {median:.0f} frames/s, "
            f"ratio {median / none:.3f} ({verdict} 5%), service "
            f"{statistics.median(costs[kind]):.3f} processor s/1000 frames"
        )
    size = args.frames * FRAME_BYTES / 2**20
    print(f"a new detector over the {args.frames} frames ({size:.0f} MiB) of a finished run:")
    for kind, seconds in timed:
        print(f"  {kind:8} {seconds:6.2f} s ({args.frames / seconds:6.0f} frames/s)")
    print(f"  numpy disk on stemcast.load's array: {reference:.2f} s")


if __name__ == "__main__":
    main()
