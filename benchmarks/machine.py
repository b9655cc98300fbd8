"""What the benchmark scripts print about the machine and the library versions."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Sequence


def describe_machine(modules: Sequence[str]) -> None:
    """Print the processor, cores, memory, load average and the versions of ``modules``."""
    versions = {"python": platform.python_version()}
    for module in modules:
        try:
            versions[module] = __import__(module).__version__
        except Exception:
            versions[module] = "not installed"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as stream:
        for line in stream:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as stream:
        memory = f", {int(stream.readline().split()[1]) / 2**20:.1f} GiB RAM"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {cpu}, {cores} cores available{memory}, load average {load:.2f}, "
        f"{platform.platform()}"
    )
    print("versions: " + ", ".join(f"{key} {value}" for key, value in versions.items()))
