"""Command-line interface: ``kmtr <command>`` or ``python -m kmtr_monai <command>`` (python-fire).

Each command is a thin wrapper around a public Python function; imports are lazy so ``kmtr --help`` is instant.

Errors: a failing command prints its root cause in one line (``kmtr <command>: error: <reason>``, naming the file
or argument) on stderr and exits with status 1; wrappers such as MONAI's ``applying transform <...>`` are unwrapped.
The full traceback is printed only with ``--debug`` (anywhere on the command line) or ``KMTR_DEBUG=1``. A bundle run
in a subprocess (``kmtr infer``) reports its own root cause the same way (``kmtr_monai.bundle_run``).
``kmtr --help`` and ``kmtr <command> --help`` (or ``-h``) print the help and exit 0.

Bad subjects (``phenotypes``, ``datalist``, ``kspace``): ``--on-bad-subject fail`` (default) stops at a bad
subject, ``skip`` leaves it out; both list it in ``bad_subjects.csv`` next to the output (phenotypes, datalist).
Missing view files (``datalist``, ``kspace``): ``--missing-views fail`` (default), ``invalid`` (kept, flagged
invalid by the loader) or ``skip``.
"""

import logging
import os
import sys
import traceback

from pathlib import Path

import fire


def simulate(out: str, subjects: int = 16, preset: str = "tiny", seed: int = 0, workers: int = 1, preview: bool = False):
    """Write a synthetic UK Biobank-layout cohort to OUT (see kmtr_monai.simulate)."""
    from kmtr_monai.simulate import simulate_cohort

    return simulate_cohort(out, subjects=subjects, preset=preset, seed=seed, workers=workers, preview=preview)


def phenotypes(root: str, out: str | None = None, on_bad_subject: str = "fail"):
    """Compute the ukbb_cardiac phenotype set from the segmentations under ROOT and write a CSV.

    Phenotypes whose segmentation files are missing are empty cells (a SAX-only cohort gets the ventricular ones).
    --on-bad-subject {fail,skip}: stop at, or leave out, a subject with an unusable file (bad_subjects.csv).
    """
    from kmtr_monai.data.phenotypes import write_cohort_phenotypes

    return write_cohort_phenotypes(root, out, on_bad_subject=on_bad_subject)


def datalist(root: str, out: str | None = None, val: float = 0.15, test: float = 0.15, seed: int = 0,
             on_bad_subject: str = "fail", missing_views: str = "fail", check_files: bool = True,
             preset: str | None = None):  # fmt: skip
    """Write a stratified subject-level train/validation/test datalist JSON for the cohort under ROOT.

    Every subject's files are checked (--check-files false: CSV rows only; --preset: also its frames and SAX
    slices). --on-bad-subject {fail,skip}; --missing-views {fail,invalid,skip}; bad subjects go to bad_subjects.csv.
    """
    from kmtr_monai.data.datalist import write_datalist

    return write_datalist(root, out=out, val_fraction=val, test_fraction=test, seed=seed,
                          on_bad_subject=on_bad_subject, missing_views=missing_views, check_files=check_files,
                          preset=preset)  # fmt: skip


def kspace(root: str, preset: str = "tiny", acceleration: int = 4, pattern: str = "vista", seed: int = 0,
           on_bad_subject: str = "fail", missing_views: str = "fail"):  # fmt: skip
    """Simulate undersampled k-space for every subject of the cohort under ROOT and print a summary."""
    from kmtr_monai.data.summary import kspace_summary

    return kspace_summary(root, preset=preset, acceleration=acceleration, pattern=pattern, seed=seed,
                          on_bad_subject=on_bad_subject, missing_views=missing_views)  # fmt: skip


def pipeline(out: str = "runs/tiny", preset: str = "tiny", cohort: str | None = None, accelerations="2,4,8,16",
             device: str | None = None, nproc: int = 1, force: str | None = None, stages: str | None = None,
             subjects: int | None = None, seed: int = 0, workers: int = 1, set: str | None = None):  # noqa: A002
    """The main job: k-MTR (Stage I, II, III) and its baselines on one cohort, tested on its held-out split, with a
    report in OUT/report. Re-running skips finished stages; --force STAGE[,STAGE] redoes them; --stages limits the
    run to some stages or tasks; --cohort uses an existing UK Biobank-layout cohort instead of simulating one;
    --nproc N trains each stage on N processes with torchrun and the bundles' multi_gpu_train.json; --set
    KEY=VALUE[,KEY=VALUE] (repeatable) sets a bundle config key for every stage, models, floors and probes alike
    (e.g. --set kspace_geometry=acquisition; values are JSON when they parse, else strings)."""
    from kmtr_monai.pipeline import run_pipeline

    run_pipeline(out=out, preset=preset, cohort=cohort, accelerations=accelerations, device=device, nproc=nproc,
                 force=force, stages=stages, subjects=subjects, seed=seed, workers=workers, settings=set)  # fmt: skip


def export_bundle(name: str, out: str, preset: str = "small", weights: str | None = None,
                  set: str | None = None):  # noqa: A002
    """Write bundle NAME at PRESET as a standalone MONAI bundle folder OUT (flattened configs, docs, LICENSE, weights);
    --set KEY=VALUE[,KEY=VALUE] writes config values the weights were trained with (e.g. kspace_geometry=acquisition)."""
    from kmtr_monai.bundle import export_bundle as export
    from kmtr_monai.pipeline import parse_settings

    path = export(name, out, preset=preset, weights=weights, settings=parse_settings(set))
    print(f"exported {name} ({preset}) to {path}")
    return str(path)


def infer(bundle: str, input: str, out: str, acceleration: int | None = None, preset: str = "small",
          weights: str | None = None, device: str | None = None, missing_views: str = "invalid",
          virtual_coils: int | None = None, frame_interval_ms: float | None = None, slice_views: str = "auto",
          **overrides):  # fmt: skip
    """Run a Stage III bundle's inference on INPUT (a subject folder, a cohort folder, an HDF5 k-space file or a
    scanner k-space file: ISMRMRD, fastMRI-style HDF5, CMRxRecon .mat v7.3) and write its clinical outputs to OUT
    (phenotypes.csv, diseases.csv, segmentations on the input's grid or per-view NIfTI files). --missing-views
    {invalid,fail}: a view the input lacks (a SAX-only subject folder, an HDF5 file holding some of the views, a
    scanner file that is a SAX stack) enters the model as zeros and gets no output (invalid, the default), or stops
    the run naming the file and view (fail). A scanner file is first converted to OUT/model_input/<name>.h5 on the
    model grid. --slice-views {auto,all,sax}: its slices, in order, are the bundle's views la_2ch, la_3ch, la_4ch,
    sax_0.. (all), or it is a SAX stack, base first, whose slices are sax_0.. (centred in a deeper stack, as for
    image inputs; the LAX views are missing) (sax); auto (default): all when the slice count equals the bundle's
    view count, else sax (pass sax for a SAX stack of exactly that many slices). --virtual-coils V compresses the
    coils to V (SVD) first; --frame-interval-ms MS is the time between the file's frames (else outputs count time
    in source frames). Further --key value pairs are bundle config overrides (e.g. --kspace_scale_max 1.4142)."""
    from kmtr_monai.bundle import bundle_command
    from kmtr_monai.io.scanner_input import SLICE_VIEWS

    if missing_views not in ("invalid", "fail"):
        raise ValueError(f"--missing-views must be 'invalid' or 'fail' for inference, got {missing_views!r}")
    if slice_views not in SLICE_VIEWS:
        raise ValueError(f"--slice-views must be one of {', '.join(SLICE_VIEWS)}, got {slice_views!r}")
    overrides = {**overrides, "input_path": str(Path(input).resolve()), "output_dir": str(Path(out).resolve()),
                 "missing_views": missing_views, "slice_views": slice_views}  # fmt: skip
    if weights is not None:
        weights = Path(weights).resolve()
        if weights.name != "model.pt":
            raise ValueError(f"--weights must name a bundle's models/model.pt, got {weights}")
        overrides["ckpt_dir"] = str(weights.parent)
    if acceleration is not None:
        overrides["val_acceleration"] = int(acceleration)
    if virtual_coils is not None:
        overrides["virtual_coils"] = int(virtual_coils)
    if frame_interval_ms is not None:
        overrides["frame_interval_ms"] = float(frame_interval_ms)
    if device is not None:
        overrides["device"] = f"$torch.device('{device}')"
    run_bundle_subprocess(bundle_command(bundle, preset, overrides, workflow="inference",
                                         module="kmtr_monai.bundle_run"))  # fmt: skip
    print(f"outputs written to {out}")


class SubprocessError(Exception):
    """A bundle subprocess failed; the message is its root cause in one line (``Type: message``)."""


_STATE = {"debug": False}  # set by ``main`` for the command it runs


def run_bundle_subprocess(cmd: list[str]) -> None:
    """Run a ``python -m kmtr_monai.bundle_run ...`` command (output streamed); SubprocessError with the
    subprocess's root cause when it fails (``$KMTR_ERROR_FILE``), or its exit status and command line when it
    died without one (killed, a usage error)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kmtr-") as tmp:
        error_file = os.path.join(tmp, "error.txt")
        env = {**os.environ, "KMTR_ERROR_FILE": error_file,
               "KMTR_DEBUG": "1" if _STATE["debug"] or os.environ.get("KMTR_DEBUG", "") not in ("", "0") else "0"}
        code = subprocess.run(cmd, env=env).returncode
        if code == 0:
            return
        cause = open(error_file).read().strip() if os.path.isfile(error_file) else ""
    if not cause:
        cause = f"the bundle run exited with status {code} without a Python error; the command was: " \
                f"{subprocess.list2cmdline(cmd)}"
    raise SubprocessError(cause)


def kspace_info(file: str, virtual_coils: int | None = None, mask: str | None = None,
                readout_oversampling: float | None = None, raw: bool = False):
    """Print what is read from a scanner k-space FILE (ISMRMRD, fastMRI-style HDF5 or CMRxRecon .mat v7.3): format,
    coils (--virtual-coils V: and the energy V SVD-compressed coils keep), matrix, FOV, pixel spacing, slices,
    frames, R per frame, calibration lines, readout oversampling, noise scans. --mask: a CMRxRecon mask .mat;
    --readout-oversampling: the factor for files without a header; --raw: no pre-whitening or oversampling removal."""
    from kmtr_monai.io.scanner import read_scanner_kspace

    scan = read_scanner_kspace(file, prewhiten=not raw, remove_oversampling=not raw, mask_path=mask,
                               readout_oversampling=readout_oversampling)  # fmt: skip
    print(scan.summary(n_virtual=virtual_coils))


COMMANDS = {"simulate": simulate, "phenotypes": phenotypes, "datalist": datalist, "kspace": kspace,
            "pipeline": pipeline, "export-bundle": export_bundle, "infer": infer,
            "kspace-info": kspace_info}  # fmt: skip
_WRAPPER_PREFIXES = ("applying transform",)


def root_cause(err: BaseException) -> BaseException:
    """The exception that says what is wrong: ``err`` unwrapped through wrappers that only add context.

    A wrapper is an exception raised ``from`` another one that is a plain ``RuntimeError`` (MONAI's
    ``applying transform <...>``, config instantiation) or whose message starts with ``applying transform``.
    Specific errors raised ``from`` a low-level one (a ``SubjectFileError`` from a zlib error) are kept: they
    name the subject and file.
    """
    seen = set()
    while err.__cause__ is not None and id(err) not in seen:
        seen.add(id(err))
        if type(err) is RuntimeError or str(err).startswith(_WRAPPER_PREFIXES):
            err = err.__cause__
        else:
            break
    return err


def one_line(err: BaseException) -> str:
    """``Type: message`` of ``err`` on one line (a DataLoader worker's embedded traceback reduced to its last line)."""
    if isinstance(err, SubprocessError):  # already "Type: message" of the subprocess's root cause
        return " ".join(str(err).split())
    text = str(err).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    name = type(err).__name__
    text = " ".join(text.split())
    return f"{name}: {text}" if text else name


def _join_repeated(argv: list[str], flag: str) -> list[str]:
    """``flag A ... flag B`` (or ``flag=A``) → one ``flag A,B`` after the options (fire keeps only the last)."""
    end = argv.index("--") if "--" in argv else len(argv)
    values, rest, i = [], [], 0
    while i < end:
        if argv[i] == flag and i + 1 < end:
            values.append(argv[i + 1])
            i += 1
        elif argv[i].startswith(flag + "="):
            values.append(argv[i][len(flag) + 1 :])
        else:
            rest.append(argv[i])
        i += 1
    return argv if len(values) < 2 else [*rest, flag, ",".join(values), *argv[end:]]


def main(argv: list[str] | None = None) -> None:
    """Run a ``kmtr`` command; exits 1 with a one-line root cause on error (traceback with --debug/KMTR_DEBUG=1)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("KMTR_DEBUG", "") not in ("", "0")
    argv = _join_repeated([a for a in argv if a != "--debug"], "--set")
    _STATE["debug"] = debug
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = argv[0] if argv and not argv[0].startswith("-") else ""
    options = argv[: argv.index("--")] if "--" in argv else argv
    if ("--help" in options or "-h" in options) and (command in COMMANDS or not command):
        # fire consumes --help as a value of **kwargs (kmtr infer) and then fails on the missing arguments; after
        # its "--" separator, --help is always the help flag
        argv = [command, "--", "--help"] if command else ["--", "--help"]
    try:
        fire.Fire(COMMANDS, command=argv, name="kmtr")
    except fire.core.FireExit:
        raise
    except KeyboardInterrupt:
        print("kmtr: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - the CLI boundary: every error becomes one line unless --debug
        if debug:
            traceback.print_exc()
        cause = root_cause(err)
        hint = "" if debug else " (run with --debug or KMTR_DEBUG=1 for the traceback)"
        print(f"kmtr {command}: error: {one_line(cause)}{hint}".replace("kmtr : ", "kmtr: "), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
