"""Command-line interface: ``kmtr <command>`` or ``python -m kmtr_monai <command>`` (python-fire).

Each command is a thin wrapper around a public Python function; imports are lazy so ``kmtr --help`` is instant.
"""

import fire


def simulate(out: str, subjects: int = 16, preset: str = "tiny", seed: int = 0, workers: int = 1, preview: bool = False):
    """Write a synthetic UK Biobank-layout cohort to OUT (see kmtr_monai.simulate)."""
    from kmtr_monai.simulate import simulate_cohort

    return simulate_cohort(out, subjects=subjects, preset=preset, seed=seed, workers=workers, preview=preview)


def phenotypes(root: str, out: str | None = None):
    """Compute the ukbb_cardiac phenotype set from the segmentations under ROOT and write a CSV."""
    from kmtr_monai.data.phenotypes import write_cohort_phenotypes

    return write_cohort_phenotypes(root, out)


def datalist(root: str, out: str | None = None, val: float = 0.15, test: float = 0.15, seed: int = 0):
    """Write a stratified subject-level train/validation/test datalist JSON for the cohort under ROOT."""
    from kmtr_monai.data.datalist import write_datalist

    return write_datalist(root, out=out, val_fraction=val, test_fraction=test, seed=seed)


def kspace(root: str, preset: str = "tiny", acceleration: int = 4, pattern: str = "vista", seed: int = 0):
    """Simulate undersampled k-space for every subject of the cohort under ROOT and print a summary."""
    from kmtr_monai.data.summary import kspace_summary

    return kspace_summary(root, preset=preset, acceleration=acceleration, pattern=pattern, seed=seed)


def pipeline(out: str = "runs/tiny", preset: str = "tiny", subjects: int | None = None, seed: int = 0, workers: int = 1,
             epochs: int | None = None):
    """The main job: simulate a cohort, then train image-mae, kspace-mae and align with their bundles."""
    from kmtr_monai.pipeline import run_pipeline

    run_pipeline(out=out, preset=preset, subjects=subjects, seed=seed, workers=workers, max_epochs=epochs)


def main():
    fire.Fire({"simulate": simulate, "phenotypes": phenotypes, "datalist": datalist, "kspace": kspace,
               "pipeline": pipeline})  # fmt: skip


if __name__ == "__main__":
    main()
