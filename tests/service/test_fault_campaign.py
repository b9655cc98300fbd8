"""Every class of fault, tried again and again against one daemon (docs/operations.md).

The figures of the "Tested faults" table in docs/operations.md come from this campaign: run it
with ``pytest -m slow -s tests/service/test_fault_campaign.py`` to see them. Each class is
tried ``REPEATS`` times, one instance after the other, against the same daemon, which must
stay up throughout; at the end every series that started has ended, no run is left
``following``, ``/ready`` answers 200, and the log holds no traceback and no file contents.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from faults import (
    claiming,
    corrupt_timestamp,
    good_run,
    lines,
    negative_count_hdr,
    ready,
    runs,
    with_hdr,
)
from live import Daemon, Drain, daemons, wait_until

from stemcast.simulate import simulate_tvips

pytestmark = pytest.mark.slow

REPEATS = 10


class Campaign:
    """One daemon watching ``camera`` and ``share``; the faults and what came of each."""

    def __init__(self, service: Daemon, drain: Drain, root: Path) -> None:
        self.service, self.drain, self.root = service, drain, root
        self.camera, self.share = root / "camera", root / "share"
        self.source = root / "source"
        self.outcomes: dict[str, Counter[str]] = {}
        self.deaths = 0
        self.rng = random.Random(15)
        self.clean = good_run(self.source, "clean", scan=(8, 8))
        self.small = good_run(self.source, "small")

    def ends(self, name: str) -> list[dict[str, Any]]:
        return [end for end in self.drain.ends if Path(end["sources"][0]).name == name]

    def end(self, name: str, count: int = 1) -> dict[str, Any]:
        found: list[dict[str, Any]] = wait_until(
            lambda: self.ends(name), lambda ends: len(ends) >= count, timeout_s=30
        )
        return found[count - 1]

    def told(self, text: str) -> list[str]:
        return wait_until(lambda: lines(self.service, text), bool, timeout_s=30)

    def record(self, fault: str, outcome: str) -> None:
        self.outcomes.setdefault(fault, Counter())[outcome] += 1
        if self.service.process.poll() is not None:
            self.deaths += 1
            raise AssertionError(f"the daemon died on {fault}:\n{self.service.log_text()}")


def symlink_loop(campaign: Campaign, index: int) -> str:
    name = f"loop{index}.mib"
    (campaign.camera / name).symlink_to(name)
    [told] = campaign.told(f"{name}: skipped: Too many levels of symbolic links")
    return "skipped, one warning" if told else "?"


def vanishing_folder(campaign: Campaign, index: int) -> str:
    shutil.rmtree(campaign.share)
    wait_until(lambda: ready(campaign.service)[0], lambda status: status == 503)
    campaign.share.mkdir()
    wait_until(lambda: ready(campaign.service)[0], lambda status: status == 200)
    good_run(campaign.share, f"back{index}")
    end = campaign.end(f"back{index}.mib")
    return f"/ready 503 while gone; the next run {end['status']}"


def corrupt_timestamp_run(campaign: Campaign, index: int) -> str:
    frame = campaign.rng.randrange(1, 64)
    shutil.copy(campaign.source / "clean.hdr", campaign.camera / f"stamp{index}.hdr")
    (campaign.camera / f"stamp{index}.mib").write_bytes(corrupt_timestamp(campaign.clean, frame))
    end = campaign.end(f"stamp{index}.mib")
    published = end["frames"] == frame and f"(frame {frame})" in end["reason"]
    return f"{end['status']}, the frames before the bad one published" if published else "?"


def absurd_frames(campaign: Campaign, index: int) -> str:
    name = f"huge{index}.mib"
    claiming(campaign.small, campaign.camera / name, 33_000, 2)
    [told] = campaign.told(name)
    return "refused (max_frame_bytes), no run" if "max_frame_bytes" in told else "?"


def sparse_frames(campaign: Campaign, index: int) -> str:
    name = f"sparse{index}.mib"
    claiming(campaign.small, campaign.camera / name, 4096, 20)
    end = campaign.end(name)
    return f"{end['status']}, {end['frames']} frames"


def negative_count(campaign: Campaign, index: int) -> str:
    name = f"neg{index}"
    with_hdr(
        campaign.clean, campaign.camera, name, negative_count_hdr(campaign.source / "clean.hdr")
    )
    end = campaign.end(f"{name}.mib")
    return f"{end['status']}, {end['frames']} frames, count ignored"


def late_hdr(campaign: Campaign, index: int) -> str:
    name = f"late{index}"
    with_hdr(campaign.clean, campaign.camera, name, b"")
    time.sleep(0.2)
    shutil.copy(campaign.source / "clean.hdr", campaign.camera / f"{name}.hdr")
    end = campaign.end(f"{name}.mib")
    return f"{end['status']}, {end['frames']} frames"


def garbage_hdr(campaign: Campaign, index: int) -> str:
    name = f"noise{index}"
    with_hdr(campaign.clean, campaign.camera, name, campaign.rng.randbytes(2048))
    end = campaign.end(f"{name}.mib")
    return f"{end['status']}, {end['frames']} frames, .hdr ignored"


def reused_name(campaign: Campaign, index: int) -> str:
    name = f"again{index}"
    path = good_run(campaign.camera, name)
    campaign.end(f"{name}.mib")
    path.unlink()
    good_run(campaign.camera, name)
    second = campaign.end(f"{name}.mib", 2)
    return f"a new run, {second['status']}"


def link_outside(campaign: Campaign, index: int) -> str:
    name = f"passwd{index}.mib"
    (campaign.camera / name).symlink_to("/etc/passwd")
    [told] = campaign.told(name)
    return "skipped, one warning" if "outside the watch folders" in told else "?"


def fast_tvips_parts(campaign: Campaign, index: int) -> str:
    name = f"tv{index}"
    record = 76 + 32 * 32 * 2
    simulate_tvips(
        campaign.camera, name=name, scan_shape=(8, 8), frame_size=32,
        max_file_size=256 + 3 * record, fps=500,
    )  # fmt: skip
    end = campaign.end(f"{name}_000.tvips")
    return f"one run of {end['frames']} frames, {len(end['sources'])} parts"


def short_file(campaign: Campaign, index: int) -> str:
    name = f"short{index}.mib"
    start = bytearray(campaign.small.read_bytes()[:3000])
    start[11:16] = b"99999"
    (campaign.camera / name).write_bytes(bytes(start))
    [told] = campaign.told(name)
    return "waits, told once" if "announces 99999 bytes" in told else "?"


def random_bytes(campaign: Campaign, index: int) -> str:
    name = f"garbage{index}.mib"
    (campaign.camera / name).write_bytes(campaign.rng.randbytes(5000))
    [told] = campaign.told(name)
    return "not followed, one error line" if "not followed" in told else "?"


def vanishing_run(campaign: Campaign, index: int) -> str:
    name = f"gone{index}.mib"
    path = campaign.camera / name
    data = campaign.clean.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    campaign.told(f"following {path}")
    path.unlink()
    end = campaign.end(name)
    return f"{end['status']}, {end['frames']} frames"


FAULTS: dict[str, Callable[[Campaign, int], str]] = {
    "symbolic link loop in a watch folder": symlink_loop,
    "watch folder removed, then made again": vanishing_folder,
    "corrupt timestamp in a random frame": corrupt_timestamp_run,
    "header claiming 33,000 x 33,000 pixels (sparse file)": absurd_frames,
    "20 frames of 4096 x 4096 on 84 KB of disk (sparse)": sparse_frames,
    "`.hdr` with `Frames in Acquisition: -5`": negative_count,
    "`.hdr` empty when the `.mib` appears, written 0.2 s later": late_hdr,
    "`.hdr` of random bytes": garbage_hdr,
    "run deleted, then written again under its name": reused_name,
    "symbolic link to `/etc/passwd`": link_outside,
    "TVIPS parts every 6 ms": fast_tvips_parts,
    "header size 99,999 on a 3,000-byte file": short_file,
    "5,000 random bytes as a `.mib`": random_bytes,
    "run file deleted while followed": vanishing_run,
}


def test_every_fault_class_again_and_again(tmp_path: Path) -> None:
    (tmp_path / "share").mkdir()
    with daemons(tmp_path) as start:
        service = start("--watch", str(tmp_path / "share"), "--idle-timeout", "1")
        drain = Drain(service.data)
        campaign = Campaign(service, drain, tmp_path)
        for fault, attempt in FAULTS.items():
            for index in range(REPEATS):
                campaign.record(fault, attempt(campaign, index))
        wait_until(lambda: len(drain.ends), lambda ended: ended == len(drain.starts))
        recorded = runs(service)
        status, checks = ready(service)
        drain.close()
        alive = service.process.poll() is None
        with open(f"/proc/{service.process.pid}/status") as proc:
            [peak] = [int(line.split()[1]) // 1024 for line in proc if line.startswith("VmHWM:")]
    following = [row["path"] for row in recorded if row["status"] == "following"]
    log = service.log_text()
    print("\n| fault | tried | result |\n|---|---|---|")
    for fault, outcomes in campaign.outcomes.items():
        results = "; ".join(f"{outcome} ({count})" for outcome, count in outcomes.items())
        print(f"| {fault} | {sum(outcomes.values())} | {results} |")
    print(
        f"\n{len(drain.starts)} series started, {len(drain.ends)} ended; "
        f"{len(recorded)} runs recorded, {len(following)} following; "
        f"{campaign.deaths} service deaths; peak memory {peak} MiB"
    )
    assert alive
    assert campaign.deaths == 0
    assert following == []
    assert status == 200, checks
    assert all("?" not in outcomes for outcomes in campaign.outcomes.values())
    assert "Traceback" not in log
    once = ("Too many levels of symbolic links", "outside the watch folders", "announces 99999")
    for told in once:
        assert sum(told in line for line in log.splitlines()) == REPEATS, told
    assert max(map(len, log.splitlines())) < 600
    assert "root:x:0" not in log
    assert os.path.exists(tmp_path / "camera")
