"""Command line: ``stemcast info | serve | simulate | subscribe | view | convert | demo``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import stemcast
from stemcast.errors import ParameterError, StemcastError

_SHADES = " .:-=+*#%@"


def _scan(text: str) -> tuple[int, int]:
    """Parse ``XxY`` (e.g. ``32x16``) into ``(x, y)``."""
    try:
        x, y = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a scan size like 32x16") from None
    if x < 1 or y < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be at least 1")
    return x, y


def mib_summary(path: Path, navigation_shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """Describe a Merlin run: files, layout, frames, scan shape and its evidence.

    Parameters
    ----------
    path
        A ``.mib`` file of the run.
    navigation_shape
        ``(x, y)`` given by the user, if any.

    Returns
    -------
    dict
        JSON-serialisable summary.
    """
    from stemcast.formats.mib.reader import MIBProperties, scan_shape_of
    from stemcast.shape import complete_lines

    prop = MIBProperties.from_path(path)
    run = prop.run
    assert run is not None
    layout = run.layout
    scan = scan_shape_of(prop, dict(run.hdr) or None, navigation_shape)
    frames = run.frames
    kept = complete_lines(scan.shape, frames) if len(scan.shape) > 1 else (frames,)
    return {
        "format": "Merlin mib",
        "files": run.files,
        "hdr": run.hdr_path,
        "frames": frames,
        "bytes": prop.file_size,
        "frame_shape": list(layout.frame_shape),
        "dtype": layout.dtype.name,
        "counter_depth": layout.counter_depth,
        "raw": layout.raw,
        "geometry": layout.geometry,
        "header_size": layout.header_size,
        "record_size": layout.record_size,
        "exposure_ms": prop.exposure,
        "first_timestamp": prop.timestamp,
        "scan_shape": list(scan.shape),
        "scan_shape_evidence": scan.evidence.value,
        "scan_shape_detail": scan.detail,
        "frames_expected": scan.frames if len(scan.shape) > 1 else frames,
        "shape_loaded": list(kept),
    }


def _print_summary(summary: dict[str, Any]) -> None:
    rows, cols = summary["frame_shape"]
    kind = "RAW" if summary["raw"] else "processed"
    expected = summary["frames_expected"]
    state = (
        f"complete ({summary['frames']} frames)"
        if summary["frames"] >= expected
        else f"interrupted: {summary['frames']} of {expected} frames, "
        f"loads {' x '.join(map(str, summary['shape_loaded']))} (complete lines)"
    )
    lines = [
        (
            "format",
            f"{summary['format']}, {kind}, {summary['counter_depth']}-bit counter, "
            f"{summary['geometry']} detector",
        ),
        ("files", ", ".join(summary["files"])),
        ("header file", summary["hdr"] or "none"),
        ("frames", f"{summary['frames']} ({summary['bytes'] / 1e6:.1f} MB)"),
        ("frame", f"{rows} x {cols} {summary['dtype']}, record {summary['record_size']} bytes"),
        ("exposure", f"{summary['exposure_ms']} ms, first frame {summary['first_timestamp']}"),
        (
            "scan shape",
            f"{' x '.join(map(str, summary['scan_shape']))} (x, y) from "
            f"{summary['scan_shape_evidence']}: {summary['scan_shape_detail']}",
        ),
        ("acquisition", state),
    ]
    for name, value in lines:
        print(f"  {name:<12} {value}")


def signal_summary(path: Path, navigation_shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """Describe any supported file from what its reader returns (read lazily).

    Every signal of the file is described (a Velox EMD file holds several). A TVIPS series is
    read with the scan shape ``stemcast convert`` writes: ``navigation_shape`` if given, else
    the scan the rotator index of the frame headers shows (the reader's ``scan_shape="auto"``,
    :func:`stemcast.formats.tvips.reader.auto_scan`, which the converter calls too), else a
    stack of frames.

    Parameters
    ----------
    path
        A data file of a supported format.
    navigation_shape
        ``(x, y)`` given by the user, if any (used for TVIPS series).

    Returns
    -------
    dict
        JSON-serialisable summary: ``format`` and ``signals``, one entry per signal with its
        title, shape, dtype, axes and, where the reader reports it, the scan shape and its
        evidence.
    """
    from stemcast.formats import detect_format, load

    name = detect_format(path)
    options: dict[str, Any] = {}
    if name == "tvips":
        options["scan_shape"] = tuple(reversed(navigation_shape)) if navigation_shape else "auto"
    with warnings.catch_warnings():
        # "auto" warns when the headers show no scan; the summary gives the reason itself.
        warnings.filterwarnings("ignore", message=".*found no scan", category=UserWarning)
        signals = load(path, lazy=True, **options)
    return {"format": name, "signals": [_signal_entry(signal) for signal in signals]}


def _signal_entry(signal: dict[str, Any]) -> dict[str, Any]:
    data = signal["data"]
    entry: dict[str, Any] = {
        "title": (signal.get("metadata") or {}).get("General", {}).get("title"),
        "shape": list(data.shape),
        "dtype": str(data.dtype),
        "bytes": int(data.nbytes),
        "axes": [
            {key: axis.get(key) for key in ("name", "size", "scale", "offset", "units")}
            for axis in signal["axes"]
        ],
    }
    scan = (signal.get("original_metadata") or {}).get("scan_shape")
    if isinstance(scan, dict):
        entry["scan_shape"] = list(scan.get("shape", ()))
        entry["scan_shape_evidence"] = scan.get("evidence")
        entry["scan_shape_detail"] = scan.get("detail")
    return entry


def _print_signal_summary(summary: dict[str, Any]) -> None:
    signals = summary["signals"]
    count = f" ({len(signals)} signals)" if len(signals) > 1 else ""
    print(f"  {'format':<12} {summary['format']}{count}")
    for number, entry in enumerate(signals, 1):
        if len(signals) > 1:
            print(f"  {f'signal {number}':<12} {entry['title'] or '(untitled)'}")
        shape = " x ".join(map(str, entry["shape"]))
        print(f"  {'data':<12} {shape} {entry['dtype']} ({entry['bytes'] / 1e6:.1f} MB)")
        for axis in entry["axes"]:
            units = f" {axis['units']}" if axis["units"] else ""
            print(
                f"  {'axis':<12} {axis['name'] or '(unnamed)'}: {axis['size']} x "
                f"{axis['scale']}{units} from {axis['offset']}"
            )
        if "scan_shape" in entry:
            order = {2: " (x, y)", 3: " (x, y, scans)"}.get(len(entry["scan_shape"]), "")
            print(
                f"  {'scan shape':<12} {' x '.join(map(str, entry['scan_shape']))}{order} from "
                f"{entry['scan_shape_evidence']}: {entry['scan_shape_detail']}"
            )


def _info(args: argparse.Namespace) -> int:
    from stemcast.formats import detect_format

    for path in args.paths:
        is_mib = detect_format(path) == "mib"
        summary = (
            mib_summary(path, args.navigation_shape)
            if is_mib
            else signal_summary(path, args.navigation_shape)
        )
        if args.json:
            print(json.dumps(summary, indent=2, default=str))
            continue
        print(path)
        if is_mib:
            _print_summary(summary)
        else:
            _print_signal_summary(summary)
    return 0


def _render(image: Any, width: int = 64) -> str:
    """Render a 2-D image as text, one character per pixel (at most ``width`` columns)."""
    import numpy as np

    step = max(1, int(np.ceil(image.shape[1] / width)))
    small = image[::step, ::step].astype(float)
    low, high = (float(value) for value in np.percentile(small, [1, 99]))
    if high == low:
        levels = np.zeros(small.shape, int)
    else:
        levels = (np.clip(small, low, high) - low) / (high - low) * (len(_SHADES) - 1)
    return "\n".join("    " + "".join(_SHADES[int(v)] * 2 for v in row) for row in levels)


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from stemcast.service.app import Service, serve
    from stemcast.service.config import load_settings

    if not args.quiet:
        logging.getLogger("stemcast").setLevel(logging.INFO)
    settings = load_settings(
        args.config,
        watch=args.watch or None,
        data_endpoint=args.data_endpoint,
        preview_endpoint=args.preview_endpoint,
        polling=True if args.polling else None,
        idle_timeout_s=args.idle_timeout,
        navigation_shape=args.navigation_shape,
        http=args.http,
        output=args.output,
        convert=args.convert,
        token_file=args.token_file,
        registry=args.registry,
        scheduler=args.scheduler,
    )

    def ready(service: Service) -> None:
        publisher = service.publisher
        http = f", http {service.http_address}" if service.http_address else ""
        print(
            f"stemcast serve: watching {', '.join(map(str, settings.watch))}; "
            f"data {publisher.data_address}, preview {publisher.preview_address}{http}",
            flush=True,
        )

    asyncio.run(serve(settings, ready))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from stemcast.simulate import simulate_mib, simulate_tvips

    args.directory.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = {
        "name": args.name,
        "scan_shape": args.scan,
        "fps": args.fps,
        "interrupt_after": args.interrupt_after,
        "flyback_frames": args.flyback_frames,
        "snake": args.snake,
        "pattern_pool": args.pattern_pool,
        "seed": args.seed,
    }
    if args.format == "mib":
        tvips_only = {
            "--no-scan-engine": not args.scan_engine,
            "--frames-before-scan": args.frames_before_scan,
            "--frames-after-scan": args.frames_after_scan,
        }
        used = [flag for flag, value in tvips_only.items() if value]
        if used:
            raise ParameterError(f"{', '.join(used)}: TVIPS options", parameter="format")
        paths = simulate_mib(
            args.directory,
            frame_size=args.frame_size,
            counter_depth=args.depth,
            quad=args.quad,
            raw=args.raw,
            frames_per_file=args.frames_per_file,
            flyback_s=args.flyback,
            hdr_scan_size=args.hdr_scan_size,
            **common,
        )
    else:
        if args.quad or args.raw:
            raise ParameterError("--quad and --raw are Merlin options", parameter="format")
        paths = simulate_tvips(
            args.directory,
            frame_size=256 if args.frame_size is None else args.frame_size,
            bits=args.depth,
            max_file_size=args.max_file_size,
            scan_engine=args.scan_engine,
            frames_before_scan=args.frames_before_scan,
            frames_after_scan=args.frames_after_scan,
            **common,
        )
    print("\n".join(map(str, paths)))
    return 0


def _parse_position(text: str, *, source: str) -> tuple[str, int]:
    """Parse a position ``SERIES:FRAME`` as ``--resume`` and ``--position-file`` hold it."""
    series, _, frame = text.strip().rpartition(":")
    if not series or not frame.isdigit():
        raise ParameterError(
            f"{text.strip()!r} is not a position like SERIES:FRAME", parameter=source
        )
    return series, int(frame)


def _save_position(path: Path, position: tuple[str, int]) -> None:
    """Replace the position file in one rename: a crash leaves the old or the new position."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(f"{position[0]}:{position[1]}\n")
    os.replace(partial, path)


def _subscribe(args: argparse.Namespace) -> int:
    import time

    from stemcast.client import Frame, SeriesEnd, SeriesStart, Subscriber, SubscriptionError

    ended = 0
    window_start, window_frames = time.monotonic(), 0
    start: Any = args.start
    if args.resume is not None:
        start = _parse_position(args.resume, source="resume")
    elif args.position_file is not None and args.position_file.exists():
        try:
            start = _parse_position(args.position_file.read_text(), source="position-file")
        except ParameterError as error:
            raise ParameterError(error.problem, path=args.position_file) from None
    with Subscriber(
        args.endpoint, start=start, preview=args.preview, timeout_s=args.timeout
    ) as subscriber:
        patience = 1.0 if args.timeout is None else min(1.0, args.timeout)
        if not subscriber.socket.poll(round(patience * 1000)):
            print(
                f"stemcast subscribe: nothing yet from {args.endpoint}: waiting for the service "
                "to answer, or for its next run (Ctrl-C stops)",
                file=sys.stderr,
                flush=True,
            )
        try:
            for event in subscriber:
                if args.json:
                    print(json.dumps(event.header), flush=True)
                elif isinstance(event, Frame):
                    window_frames += 1
                    now = time.monotonic()
                    if now - window_start >= 1.0:
                        print(
                            f"  {window_frames / (now - window_start):8.1f} frames/s, "
                            f"frame {event.index} of series {event.series[:8]}",
                            flush=True,
                        )
                        window_start, window_frames = now, 0
                elif isinstance(event, SeriesStart):
                    header = event.header
                    print(
                        f"series {event.series[:8]} started: {header['detector']} "
                        f"{'x'.join(map(str, header['shape']))} {header['dtype']}, "
                        f"{header['frames_expected'] or '?'} frames expected, "
                        f"from {header['sources'][0]}",
                        flush=True,
                    )
                elif isinstance(event, SeriesEnd):
                    header = event.header
                    print(
                        f"series {event.series[:8]} {header['status']}: {header['frames']} "
                        f"frames, scan {'x'.join(map(str, header['nav_shape']))} from "
                        f"{header['nav_evidence']} ({header['reason']})",
                        flush=True,
                    )
                if args.position_file is not None and subscriber.position is not None:
                    # Saved after the event is printed: after a crash, the last event
                    # printed may be printed again, but none is missed.
                    _save_position(args.position_file, subscriber.position)
                if isinstance(event, SeriesEnd):
                    ended += 1
                    if args.series and ended >= args.series:
                        break
        except (TimeoutError, SubscriptionError) as error:
            print(f"stemcast subscribe: {error}", file=sys.stderr)
            return 1
        finally:
            if subscriber.position is not None and not args.json:
                series, frame = subscriber.position
                print(f"position {series}:{frame} (--resume it to go on from here)", flush=True)
    if subscriber.dropped:
        print(f"{subscriber.dropped} messages dropped by the preview channel", file=sys.stderr)
    return 0


def _viewer_address(url: str, run: str | None = None) -> tuple[str, str]:
    """Return a service's base address (``http://HOST:PORT``) and its viewer's address."""
    from urllib.parse import quote

    base = (url if "://" in url else f"http://{url}").rstrip("/")
    return base, f"{base}/" + ("" if run is None else f"?run={quote(run)}")


def _view(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request
    import webbrowser

    base, page = _viewer_address(args.url, args.run)
    # A service on this machine is never reached through a proxy, whatever the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{base}/health", timeout=args.timeout):
            pass
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        print(f"stemcast view: no stemcast service answers at {base}: {reason}", file=sys.stderr)
        return 1
    if not args.no_browser and webbrowser.open(page):
        print(f"stemcast view: opened {page} in a browser")
    else:
        print(f"stemcast view: open {page} in a browser")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import asyncio

    with tempfile.TemporaryDirectory(prefix="stemcast-demo-") as scratch:
        directory = Path(args.directory or scratch)
        directory.mkdir(parents=True, exist_ok=True)
        code = asyncio.run(_live_demo(args, directory, Path(scratch)))
        if args.directory:
            print(f"\nThe acquisition and its conversions stay in {directory}.")
        else:
            print(
                f"\nThe acquisition and its conversions in {directory} are deleted now; "
                "give --directory DIR to keep them."
            )
    return code


async def _live_demo(args: argparse.Namespace, directory: Path, scratch: Path) -> int:
    """Run the simulator, the service and a subscriber together; print what arrives."""
    import asyncio
    import time

    import numpy as np

    from stemcast.client import Frame, SeriesEnd, SeriesStart, Subscriber
    from stemcast.service.app import Service, serve
    from stemcast.service.config import ServiceSettings
    from stemcast.service.state.records import RunStatus
    from stemcast.simulate import simulate_mib

    converted = directory / "converted"
    converted.mkdir(exist_ok=True)
    settings = ServiceSettings(
        watch=[directory],
        data_endpoint="tcp://127.0.0.1:0",
        preview_endpoint="tcp://127.0.0.1:0",
        idle_timeout_s=5.0,
        http=args.http,
        registry=scratch / "registry.sqlite3",
        output=converted,
        convert=["emd", "blockfile"],
    )
    started: asyncio.Future[Service] = asyncio.get_running_loop().create_future()
    service_task = asyncio.create_task(serve(settings, started.set_result))
    service = await started
    x, y = args.scan
    size = args.frame_size
    rate = f"{args.fps:g} frames/s" if args.fps > 0 else "full speed"
    print(
        f"camera     simulated Merlin, {x} x {y} scan of {size} x {size} frames "
        f"({args.depth}-bit) at {rate}, writing to {directory}\n"
        f"service    following {directory}: data {service.publisher.data_address}, "
        f"preview {service.publisher.preview_address}, http {service.http_address}",
        flush=True,
    )
    rows = slice(size // 2 - size // 16, size // 2 + size // 16)
    subscriber = Subscriber(service.publisher.data_address, timeout_s=30.0)

    frame_bytes = 0

    def receive() -> tuple[dict[str, Any], list[float], float, list[float]]:
        nonlocal frame_bytes
        sums: list[float] = []
        latencies: list[float] = []
        first = 0.0
        for event in subscriber:
            if isinstance(event, SeriesStart):
                header = event.header
                first = time.monotonic()
                print(
                    f"subscriber series {event.series[:8]}: {header['detector']} "
                    f"{'x'.join(map(str, header['shape']))} {header['dtype']}, "
                    f"{header['frames_expected']} frames expected",
                    flush=True,
                )
            elif isinstance(event, Frame):
                sums.append(float(event.data[rows, rows].sum()))
                frame_bytes = event.data.nbytes
                stamp = event.header.get("timestamp_ns")
                if stamp is not None:
                    latencies.append((time.time_ns() - stamp) / 1e6)
            elif isinstance(event, SeriesEnd):
                return event.header, sums, time.monotonic() - first, latencies
        raise AssertionError("unreachable: the subscriber iterates until it times out")

    serving = False
    try:
        receiving = asyncio.create_task(asyncio.to_thread(receive))
        await asyncio.to_thread(
            simulate_mib,
            directory,
            name="demo",
            scan_shape=(x, y),
            frame_size=size,
            counter_depth=args.depth,
            fps=args.fps,
        )
        last_frame = time.monotonic()
        end, sums, seconds, latencies = await receiving
        job = await _conversion_of(service, end["series"])
        final_after = time.monotonic() - last_frame
        serving = args.serve
    finally:
        subscriber.close()
        if not serving:
            service.stop()
            await service_task
    frames = len(sums)
    nbytes = frames * frame_bytes
    print(
        f"\nreceived   {frames} of {end['frames']} frames, {end['status']} "
        f"({end['reason']}) in {seconds:.1f} s: {frames / max(seconds, 1e-9):.0f} frames/s, "
        f"{nbytes / max(seconds, 1e-9) / 1e6:.0f} MB/s"
    )
    if latencies:
        p50, p99 = np.percentile(latencies, [50, 99])
        print(f"latency    write to receive: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    shape = end["nav_shape"]
    print(
        f"scan shape {' x '.join(map(str, shape))} (x, y) from {end['nav_evidence']}: "
        f"{end['nav_detail']}"
    )
    if job is not None:
        outputs = ", ".join(
            f"{Path(path).name} ({Path(path).stat().st_size / 1e6:.0f} MB)"
            for path in job["outputs"].values()
        )
        folder = Path(next(iter(job["outputs"].values()))).parent
        print(
            f"converted  {outputs}, written while the camera wrote, final "
            f"{final_after:.2f} s after its last frame, into {folder}"
        )
    if len(shape) == 2:
        image = np.asarray(sums[: shape[0] * shape[1]]).reshape(shape[1], shape[0])
        print(
            f"\nVirtual bright-field image ({' x '.join(map(str, image.shape))} scan, "
            "central disk, built live from the received frames):"
        )
        print(_render(image))
    complete = frames == end["frames"] and end["status"] == RunStatus.COMPLETE
    if serving:
        print(
            f"\nviewer     {service.http_address}/ shows the run, its frames and virtual images "
            f"in a browser (stemcast view {service.http_address});\n"
            "           the service keeps running until Ctrl-C.",
            flush=True,
        )
        await service_task
    return 0 if complete and job is not None else 1


async def _conversion_of(service: Any, run_id: str, timeout_s: float = 120.0) -> Any:
    """Wait for the automatic conversion of a run; return the job, or ``None`` if it failed."""
    import asyncio

    from stemcast.service.state.records import JobStatus

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        jobs = await asyncio.to_thread(service.registry.jobs, run_id=run_id)
        if jobs and jobs[0]["status"] is JobStatus.DONE:
            return jobs[0]
        if jobs and jobs[0]["status"] in (JobStatus.FAILED, JobStatus.CANCELLED):
            print(f"conversion {jobs[0]['status']}: {jobs[0]['error']}", file=sys.stderr)
            return None
        await asyncio.sleep(0.02)
    print(f"conversion: not done after {timeout_s:g} s", file=sys.stderr)
    return None


def _option(text: str) -> tuple[str, str, Any]:
    """Parse ``target.name=value``; the value is read as JSON when it parses, else as text."""
    key, equals, value = text.partition("=")
    target, dot, name = key.strip().partition(".")
    if not (equals and dot and target and name):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not target.name=value, e.g. emd.compression=gzip"
        )
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    return target, name, parsed


def _convert_failed(source: Path | str, error: BaseException) -> None:
    message = str(error) or type(error).__name__
    if str(source) not in message:
        message = f"{source}: {message}"
    print(f"stemcast convert: error: {message}", file=sys.stderr, flush=True)


def _convert_sources(
    paths: Sequence[Path], targets: Sequence[str], output: Path
) -> tuple[list[Path], bool]:
    """Find the runs to convert, each once; say whether a path named none (error printed)."""
    from stemcast.convert.run import output_paths
    from stemcast.formats.runs import run_source

    runs: list[Path] = []
    claimed: dict[Path, Path] = {}
    failed = False
    for path in paths:
        try:
            first = Path(os.path.abspath(run_source(path)))
        except StemcastError as error:
            _convert_failed(path, error)
            failed = True
            continue
        if first in runs:
            continue
        outputs = list(output_paths(first, targets, output).values())
        clash = next((claimed[out] for out in outputs if out in claimed), None)
        if clash is not None:
            _convert_failed(first, ParameterError(f"its outputs would replace those of {clash}"))
            failed = True
            continue
        claimed.update(dict.fromkeys(outputs, first))
        runs.append(first)
    return runs, failed


def _convert(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from stemcast.convert.run import check_options, convert_run, parse_targets

    targets = parse_targets(args.to)
    given: dict[str, dict[str, Any]] = {}
    for target, name, value in args.option or []:
        given.setdefault(target, {})[name] = value
    options = check_options(targets, given)
    runs, failed = _convert_sources(args.paths, targets, args.output)
    if args.scheduler:
        return int(_convert_on_cluster(args, runs, targets, options) or failed)
    for first in runs:
        with tqdm(unit="frame", desc=first.name, disable=None, leave=False) as bar:

            def progress(done: int, total: int, bar: Any = bar) -> None:
                bar.total = total
                bar.update(done - bar.n)

            try:
                result = convert_run(
                    first,
                    targets,
                    args.output,
                    options=options,
                    navigation_shape=args.navigation_shape,
                    progress=progress,
                )
            except (StemcastError, OSError) as error:
                bar.close()
                _convert_failed(first, error)
                failed = True
                continue
        for path in result.outputs.values():
            print(path, flush=True)
    return int(failed)


def _convert_on_cluster(
    args: argparse.Namespace, runs: list[Path], targets: Sequence[str], options: dict[str, Any]
) -> bool:
    """Convert each run as one task on a dask.distributed cluster; report runs as they end."""
    import uuid

    from distributed import Client, as_completed
    from tqdm import tqdm

    from stemcast.convert.run import convert_on_worker

    failed = False
    output = os.path.abspath(args.output)
    shape = list(args.navigation_shape) if args.navigation_shape else None
    with Client(args.scheduler) as client:  # type: ignore[no-untyped-call]
        futures = {
            client.submit(
                convert_on_worker,
                uuid.uuid4().hex,
                os.fspath(first),
                list(targets),
                output,
                options=options,
                navigation_shape=shape,
                pure=False,
            ): first
            for first in runs
        }
        with tqdm(total=len(futures), unit="run", disable=None) as bar:
            for future in as_completed(futures):  # type: ignore[no-untyped-call]
                try:
                    result = future.result()
                except Exception as error:
                    _convert_failed(futures[future], error)
                    failed = True
                else:
                    for path in result["outputs"].values():
                        bar.write(path, file=sys.stdout)
                bar.update()
    return failed


class _Version(argparse.Action):
    """``--version``: the package's version, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(f"stemcast {stemcast.__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """Build the ``stemcast`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="stemcast", description="Live acquisition and file formats for 4D-STEM cameras."
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser(
        "info",
        help="describe Merlin .mib, TVIPS .tvips, blockfile .blo and EMD files",
        description=(
            "Describe data files. Merlin .mib runs: files, layout, frames, scan shape and its "
            "evidence, interruption. TVIPS .tvips series: data and axes with the scan shape "
            "'stemcast convert' writes (from the rotator index of the frame headers). "
            "NanoMegas .blo blockfiles and EMD files (NCEM, Velox): data and axes of every "
            "signal."
        ),
    )
    info.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help=".mib, .tvips, .blo or .emd file(s)",
    )
    info.add_argument(
        "--navigation-shape",
        type=_scan,
        metavar="XxY",
        help="scan shape to assume for Merlin and TVIPS runs, e.g. 64x32",
    )
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_info)

    serve = commands.add_parser("serve", help="follow growing runs and publish their frames")
    serve.add_argument(
        "--watch", action="append", type=Path, metavar="DIR", help="directory to watch (repeat)"
    )
    serve.add_argument("--data-endpoint", metavar="URL", help="data channel (ROUTER) bind address")
    serve.add_argument("--preview-endpoint", metavar="URL", help="PUB preview channel bind address")
    serve.add_argument("--config", type=Path, metavar="FILE", help="TOML settings file")
    serve.add_argument(
        "--polling", action="store_true", help="poll the directories (network shares)"
    )
    serve.add_argument(
        "--idle-timeout", type=float, metavar="S", help="end a run that stops growing this long"
    )
    serve.add_argument(
        "--navigation-shape", type=_scan, metavar="XxY", help="scan shape of every run"
    )
    serve.add_argument(
        "--http", metavar="ADDR", help="HTTP API bind address (127.0.0.1:8750; 'off': none)"
    )
    serve.add_argument("--output", type=Path, metavar="DIR", help="output root of conversions")
    serve.add_argument(
        "--convert",
        metavar="TARGETS",
        help="write every run to these targets while it is acquired, e.g. emd,blockfile",
    )
    serve.add_argument(
        "--token-file", type=Path, metavar="FILE", help="bearer token of the HTTP API's changes"
    )
    serve.add_argument("--registry", type=Path, metavar="FILE", help="SQLite registry of runs")
    serve.add_argument(
        "--scheduler", metavar="ADDRESS", help="dask.distributed scheduler for conversions"
    )
    serve.add_argument("--quiet", action="store_true", help="log errors only")
    serve.set_defaults(handler=_serve)

    simulate = commands.add_parser("simulate", help="write a growing acquisition like a camera")
    simulate.add_argument("directory", type=Path, metavar="DIR", help="where to write")
    simulate.add_argument("--format", choices=("mib", "tvips"), default="mib")
    simulate.add_argument("--scan", type=_scan, default=(16, 16), metavar="XxY", help="scan size")
    simulate.add_argument(
        "--frame-size", type=int, help="frame side in pixels (default 256; 512 with --quad)"
    )
    simulate.add_argument(
        "--depth",
        type=int,
        default=12,
        choices=(1, 6, 8, 12, 16, 24),
        help="Merlin counter depth (1, 6, 12, 24) or TVIPS bits (8, 16)",
    )
    simulate.add_argument("--quad", action="store_true", help="Merlin 2x2 chip assembly")
    simulate.add_argument("--raw", action="store_true", help="Merlin RAW (R64) payloads")
    simulate.add_argument(
        "--fps", type=float, default=0.0, help="frames per second (0: as fast as possible)"
    )
    simulate.add_argument(
        "--interrupt-after", type=int, metavar="N", help="stop mid-frame after N frames"
    )
    simulate.add_argument(
        "--max-file-size", type=int, metavar="BYTES", help="TVIPS: size cap of each part"
    )
    simulate.add_argument(
        "--frames-per-file", type=int, metavar="N", help="Merlin: start a new file every N frames"
    )
    simulate.add_argument("--name", default="scan", help="run name (file stem)")
    simulate.add_argument(
        "--flyback", type=float, default=0.0005, metavar="S", help="Merlin: fly-back time"
    )
    simulate.add_argument(
        "--flyback-frames", type=int, default=0, metavar="N", help="extra frames per line"
    )
    simulate.add_argument("--snake", action="store_true", help="serpentine scan")
    simulate.add_argument(
        "--hdr-scan-size", action="store_true", help="Merlin: write ScanX/ScanY to the .hdr"
    )
    simulate.add_argument(
        "--pattern-pool",
        type=int,
        default=0,
        metavar="LINES",
        help="repeat the first LINES scan lines over the whole scan (0: every line its own)",
    )
    simulate.add_argument(
        "--no-scan-engine",
        dest="scan_engine",
        action="store_false",
        help="TVIPS: no rotator index nor scan positions in the frame headers",
    )
    simulate.add_argument(
        "--frames-before-scan",
        type=int,
        default=0,
        metavar="N",
        help="TVIPS: frames recorded before the scan starts (rotator index 0)",
    )
    simulate.add_argument(
        "--frames-after-scan",
        type=int,
        default=0,
        metavar="N",
        help="TVIPS: frames recorded after the scan ends (rotator index back to 0)",
    )
    simulate.add_argument("--seed", type=int, default=0, help="random seed")
    simulate.set_defaults(handler=_simulate)

    subscribe = commands.add_parser("subscribe", help="print what a service publishes")
    subscribe.add_argument("endpoint", metavar="URL", help="data (or preview) endpoint")
    subscribe.add_argument(
        "--preview", action="store_true", help="the endpoint is a preview (PUB) channel"
    )
    subscribe.add_argument("--series", type=int, metavar="N", help="exit after N series have ended")
    subscribe.add_argument(
        "--from",
        dest="start",
        choices=("live", "run"),
        default="live",
        help="data channel: start at the next frame (live) or at the start of the runs being "
        "followed (run); no other subscriber loses a frame either way",
    )
    where = subscribe.add_mutually_exclusive_group()
    where.add_argument(
        "--resume",
        metavar="SERIES:FRAME",
        help="data channel: go on from a position printed by an earlier subscribe",
    )
    where.add_argument(
        "--position-file",
        type=Path,
        metavar="FILE",
        help="data channel: keep the position in FILE (replaced atomically after each "
        "event) and go on from it when FILE exists",
    )
    subscribe.add_argument(
        "--json",
        action="store_true",
        help="print the header of every event (series, frame, series end) as a JSON line",
    )
    subscribe.add_argument(
        "--timeout", type=float, metavar="S", help="exit if nothing arrives for S seconds"
    )
    subscribe.set_defaults(handler=_subscribe)

    view = commands.add_parser(
        "view",
        help="open the live viewer of a running service in a browser",
        description=(
            "Open the live viewer of a running 'stemcast serve' (its HTTP address) in a "
            "browser: the runs, the latest frame and virtual images as the scan runs. The "
            "address is printed, for a browser on another machine or when none is found."
        ),
    )
    view.add_argument(
        "url",
        nargs="?",
        default="http://127.0.0.1:8750",
        metavar="URL",
        help="the service's HTTP address (default http://127.0.0.1:8750)",
    )
    view.add_argument("--run", metavar="ID", help="show this run instead of the newest")
    view.add_argument("--no-browser", action="store_true", help="only print the address to open")
    view.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="wait this long for the service"
    )
    view.set_defaults(handler=_view)

    convert = commands.add_parser(
        "convert", help="convert finished runs to blockfile and EMD (one pass, bounded memory)"
    )
    convert.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="a file of each run (.mib, .tvips)"
    )
    convert.add_argument(
        "--to", required=True, metavar="TARGETS", help="comma-separated: emd, blockfile"
    )
    convert.add_argument("--output", required=True, type=Path, metavar="DIR", help="output folder")
    convert.add_argument(
        "--scheduler", metavar="ADDRESS", help="run one task per run on this dask scheduler"
    )
    convert.add_argument(
        "--navigation-shape", type=_scan, metavar="XxY", help="scan shape (default: inferred)"
    )
    convert.add_argument(
        "--option",
        action="append",
        type=_option,
        metavar="TARGET.NAME=VALUE",
        help="target option, e.g. blockfile.intensity_scaling=minmax (repeat)",
    )
    convert.set_defaults(handler=_convert)

    demo = commands.add_parser(
        "demo", help="simulate a camera, follow it live and show what a subscriber receives"
    )
    demo.add_argument("--directory", type=Path, help="keep the acquisition in this folder")
    demo.add_argument("--scan", type=_scan, default=(48, 32), metavar="XxY", help="scan size")
    demo.add_argument("--frame-size", type=int, default=256, help="frame side in pixels")
    demo.add_argument("--depth", type=int, default=12, choices=(1, 6, 12, 24), help="bits")
    demo.add_argument(
        "--fps", type=float, default=300.0, help="simulated frame rate (0: as fast as possible)"
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="keep the service running at the end, and point to its live viewer",
    )
    demo.add_argument(
        "--http",
        default="127.0.0.1:0",
        metavar="ADDR",
        help="the service's HTTP address (default: a free port on 127.0.0.1)",
    )
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``stemcast`` command line."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args))
    except StemcastError as error:
        print(f"stemcast: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
