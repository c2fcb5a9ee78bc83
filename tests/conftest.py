"""Shared fixtures: one tiny synthetic cohort (with its datalist) per test session, the in-process `kmtr` runner and
random-init inference weights."""

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def _mask_cache_in_tmp(tmp_path_factory):
    """The VISTA mask disk cache of this test session lives in its own folder (bundle subprocesses inherit it)."""
    import os

    os.environ["KMTR_CACHE_DIR"] = str(tmp_path_factory.mktemp("kmtr_cache"))
    yield


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    """Path of a 16-subject tiny-preset synthetic cohort with ``datalist.json`` written."""
    from kmtr_monai.data.datalist import write_datalist
    from kmtr_monai.simulate import simulate_cohort

    root = tmp_path_factory.mktemp("cohort") / "tiny"
    simulate_cohort(str(root), subjects=16, preset="tiny", seed=7)
    write_datalist(str(root), val_fraction=0.5, test_fraction=0.0, seed=0)
    return root


@pytest.fixture(scope="session")
def split_cohort(tiny_cohort, tmp_path_factory):
    """The 16 tiny subjects (linked) with a training / validation / test datalist (8 / 4 / 4), for the floors and
    probes, which need all three splits."""
    import shutil

    from kmtr_monai.data.datalist import write_datalist

    root = tmp_path_factory.mktemp("linear") / "cohort"
    root.mkdir()
    for p in tiny_cohort.iterdir():
        if p.is_dir():
            (root / p.name).symlink_to(p.resolve(), target_is_directory=True)
        elif p.suffix == ".csv" or p.name == "cohort.json":
            shutil.copy(p, root / p.name)
    write_datalist(str(root), val_fraction=0.25, test_fraction=0.25, seed=0)
    return root


def _leaves(tree):
    """Every leaf value of nested dicts and lists (e.g. a loaded results.json)."""
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, list):
        for v in tree:
            yield from _leaves(v)
    else:
        yield tree


@pytest.fixture(scope="session")
def json_leaves():
    """The function yielding every leaf of nested dicts and lists."""
    return _leaves


@pytest.fixture
def kmtr_main(capfd):
    """Run ``kmtr argv`` in this process: ``run(*argv)`` gives (exit code, stdout, stderr), captured at the file
    descriptor level (so a bundle subprocess's output is included)."""
    from kmtr_monai.cli import main

    def run(*argv):
        code = 0
        try:
            main(list(argv))
        except SystemExit as err:
            code = err.code
        out, err = capfd.readouterr()
        return code, out, err

    return run


def _random_weights(bundle, path, foreground=None, settings=None):
    """A random-init checkpoint of ``bundle`` at the tiny preset (``{"model": state_dict}``) at ``path`` (a
    ``.../models/model.pt`` for ``kmtr infer --weights``); ``foreground``: the segmentation's last layer set to
    predict that label everywhere, so that the output shows the crop's footprint; ``settings``: further config keys
    (e.g. ``{"kspace_geometry": "acquisition"}``)."""
    from monai.bundle import ConfigParser

    from kmtr_monai.bundle import config_files
    from kmtr_monai.constants import PHENOTYPES

    parser = ConfigParser()
    parser.read_config(config_files(bundle, "inference", "tiny"))
    parser["bundle_root"] = "/nonexistent"
    parser["target_stats"] = {"mean": [100.0] * len(PHENOTYPES), "std": [10.0] * len(PHENOTYPES)}
    parser.update(settings or {})
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    if foreground is not None:
        last = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d) and m.out_channels == 6][-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
            last.bias[foreground] = 10.0
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def random_weights():
    """The function ``random_weights(bundle, path, foreground=None, settings=None) -> path`` writing a random-init tiny-preset
    checkpoint for inference tests."""
    return _random_weights
