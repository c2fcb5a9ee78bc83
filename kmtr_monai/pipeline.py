"""The main job: the whole k-MTR method and its baselines on one cohort, one MONAI bundle run per stage, and a report.

Every stage runs exactly the command a user would type (``python -m monai.bundle run ...``, or ``torchrun`` with the
bundle's ``multi_gpu_train.json`` when ``nproc > 1``) in a subprocess whose output goes to ``DIR/<stage>/log.txt``;
the terminal shows one progress line (stage, epoch, ETA) and ends with the report's summary.

Layout of ``DIR``::

    cohort/                      simulated cohort (or --cohort), datalist.json
    <stage>/models/model.pt      best checkpoint (chosen on validation)
    <stage>/eval/metrics.csv     validation metrics of the last epoch
    <stage>/test/R<r>|full/      the bundle's evaluate.json on the held-out test split at acceleration r
    <stage>/stage.json           status, minutes, the overrides it ran with and its fingerprint
    <stage>/log.txt              every line the bundle printed
    pipeline.json                the stage list the report reads
    report/                      results.json, report.md, figures (kmtr_monai.report)

Budget: the preset's ``pipeline`` block sets the subject count, ``epochs`` and bundle ``overrides`` per task or
stage name (a stage name wins over its task), e.g. the small preset's frozen encoders for the pretrained models.

Resume: a stage whose ``stage.json`` says done, with the same fingerprint (its overrides, the preset, the epochs and
the finishing times of the stages it reads), and whose checkpoint and metrics exist, is skipped. ``force`` names
stages to redo; stages downstream of a redone one are redone because their fingerprint changes. A stage
interrupted during training resumes from its last epoch (the bundles' ``resume: auto``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kmtr_monai.bundle import bundle_command, bundle_run_args, default_bundles_dir
from kmtr_monai.presets import PRESETS

VECTOR_METHODS = (  # (method, label, overrides, upstream stage): the paper's column order
    ("resnet50-image", "ResNet-50 (fully-sampled image)", {"encoder": "@baselines#resnet50", "input": "image"}, None),
    ("vit-image", "ViT (fully-sampled image)", {"encoder": "@baselines#vit", "input": "image"}, None),
    ("imagemae-image", "Image MAE fine-tuned (fully-sampled image)",
     {"encoder": "@baselines#image_mae", "input": "image", "init": "stage1"}, "image-mae"),
    ("resnet50-zf", "ResNet-50 (zero-filled image)", {"encoder": "@baselines#resnet50", "input": "zero_filled"}, None),
    ("resnet50-kspace", "ResNet-50 (k-space)", {"encoder": "@baselines#resnet50"}, None),
    ("scratch", "k-space ViT from scratch", {"init": "scratch"}, None),
    ("stage1", "k-space MAE, unaligned", {"init": "stage1"}, "kspace-mae"),
    ("kmtr", "k-MTR", {"init": "aligned"}, "align"),
)  # fmt: skip
SEGMENT_METHODS = (
    ("dynunet-image", "DynUNet (fully-sampled image)", {"network_def": "@baselines#dynunet", "input": "image"}, None),
    ("dynunet-zf", "DynUNet (zero-filled image)", {"network_def": "@baselines#dynunet", "input": "zero_filled"}, None),
    ("kmtr", "k-MTR", {"init": "aligned"}, "align"),
)  # fmt: skip
RECON_METHODS = (
    ("kgin", "k-GIN-style line interpolator", {"network_def": "@baselines#kgin", "tokenizer": "line"}, None),
    ("kmtr", "k-MTR", {"init": "aligned"}, "align"),
)
TASK_BUNDLES = {"regress": "regress", "classify": "classify", "segment": "segment-unetr", "recon": "recon"}
# Run order of Stage III: k-MTR on every task first, then the baselines the report's questions need most (unaligned
# and scratch encoders, the zero-filled and fully-sampled image models, DynUNet, the k-GIN-style interpolator), so
# that a run cut short still answers the main questions. The report's tables keep the paper's order.
RUN_PRIORITY = ("kmtr", "stage1", "scratch", "resnet50-zf", "resnet50-image", "dynunet-zf", "kgin", "resnet50-kspace",
                "vit-image", "imagemae-image", "dynunet-image")  # fmt: skip


@dataclass(frozen=True)
class Stage:
    """One bundle run: ``name`` is its folder under DIR; ``overrides`` select the method and are repeated at test."""

    name: str
    bundle: str
    task: str
    method: str
    label: str
    overrides: dict = field(default_factory=dict)
    upstream: tuple[str, ...] = ()

    @property
    def image_domain(self) -> bool:
        """True when the model reads the fully-sampled image (no acceleration to vary)."""
        return self.overrides.get("input") == "image"


def all_stages() -> list[Stage]:
    """Stage I, Stage II, then every Stage III task with k-MTR and its baselines (in the paper's method order)."""
    stages = [Stage("image-mae", "image-mae", "pretrain", "image-mae", "Image MAE (Stage I)"),
              Stage("kspace-mae", "kspace-mae", "pretrain", "kspace-mae", "k-space MAE (Stage I)"),
              Stage("align", "align", "pretrain", "align", "Alignment (Stage II)",
                    upstream=("image-mae", "kspace-mae"))]
    for task, methods in (("regress", VECTOR_METHODS), ("classify", VECTOR_METHODS), ("segment", SEGMENT_METHODS),
                          ("recon", RECON_METHODS)):  # fmt: skip
        for method, label, overrides, upstream in methods:
            stages.append(Stage(f"{task}-{method}", TASK_BUNDLES[task], task, method, label, dict(overrides),
                                (upstream,) if upstream else ()))  # fmt: skip
    return stages


def run_order(stages: list[Stage]) -> list[Stage]:
    """``stages`` in the order they run: Stage I and II first, then Stage III by :data:`RUN_PRIORITY`, task order."""
    tasks = list(TASK_BUNDLES)
    return sorted(stages, key=lambda s: (s.task != "pretrain", RUN_PRIORITY.index(s.method) if s.task != "pretrain"
                                         else 0, tasks.index(s.task) if s.task in tasks else -1))  # fmt: skip


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


@contextlib.contextmanager
def output_to(log: Path):
    """Send this process's stdout, stderr, warnings and logging to ``log`` (appended) for the duration, and undo
    what a bundle's ``logging.conf`` (``logging.config.fileConfig``) does to the process's logging. Loggers that
    already write to the terminal (MONAI's own, set up at import) are pointed at ``log`` meanwhile; handlers added
    meanwhile that write to ``log`` (e.g. an Ignite engine's, made on the redirected stderr) are removed after, so
    that a later evaluation does not write to the closed file."""
    root, loggers = logging.getLogger(), [lg for lg in logging.Logger.manager.loggerDict.values()
                                          if isinstance(lg, logging.Logger)]  # fmt: skip
    saved = root.handlers[:], root.level, {lg: lg.disabled for lg in loggers}
    terminal = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    streams = {h: h.stream for lg in [root, *loggers] for h in lg.handlers
               if isinstance(h, logging.StreamHandler) and h.stream in terminal}  # fmt: skip
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        for handler in streams:
            handler.setStream(f)
        try:
            yield f
        finally:
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
            for lg, disabled in saved[2].items():
                lg.disabled = disabled
            for handler, stream in streams.items():
                handler.setStream(stream)
            for lg in [root, *logging.Logger.manager.loggerDict.values()]:
                for handler in getattr(lg, "handlers", [])[:]:
                    if getattr(handler, "stream", None) is f:
                        lg.removeHandler(handler)


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
    """Run ``cmd`` with its output appended to ``log``, refreshing the progress line; returns minutes.
    RuntimeError with the command and the log's last lines when it fails."""
    started = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {subprocess.list2cmdline(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            progress.show(progress.line(k, what, log, started))
            time.sleep(1.0)
    minutes = (time.perf_counter() - started) / 60
    if proc.returncode != 0:
        progress.done(f"[{k}/{progress.total}] {what}  FAILED")
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}); log {log}; last lines:\n{tail}\n"
                           f"rerun it with:\n{subprocess.list2cmdline(cmd)}")  # fmt: skip
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
        over = {"dataset_dir": self.cohort, "ckpt_dir": d / "models", "output_dir": d / "eval",
                **self.upstream_ckpts(), **stage.overrides}  # fmt: skip
        if stage.task != "pretrain":
            over["train_accelerations"] = self.accelerations
        if stage.task in self.epochs or stage.name in self.epochs:
            over["max_epochs"] = int(self.epochs.get(stage.name, self.epochs.get(stage.task)))
        over.update({**self.overrides.get(stage.task, {}), **self.overrides.get(stage.name, {})})
        if self.device is not None and self.nproc == 1:
            over["device"] = f"$torch.device('{self.device}')"
        return over

    def test_accelerations(self, stage: Stage) -> list[str]:
        """Folder keys of the test evaluations: ``full`` for image-domain models; every requested R for phenotype
        regression (the report's MAE-against-R figure); the bundle's own evaluation R otherwise."""
        if stage.task == "pretrain":
            return []
        if stage.image_domain:
            return ["full"]
        if stage.task == "regress":
            return [str(r) for r in self.accelerations]
        return [str(_config_value(self.bundles / stage.bundle, "val_acceleration"))]

    def fingerprint(self, stage: Stage) -> dict:
        finished = {}
        for name in stage.upstream:
            up = self.stage_dir(name) / "stage.json"
            finished[name] = json.loads(up.read_text()).get("finished") if up.is_file() else None
        over = {k: str(v) for k, v in self.train_overrides(stage).items()}
        return {"preset": self.preset, "overrides": over, "tests": self.test_accelerations(stage), "upstream": finished}

    def is_done(self, stage: Stage) -> bool:
        d = self.stage_dir(stage.name)
        state = d / "stage.json"
        if not state.is_file():
            return False
        record = json.loads(state.read_text())
        tests = [d / "test" / _test_folder(r) / "metrics.csv" for r in self.test_accelerations(stage)]
        return (record.get("status") == "done" and record.get("fingerprint") == self.fingerprint(stage)
                and (d / "models" / "model.pt").is_file() and (d / "eval" / "metrics.csv").is_file()
                and all(t.is_file() for t in tests))  # fmt: skip

    def command(self, stage: Stage, overrides: dict, workflow: str = "train") -> list[str]:
        multi = workflow == "train" and self.nproc > 1
        cmd = bundle_command(self.bundles / stage.bundle, self.preset, overrides, workflow, multi_gpu=multi)
        if multi:  # torchrun in place of `python`: the same bundle command, one process per device
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.nproc}",
                   *cmd[1:]]  # fmt: skip
        return cmd

    def run_stage(self, stage: Stage, k: int, progress: Progress) -> dict:
        d = self.stage_dir(stage.name)
        d.mkdir(parents=True, exist_ok=True)
        log = d / "log.txt"
        state = {"status": "running", "bundle": stage.bundle, "fingerprint": self.fingerprint(stage)}
        (d / "stage.json").write_text(json.dumps(state, indent=2))
        over = self.train_overrides(stage)
        minutes = _run_logged(self.command(stage, over), log, progress, k, f"{stage.name} (train)")
        tests = {}
        for r in self.test_accelerations(stage):
            folder = d / "test" / _test_folder(r)
            test_over = {**over, "output_dir": folder, "eval_split": "test"}
            test_over.pop("max_epochs", None)
            if r != "full":
                test_over["val_acceleration"] = int(r)
            args = bundle_run_args(self.bundles / stage.bundle, self.preset, test_over, "evaluate")
            minutes += _evaluate_logged(args, log, progress, k, f"{stage.name} (test R={r})")
            tests[r] = str(folder.relative_to(self.out))
        state.update(status="done", minutes=round(minutes, 2), tests=tests, finished=time.time(),
                     validation=read_metrics(d / "eval"))  # fmt: skip
        (d / "stage.json").write_text(json.dumps(state, indent=2))
        return state


def _test_folder(r: str) -> str:
    return "full" if r == "full" else f"R{r}"


def _config_value(bundle: Path, key: str):
    """A plain value set in a bundle's own train config (falls back to common/train.json)."""
    for path in (bundle / "configs" / "train.json", bundle.parent / "common" / "train.json"):
        config = json.loads(path.read_text())
        if key in config:
            return config[key]
    raise KeyError(f"{key!r} is set neither in {bundle}/configs/train.json nor in common/train.json")


def select_stages(stages: list[Stage], only: str | None) -> list[Stage]:
    """``only``: comma-separated stage names or task names (``regress``, ``pretrain``...); None: every stage."""
    if not only:
        return stages
    items = only.split(",") if isinstance(only, str) else list(only)
    wanted = {str(w).strip() for w in items if str(w).strip()}
    known = {s.name for s in stages} | {s.task for s in stages}
    unknown = sorted(wanted - known)
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; expected stage names {[s.name for s in stages]} or tasks "
                         f"{sorted({s.task for s in stages})}")  # fmt: skip
    return [s for s in stages if s.name in wanted or s.task in wanted]


def run_pipeline(out: str = "runs/tiny", preset: str = "tiny", cohort: str | None = None,
                 accelerations="2,4,8,16", device: str | None = None, nproc: int = 1, force: str | None = None,
                 stages: str | None = None, subjects: int | None = None, seed: int = 0, workers: int = 1,
                 report: bool = True) -> dict:  # fmt: skip
    """Simulate (or take) a cohort, write its datalist, run every stage not already done, test each model on the
    held-out test split and write the report. Returns the report's results (or the stage records without it).

    ``cohort``: an existing UK Biobank-layout cohort (``phenotypes.csv``, ``diseases.csv``, subject folders); else
    ``subjects`` (default: the preset's ``pipeline.subjects``) are simulated into ``out/cohort``. ``accelerations``:
    drawn in Stage III training and each one tested. ``force``: stage names to redo (comma-separated). ``stages``:
    run only these stage or task names (their upstream stages must be done already or be listed).
    """
    from kmtr_monai.data.datalist import write_datalist

    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; expected one of {sorted(PRESETS)}")
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {device!r}")
    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"--nproc must be a positive integer, got {nproc!r}")
    budget = PRESETS[preset].get("pipeline", {})
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cohort_dir = _cohort(out_dir, cohort, preset, subjects or budget.get("subjects"), seed, workers)
    if not (cohort_dir / "datalist.json").is_file():
        write_datalist(str(cohort_dir), seed=seed, preset=preset)
    run = PipelineRun(out_dir, preset, cohort_dir, parse_accelerations(accelerations), device, nproc,
                      dict(budget.get("epochs", {})), dict(budget.get("overrides", {})))  # fmt: skip
    everything = all_stages()
    chosen = run_order(select_stages(everything, stages))
    forced = {s.name for s in select_stages(everything, force)} if force else set()
    progress = Progress(len(chosen))
    records = {}
    for k, stage in enumerate(chosen, 1):
        if stage.name not in forced and run.is_done(stage):
            records[stage.name] = json.loads((run.stage_dir(stage.name) / "stage.json").read_text())
            progress.done(f"[{k}/{len(chosen)}] {stage.name}: done before, skipped")
            continue
        if stage.name in forced:
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
    from kmtr_monai.report import summary_text, write_report
    from kmtr_monai.report_data import collect_report_data

    collect_report_data(run)
    results = write_report(out_dir)
    print("\n" + summary_text(results), flush=True)
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


def write_manifest(run: PipelineRun, stages: list[Stage]) -> Path:
    """``DIR/pipeline.json``: what the report reads (stages that have a record, their labels and test folders; a
    label says "frozen encoder" when the budget froze the stage's encoder)."""
    entries = []
    for s in stages:
        state = run.stage_dir(s.name) / "stage.json"
        if state.is_file():
            rec = json.loads(state.read_text())
            frozen = run.train_overrides(s).get("freeze_encoder") is True
            label = f"{s.label}, frozen encoder" if frozen else s.label
            entries.append({"name": s.name, "task": s.task, "method": s.method, "label": label,
                            "status": rec.get("status"), "minutes": rec.get("minutes"),
                            "tests": rec.get("tests", {})})  # fmt: skip
    seg_r = _config_value(run.bundles / "segment-unetr", "val_acceleration")
    manifest = {"preset": run.preset, "cohort": str(run.cohort), "accelerations": run.accelerations,
                "acceleration": _config_value(run.bundles / "regress", "val_acceleration"),
                "seg_acceleration": seg_r, "stages": entries}  # fmt: skip
    path = run.out / "pipeline.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path
