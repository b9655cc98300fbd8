"""Public API of the EMD reader: ``file_reader`` of the reference library, same parameters."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy.typing as npt

from stemcast.errors import FormatError
from stemcast.formats.emd.hdf5 import open_hdf5
from stemcast.formats.emd.ncem import is_ncem, read_ncem
from stemcast.formats.emd.velox import VeloxOptions, read_velox, velox_version

__all__ = ["file_reader"]


def file_reader(
    filename: str | os.PathLike[str],
    lazy: bool = False,
    dataset_path: str | Sequence[str] | None = None,
    stack_group: bool | None = None,
    select_type: str | None = None,
    first_frame: int = 0,
    last_frame: int | None = None,
    sum_frames: bool = True,
    sum_EDS_detectors: bool = True,
    rebin_energy: int = 1,
    SI_dtype: npt.DTypeLike | None = None,
    load_SI_image_stack: bool = False,
) -> list[dict[str, Any]]:
    """Read EMD file, which can be an NCEM or a Velox variant of the EMD format.

    Also reads Direct Electron's DE5 format, which is read according to the NCEM
    specifications.

    Parameters
    ----------
    filename : str, pathlib.Path
        Filename of the file to read or corresponding pathlib.Path.
    lazy : bool, default=False
        Whether to open the file lazily or not. Lazy arrays are dask arrays whose tasks open
        the file to read their block, so no file handle stays open.
    dataset_path : None, str or list of str, default=None
        NCEM only: Path of the dataset. If None, load all supported datasets, otherwise the
        specified dataset(s).
    stack_group : None, bool, default=None
        NCEM only: Stack datasets of groups with common path. Relevant for emd file version
        >= 0.5, where groups can be named ``group0000``, ``group0001``, etc.
    select_type : {None, 'image', 'single_spectrum', 'spectrum_image'}
        Velox only: specifies the type of data to load: if ``'image'`` is selected, only
        images (including EDS maps) are loaded, if ``'single_spectrum'`` is selected, only
        single spectra are loaded and if ``'spectrum_image'`` is selected, only the spectrum
        image will be loaded. ``'images'`` (what the reference accepts) means ``'image'``.
    first_frame : int, default=0
        Velox only: Select the start for the frame range of the EDS spectrum image to load.
    last_frame : int or None, default=None
        Velox only: Select the end for the frame range of the EDS spectrum image to load.
    sum_frames : bool, default=True
        Velox only: Load each individual EDS frame. The EDS spectrum image will be loaded
        with an extra navigation dimension corresponding to the frame index (time axis).
    sum_EDS_detectors : bool, default=True
        Velox only: Load the EDS signal as a sum over the signals from all EDS detectors
        (default) or, alternatively, load the signal of each individual EDS detector. In the
        latter case, a corresponding number of distinct EDS signals is returned.
    rebin_energy : int, default=1
        Velox only: Rebin the energy axis by given factor. Useful in combination with
        ``sum_frames=False`` to reduce the data size when reading the individual frames of
        the spectrum image.
    SI_dtype : numpy.dtype or None, default=None
        Velox only: Change the datatype of a spectrum image. Useful in combination with
        ``sum_frames=False`` to reduce the data size when reading the individual frames of
        the spectrum image. If ``None``, the dtype of the data in the emd file is used.
    load_SI_image_stack : bool, default=False
        Velox only: Allows loading the stack of STEM images acquired simultaneously with the
        EDS spectrum image. This option can be useful to monitor any specimen changes during
        the acquisition or to correct the spatial drift in the spectrum image by using the
        STEM images.

    Returns
    -------
    list of dict
        List of dictionaries containing the following fields:

        - 'data' - multidimensional :class:`numpy.ndarray` or :class:`dask.array.Array`
        - 'axes' - list of dictionaries describing the axes containing the fields 'name',
          'units', 'index_in_array', and either 'size', 'offset', and 'scale' or a numpy
          array 'axis' containing the full axes vector
        - 'metadata' - dictionary containing the parsed metadata
        - 'original_metadata' - dictionary containing the full metadata tree from the input
          file
        - 'mapping' (Velox images and EDS signals) - how HyperSpy fills 'metadata' from
          'original_metadata'; it is already applied to 'metadata'

        When the file contains several datasets, each dataset will be loaded as separate
        dictionary.

    Raises
    ------
    stemcast.errors.FormatError
        The file is not HDF5, is neither an NCEM nor a Velox EMD file, or is corrupt (e.g.
        a spectrum stream holds values that are not energy channels).
    stemcast.errors.ParameterError
        A ``dataset_path`` that does not exist, a frame range outside the spectrum stream,
        a ``rebin_energy`` that does not divide the number of channels, an unknown
        ``select_type``.
    """
    with open_hdf5(filename) as source:
        version = velox_version(source)
        if version is not None:
            options = VeloxOptions(
                lazy=lazy,
                select_type=select_type,
                first_frame=first_frame,
                last_frame=last_frame,
                sum_frames=sum_frames,
                sum_EDS_detectors=sum_EDS_detectors,
                rebin_energy=rebin_energy,
                SI_dtype=SI_dtype,
                load_SI_image_stack=load_SI_image_stack,
            )
            return read_velox(source, version, options)
        if is_ncem(source.file):
            return read_ncem(source, lazy=lazy, dataset_path=dataset_path, stack_group=stack_group)
    raise FormatError(
        "HDF5 file that is neither an NCEM EMD file (no version_major/version_minor "
        "attributes on the root or a top-level group) nor a Velox EMD file (no 'Version' "
        "dataset of format Velox)",
        path=filename,
    )
