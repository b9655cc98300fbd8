"""Live conversion: how soon after the camera's last frame the outputs are final.

The service (``stemcast serve``, a subprocess) watches a folder and converts every run to
EMD and blockfile while it is acquired; no data client is connected. The camera simulator
(``stemcast simulate``, a subprocess) writes a 32 x 32 scan of 256 x 256 12-bit Merlin frames
at 500 frames/s (about 2 s of acquisition, 128 MiB). The figure is the time from the
simulator returning (its last frame written and closed) to both outputs existing under their
final names (fsynced and renamed into place), polled every 2 ms; ``--runs`` runs, the median
and the distribution are printed, against the 1.0 s target.

For comparison, in the same run: converting the same finished run after its end, as a
service without live conversion would (``stemcast convert`` in a subprocess, both targets),
which is the delay the live writers save. ``/metrics`` must count every frame of every run.

Usage::

    python benchmarks/bench_live_convert.py [--runs 5] [--fps 500] [--workdir DIR]
        [--detector merlin|tvips]

``--detector tvips``: 16-bit TVIPS runs whose end is the rotator index reaching the last
scan position (one frame after the scan); their scan is known only then, so both outputs
are written after the end, in one pass over the frames from the page cache.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from machine import describe_machine

_READY = re.compile(r", http (?P<http>http://\S+)")
TARGET_S = 1.0


def start_service(camera: Path, output: Path, registry: Path) -> tuple[subprocess.Popen[str], str]:
    command = [
        sys.executable, "-m", "stemcast.cli", "serve", "--quiet", "--watch", str(camera),
        "--output", str(output), "--convert", "emd,blockfile",
        "--data-endpoint", "tcp://127.0.0.1:0", "--preview-endpoint", "tcp://127.0.0.1:0",
        "--http", "127.0.0.1:0", "--registry", str(registry),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    match = _READY.search(process.stdout.readline())
    if match is None:
        process.kill()
        raise SystemExit("the service did not start")
    return process, match["http"]


def simulate(camera: Path, name: str, fps: float, detector: str) -> None:
    command = [
        sys.executable, "-m", "stemcast.cli", "simulate", str(camera), "--name", name,
        "--scan", "32x32", "--frame-size", "256", "--fps", str(fps),
    ]  # fmt: skip
    if detector == "tvips":
        # The rotator index drops back to 0 on the frame after the scan: the run's end.
        command += ["--format", "tvips", "--depth", "16", "--frames-after-scan", "1"]
    else:
        command += ["--depth", "12", "--pattern-pool", "4"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def wait_final(paths: list[Path], timeout_s: float = 60.0) -> float:
    """Seconds until every path exists (polled every 2 ms)."""
    start = time.monotonic()
    while not all(path.exists() for path in paths):
        if time.monotonic() - start > timeout_s:
            raise SystemExit(f"outputs not final after {timeout_s} s: {paths}")
        time.sleep(0.002)
    return time.monotonic() - start


def frames_ingested(http: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{http}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        int(float(line.split()[-1]))
        for line in text.splitlines()
        if line.startswith("stemcast_frames_ingested_total")
    )


def offline(source: Path, output: Path) -> float:
    command = [
        sys.executable, "-m", "stemcast.cli", "convert", str(source), "--to",
        "emd,blockfile", "--output", str(output),
    ]  # fmt: skip
    if source.suffix == ".mib":
        command += ["--navigation-shape", "32x32"]
    start = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fps", type=float, default=500.0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--detector", choices=["merlin", "tvips"], default="merlin")
    args = parser.parse_args()
    describe_machine(["numpy", "h5py", "zmq"])
    work = Path(tempfile.mkdtemp(prefix="stemcast-live-convert-", dir=args.workdir))
    camera, output = work / "camera", work / "out"
    camera.mkdir()
    process, http = start_service(camera, output, work / "registry.sqlite3")
    latencies: list[float] = []
    try:
        for number in range(args.runs):
            name = f"run{number}"
            simulate(camera, name, args.fps, args.detector)
            final = [output / "camera" / f"{name}.emd", output / "camera" / f"{name}.blo"]
            latencies.append(wait_final(final))
            print(f"{name}: both outputs final {latencies[-1]:.3f} s after the last frame")
        time.sleep(0.5)
        ingested = frames_ingested(http)
    finally:
        process.terminate()
        process.wait(30)
    first = "run0.mib" if args.detector == "merlin" else "run0_000.tvips"
    after_end = offline(camera / first, work / "offline")
    shutil.rmtree(work, ignore_errors=True)
    median = statistics.median(latencies)
    kind = "12-bit Merlin" if args.detector == "merlin" else "16-bit TVIPS (rotator index)"
    print(f"runs: {args.runs} x 32 x 32 frames of 256 x 256 {kind} at {args.fps:g} frames/s")
    print(
        "final after the last frame: "
        f"median {median:.3f} s, min {min(latencies):.3f} s, max {max(latencies):.3f} s, "
        f"all {', '.join(f'{value:.3f}' for value in latencies)}"
    )
    print(f"target {TARGET_S:.1f} s: median / target = {median / TARGET_S:.2f}")
    print(
        f"converting the finished run after its end (stemcast convert): {after_end:.3f} s "
        f"= {after_end / median:.1f} x the live delay"
    )
    expected = (1024 if args.detector == "merlin" else 1025) * args.runs
    print(f"/metrics frames ingested: {ingested} of {expected}")
    if ingested != expected:
        raise SystemExit("frames were not all counted")


if __name__ == "__main__":
    main()
