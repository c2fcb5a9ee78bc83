"""The main job: the whole k-MTR method and its baselines on one cohort, one MONAI bundle run per stage, and a report.

Every stage runs exactly the command a user would type (``python -m monai.bundle run ...``, or ``torchrun`` with the
bundle's ``multi_gpu_train.json`` when ``nproc > 1``) in a subprocess whose output goes to ``DIR/<stage>/log.txt``;
the terminal shows one progress line (stage, epoch, ETA) and ends with the report's summary. The stages are the
table of :mod:`kmtr_monai.stages`; each runs with the runner of its ``kind`` (:data:`RUNNERS`).

Layout of ``DIR``::

    cohort/                      simulated cohort (or --cohort), datalist.json
    <stage>/models/model.pt      best checkpoint (chosen on validation)
    <stage>/eval/metrics.csv     validation metrics of the last epoch (history.csv: per epoch, when written)
    <stage>/test/R<r>|full/      the bundle's evaluate.json on the held-out test split at acceleration r
    <stage>/stage.json           status, minutes, the overrides it ran with and its fingerprint
    <stage>/log.txt              every line the bundle printed
    pipeline.json                the manifest: every stage, its status, overrides and outputs; all the report reads
    report/                      results.json, report.md, figures, log.txt (kmtr_monai.report)

Budget: the preset's ``pipeline`` block sets the subject count, ``epochs`` and bundle ``overrides`` per task, method
family (:attr:`Stage.family`, e.g. ``cnn``) or stage name (a stage name wins over its family, which wins over its
task), e.g. the small preset's frozen encoders for the pretrained models and the CNN family's step budget.

Settings (``--set KEY=VALUE``, :func:`parse_settings`): bundle config keys for every stage of the run, e.g.
``kspace_geometry=acquisition``: the models' overrides, the floors' and probes' inputs and the probes' encoders.
They have the lowest precedence: what makes a stage its method (the stage table's ``input``, ``encoder``, ``init``,
``network_def``, ``tokenizer``) and the preset's per-task/family/stage budget win, so ``--set tokenizer=hybrid``
leaves the k-GIN baseline's line tokenizer alone; the stages where a setting is shadowed are printed at the start.

Resume: a stage whose ``stage.json`` says done, with the same fingerprint (its overrides, the preset, the epochs, the
settings and the finishing times of the stages it reads), and whose outputs exist (test metrics; a model's
checkpoint and validation metrics), is skipped. ``force`` names stages to redo; stages downstream of a redone one are
redone because their fingerprint changes. A stage interrupted during training resumes from its last epoch (the
bundles' ``resume: auto``) only while its fingerprint is unchanged: a forced stage, or one whose fingerprint changed,
first loses its checkpoints (resume files included), validation and test outputs, so another configuration's files
cannot seed it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kmtr_monai.bundle import bundle_command, bundle_run_args, default_bundles_dir
from kmtr_monai.capture import output_to
from kmtr_monai.presets import PRESETS
from kmtr_monai.stages import Stage, all_stages, run_order, select_stages


def read_metrics(output_dir: Path) -> dict[str, float]:
    """The metrics written by MONAI's ``MetricsSaver`` (``metrics.csv``: ``name,value`` rows); {} when absent."""
    path = Path(output_dir) / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path) as f:
        return {row[0]: float(row[1]) for row in csv.reader(f) if len(row) >= 2}


def parse_accelerations(accelerations) -> list[int]:
    """``"2,4,8,16"``, a number or a sequence → sorted unique ints >= 1 (ValueError names the bad value)."""
    items = accelerations.split(",") if isinstance(accelerations, str) else (
        [accelerations] if isinstance(accelerations, int) else list(accelerations))  # fmt: skip
    try:
        values = sorted({int(a) for a in items})
    except (TypeError, ValueError) as err:
        raise ValueError(f"--accelerations: expected comma-separated integers such as 2,4,8,16, got "
                         f"{accelerations!r}") from err  # fmt: skip
    if not values or values[0] < 1:
        raise ValueError(f"--accelerations: every acceleration must be >= 1, got {accelerations!r}")
    return values


#: Config keys the pipeline sets itself for each stage (and every ``*_ckpt``): refused as settings.
OWNED_KEYS = ("bundle_root", "dataset_dir", "ckpt_dir", "output_dir", "train_accelerations", "max_epochs", "device",
              "eval_split", "val_acceleration")  # fmt: skip


def _json_or_str(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_settings(settings, bundles: str | Path | None = None) -> dict:
    """``--set``: ``"KEY=VALUE[,KEY=VALUE]"``, a sequence of those or a dict → ``{key: value}`` (values parsed as
    JSON when they parse, else strings). ValueError in one line for a key whose first part (before ``#``) is in
    neither ``bundles/common/train.json`` nor the presets (``bundles/presets/*.json``), or that the pipeline sets
    itself (:data:`OWNED_KEYS`, ``*_ckpt``)."""
    if not settings:
        return {}
    if isinstance(settings, Mapping):
        items = dict(settings)
    else:
        items = {}
        for part in [settings] if isinstance(settings, str) else list(settings):
            for item in re.split(r",(?=\s*[A-Za-z_][\w#]*\s*=)", str(part)):  # commas before the next KEY=
                key, sep, value = item.partition("=")
                if not sep or not key.strip():
                    raise ValueError(f"--set: expected KEY=VALUE[,KEY=VALUE], got {item!r}")
                items[key.strip()] = _json_or_str(value.strip())
    root_dir = Path(bundles or default_bundles_dir())
    sources = [root_dir / "common" / "train.json", *sorted((root_dir / "presets").glob("*.json"))]
    known = set().union(*(json.loads(f.read_text()) for f in sources))
    for key in items:
        root = str(key).split("#")[0]
        if root in OWNED_KEYS or root.endswith("_ckpt"):
            raise ValueError(f"--set {key}: the pipeline sets {root!r} itself for each stage")
        if root not in known:
            raise ValueError(f"--set {key}: unknown config key {root!r} "
                             f"(not in {sources[0]} or {root_dir / 'presets'})")  # fmt: skip
    return items


class Progress:
    """One terminal line per pipeline: ``[k/n] stage  epoch e/E  iter i/I  elapsed  ETA``, refreshed in place on a
    terminal and printed once per stage otherwise (CI logs). It reads the epoch and iteration from the MONAI
    ``StatsHandler`` lines of the stage's log file."""

    _ITER = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+)")

    def __init__(self, total: int, stream=None) -> None:
        self.total, self.stream = total, stream or sys.stdout
        self.live = self.stream.isatty()

    def position(self, log: Path) -> tuple[int, int, int, int] | None:
        """The last (epoch, epochs, iter, iters) in ``log``, or None before the first iteration."""
        try:
            with open(log, "rb") as f:
                f.seek(max(0, f.seek(0, 2) - 4096))
                tail = f.read().decode(errors="replace")
        except OSError:
            return None
        found = self._ITER.findall(tail)
        return tuple(int(v) for v in found[-1]) if found else None

    def line(self, k: int, what: str, log: Path, started: float) -> str:
        elapsed = time.perf_counter() - started
        text = f"[{k}/{self.total}] {what}"
        pos = self.position(log)
        if pos:
            epoch, epochs, it, iters = pos
            done = ((epoch - 1) * iters + it) / max(1, epochs * iters)
            eta = elapsed * (1 - done) / done if done > 0 else float("nan")
            text += f"  epoch {epoch}/{epochs}  iter {it}/{iters}  {_clock(elapsed)}  ETA {_clock(eta)}"
        else:
            text += f"  {_clock(elapsed)}"
        return text

    def show(self, text: str) -> None:
        if self.live:
            self.stream.write("\r" + text[:150].ljust(150))
            self.stream.flush()

    def done(self, text: str) -> None:
        self.stream.write(("\r" if self.live else "") + text[:150].ljust(150 if self.live else 0) + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    if seconds != seconds or seconds < 0:
        return "--:--"
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def _evaluate_logged(args: dict, log: Path, progress: Progress, k: int, what: str) -> float:
    """``monai.bundle.run(**args)`` (the entry point of ``python -m monai.bundle run``) in this process, its output
    appended to ``log``; returns minutes. In-process because a test evaluation takes a second or two, and a new
    Python process would add about eight seconds of imports to each of the pipeline's ~50 evaluations."""
    from monai.bundle import run

    progress.show(f"[{k}/{progress.total}] {what}")
    started = time.perf_counter()
    with output_to(log) as f:
        f.write(f"\n# in-process monai.bundle.run({args})\n")
        f.flush()
        try:
            run(**{key: str(v) if isinstance(v, Path) else v for key, v in args.items()})
        except Exception as err:
            raise RuntimeError(f"{what} failed: {err}; log {log}") from err
    return (time.perf_counter() - started) / 60


def _run_logged(cmd: list[str], log: Path, progress: Progress, k: int, what: str) -> float:
    """Run ``cmd`` (a ``kmtr_monai.bundle_run`` command) with its output appended to ``log``, refreshing the
    progress line; returns minutes. When it fails, the log's last lines and the command are printed to stderr and
    RuntimeError carries the stage's root cause in one line (``Type: message``, from ``log``'s folder
    ``error.txt``; the traceback stays in the log)."""
    started = time.perf_counter()
    error_file = log.parent / "error.txt"
    error_file.unlink(missing_ok=True)
    env = {**os.environ, "KMTR_ERROR_FILE": str(error_file), "KMTR_DEBUG": "1"}
    with open(log, "a") as f:
        f.write(f"\n$ {subprocess.list2cmdline(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            progress.show(progress.line(k, what, log, started))
            time.sleep(1.0)
    minutes = (time.perf_counter() - started) / 60
    if proc.returncode != 0:
        progress.done(f"[{k}/{progress.total}] {what}  FAILED")
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        print(f"last lines of {log}:\n{tail}\nrerun it with:\n{subprocess.list2cmdline(cmd)}", file=sys.stderr)
        cause = error_file.read_text().strip() if error_file.is_file() else f"exit status {proc.returncode}"
        raise RuntimeError(f"{what} failed: {cause}; log {log}")
    return minutes


@dataclass
class PipelineRun:
    """Runs the stages of one pipeline into ``out`` (see the module docstring)."""

    out: Path
    preset: str
    cohort: Path
    accelerations: list[int]
    device: str | None = None
    nproc: int = 1
    epochs: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)
    bundles: Path = field(default_factory=default_bundles_dir)
    settings: dict = field(default_factory=dict)

    def stage_dir(self, name: str) -> Path:
        return self.out / name

    def upstream_ckpts(self) -> dict[str, Path]:
        d = self.stage_dir
        return {"image_mae_ckpt": d("image-mae") / "models" / "model.pt",
                "kspace_mae_ckpt": d("kspace-mae") / "models" / "model.pt",
                "stage1_ckpt": d("kspace-mae") / "models" / "model.pt",
                "align_ckpt": d("align") / "models" / "model.pt"}  # fmt: skip

    def train_overrides(self, stage: Stage) -> dict:
        d = self.stage_dir(stage.name)
        # the run's settings first: the stage's own and the preset's overrides win over them
        over = {"dataset_dir": self.cohort, "ckpt_dir": d / "models", "output_dir": d / "eval",
                **self.upstream_ckpts(), **self.settings, **stage.overrides}  # fmt: skip
        if stage.task != "pretrain":
            over["train_accelerations"] = self.accelerations
        if stage.task in self.epochs or stage.name in self.epochs:
            over["max_epochs"] = int(self.epochs.get(stage.name, self.epochs.get(stage.task)))
        over.update({**self.overrides.get(stage.task, {}), **self.overrides.get(stage.family, {}),
                     **self.overrides.get(stage.name, {})})  # task < method family (every task) < stage name
        if self.device is not None and self.nproc == 1:
            over["device"] = f"$torch.device('{self.device}')"
        return over

    def test_accelerations(self, stage: Stage) -> list[str]:
        """Folder keys of the test evaluations: ``full`` for image-domain stages; every requested R for phenotype
        regression models (the report's MAE-against-R figure); the bundle's own evaluation R otherwise (floors and
        probes included)."""
        if stage.task == "pretrain":
            return []
        if stage.image_domain:
            return ["full"]
        if stage.task == "regress" and stage.kind == "model":
            return [str(r) for r in self.accelerations]
        return [str(_config_value(self.bundles / stage.bundle, "val_acceleration"))]

    def fingerprint(self, stage: Stage) -> dict:
        finished = {}
        for name in stage.upstream:
            up = self.stage_dir(name) / "stage.json"
            finished[name] = json.loads(up.read_text()).get("finished") if up.is_file() else None
        over = {k: str(v) for k, v in self.train_overrides(stage).items()}
        fp = {"preset": self.preset, "overrides": over, "tests": self.test_accelerations(stage), "upstream": finished}
        return fp | ({"settings": _json_safe(self.settings, self.out)} if self.settings else {})

    def shadowed_settings(self, stages: list[Stage]) -> dict[str, list[str]]:
        """``{key: [stage names]}``: the settings a stage's own or the preset's overrides replace."""
        shadowed = {}
        for stage in stages:
            over = self.train_overrides(stage)
            for key, value in self.settings.items():
                if over.get(key) != value:
                    shadowed.setdefault(key, []).append(stage.name)
        return shadowed

    def is_done(self, stage: Stage) -> bool:
        """Its ``stage.json`` says done with the current fingerprint and its outputs exist: every test folder's
        ``metrics.csv`` and, for a model, its checkpoint and validation metrics."""
        d = self.stage_dir(stage.name)
        state = d / "stage.json"
        if not state.is_file():
            return False
        record = json.loads(state.read_text())
        outputs = [d / "test" / _test_folder(r) / "metrics.csv" for r in self.test_accelerations(stage)]
        if stage.kind == "model":
            outputs += [d / "models" / "model.pt", d / "eval" / "metrics.csv"]
        return (record.get("status") == "done" and record.get("fingerprint") == self.fingerprint(stage)
                and all(t.is_file() for t in outputs))  # fmt: skip

    def reconfigured(self, stage: Stage) -> bool:
        """Its ``stage.json`` holds another fingerprint: the folder's checkpoints (resume files included) and
        metrics belong to another configuration."""
        state = self.stage_dir(stage.name) / "stage.json"
        return state.is_file() and json.loads(state.read_text()).get("fingerprint") != self.fingerprint(stage)

    def command(self, stage: Stage, overrides: dict, workflow: str = "train") -> list[str]:
        multi = workflow == "train" and self.nproc > 1
        cmd = bundle_command(self.bundles / stage.bundle, self.preset, overrides, workflow, multi_gpu=multi,
                             module="kmtr_monai.bundle_run")  # fmt: skip
        if multi:  # torchrun in place of `python`: the same bundle command, one process per device
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.nproc}",
                   *cmd[1:]]  # fmt: skip
        return cmd

    def run_stage(self, stage: Stage, k: int, progress: Progress) -> dict:
        """Run ``stage`` with the runner of its kind (:data:`RUNNERS`) and write its ``stage.json`` (running, then
        the runner's record with the bundle, kind and fingerprint); returns the record."""
        d = self.stage_dir(stage.name)
        d.mkdir(parents=True, exist_ok=True)
        state = {"status": "running", "kind": stage.kind, "bundle": stage.bundle,
                 "fingerprint": self.fingerprint(stage)}
        (d / "stage.json").write_text(json.dumps(state, indent=2))
        state.update(RUNNERS[stage.kind](self, stage, k, progress))
        (d / "stage.json").write_text(json.dumps(state, indent=2))
        return state


def run_bundle_stage(run: PipelineRun, stage: Stage, k: int, progress: Progress) -> dict:
    """The runner of a ``model`` stage: its bundle's training command (a subprocess), then its ``evaluate.json`` on
    the test split at each of :meth:`PipelineRun.test_accelerations` (in process). Returns the stage.json record:
    ``status``, ``minutes``, ``tests`` ({R or "full": test folder relative to DIR}), ``finished``, ``validation``."""
    d = run.stage_dir(stage.name)
    log = d / "log.txt"
    over = run.train_overrides(stage)
    minutes = _run_logged(run.command(stage, over), log, progress, k, f"{stage.name} (train)")
    tests = {}
    for r in run.test_accelerations(stage):
        folder = d / "test" / _test_folder(r)
        test_over = {**over, "output_dir": folder, "eval_split": "test"}
        test_over.pop("max_epochs", None)
        if r != "full":
            test_over["val_acceleration"] = int(r)
        args = bundle_run_args(run.bundles / stage.bundle, run.preset, test_over, "evaluate")
        minutes += _evaluate_logged(args, log, progress, k, f"{stage.name} (test R={r})")
        tests[r] = str(folder.relative_to(run.out))
    return {"status": "done", "minutes": round(minutes, 2), "tests": tests, "finished": time.time(),
            "validation": read_metrics(d / "eval")}


def _linear_stage(run: PipelineRun, stage: Stage, k: int, progress: Progress, fit) -> dict:
    """Run ``fit(acceleration, out, cache)`` (a floor or a probe) in this process, its output appended to the stage's
    log; the stage.json record of :func:`run_bundle_stage`. Loaded inputs and features are cached in
    ``DIR/linear_cache`` and shared by every floor and probe of the run."""
    r = run.test_accelerations(stage)[0]
    progress.show(f"[{k}/{progress.total}] {stage.name}")
    with output_to(run.stage_dir(stage.name) / "log.txt"):
        rec = fit(None if r == "full" else int(r), run.stage_dir(stage.name), run.out / "linear_cache")
    return {"status": "done", "minutes": round(rec["minutes"], 2), "tests": rec["tests"], "finished": time.time(),
            "validation": rec["validation"]}


def run_floor_stage(run: PipelineRun, stage: Stage, k: int, progress: Progress) -> dict:
    """The runner of a ``floor`` stage: :func:`kmtr_monai.floors.run_floor` on the stage's input."""
    from kmtr_monai.floors import run_floor

    return _linear_stage(run, stage, k, progress, lambda r, out, cache: run_floor(
        run.cohort, run.bundles, run.preset, stage.input, r, stage.task, out, cache, run.settings))  # fmt: skip


def run_probe_stage(run: PipelineRun, stage: Stage, k: int, progress: Progress) -> dict:
    """The runner of a ``probe`` stage: :func:`kmtr_monai.probes.run_probe` on the run's Stage I/II checkpoints."""
    from kmtr_monai.probes import run_probe

    c = run.upstream_ckpts()
    ckpts = {"align": c["align_ckpt"], "stage1": c["kspace_mae_ckpt"], "imagemae": c["image_mae_ckpt"]}
    return _linear_stage(run, stage, k, progress, lambda r, out, cache: run_probe(
        run.cohort, run.bundles, run.preset, stage.meta["encoder"], stage.meta["pooling"], stage.task, ckpts, r,
        out, cache, run.settings))  # fmt: skip


# How each kind of stage runs: ``runner(run, stage, k, progress) -> stage.json record`` (status, minutes, tests,
# finished, validation). A new kind of stage (Stage.kind) is one entry here.
RUNNERS = {"model": run_bundle_stage, "floor": run_floor_stage, "probe": run_probe_stage}


def _test_folder(r: str) -> str:
    return "full" if r == "full" else f"R{r}"


def _config_value(bundle: Path, key: str):
    """A plain value set in a bundle's own train config (falls back to common/train.json)."""
    for path in (bundle / "configs" / "train.json", bundle.parent / "common" / "train.json"):
        config = json.loads(path.read_text())
        if key in config:
            return config[key]
    raise KeyError(f"{key!r} is set neither in {bundle}/configs/train.json nor in common/train.json")


def run_pipeline(out: str = "runs/tiny", preset: str = "tiny", cohort: str | None = None,
                 accelerations="2,4,8,16", device: str | None = None, nproc: int = 1, force: str | None = None,
                 stages: str | None = None, subjects: int | None = None, seed: int = 0, workers: int = 1,
                 report: bool = True, settings: dict | str | None = None) -> dict:  # fmt: skip
    """Simulate (or take) a cohort, write its datalist, run every stage not already done, test each model on the
    held-out test split and write the report. Returns the report's results (or the stage records without it).

    ``cohort``: an existing UK Biobank-layout cohort (``phenotypes.csv``, ``diseases.csv``, subject folders); else
    ``subjects`` (default: the preset's ``pipeline.subjects``) are simulated into ``out/cohort``. ``accelerations``:
    drawn in Stage III training and each one tested. ``force``: stage names to redo (comma-separated). ``stages``:
    run only these stage or task names (their upstream stages must be done already or be listed). ``settings``:
    bundle config keys for every stage (:func:`parse_settings`; the module docstring says where they apply).
    """
    from kmtr_monai.data.datalist import write_datalist

    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; expected one of {sorted(PRESETS)}")
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {device!r}")
    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"--nproc must be a positive integer, got {nproc!r}")
    bundle_settings = parse_settings(settings)
    budget = PRESETS[preset].get("pipeline", {})
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cohort_dir = _cohort(out_dir, cohort, preset, subjects or budget.get("subjects"), seed, workers)
    if not (cohort_dir / "datalist.json").is_file():
        write_datalist(str(cohort_dir), seed=seed, preset=preset)
    run = PipelineRun(out_dir, preset, cohort_dir, parse_accelerations(accelerations), device, nproc,
                      dict(budget.get("epochs", {})), dict(budget.get("overrides", {})),
                      settings=bundle_settings)  # fmt: skip
    everything = all_stages()
    chosen = run_order(select_stages(everything, stages))
    forced = {s.name for s in select_stages(everything, force)} if force else set()
    for key, names in run.shadowed_settings(chosen).items():
        print(f"--set {key}: replaced by the stage's or the preset's own value in {', '.join(names)}", flush=True)
    progress = Progress(len(chosen))
    records = {}
    for k, stage in enumerate(chosen, 1):
        if stage.name not in forced and run.is_done(stage):
            records[stage.name] = json.loads((run.stage_dir(stage.name) / "stage.json").read_text())
            progress.done(f"[{k}/{len(chosen)}] {stage.name}: done before, skipped")
            continue
        if stage.name in forced or run.reconfigured(stage):  # never resume from another configuration's files
            for sub in ("models", "eval", "test"):
                shutil.rmtree(run.stage_dir(stage.name) / sub, ignore_errors=True)
        missing = [u for u in stage.upstream if not run.is_done(next(s for s in everything if s.name == u))]
        if missing:
            raise RuntimeError(f"stage {stage.name} needs {missing} to be done first (run them, or drop --stages)")
        rec = run.run_stage(stage, k, progress)
        records[stage.name] = rec
        shown = ", ".join(f"{m}={v:.4g}" for m, v in rec["validation"].items() if not m.startswith("val_dice_"))
        progress.done(f"[{k}/{len(chosen)}] {stage.name}: {rec['minutes']:.1f} min  validation {shown}")
    write_manifest(run, everything)
    if not report:
        return records
    return _report(out_dir)


def _report(out_dir: Path) -> dict:
    """The report data, the report and, last on the terminal, its summary. Everything the report prints or warns
    goes to ``DIR/report/log.txt`` (the summary counts the warnings); an error in it stops the pipeline as usual."""
    import warnings

    from kmtr_monai.report import summary_text, write_report
    from kmtr_monai.report_data import collect_report_data

    log = out_dir / "report" / "log.txt"
    with output_to(log) as f, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            collect_report_data(out_dir)
            results = write_report(out_dir)
        finally:
            for w in caught:
                f.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno))
    summary = summary_text(results)
    if caught:
        summary += f"\n{len(caught)} warning(s) while writing the report: {log}"
    print("\n" + summary, flush=True)
    return results


def _cohort(out_dir: Path, cohort: str | None, preset: str, subjects: int | None, seed: int, workers: int) -> Path:
    if cohort is not None:
        path = Path(cohort).resolve()
        missing = [f for f in ("phenotypes.csv", "diseases.csv") if not (path / f).is_file()]
        if not path.is_dir() or missing:
            raise FileNotFoundError(f"--cohort {path}: expected a UK Biobank-layout cohort folder with "
                                    f"phenotypes.csv and diseases.csv; missing {missing or [str(path)]}")  # fmt: skip
        return path
    path = out_dir / "cohort"
    if not (path / "diseases.csv").is_file():
        from kmtr_monai.simulate import simulate_cohort

        print(f"simulating {subjects} {preset} subjects into {path}", flush=True)
        simulate_cohort(str(path), subjects=subjects or PRESETS[preset]["cohort"]["subjects"], preset=preset,
                        seed=seed, workers=workers)  # fmt: skip
    return path


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it, else absolute (as a string)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


def _json_safe(value, root: Path):
    """An override value as JSON: a path relative to ``root`` when inside it; lists, dicts, numbers, strings and
    booleans as they are; anything else as its string."""
    if isinstance(value, Path):
        return _rel(value, root)
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, root) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v, root) for k, v in value.items()}
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def manifest_entry(run: PipelineRun, stage: Stage) -> dict:
    """The ``pipeline.json`` entry of one stage (see :mod:`kmtr_monai.report` for the format)."""
    d, rel = run.stage_dir(stage.name), (lambda p: _rel(p, run.out))
    state = d / "stage.json"
    rec = json.loads(state.read_text()) if state.is_file() else {"status": "not run"}
    over = run.train_overrides(stage)
    label = f"{stage.label}, frozen encoder" if over.get("freeze_encoder") is True else stage.label
    entry = {"name": stage.name, "task": stage.task, "method": stage.method, "label": label, "kind": stage.kind,
             "bundle": stage.bundle, "status": rec.get("status"), "done": run.is_done(stage),
             "minutes": rec.get("minutes"), "upstream": list(stage.upstream),
             "overrides": {k: _json_safe(v, run.out) for k, v in over.items()},
             "paths": sorted(k for k, v in over.items() if isinstance(v, Path)),
             "outputs": {"ckpt": rel(d / "models" / "model.pt"), "eval": rel(d / "eval"),
                         "history": rel(d / "eval" / "history.csv"), "log": rel(d / "log.txt"),
                         "tests": rec.get("tests", {})}}  # fmt: skip
    if stage.kind == "model" and stage.task != "pretrain":
        entry["input"] = stage.input
    return entry | {k: v for k, v in stage.meta.items() if k not in entry}


def write_manifest(run: PipelineRun, stages: list[Stage]) -> Path:
    """``DIR/pipeline.json``: everything the report reads about the run, every stage of ``stages`` in their order
    (the paper's), run or not; paths relative to DIR when inside it (the format: :mod:`kmtr_monai.report`)."""
    manifest = {"version": 2, "preset": run.preset, "bundles": str(Path(run.bundles).resolve()),
                "cohort": _rel(run.cohort, run.out), "accelerations": run.accelerations,
                "settings": _json_safe(run.settings, run.out),
                "acceleration": _config_value(run.bundles / "regress", "val_acceleration"),
                "seg_acceleration": _config_value(run.bundles / "segment-unetr", "val_acceleration"),
                "stages": [manifest_entry(run, s) for s in stages]}  # fmt: skip
    path = run.out / "pipeline.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path
