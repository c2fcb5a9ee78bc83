"""The main job end to end at the tiny preset: every stage through its bundle, test evaluations, the report, resume,
--force and --cohort. One pipeline run is shared by the module (about ten minutes on two cores). Also the manifest
format, the dispatch on a stage's kind and the absence of import circles in the package."""

import ast
import contextlib
import io
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from kmtr_monai.pipeline import PipelineRun, parse_accelerations, run_pipeline, write_manifest
from kmtr_monai.presets import PRESETS
from kmtr_monai.stages import Stage, all_stages, run_order, select_stages

ACCELERATIONS = "4,8"  # two test accelerations keep the CI run short; the default is 2,4,8,16


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "run"
    terminal = io.StringIO()
    with contextlib.redirect_stdout(terminal), contextlib.redirect_stderr(terminal):
        results = run_pipeline(out=str(out), preset="tiny", accelerations=ACCELERATIONS)
    (out.parent / "terminal.txt").write_text(terminal.getvalue())
    return out, results


def test_the_terminal_ends_with_the_summary(tiny_run):
    """What the report prints or warns goes to report/log.txt; the summary is the last thing on the terminal."""
    from kmtr_monai.report import summary_text

    out, results = tiny_run
    terminal = (out.parent / "terminal.txt").read_text()
    summary = summary_text(results)
    assert summary in terminal
    tail = terminal[terminal.index(summary) + len(summary):].strip()
    assert tail == "" or (tail.startswith(tuple("0123456789")) and "report/log.txt" in tail and "\n" not in tail), tail
    assert "Warning" not in terminal, terminal[-3000:]
    assert (out / "report" / "log.txt").is_file()


def test_tiny_pipeline_writes_the_report_with_every_method(tiny_run):
    out, _ = tiny_run
    report = out / "report"
    for name in ("results.json", "report.md"):
        assert (report / name).is_file()
    text = (report / "report.md").read_text()
    figures = [line.split("](")[1].split(")")[0] for line in text.splitlines() if "![" in line]
    assert len(figures) >= 5 and all((report / f).is_file() for f in figures)
    stages = json.loads((out / "pipeline.json").read_text())["stages"]
    assert {s["name"] for s in stages} == {s.name for s in all_stages()}
    assert all(s["status"] == "done" for s in stages)
    for stage in all_stages():
        if stage.task == "pretrain":
            continue
        for r, folder in json.loads((out / stage.name / "stage.json").read_text())["tests"].items():
            metrics = (out / folder / "metrics.csv").read_text().splitlines()
            values = [float(line.split(",")[1]) for line in metrics if "," in line]
            assert values and all(math.isfinite(v) for v in values if not math.isinf(v)), (stage.name, r)


def test_results_json_holds_every_method_and_metric_as_finite_numbers(tiny_run, json_leaves):
    out, _ = tiny_run
    results = json.loads((out / "report" / "results.json").read_text())
    text = json.dumps(results)
    for stage in all_stages():
        if stage.task != "pretrain":
            assert stage.label in text or stage.method in text, stage.name
    numbers = [v for v in json_leaves(results) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert len(numbers) > 100 and all(math.isfinite(v) for v in numbers)
    for key in ("mean MAE", "AUC", "Dice", "PSNR", "SSIM", "coverage"):
        assert key.lower() in text.lower(), key


def test_rerun_skips_finished_stages_and_force_redoes_one(tiny_run, monkeypatch, capsys):
    out, _ = tiny_run
    before = {s.name: json.loads((out / s.name / "stage.json").read_text())["finished"] for s in all_stages()}
    real_popen = subprocess.Popen
    launched = []

    def spy(cmd, *args, **kwargs):
        launched.append(cmd)
        return real_popen(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", spy)
    run_pipeline(out=str(out), preset="tiny", accelerations=ACCELERATIONS, stages="recon")
    assert launched == [] and "recon-kgin: done before, skipped" in capsys.readouterr().out

    run_pipeline(out=str(out), preset="tiny", accelerations=ACCELERATIONS, force="recon-kgin", stages="recon",
                 report=False)  # fmt: skip
    assert len(launched) == 1 and "recon" in " ".join(launched[0])
    after = {s.name: json.loads((out / s.name / "stage.json").read_text())["finished"] for s in all_stages()}
    assert after["recon-kgin"] > before["recon-kgin"]
    assert {k for k in before if after[k] != before[k]} == {"recon-kgin"}


def test_a_redone_upstream_stage_makes_its_dependents_stale(tiny_run):
    out, _ = tiny_run
    budget = PRESETS["tiny"]["pipeline"]
    run = PipelineRun(out, "tiny", out / "cohort", parse_accelerations(ACCELERATIONS), epochs=dict(budget["epochs"]),
                      overrides=dict(budget.get("overrides", {})))  # fmt: skip
    stages = {s.name: s for s in all_stages()}
    assert run.is_done(stages["regress-kmtr"]) and run.is_done(stages["regress-scratch"])
    state = out / "align" / "stage.json"
    record = json.loads(state.read_text())
    try:
        state.write_text(json.dumps({**record, "finished": record["finished"] + 1}))
        assert not run.is_done(stages["regress-kmtr"])  # reads align
        assert run.is_done(stages["regress-scratch"])  # does not
    finally:
        state.write_text(json.dumps(record))


def test_preset_overrides_by_task_and_stage_name_reach_the_command_and_the_fingerprint(tmp_path):
    """A stage name's overrides win over its method family's, which win over its task's; other tasks get only the
    family's; changing one makes the stage stale."""
    stages = {s.name: s for s in all_stages()}
    overrides = {"regress": {"head_hidden": 64, "freeze_encoder": False}, "regress-kmtr": {"freeze_encoder": True},
                 "kmtr": {"freeze_encoder": "family", "max_steps": 7}}  # a family's overrides reach every task
    run = PipelineRun(tmp_path, "tiny", tmp_path / "cohort", [4], epochs={"regress": 3}, overrides=overrides)
    kmtr, stage1 = run.train_overrides(stages["regress-kmtr"]), run.train_overrides(stages["regress-stage1"])
    assert (kmtr["freeze_encoder"], kmtr["head_hidden"], kmtr["max_epochs"], kmtr["max_steps"]) == (True, 64, 3, 7)
    classify_kmtr = run.train_overrides(stages["classify-kmtr"])
    assert (classify_kmtr["freeze_encoder"], classify_kmtr["max_steps"]) == ("family", 7)
    assert [s.family for s in (stages["regress-cnn-zf"], stages["classify-cnn-kspace"])] == ["cnn", "cnn"]
    del run.overrides["kmtr"]
    assert (stage1["freeze_encoder"], stage1["head_hidden"]) == (False, 64)
    assert "freeze_encoder" not in run.train_overrides(stages["classify-kmtr"])
    cmd = " ".join(run.command(stages["regress-kmtr"], kmtr))
    assert "--freeze_encoder True" in cmd and "--head_hidden 64" in cmd, cmd
    for name in ("regress-kmtr", "regress-stage1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "stage.json").write_text(json.dumps({"status": "done", "minutes": 1.0}))
    entries = {e["name"]: e for e in json.loads(write_manifest(run, all_stages()).read_text())["stages"]}
    assert list(entries) == [s.name for s in all_stages()]  # every stage, in the paper's order
    assert entries["regress-kmtr"]["label"] == "k-MTR, frozen encoder"
    assert entries["regress-stage1"]["label"] == "k-space MAE, unaligned"
    assert entries["regress-kmtr"]["status"] == "done" and entries["regress-kmtr"]["done"] is False  # no outputs
    assert entries["classify-kmtr"]["status"] == "not run" and entries["classify-kmtr"]["minutes"] is None
    before = run.fingerprint(stages["regress-kmtr"])
    run.overrides["regress-kmtr"] = {"freeze_encoder": False}
    assert run.fingerprint(stages["regress-kmtr"]) != before


def test_cohort_option_uses_an_existing_cohort(tiny_run, tmp_path):
    out, _ = tiny_run
    cohort = tmp_path / "my cohort"
    shutil.copytree(out / "cohort", cohort, ignore=shutil.ignore_patterns("datalist.json"))
    new = tmp_path / "run"
    run_pipeline(out=str(new), preset="tiny", cohort=str(cohort), stages="image-mae", report=False)
    assert not (new / "cohort").exists()
    assert (cohort / "datalist.json").is_file()
    assert (new / "image-mae" / "models" / "model.pt").is_file()
    state = json.loads((new / "image-mae" / "stage.json").read_text())
    assert state["status"] == "done" and str(cohort) in json.dumps(state["fingerprint"])


def test_a_reconfigured_stage_never_resumes_from_the_previous_configurations_files(tmp_path, monkeypatch):
    """A stage interrupted mid-training keeps its resume files while its fingerprint is unchanged; once its
    configuration changes (here a stale fingerprint in stage.json), they are removed before it runs."""
    from kmtr_monai import pipeline

    seen = []

    def floor_runner(run, stage, k, progress):
        seen.append(sorted(p.name for p in (run.stage_dir(stage.name) / "models" / "resume").glob("*")))
        folder = run.stage_dir(stage.name) / "test" / "R4"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.csv").write_text("val_mean_r2,0.5\n")
        return {"status": "done", "minutes": 0.1, "tests": {"4": "x"}, "finished": 1.0, "validation": {}}

    monkeypatch.setitem(pipeline.RUNNERS, "floor", floor_runner)
    out, name = tmp_path / "run", "regress-floor-kspace"
    args = dict(out=str(out), preset="tiny", subjects=12, accelerations="4", stages=name, report=False)
    run_pipeline(**args)
    current = json.loads((out / name / "stage.json").read_text())["fingerprint"]
    for fingerprint, kept in ((current, ["resume_checkpoint_5.pt"]), ({**current, "max_steps": 400}, [])):
        (out / name / "models" / "resume").mkdir(parents=True, exist_ok=True)
        (out / name / "models" / "resume" / "resume_checkpoint_5.pt").write_bytes(b"x")
        (out / name / "stage.json").write_text(json.dumps({"status": "running", "fingerprint": fingerprint}))
        run_pipeline(**args)
        assert seen[-1] == kept


def test_bad_arguments_name_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match="accelerations"):
        parse_accelerations("4,x")
    with pytest.raises(ValueError, match=">= 1"):
        parse_accelerations("0,4")
    assert parse_accelerations((16, 2, 4, 4)) == [2, 4, 16]
    with pytest.raises(ValueError, match="unknown stage"):
        select_stages(all_stages(), "regress-nope")
    assert {s.task for s in select_stages(all_stages(), "pretrain")} == {"pretrain"}
    with pytest.raises(FileNotFoundError, match="phenotypes.csv"):
        run_pipeline(out=str(tmp_path / "r"), preset="tiny", cohort=str(tmp_path))
    with pytest.raises(ValueError, match="preset"):
        run_pipeline(out=str(tmp_path / "r"), preset="huge")


def test_stage_table_is_the_papers_comparison():
    stages = all_stages()
    names = [s.name for s in stages]
    assert names[:3] == ["image-mae", "kspace-mae", "align"]
    for task in ("regress", "classify"):
        methods = [s.method for s in stages if s.task == task and s.kind == "model"]
        assert methods == ["cnn-image", "vit-image", "imagemae-image", "cnn-zf", "cnn-kspace",
                           "scratch", "stage1", "kmtr"]  # fmt: skip
        floors = [s for s in stages if s.task == task and s.kind == "floor"]
        assert [(s.method, s.input) for s in floors] == [("floor-image", "image"), ("floor-zf", "zero_filled"),
                                                         ("floor-kspace", "kspace")]  # fmt: skip
        probes = {(s.meta["encoder"], s.meta["pooling"]): s for s in stages if s.task == task and s.kind == "probe"}
        assert set(probes) == {(e, p) for e in ("kmtr", "stage1", "scratch", "imagemae") for p in ("mean", "view_time", "layout")}
        assert probes["kmtr", "mean"].upstream == ("align",) and probes["scratch", "layout"].upstream == ()
        assert probes["imagemae", "mean"].input == "image" and probes["stage1", "mean"].input == "kspace"
    assert [s.method for s in stages if s.task == "segment"] == ["dynunet-image", "dynunet-zf", "kmtr"]
    assert [s.method for s in stages if s.task == "recon"] == ["kgin", "kmtr"]
    assert all(s.upstream == ("align",) for s in stages if s.method == "kmtr")


def test_progress_line_reads_epoch_and_iteration_from_the_stage_log(tmp_path):
    import io
    import time

    from kmtr_monai.pipeline import Progress

    log = tmp_path / "log.txt"
    progress = Progress(total=24, stream=io.StringIO())
    assert progress.position(log) is None  # no log yet
    log.write_text("2026-12-02 00:40:49,348 - INFO - Epoch: 1/4, Iter: 17/17 -- train_loss: 0.1\n"
                   "2026-12-02 00:41:49,348 - INFO - Epoch: 2/4, Iter: 5/17 -- train_loss: 0.05\n")  # fmt: skip
    assert progress.position(log) == (2, 4, 5, 17)
    line = progress.line(3, "regress-kmtr (train)", log, time.perf_counter() - 60)
    assert line.startswith("[3/24] regress-kmtr (train)  epoch 2/4  iter 5/17") and "ETA" in line
    progress.done("[3/24] regress-kmtr: 1.0 min")
    assert progress.stream.getvalue() == "[3/24] regress-kmtr: 1.0 min\n"  # not a terminal: one line per stage


def test_run_order_puts_kmtr_and_the_main_comparisons_first():
    """Stage I/II, then the floors and probes (minutes, and the headline needs them), then k-MTR on every task."""
    ordered = run_order(all_stages())
    names = [s.name for s in ordered]
    linear = sum(s.kind != "model" for s in ordered)
    assert linear == 30 and {s.kind for s in ordered[3:3 + linear]} == {"floor", "probe"}
    assert names[:3] == ["image-mae", "kspace-mae", "align"]
    assert names[3 + linear:7 + linear] == ["regress-kmtr", "classify-kmtr", "segment-kmtr", "recon-kmtr"]
    assert names.index("regress-stage1") < names.index("regress-cnn-image") < names.index("regress-vit-image")
    assert sorted(names) == sorted(s.name for s in all_stages())


def test_output_to_leaves_no_handler_on_the_closed_log(tmp_path):
    """A handler made during one redirected evaluation (on the redirected stderr) must not outlive it: the next
    evaluation's messages reach its own log, with no 'I/O operation on closed file' logging error."""
    import logging
    import sys

    from kmtr_monai.capture import output_to

    name = "kmtr-test-engine-logger"
    for k in range(2):
        with output_to(tmp_path / f"log{k}.txt"):
            logger = logging.getLogger(name)
            logger.setLevel(logging.INFO)
            if not logger.handlers:  # as an engine's logger is set up on first use
                logger.addHandler(logging.StreamHandler(sys.stderr))
            logger.info("evaluation %d", k)
    texts = [(tmp_path / f"log{k}.txt").read_text() for k in range(2)]
    assert "evaluation 0" in texts[0] and "evaluation 1" in texts[1]
    assert "Logging error" not in texts[1] and not logging.getLogger(name).handlers


def test_the_report_works_on_a_run_folder_moved_elsewhere(tiny_run, tmp_path):
    """pipeline.json holds everything the report and its data need (paths relative to the run folder): a copy
    reports with the original out of reach."""
    from kmtr_monai.report import write_report
    from kmtr_monai.report_data import collect_report_data

    out, results = tiny_run
    moved = tmp_path / "moved"
    shutil.copytree(out, moved, ignore=shutil.ignore_patterns("report", "log.txt"))
    hidden = out.with_name("hidden")
    out.rename(hidden)
    try:
        collect_report_data(moved)
        res = write_report(moved)
    finally:
        hidden.rename(out)
    assert res["run"]["dir"] == str(moved) and res["run"]["cohort"] == str(moved / "cohort")
    assert (moved / "report" / "data" / "embeddings.npz").is_file()
    assert res["regress"]["methods"].keys() == results["regress"]["methods"].keys()
    assert res["regress"]["methods"]["kmtr"]["mean_mae"] == results["regress"]["methods"]["kmtr"]["mean_mae"]


def test_manifest_holds_what_the_report_reads(tmp_path):
    """Run settings, and per stage its kind, input, status, the overrides (paths relative to DIR, listed in
    ``paths``) and its outputs; the cohort relative to DIR."""
    run = PipelineRun(tmp_path, "tiny", tmp_path / "cohort", [4, 8], device="cpu")
    (tmp_path / "regress-kmtr").mkdir()
    (tmp_path / "regress-kmtr" / "stage.json").write_text(json.dumps(
        {"status": "done", "minutes": 2.0, "tests": {"4": "regress-kmtr/test/R4"}}))
    doc = json.loads(write_manifest(run, all_stages()).read_text())
    assert (doc["preset"], doc["cohort"], doc["accelerations"]) == ("tiny", "cohort", [4, 8])
    assert Path(doc["bundles"]).is_absolute() and (doc["acceleration"], doc["seg_acceleration"]) == (4, 8)
    e = {s["name"]: s for s in doc["stages"]}
    k = e["regress-kmtr"]
    assert (k["kind"], k["input"], k["bundle"], k["status"], k["done"], k["minutes"]) == (
        "model", "kspace", "regress", "done", False, 2.0)
    assert k["overrides"]["dataset_dir"] == "cohort" and k["overrides"]["align_ckpt"] == "align/models/model.pt"
    assert k["overrides"]["ckpt_dir"] == "regress-kmtr/models" and k["overrides"]["train_accelerations"] == [4, 8]
    assert k["overrides"]["device"] == "$torch.device('cpu')" and k["overrides"]["init"] == "aligned"
    assert {"dataset_dir", "ckpt_dir", "output_dir", "align_ckpt"} <= set(k["paths"]) and "init" not in k["paths"]
    assert k["outputs"] == {"ckpt": "regress-kmtr/models/model.pt", "eval": "regress-kmtr/eval",
                            "history": "regress-kmtr/eval/history.csv", "log": "regress-kmtr/log.txt",
                            "tests": {"4": "regress-kmtr/test/R4"}}  # fmt: skip
    assert e["regress-cnn-zf"]["input"] == "zero_filled" and e["classify-vit-image"]["input"] == "image"
    assert "input" not in e["align"] and e["align"]["upstream"] == ["image-mae", "kspace-mae"]
    json.dumps(doc, allow_nan=False)


def test_run_stage_dispatches_on_the_stage_kind(tmp_path, monkeypatch):
    """A kind is one entry of RUNNERS; the pipeline writes stage.json around it, and a non-model stage is done
    with its test metrics (no checkpoint)."""
    from kmtr_monai import pipeline

    def floor_runner(run, stage, k, progress):
        folder = run.stage_dir(stage.name) / "test" / "R4"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text("val_mean_r2,0.5\n")
        return {"status": "done", "minutes": 0.1, "tests": {"4": "floor/test/R4"}, "finished": 1.0, "validation": {}}

    monkeypatch.setitem(pipeline.RUNNERS, "floor", floor_runner)
    stage = Stage("regress-floor-kspace", "regress", "regress", "floor-kspace", "floor", kind="floor")
    run = PipelineRun(tmp_path, "tiny", tmp_path / "cohort", [4])
    record = run.run_stage(stage, 1, pipeline.Progress(1, stream=io.StringIO()))
    saved = json.loads((tmp_path / stage.name / "stage.json").read_text())
    assert saved == record and record["kind"] == "floor" and record["fingerprint"] == run.fingerprint(stage)
    assert run.is_done(stage)
    assert set(pipeline.RUNNERS) >= {"model", "floor"} and pipeline.RUNNERS["model"] is pipeline.run_bundle_stage
    with pytest.raises(ValueError, match="kind"):
        Stage("x", "regress", "regress", "x", "x", kind="nope")


def _import_graph(package: Path) -> dict[str, set[str]]:
    """{module: package modules it imports}, module-level and function-level imports alike (relative ones
    resolved); ``from pkg import name`` points at the submodule ``pkg.name`` when there is one."""
    root = package.parent
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, (path, is_pkg) in modules.items():
        here = name if is_pkg else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges |= {t for t in map(known, targets) if t and t != name}
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import circles: the strongly connected components of more than one module."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_in_the_package():
    import kmtr_monai

    graph = _import_graph(Path(kmtr_monai.__file__).parent)
    assert {"kmtr_monai.pipeline", "kmtr_monai.stages", "kmtr_monai.report.tables"} <= set(graph)
    assert "kmtr_monai.report" in graph["kmtr_monai.pipeline"]  # function-level imports count
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_a_failing_stage_reports_its_root_cause_in_one_line(tmp_path, capsys):
    """A stage's bundle subprocess fails: the error's first line is the root cause (not the command), the traceback
    stays in the stage's log, and the log's last lines and the rerun command go to stderr."""
    import io
    import sys

    from kmtr_monai.pipeline import Progress, _run_logged

    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"run": ["$int('twelve')"]}))
    log = tmp_path / "stage" / "log.txt"
    log.parent.mkdir()
    cmd = [sys.executable, "-m", "kmtr_monai.bundle_run", "run", "--config_file", str(config)]
    with pytest.raises(RuntimeError) as err:
        _run_logged(cmd, log, Progress(1, stream=io.StringIO()), 1, "bad (train)")
    first = str(err.value).splitlines()[0]
    assert first.startswith("bad (train) failed: ValueError: invalid literal for int()") and str(log) in first
    assert "Traceback" in log.read_text() and "Traceback" not in str(err.value)
    assert "rerun it with" in capsys.readouterr().err
