"""The main job: the whole k-MTR pipeline on the embedded synthetic cohort, one MONAI bundle per stage.

Each stage runs exactly the command a user would type (``python -m monai.bundle run ...``) in a subprocess, with
outputs redirected under ``out/<stage>/`` and Stage I checkpoints chained into Stage II by override.
"""

import csv
import subprocess
import time
from pathlib import Path

from kmtr_monai.bundle import bundle_command, default_bundles_dir
from kmtr_monai.presets import DEFAULT_SUBJECTS

STAGES = ("image-mae", "kspace-mae", "align")


def read_metrics(output_dir: Path) -> dict[str, float]:
    """The latest validation metrics written by MONAI's ``MetricsSaver`` (``metrics.csv``: ``name,value`` rows)."""
    path = output_dir / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path) as f:
        return {row[0]: float(row[1]) for row in csv.reader(f) if len(row) >= 2}


def run_pipeline(out: str = "runs/tiny", preset: str = "tiny", subjects: int | None = None, seed: int = 0,
                 workers: int = 1, max_epochs: int | None = None, stages=STAGES,
                 bundles_dir: str | None = None) -> dict:  # fmt: skip
    """Simulate a cohort, write its datalist, summarise its k-space, then train every stage's bundle in order.

    ``max_epochs`` overrides the preset's epoch count for every stage. Returns ``{stage: {metric: value}}`` and prints
    a table. Stops at the first failing stage with its command.
    """
    from kmtr_monai.data.datalist import write_datalist
    from kmtr_monai.data.summary import kspace_summary
    from kmtr_monai.simulate import simulate_cohort

    if preset not in DEFAULT_SUBJECTS:
        raise ValueError(f"unknown preset '{preset}'; expected one of {sorted(DEFAULT_SUBJECTS)}")
    out_dir, bundles = Path(out).resolve(), Path(bundles_dir or default_bundles_dir()).resolve()
    cohort = out_dir / "cohort"
    if not (cohort / "diseases.csv").is_file():
        simulate_cohort(str(cohort), subjects=subjects or DEFAULT_SUBJECTS[preset], preset=preset, seed=seed,
                        workers=workers)  # fmt: skip
    write_datalist(str(cohort), seed=seed)
    kspace_summary(str(cohort), preset=preset, seed=seed)

    results: dict[str, dict[str, float]] = {}
    for stage in stages:
        stage_dir = out_dir / stage
        overrides = {"dataset_dir": cohort, "ckpt_dir": stage_dir / "models", "output_dir": stage_dir / "eval"}
        if max_epochs is not None:
            overrides["max_epochs"] = max_epochs
        if stage == "align":
            overrides["image_mae_ckpt"] = out_dir / "image-mae" / "models" / "model.pt"
            overrides["kspace_mae_ckpt"] = out_dir / "kspace-mae" / "models" / "model.pt"
        cmd = bundle_command(bundles / stage, preset, overrides)
        print(f"\n== {stage} ==\n$ {subprocess.list2cmdline(cmd)}", flush=True)
        start = time.perf_counter()
        if subprocess.run(cmd).returncode != 0:
            raise RuntimeError(f"stage '{stage}' failed; rerun it with:\n{subprocess.list2cmdline(cmd)}")
        results[stage] = {"minutes": (time.perf_counter() - start) / 60, **read_metrics(stage_dir / "eval")}

    print("\nstage        | " + " | ".join(["minutes", "key metrics"]))
    for stage, figures in results.items():
        shown = ", ".join(f"{k}={v:.4g}" for k, v in figures.items() if k != "minutes")
        print(f"{stage:12s} | {figures['minutes']:.1f} | {shown}")
    return results
