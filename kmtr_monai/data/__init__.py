"""Cohort data (DESIGN §2, §7): the UK Biobank-layout loader, datalists/splits, phenotypes, k-space summary.

``kspace_summary`` lives in :mod:`kmtr_monai.data.summary` (it pulls in the k-space transforms).
"""

from kmtr_monai.data.cohort import (
    LoadCohortSubjectd,
    crop_centred,
    frame_indices,
    list_subjects,
    make_dataset,
    read_nifti,
    remap_labels,
    sax_start,
)
from kmtr_monai.data.datalist import read_datalist, stratified_split, write_datalist
from kmtr_monai.data.phenotypes import (
    atrial_area_length,
    compute_phenotypes,
    ventricular_phenotypes,
    write_cohort_phenotypes,
)

__all__ = [
    "LoadCohortSubjectd", "atrial_area_length", "compute_phenotypes", "crop_centred", "frame_indices", "list_subjects",
    "make_dataset", "read_datalist", "read_nifti", "remap_labels", "sax_start", "stratified_split",
    "ventricular_phenotypes", "write_cohort_phenotypes", "write_datalist",
]  # fmt: skip
