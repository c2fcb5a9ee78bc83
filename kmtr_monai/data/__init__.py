"""Cohort data (DESIGN §2, §7), one module per concept:

- :mod:`~kmtr_monai.data.layout`: the UK Biobank file layout, NIfTI reading with clear errors (no torch import);
- :mod:`~kmtr_monai.data.phenotypes`: ukbb_cardiac phenotypes from segmentations (no torch import);
- :mod:`~kmtr_monai.data.validate`: checks of one subject's files and the bad-subject / missing-view policies;
- :mod:`~kmtr_monai.data.datalist`: stratified subject-level splits;
- :mod:`~kmtr_monai.data.cohort`: the MONAI subject loader ``LoadCohortSubjectd`` and ``make_dataset``;
- :mod:`~kmtr_monai.data.summary`: the k-space summary of a cohort.

Nothing is imported here so that file-level commands start without loading torch.
"""
