"""Synthetic 4D-STEM data: diffraction patterns of a made-up specimen, for demos and tests.

The specimen has a few round grains on a thin support. Over a grain the central disk dims and
Bragg spots light up, so a virtual bright-field image of the data shows the grains.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt


def _grain_map(scan_shape: tuple[int, int], rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Fraction of grain material at each scan position, shape ``(y, x)``."""
    width, height = scan_shape
    ys, xs = np.mgrid[0:height, 0:width]
    grains = np.zeros((height, width))
    for _ in range(max(3, (width * height) // 256)):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(0.08, 0.2) * min(width, height)
        grains = np.maximum(grains, ((ys - cy) ** 2 + (xs - cx) ** 2 < radius**2).astype(float))
    return grains


def diffraction_patterns(
    scan_shape: tuple[int, int],
    frame_shape: tuple[int, int] = (256, 256),
    *,
    counter_depth: int = 12,
    batch_frames: int = 64,
    dose: float = 4.0,
    seed: int = 0,
) -> Iterator[npt.NDArray[np.uint32]]:
    """Yield batches of synthetic diffraction patterns in scan order.

    Parameters
    ----------
    scan_shape
        ``(x, y)`` scan size.
    frame_shape
        ``(rows, cols)`` of each pattern.
    counter_depth
        Counter depth in bits; counts are clipped to ``2**counter_depth - 1``.
    batch_frames
        Frames per yielded batch.
    dose
        Mean counts per pixel inside the central disk.
    seed
        Seed of the random generator (the same seed gives the same data).

    Yields
    ------
    numpy.ndarray
        ``(n, rows, cols)`` ``uint32`` counts.
    """
    rng = np.random.default_rng(seed)
    grains = _grain_map(scan_shape, rng).ravel()
    rows, cols = frame_shape
    ys, xs = np.mgrid[0:rows, 0:cols]
    centre_y, centre_x = rows / 2, cols / 2
    scale = min(rows, cols) / 256
    distance = np.hypot(ys - centre_y, xs - centre_x)
    disk = (distance < 20 * scale).astype(np.float64)
    spots = np.zeros(frame_shape)
    for angle in np.arange(6) * np.pi / 3:
        sy = centre_y + 60 * scale * np.sin(angle)
        sx = centre_x + 60 * scale * np.cos(angle)
        spots += np.exp(-((ys - sy) ** 2 + (xs - sx) ** 2) / (2 * (4 * scale) ** 2))
    background = 0.02 * np.exp(-distance / (80 * scale))
    ceiling = (1 << counter_depth) - 1
    for start in range(0, grains.size, batch_frames):
        fraction = grains[start : start + batch_frames, np.newaxis, np.newaxis]
        mean = dose * (disk * (1 - 0.6 * fraction) + spots * 3 * fraction + background)
        counts = rng.poisson(mean).astype(np.uint32)
        yield np.minimum(counts, ceiling, out=counts)
