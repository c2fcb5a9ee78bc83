"""Shared fixtures: one tiny synthetic cohort (with its datalist) per test session."""

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    """Path of a 16-subject tiny-preset synthetic cohort with ``datalist.json`` written."""
    from kmtr_monai.data.datalist import write_datalist
    from kmtr_monai.simulate import simulate_cohort

    root = tmp_path_factory.mktemp("cohort") / "tiny"
    simulate_cohort(str(root), subjects=16, preset="tiny", seed=7)
    write_datalist(str(root), val_fraction=0.5, test_fraction=0.0, seed=0)
    return root
