"""Command line: ``stemcast info | demo``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stemcast import __version__
from stemcast.errors import StemcastError

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
    from stemcast.readers.mib import MIBProperties, scan_shape_of
    from stemcast.readers.mib._run import find_hdr, read_hdr
    from stemcast.shape import complete_lines

    prop = MIBProperties.from_path(path)
    layout = prop._layout()
    assert prop.run is not None
    hdr_path = find_hdr(path)
    hdr = read_hdr(hdr_path) if hdr_path else None
    scan = scan_shape_of(prop, hdr, navigation_shape)
    frames = prop.run.frames
    kept = complete_lines(scan.shape, frames) if len(scan.shape) > 1 else (frames,)
    return {
        "format": "Merlin mib",
        "files": [segment.path for segment in prop.run.segments],
        "hdr": str(hdr_path) if hdr_path else None,
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


def signal_summary(path: Path) -> dict[str, Any]:
    """Describe any supported file from what its reader returns (read lazily).

    Parameters
    ----------
    path
        A data file of a supported format.

    Returns
    -------
    dict
        JSON-serialisable summary: format, shape, dtype, axes and, where the reader reports
        it, the scan shape and its evidence.
    """
    from stemcast.formats import detect_format, load

    name = detect_format(path)
    signal = load(path, lazy=True)[0]
    data = signal["data"]
    summary: dict[str, Any] = {
        "format": name,
        "shape": list(data.shape),
        "dtype": str(data.dtype),
        "bytes": int(data.nbytes),
        "axes": [
            {key: axis.get(key) for key in ("name", "size", "scale", "offset", "units")}
            for axis in signal["axes"]
        ],
    }
    scan = signal["original_metadata"].get("scan_shape")
    if isinstance(scan, dict):
        summary["scan_shape"] = list(scan.get("shape", ()))
        summary["scan_shape_evidence"] = scan.get("evidence")
        summary["scan_shape_detail"] = scan.get("detail")
    return summary


def _print_signal_summary(summary: dict[str, Any]) -> None:
    shape = " x ".join(map(str, summary["shape"]))
    print(f"  {'format':<12} {summary['format']}")
    print(f"  {'data':<12} {shape} {summary['dtype']} ({summary['bytes'] / 1e6:.1f} MB)")
    for axis in summary["axes"]:
        units = f" {axis['units']}" if axis["units"] else ""
        print(
            f"  {'axis':<12} {axis['name'] or '(unnamed)'}: {axis['size']} x "
            f"{axis['scale']}{units} from {axis['offset']}"
        )
    if "scan_shape" in summary:
        print(
            f"  {'scan shape':<12} {' x '.join(map(str, summary['scan_shape']))} from "
            f"{summary['scan_shape_evidence']}: {summary['scan_shape_detail']}"
        )


def _info(args: argparse.Namespace) -> int:
    from stemcast.formats import detect_format

    for path in args.paths:
        is_mib = detect_format(path) == "mib"
        summary = mib_summary(path, args.navigation_shape) if is_mib else signal_summary(path)
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


def _demo(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from stemcast.readers.mib import file_reader
    from stemcast.simulate import diffraction_patterns
    from stemcast.writers.mib import MibWriter

    with tempfile.TemporaryDirectory(prefix="stemcast-demo-") as scratch:
        directory = Path(args.directory or scratch)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "demo.mib"
        x, y = args.scan
        print(
            f"Writing a simulated {x} x {y} scan of {args.frame_size}-pixel Merlin frames "
            f"({args.depth}-bit) to {path}"
        )
        with (
            MibWriter(
                path,
                frame_shape=(args.frame_size, args.frame_size),
                counter_depth=args.depth,
                exposure_s=0.001,
                scan_shape=(x, y),
                flyback_s=0.0005,
                start_time=datetime.now(UTC),
            ) as writer,
            tqdm(total=x * y, unit="frame", disable=not sys.stderr.isatty()) as progress,
        ):
            patterns = diffraction_patterns(
                (x, y), (args.frame_size, args.frame_size), counter_depth=args.depth
            )
            for batch in patterns:
                writer.write(batch)
                progress.update(len(batch))
        print(f"\n$ stemcast info {path}")
        _print_summary(mib_summary(path))
        data = file_reader(path, lazy=True)[0]["data"]
        rows, cols = data.shape[-2:]
        disk = data[
            ...,
            rows // 2 - rows // 16 : rows // 2 + rows // 16,
            cols // 2 - cols // 16 : cols // 2 + cols // 16,
        ]
        image = np.asarray(disk.sum(axis=(-2, -1)).compute())
        print(
            f"\nVirtual bright-field image ({' x '.join(map(str, image.shape))} scan, "
            "central disk, lazy read):"
        )
        print(_render(image))
        if args.directory:
            print(f"\nThe acquisition stays in {directory}.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the ``stemcast`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="stemcast", description="Live acquisition and file formats for 4D-STEM cameras."
    )
    parser.add_argument("--version", action="version", version=f"stemcast {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="describe acquisition files")
    info.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help=".mib, .tvips or .blo file(s)"
    )
    info.add_argument(
        "--navigation-shape", type=_scan, metavar="XxY", help="scan shape to assume, e.g. 64x32"
    )
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_info)

    demo = commands.add_parser(
        "demo", help="write a simulated acquisition and show what stemcast reads from it"
    )
    demo.add_argument("--directory", type=Path, help="keep the acquisition in this folder")
    demo.add_argument("--scan", type=_scan, default=(48, 32), metavar="XxY", help="scan size")
    demo.add_argument("--frame-size", type=int, default=256, help="frame side in pixels")
    demo.add_argument("--depth", type=int, default=12, choices=(1, 6, 12, 24), help="bits")
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
