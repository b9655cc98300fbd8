"""ThermoFisher Velox EMD files: images, single EDS spectra, EDS spectrum streams, EELS cubes.

Signals are returned in the reference's order: single spectra, images, EELS spectrum images,
EDS spectrum image(s), each in UUID order. Which are read depends on the file's kind: with
``Data/Image`` and ``Data/SpectrumImage`` everything; with images only, only the images; with
no image, the spectra and images.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from stemcast.errors import FormatError, ParameterError
from stemcast.formats.emd.hdf5 import Hdf5Source, members
from stemcast.formats.emd.units import compact_unit
from stemcast.formats.emd.velox_metadata import (
    Mapping_,
    apply_mapping,
    detector_entry,
    display_labels,
    general_metadata,
    image_title,
    metadata_groups,
    velox_mapping,
)
from stemcast.formats.emd.velox_spectrum import (
    GATE,
    SpectrumStreamSource,
    check_binning,
    check_frame_range,
    count_ends,
    frame_table,
    stream_data,
    stream_groups,
)

__all__ = ["read_velox", "velox_version"]

_logger = logging.getLogger(__name__)

_SELECT_TYPES = {
    None: None,
    "image": "images",
    "images": "images",
    "single_spectrum": "single_spectrum",
    "spectrum_image": "spectrum_image",
}


def velox_version(source: Hdf5Source) -> int | None:
    """Return the Velox version of a file, or ``None`` if it is not a Velox file."""
    node = source.file.get("Version")
    if not isinstance(node, h5py.Dataset):
        return None
    try:
        version = source.json(node)
    except FormatError:
        return None
    if not isinstance(version, dict) or version.get("format") not in ("Velox", "DevelopersKit"):
        return None
    try:
        return int(str(version.get("version")))
    except ValueError as error:
        raise FormatError(
            f"Velox version {version.get('version')!r} is not a number", path=source.path
        ) from error


@dataclass(frozen=True, slots=True)
class VeloxOptions:
    """The Velox parameters of :func:`stemcast.readers.emd.file_reader`."""

    lazy: bool = False
    select_type: str | None = None
    first_frame: int = 0
    last_frame: int | None = None
    sum_frames: bool = True
    sum_EDS_detectors: bool = True
    rebin_energy: int = 1
    SI_dtype: npt.DTypeLike | None = None
    load_SI_image_stack: bool = False


def _signal(
    data: Any,
    axes: list[dict[str, Any]],
    general: dict[str, Any],
    signal_type: str,
    original: dict[str, Any],
    mapping: Mapping_,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"General": general, "Signal": {"signal_type": signal_type}}
    apply_mapping(mapping, original, metadata)
    return {
        "data": data,
        "axes": axes,
        "metadata": metadata,
        "original_metadata": original,
        "mapping": mapping,
    }


def _float(tree: Any, *keys: str, default: float) -> float:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return default
        tree = tree[key]
    try:
        return float(tree)
    except (TypeError, ValueError):
        return default


def _spatial_axes(
    metadata: dict[str, Any], shape: tuple[int, ...], first_index: int, navigate: bool
) -> list[dict[str, Any]]:
    """``y`` and ``x`` axes (or ``x`` alone for a 1-D ``shape``) from ``BinaryResult``."""
    result = metadata.get("BinaryResult") or {}
    width = _float(result, "PixelSize", "width", default=1.0)
    height = _float(result, "PixelSize", "height", default=1.0)
    half = shape[-1] / 2
    units, factor = compact_unit(width, str(result.get("PixelUnitX", "")), half)
    axes = []
    if len(shape) == 2:
        axes.append(
            {
                "index_in_array": first_index,
                "name": "y",
                "offset": _float(result, "Offset", "y", default=0.0) * factor,
                "scale": height * factor,
                "size": shape[0],
                "units": units,
                "navigate": navigate,
            }
        )
    axes.append(
        {
            "index_in_array": first_index + len(shape) - 1,
            "name": "x",
            "offset": _float(result, "Offset", "x", default=0.0) * factor,
            "scale": half * width * factor / half,
            "size": shape[-1],
            "units": units,
            "navigate": navigate,
        }
    )
    return axes


def _time_axis(seconds: float | None, frames: int, size_factor: float) -> dict[str, Any]:
    """Frame axis; the unit is chosen for ``size_factor`` frames (the reference's choice)."""
    if seconds is None:
        scale, units = 1.0, ""
    else:
        units, factor = compact_unit(seconds, "s", size_factor)
        scale = size_factor * seconds * factor / size_factor
    return {
        "index_in_array": 0,
        "name": "Time",
        "offset": 0.0,
        "scale": scale,
        "size": frames,
        "units": units,
        "navigate": True,
    }


def _frame_time(metadata: dict[str, Any]) -> float | None:
    scan = _float(metadata, "Scan", "FrameTime", default=np.nan)
    if np.isfinite(scan):
        return scan
    index = (metadata.get("BinaryResult") or {}).get("DetectorIndex")
    exposure = _float(metadata, "Detectors", f"Detector-{index}", "ExposureTime", default=np.nan)
    return exposure if np.isfinite(exposure) else None


def _to_complex(block: npt.NDArray[Any]) -> npt.NDArray[np.complex64]:
    real, imaginary = block.dtype.names or ("", "")
    out = np.empty(block.shape, dtype=np.complex64)
    out.real = block[real]
    out.imag = block[imaginary]
    return out


class _VeloxReader:
    def __init__(self, source: Hdf5Source, version: int, options: VeloxOptions) -> None:
        if options.select_type not in _SELECT_TYPES:
            raise ParameterError(
                f"{options.select_type!r} is not one of None, 'images', 'single_spectrum' "
                "or 'spectrum_image'",
                parameter="select_type",
            )
        self.source = source
        self.file = source.file
        self.path = source.path
        self.version = version
        self.options = options
        self.select = _SELECT_TYPES[options.select_type]
        self.groups = metadata_groups(source)
        data = self.file.get("Data")
        if not isinstance(data, h5py.Group):
            raise FormatError("Velox file without a 'Data' group", path=self.path)
        self.data = data
        if "Image" in data and "SpectrumImage" in data:
            self.kind = "SpectrumStream"
        elif "Image" in data:
            self.kind = "Image"
        else:
            self.kind = "Spectrum"

    def read(self) -> list[dict[str, Any]]:
        signals = []
        if self.kind != "Image" and self.select in (None, "single_spectrum"):
            signals += self._spectra()
        if self.select in (None, "images"):
            signals += self._images()
        if self.select in (None, "spectrum_image"):
            signals += self._eels()
            if self.kind == "SpectrumStream":
                signals += self._spectrum_images()
        return signals

    def _mapping(self, spectrum: bool) -> Mapping_:
        return velox_mapping(
            self.version,
            spectrum=spectrum,
            individual_detector=spectrum and not self.options.sum_EDS_detectors,
        )

    def _metadata(self, group: h5py.Group, name: str = "Metadata") -> dict[str, Any]:
        """Return the JSON object of dataset ``name`` of ``group`` (the first frame's)."""
        return self.source.json_object(self.source.dataset(group, name))

    def _members(self, kind: str) -> list[h5py.Group]:
        node = self.data.get(kind)
        if not isinstance(node, h5py.Group):
            return []
        return [group for _, group in members(node) if isinstance(group, h5py.Group)]

    # Single spectra ------------------------------------------------------------------------

    def _spectra(self) -> list[dict[str, Any]]:
        signals = []
        for group in self._members("Spectrum"):
            dataset = self.source.dataset(group, "Data")
            lazy = self.options.lazy
            data = (self.source.lazy(dataset) if lazy else self.source.values(dataset)).T
            if data.shape[0] == 1:
                data = data[0]
            metadata = self._metadata(group)
            axes = [self._energy_axis(metadata, data.shape[-1], rebin=1)]
            if data.ndim == 2:
                axes.insert(
                    0,
                    {
                        "name": "Stack",
                        "offset": 0.0,
                        "scale": 1.0,
                        "size": data.shape[0],
                        "units": None,
                        "navigate": True,
                    },
                )
            original = {**metadata, **self.groups}
            general = general_metadata(self.path, "EDS", metadata)
            signals.append(
                _signal(data, axes, general, "EDS_TEM", original, self._mapping(spectrum=True))
            )
        return signals

    def _energy_axis(self, metadata: dict[str, Any], size: int, rebin: int) -> dict[str, Any]:
        name = str((metadata.get("BinaryResult") or {}).get("Detector", ""))
        for entry in (metadata.get("Detectors") or {}).values():
            if isinstance(entry, dict) and name and name in str(entry.get("DetectorName", "")):
                return {
                    "name": "Energy",
                    "offset": _float(entry, "OffsetEnergy", default=0.0) / 1000,
                    "scale": _float(entry, "Dispersion", default=1000.0) / 1000 * rebin,
                    "size": size,
                    "units": "keV",
                    "navigate": False,
                }
        _logger.warning("The spectrum calibration can't be loaded.")
        return {
            "name": "Energy",
            "offset": 0.0,
            "scale": 1.0,
            "size": size,
            "units": None,
            "navigate": False,
        }

    # Images --------------------------------------------------------------------------------

    def _images(self) -> list[dict[str, Any]]:
        spectrum_stream = self.kind == "SpectrumStream"
        labels = display_labels(self.source, self.groups) if spectrum_stream else {}
        whole_stack = self.kind != "SpectrumStream" or self.options.load_SI_image_stack
        signals = []
        for group in self._members("Image"):
            dataset = self.source.dataset(group, "Data")
            if dataset.ndim != 3:
                raise FormatError(
                    f"image {dataset.name!r} has shape {dataset.shape}, not (height, width, "
                    "frames)",
                    path=self.path,
                )
            data = self._image_data(dataset, whole_stack)
            metadata = self._metadata(group)
            uuid = group.name.rsplit("/", 1)[-1]
            title = labels.get(uuid) or image_title(self.version, uuid, metadata, self.groups)
            frames = data.shape[0] if data.ndim == 3 else 1
            axes = _spatial_axes(metadata, data.shape[-2:], 1 if frames > 1 else 0, False)
            if frames > 1:
                axes.insert(0, _time_axis(_frame_time(metadata), frames, frames))
            original = {
                **metadata,
                **self.groups,
                "DetectorMetadata": detector_entry(metadata, title),
            }
            general = general_metadata(self.path, title, metadata)
            signals.append(
                _signal(data, axes, general, "", original, self._mapping(spectrum=False))
            )
        return signals

    def _image_data(self, dataset: h5py.Dataset, whole_stack: bool) -> Any:
        compound = dataset.dtype.names is not None
        frames = dataset.shape[2] if whole_stack else min(dataset.shape[2], 1)
        if self.options.lazy:
            import dask.array as da

            array = self.source.lazy(
                dataset,
                convert=_to_complex if compound else None,
                dtype=np.complex64 if compound else None,
            )[:, :, :frames]
            array = da.moveaxis(array, -1, 0)
        else:
            stored = self.source.values(dataset, (slice(None), slice(None), slice(frames)))
            if compound:
                stored = _to_complex(stored)
            array = np.ascontiguousarray(np.moveaxis(stored, -1, 0))
        return array[0] if frames == 1 else array

    # EELS spectrum images (Velox 13 and later) ---------------------------------------------

    def _eels(self) -> list[dict[str, Any]]:
        cubes = self._members("EelsSpectrumImage")
        if not cubes:
            return []
        spectrum_images = self._members("SpectrumImage")
        calibration = self._metadata(spectrum_images[0]) if spectrum_images else {}
        signals = []
        for group in cubes:
            dataset = self.source.dataset(group, "Data")
            lazy = self.options.lazy
            stored = self.source.lazy(dataset) if lazy else self.source.values(dataset)
            data = stored.transpose(2, 0, 1) if stored.ndim == 3 else stored
            acquisition = (
                self._metadata(group, "AcquisitionMetadata")
                if "AcquisitionMetadata" in group
                else {}
            )
            energy = (acquisition.get("Data") or {}) if isinstance(acquisition, dict) else {}
            spatial = _fixed_factor_axes(calibration, data.shape[:-1])
            axes = [
                *spatial,
                {
                    "index_in_array": data.ndim - 1,
                    "name": "Energy-loss",
                    "offset": _float(energy, "offset", default=0.0),
                    "scale": _float(energy, "dispersion", default=1.0),
                    "size": data.shape[-1],
                    "units": "eV",
                    "navigate": False,
                },
            ]
            original = self._metadata(group) if "Metadata" in group else {}
            general = {"title": "EELS", "original_filename": os.path.basename(self.path)}
            signals.append(
                {
                    "data": data,
                    "axes": axes,
                    "metadata": {"General": general, "Signal": {"signal_type": "EELS"}},
                    "original_metadata": original,
                }
            )
        return signals

    # EDS spectrum images -------------------------------------------------------------------

    def _spectrum_images(self) -> list[dict[str, Any]]:
        streams = stream_groups(self.file)
        if not streams:
            _logger.warning(
                "No spectrum stream is present in the file and the spectrum images are saved "
                "in a proprietary format, which is not supported. The file has been 'pruned' "
                "or written by software other than Velox; read the original file instead: %s",
                self.path,
            )
            return []
        options = self.options
        settings = self._metadata(streams[0], "AcquisitionSettings")
        try:
            channels = int(settings["bincount"])
            dtype = np.dtype(
                options.SI_dtype
                if options.SI_dtype is not None
                else settings.get("StreamEncoding", "uint16")
            )
        except (KeyError, TypeError, ValueError) as error:
            raise FormatError(
                f"AcquisitionSettings of {streams[0].name!r} give no usable bincount or "
                f"StreamEncoding ({error})",
                path=self.path,
            ) from error
        check_binning(channels, options.rebin_energy)
        declared = self._declared_frames()
        pixels = _pixels_per_frame(self.source, streams[0], declared)
        scan_shape = self._scan_shape(streams[0], pixels)
        pixels_per_frame = scan_shape[0] * scan_shape[1]
        frames = declared or _frames_from_ends(self.source, streams[0], pixels_per_frame)
        last = frames if options.last_frame is None else int(options.last_frame)
        check_frame_range(int(options.first_frame), last, frames)
        sets = [streams] if options.sum_EDS_detectors else [[stream] for stream in streams]
        return [
            self._spectrum_image(members, scan_shape, channels, dtype, frames, last)
            for members in sets
        ]

    def _declared_frames(self) -> int | None:
        for group in self._members("SpectrumImage"):
            if "SpectrumImageSettings" in group:
                try:
                    settings = self._metadata(group, "SpectrumImageSettings")
                    return int(settings["endFramePosition"])
                except (KeyError, TypeError, ValueError):
                    return None
            return None
        return None

    def _scan_shape(self, stream: h5py.Group, pixels: int | None) -> tuple[int, int]:
        """``(ny, nx)`` of the spectrum image.

        The stream does not say; the reference takes the shape of the last image of the file.
        Here the candidates are that image, the other images and the scan area recorded in
        the stream's metadata; the first whose size matches the pixel ends counted in the
        stream wins.
        """
        candidates: list[tuple[int, int]] = []
        images = [self.source.dataset(group, "Data").shape[:2] for group in self._members("Image")]
        if images:
            candidates += [images[-1], images[0], *images]
        metadata = self._metadata(stream)
        scan = metadata.get("Scan") or {}
        width = _float(scan, "ScanSize", "width", default=0.0) * (
            _float(scan, "ScanArea", "right", default=1.0)
            - _float(scan, "ScanArea", "left", default=0.0)
        )
        height = _float(scan, "ScanSize", "height", default=0.0) * (
            _float(scan, "ScanArea", "bottom", default=1.0)
            - _float(scan, "ScanArea", "top", default=0.0)
        )
        if round(width) > 0 and round(height) > 0:
            candidates.append((round(height), round(width)))
        for candidate in candidates:
            if pixels is None or candidate[0] * candidate[1] == pixels:
                return int(candidate[0]), int(candidate[1])
        raise FormatError(
            f"cannot tell the scan shape of spectrum stream {stream.name!r}: it has {pixels} "
            f"pixels per frame, the images and scan area of the file give {candidates}",
            path=self.path,
        )

    def _spectrum_image(
        self,
        members: list[h5py.Group],
        scan_shape: tuple[int, int],
        channels: int,
        dtype: np.dtype[Any],
        frames: int,
        last: int,
    ) -> dict[str, Any]:
        options = self.options
        first = int(options.first_frame)
        source = SpectrumStreamSource(
            os.path.abspath(self.path),
            tuple(member.name for member in members),
            scan_shape,
            channels,
            int(options.rebin_energy),
            dtype,
        )
        if options.lazy:
            seekable = all(frame_table(self.source, member) is not None for member in members)
            data = _lazy_spectrum_image(source, first, last, options.sum_frames, seekable)
        else:
            data = source.decode(first, last, options.sum_frames)
        metadata = self._metadata(members[0])
        lead = 0 if options.sum_frames else 1
        axes = _spatial_axes(metadata, scan_shape, lead, True)
        energy = self._energy_axis(metadata, channels // options.rebin_energy, options.rebin_energy)
        axes.append({"index_in_array": lead + 2, **energy, "name": "X-ray energy"})
        if not options.sum_frames:
            frame_time = _float(metadata, "Scan", "FrameTime", default=np.nan)
            seconds = frame_time if np.isfinite(frame_time) else None
            axes.insert(0, _time_axis(seconds, last - first, (last - first) / 2))
        original: dict[str, Any] = {
            **metadata,
            "ImportedDataParameter": {
                "First_frame": first,
                "Last_frame": last,
                "Number_of_frames": frames,
                "Rebin_energy": int(options.rebin_energy),
                "Number_of_channels": channels,
            },
            **self.groups,
        }
        title = "EDS"
        if not options.sum_EDS_detectors:
            detector = str((metadata.get("BinaryResult") or {}).get("Detector", ""))
            title = f"EDS - {detector}"
            original["DetectorMetadata"] = detector_entry(metadata, detector)
        general = general_metadata(self.path, title, metadata)
        return _signal(data, axes, general, "EDS_TEM", original, self._mapping(spectrum=True))


def _fixed_factor_axes(metadata: dict[str, Any], shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """Spatial axes of EELS cubes: the unit is chosen for half a pixel, whatever the size."""
    result = metadata.get("BinaryResult") or {}
    width = _float(result, "PixelSize", "width", default=1.0)
    height = _float(result, "PixelSize", "height", default=1.0)
    units, factor = compact_unit(width, str(result.get("PixelUnitX", "")), 0.5)
    names = ("y", "x")[-len(shape) :]
    sizes = dict(zip(names, shape, strict=True))
    scales = {"y": height * factor, "x": 0.5 * width * factor / 0.5}
    return [
        {
            "index_in_array": index,
            "name": name,
            "offset": _float(result, "Offset", name, default=0.0) * factor,
            "scale": scales[name],
            "size": sizes[name],
            "units": units,
            "navigate": True,
        }
        for index, name in enumerate(names)
    ]


def _pixels_per_frame(source: Hdf5Source, stream: h5py.Group, frames: int | None) -> int | None:
    """Pixels per frame, counted from the stream's pixel ends, if they can be told apart."""
    data = stream_data(source, stream)
    table = frame_table(source, stream)
    if table is not None and table.size >= 2:
        first = np.asarray(source.values(data, slice(int(table[1])))).reshape(-1)
        return int(np.count_nonzero(first == GATE))
    if not frames:
        return None
    ends, trailing = count_ends(source, data)
    return (ends + trailing) // frames if (ends + trailing) % frames == 0 else None


def _frames_from_ends(source: Hdf5Source, stream: h5py.Group, pixels: int) -> int:
    ends, trailing = count_ends(source, stream_data(source, stream))
    return max(1, -(-(ends + trailing) // pixels))


def _lazy_spectrum_image(
    source: SpectrumStreamSource, first: int, last: int, sum_frames: bool, seekable: bool
) -> Any:
    """Build a dask spectrum image decoded on compute, one chunk per frame if seekable."""
    import dask.array as da
    from dask.delayed import delayed

    def block(start: int, stop: int, summed: bool) -> Any:
        task = delayed(source.decode, pure=True)(start, stop, summed)
        shape = source.shape(start, stop, summed)
        return da.from_delayed(task, shape, dtype=source.dtype)  # type: ignore[no-untyped-call, unused-ignore]

    if sum_frames or not seekable:
        return block(first, last, sum_frames)
    frames = [block(frame, frame + 1, False) for frame in range(first, last)]
    return da.concatenate(frames, axis=0)  # type: ignore[no-untyped-call, unused-ignore]


def read_velox(source: Hdf5Source, version: int, options: VeloxOptions) -> list[dict[str, Any]]:
    """Read the signals of a Velox EMD file (see :func:`stemcast.readers.emd.file_reader`).

    Parameters
    ----------
    source
        The open file.
    version
        Its Velox version (:func:`velox_version`).
    options
        The reader's Velox parameters.

    Returns
    -------
    list of dict
        Signal dictionaries, with a HyperSpy ``mapping`` for images and EDS signals.
    """
    return _VeloxReader(source, version, options).read()
