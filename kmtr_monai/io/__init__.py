"""Inference input/output: HDF5 k-space files on the model's grid (:mod:`kspace_h5`), scanner k-space files
(ISMRMRD, fastMRI-style, CMRxRecon; :mod:`scanner`, :mod:`scanner_prep`, :mod:`scanner_model`) and the clinical output files, CSV and
NIfTI (:mod:`outputs`)."""

from kmtr_monai.io.kspace_h5 import (
    FORMAT,
    FORMAT_VERSION,
    KspaceFileError,
    LoadKspaceH5d,
    check_views,
    combine_coils,
    read_kspace_h5,
    time_average_max,
    write_kspace_h5,
)
from kmtr_monai.io.scanner import ScannerFileError, ScannerKspace, detect_format, read_scanner_kspace
from kmtr_monai.io.scanner_model import to_kspace_item, to_model_kspace
from kmtr_monai.io.scanner_prep import svd_coil_compression
from kmtr_monai.io.outputs import (
    uncrop_affine,
    view_nifti_name,
    write_diseases_csv,
    write_phenotypes_csv,
    write_view_niftis,
)
