"""``kmtr --help`` / ``kmtr <command> --help`` exit 0 for every command; a failing bundle subprocess is reported by
its root cause in one line (the traceback only with --debug)."""

import subprocess
import sys

import pytest

from kmtr_monai.cli import COMMANDS, SubprocessError, run_bundle_subprocess


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_command_prints_its_help_and_exits_0(kmtr_main, command, flag):
    code, out, err = kmtr_main(command, flag)
    text = out + err
    assert code in (0, None), text
    assert f"kmtr {command}" in text and "NAME" in text and "error" not in text.lower().split("name")[0]


def test_top_level_help_lists_the_commands(kmtr_main):
    code, out, err = kmtr_main("--help")
    text = out + err
    assert code in (0, None)
    for command in COMMANDS:
        assert command in text


def test_console_help_exit_status():
    """The real entry point (python-fire used to exit 2 on `kmtr infer --help`: --help went into **overrides)."""
    for argv in (["infer", "--help"], ["--help"]):
        res = subprocess.run([sys.executable, "-m", "kmtr_monai", *argv], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        assert "NAME" in res.stdout + res.stderr
    res = subprocess.run([sys.executable, "-m", "kmtr_monai", "nosuch", "--help"], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 2  # an unknown command is still a usage error


def test_bundle_subprocess_root_cause(tmp_path, capfd, monkeypatch):
    """``python -m kmtr_monai.bundle_run`` writes its root cause for the parent; the parent raises it."""
    monkeypatch.delenv("KMTR_DEBUG", raising=False)
    missing = tmp_path / "no_such_config.json"
    cmd = [sys.executable, "-m", "kmtr_monai.bundle_run", "run", "--config_file", str(missing)]
    with pytest.raises(SubprocessError) as err:
        run_bundle_subprocess(cmd)
    assert str(missing) in str(err.value) and "Error" in str(err.value).split(":")[0]
    assert "Traceback" not in capfd.readouterr().err  # the subprocess kept its traceback to itself
    with pytest.raises(SubprocessError, match=r"exited with status 3 without a Python error; the command was"):
        run_bundle_subprocess([sys.executable, "-c", "import sys; sys.exit(3)"])


def test_infer_error_is_the_root_cause_in_one_line(tmp_path, kmtr_main, monkeypatch):
    """A missing checkpoint: the one-line error names the file, not the command line; no traceback from either
    process (captured at the file-descriptor level, so the subprocess's stderr counts)."""
    monkeypatch.delenv("KMTR_DEBUG", raising=False)
    from kmtr_monai.simulate import simulate_cohort

    simulate_cohort(str(tmp_path / "c"), subjects=1, preset="tiny", seed=1)
    subject = next(p for p in (tmp_path / "c").iterdir() if p.is_dir())
    weights = tmp_path / "nowhere" / "model.pt"
    code, out, err = kmtr_main("infer", "--bundle", "segment-unetr", "--input", str(subject), "--out",
                               str(tmp_path / "out"), "--preset", "tiny", "--weights", str(weights))  # fmt: skip
    text = out + err
    assert code == 1
    lines = [x for x in text.splitlines() if x.startswith("kmtr infer: error:")]
    assert len(lines) == 1 and "Traceback" not in text
    assert str(weights) in lines[0] and "the command was" not in lines[0]
    assert "--debug" in lines[0]
