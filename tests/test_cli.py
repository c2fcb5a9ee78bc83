"""The command line speaks to people: one-line root causes naming the file or argument, non-zero exits, tracebacks
only with --debug / KMTR_DEBUG=1."""

import os
import shutil
import subprocess
import sys

import pytest
from test_bad_subjects import ALL_VIEWS, write_csvs, write_subject

from kmtr_monai.cli import one_line, root_cause


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cli"))
    for i, eid in enumerate(("1", "2", "3")):
        write_subject(root, eid, views=ALL_VIEWS, seed=i)
    write_csvs(root, ["1", "2", "3"])
    return root


@pytest.fixture()
def truncated(cohort, tmp_path):
    """A copy of ``cohort`` whose subject 2 has a truncated sa.nii.gz."""
    root = str(tmp_path / "trunc")
    shutil.copytree(cohort, root)
    path = os.path.join(root, "2", "sa.nii.gz")
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 3])
    return root


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["kspace", "{root}", "--pattern", "nosuch"], ["kmtr kspace: error", "pattern", "'nosuch'"]),
        (["kspace", "{root}", "--acceleration", "fast"], ["acceleration", "'fast'"]),
        (["kspace", "{root}", "--preset", "huge"], ["data preset", "'huge'"]),
        (["kspace", "/no/such/dir"], ["FileNotFoundError", "/no/such/dir", "does not exist"]),
        (["phenotypes", "{root}", "--on-bad-subject", "maybe"], ["on_bad_subject", "'maybe'", "skip", "fail"]),
        (["datalist", "{root}", "--val", "1.5"], ["val_fraction", "1.5"]),
        (["datalist", "{root}", "--missing-views", "ignore"], ["missing_views", "'ignore'"]),
    ],
)
def test_argument_errors_are_one_line(cohort, kmtr_main, argv, words):
    code, _, err = kmtr_main(*[a.format(root=cohort) for a in argv])
    line = one_error_line(err)
    assert code == 1
    for w in words:
        assert w in line, line
    assert "--debug" in line  # says how to get the traceback


def test_usage_error_and_unknown_command(kmtr_main):
    code, _, _ = kmtr_main("kspace")  # missing ROOT: fire's usage message, exit 2
    assert code == 2
    code, _, _ = kmtr_main("nosuch")
    assert code == 2


def test_truncated_file_named_through_monai_wrappers(truncated):
    """The MONAI Dataset wraps the loader's error in 'applying transform <...>'; root_cause finds the file."""
    from kmtr_monai.data.cohort import make_dataset

    ds = make_dataset([{"eid": "2"}], truncated, "tiny")
    with pytest.raises(Exception) as info:
        ds[0]
    assert "applying transform" in str(info.value)  # what a user saw before
    cause = root_cause(info.value)
    line = one_line(cause)
    assert line.startswith("SubjectFileError: subject '2': cannot read NIfTI 'sa.nii.gz'"), line


def test_truncated_file_via_cli(truncated, kmtr_main):
    code, _, err = kmtr_main("kspace", truncated)
    line = one_error_line(err)
    assert code == 1 and "'2'" in line and "sa.nii.gz" in line and "--on-bad-subject skip" in line
    code, out, _ = kmtr_main("kspace", truncated, "--on-bad-subject", "skip")
    assert code == 0 and "subjects                  2" in out
    code, _, err = kmtr_main("datalist", truncated)
    assert code == 1 and "sa.nii.gz" in one_error_line(err)
    assert "2,sa.nii.gz," in open(os.path.join(truncated, "bad_subjects.csv")).read()


def test_debug_flag_and_environment_show_the_traceback(cohort, kmtr_main, monkeypatch):
    code, _, err = kmtr_main("kspace", cohort, "--pattern", "nosuch", "--debug")
    assert code == 1 and "Traceback (most recent call last)" in err and "pattern must be one of" in err
    monkeypatch.setenv("KMTR_DEBUG", "1")
    code, _, err = kmtr_main("phenotypes", "/no/such/dir")
    assert code == 1 and "Traceback (most recent call last)" in err


def test_subprocess_exit_code_and_stderr(cohort):
    res = subprocess.run([sys.executable, "-m", "kmtr_monai", "phenotypes", cohort, "--on-bad-subject", "maybe"],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.strip().startswith("kmtr phenotypes: error: ValueError: on_bad_subject must be one of")
    assert "Traceback" not in res.stderr and res.stdout == ""
