"""The viewer in a real headless Chromium, on a live simulated 16 x 16 run.

The daemon and the camera simulator are subprocesses (``stemcast serve``, ``stemcast
simulate``); the page is driven through selenium and read through its hooks (the ``#frames``
element, ``window.stemcastViewer``, docs/viewer.md). Expected virtual images are the same
detectors applied with numpy to what rosettasciio reads from the simulator's file. The
figures are the issue's: every frame on the page within 2 s of the run's end, the latest
frame drawn within 250 ms of the camera writing it (median).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import chromium
from live import Daemon, daemons, wait_until
from PIL import Image
from rsciio.quantumdetector import file_reader as read_mib
from test_viewer_sums import reference

SCAN = (16, 16)
FRAMES = SCAN[0] * SCAN[1]
#: Where to keep the screenshot besides the test's folder (docs/viewer.png is made so).
SCREENSHOT = os.environ.get("STEMCAST_VIEWER_SCREENSHOT")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    with daemons(tmp_path) as start:
        yield start


def text(driver: Any, element: str) -> str:
    return str(driver.find_element("id", element).text)


def image_of(driver: Any) -> dict[str, Any] | None:
    image: dict[str, Any] | None = driver.execute_script(
        "return window.stemcastViewer.virtualImage()"
    )
    return image


def complete_image(driver: Any, detector: dict[str, Any]) -> np.ndarray:
    """Wait until the page's virtual image is ``detector`` over every frame; return it."""
    image = wait_until(
        lambda: image_of(driver),
        lambda image: (
            image is not None and image["detector"] == detector and image["frames"] == FRAMES
        ),
        timeout_s=20,
    )
    assert (image["width"], image["height"]) == SCAN
    return np.array(image["values"], dtype=np.float64).reshape(SCAN[1], SCAN[0])


def not_blank(png: bytes, most: float) -> None:
    """A picture with many colours, no colour covering more than ``most`` of it."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    assert len(colours) > 20, len(colours)
    assert counts.max() < most * len(pixels), counts.max() / len(pixels)


def test_a_browser_shows_a_live_run_its_frames_and_its_virtual_images(
    daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    http = daemon("--output", str(tmp_path / "converted"), "--convert", "emd").http
    camera = tmp_path / "camera"
    with chromium() as driver:
        from selenium.webdriver.common.action_chains import ActionChains

        driver.get(http + "/")
        wait_until(lambda: text(driver, "connection"), lambda status: status == "connected")
        simulator = subprocess.Popen(
            [sys.executable, "-m", "stemcast.cli", "simulate", str(camera), "--scan", "16x16",
             "--fps", "100"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        assert simulator.wait(60) == 0
        ended = time.monotonic()
        wait_until(lambda: text(driver, "frames"), lambda shown: shown == str(FRAMES), 10)
        every_frame_after = time.monotonic() - ended
        print(f"every frame on the page {every_frame_after:.3f} s after the run's end")
        assert every_frame_after <= 2.0, every_frame_after

        # The latest frame, drawn soon after the camera wrote it (its header's timestamp).
        log = driver.execute_script("return window.stemcastViewer.frameLog()")
        assert log[-1]["index"] == FRAMES - 1
        assert len(log) >= 10, log
        delays = [entry["drawnMs"] - entry["timestampMs"] for entry in log]
        print(f"latest frame drawn {np.median(delays):.0f} ms after written (median of {len(log)})")
        assert np.median(delays) <= 250, delays

        data = np.asarray(read_mib(str(camera / "scan.mib"), navigation_shape=SCAN)[0]["data"])
        frames = data.reshape(FRAMES, *data.shape[-2:])

        def offline(detector: dict[str, Any]) -> np.ndarray:
            return reference(frames, detector).reshape(SCAN[1], SCAN[0])

        # The bright-field disk the service found, then detectors set through the hook.
        found = driver.execute_script("return window.stemcastViewer.detector()")
        assert found["kind"] == "disk"
        np.testing.assert_array_equal(complete_image(driver, found), offline(found))
        for detector in (
            {"kind": "annulus", "cx": 127.5, "cy": 127.0, "inner": 28.0, "outer": 90.0},
            {"kind": "disk", "cx": 128.0, "cy": 127.0, "r": 21.0},
        ):
            driver.execute_script("window.stemcastViewer.setDetector(arguments[0])", detector)
            np.testing.assert_array_equal(complete_image(driver, detector), offline(detector))

        # As a person does it: drag the disk by its middle, drag its edge, pick the maps.
        overlay = driver.find_element("id", "overlay")
        scale = 256 / overlay.rect["width"]  # frame pixels per pixel of the page
        ActionChains(driver).move_to_element(overlay).click_and_hold().move_by_offset(
            30, 0
        ).move_by_offset(30, -20).release().perform()
        dragged = wait_until(
            lambda: driver.execute_script("return window.stemcastViewer.detector()"),
            lambda shown: shown["cx"] > 128,
        )
        assert dragged["r"] == 21.0
        assert abs(dragged["cx"] - (128 + 60 * scale)) <= 2 * scale
        assert abs(dragged["cy"] - (127 - 20 * scale)) <= 2 * scale
        np.testing.assert_array_equal(complete_image(driver, dragged), offline(dragged))
        # The disk's right edge, from the middle of the overlay, in pixels of the page.
        right = (dragged["cx"] + 0.5 + dragged["r"]) / scale - overlay.rect["width"] / 2
        down = (dragged["cy"] + 0.5) / scale - overlay.rect["height"] / 2
        ActionChains(driver).move_to_element_with_offset(
            overlay, round(right), round(down)
        ).click_and_hold().move_by_offset(round(15 / scale), 0).release().perform()
        resized = wait_until(
            lambda: driver.execute_script("return window.stemcastViewer.detector()"),
            lambda shown: shown["r"] > dragged["r"] + 5,
        )
        assert (resized["cx"], resized["cy"]) == (dragged["cx"], dragged["cy"])
        np.testing.assert_array_equal(complete_image(driver, resized), offline(resized))
        driver.find_element("css selector", "input[value=com_x]").click()
        np.testing.assert_allclose(
            complete_image(driver, {"kind": "com_x"}), offline({"kind": "com_x"})
        )
        driver.find_element("css selector", "input[value=annulus]").click()
        annulus = wait_until(
            lambda: driver.execute_script("return window.stemcastViewer.detector()"),
            lambda shown: shown["kind"] == "annulus",
        )
        np.testing.assert_array_equal(complete_image(driver, annulus), offline(annulus))
        driver.find_element("css selector", "input[value=disk]").click()
        assert complete_image(driver, resized) is not None  # the disk drawn last is back
        # Back to the bright-field disk the service found, for the screenshot.
        driver.execute_script("window.stemcastViewer.setDetector(arguments[0])", found)
        complete_image(driver, found)

        # The runs list: the run, its scan and its conversion, done, with its output.
        listed = wait_until(
            lambda: text(driver, "runs"), lambda listed: "emd: done 100%" in listed, 60
        )
        assert "scan.mib" in listed
        assert "256 / 256 frames" in listed
        assert "scan 16 \N{MULTIPLICATION SIGN} 16 from timestamps" in listed
        assert "scan.emd" in listed

        shot = tmp_path / "viewer.png"
        assert driver.save_screenshot(str(shot))
        not_blank(shot.read_bytes(), 0.9)
        # A diffraction pattern is mostly dark background: its disk and spots are a few %.
        not_blank(driver.find_element("id", "frame").screenshot_as_png, 0.99)
        not_blank(driver.find_element("id", "image").screenshot_as_png, 0.5)
        if SCREENSHOT:
            shutil.copyfile(shot, SCREENSHOT)
