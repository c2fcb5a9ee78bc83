"""The pipeline's stage table: which bundle runs exist, with which overrides, in which order.

A :class:`Stage` is one unit of ``kmtr pipeline``: its folder under the run directory, the bundle and overrides it
runs with, and the stages it reads. ``kind`` says how it runs: ``"model"`` (a bundle run: train, then the bundle's
``evaluate.json`` on the test split), ``"floor"`` (a linear model on the raw input) or ``"probe"`` (a linear model
on frozen features); the pipeline dispatches on it (``kmtr_monai.pipeline.RUNNERS``).

This module imports nothing from the rest of the package, so the pipeline, the report and the benchmarks can all
read the table without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("model", "floor", "probe")

VECTOR_METHODS = (  # (method, label, overrides, upstream stage): the paper's column order
    ("cnn-image", "CNN (fully-sampled image)", {"encoder": "@cnn_baseline", "input": "image"}, None),
    # head_input_norm: a random-init ViT's pooled features share one direction (mean cosine 0.998 between subjects),
    # and on them the head's training loss stayed at the mean predictor's (BENCHMARKS, "The image ViT from scratch")
    ("vit-image", "ViT (fully-sampled image)", {"encoder": "@baselines#vit", "input": "image", "head_input_norm": True},
     None),
    ("imagemae-image", "Image MAE fine-tuned (fully-sampled image)",
     {"encoder": "@baselines#image_mae", "input": "image", "init": "stage1"}, "image-mae"),
    ("cnn-zf", "CNN (zero-filled image)", {"encoder": "@cnn_baseline", "input": "zero_filled"}, None),
    ("cnn-kspace", "CNN (k-space)", {"encoder": "@cnn_baseline"}, None),
    ("scratch", "k-space ViT from scratch", {"init": "scratch", "head_input_norm": True}, None),  # as vit-image
    ("stage1", "k-space MAE, unaligned", {"init": "stage1"}, "kspace-mae"),
    ("kmtr", "k-MTR", {"init": "aligned"}, "align"),
)  # fmt: skip
SEGMENT_METHODS = (
    ("dynunet-image", "DynUNet (fully-sampled image)", {"network_def": "@baselines#dynunet", "input": "image"}, None),
    ("dynunet-zf", "DynUNet (zero-filled image)", {"network_def": "@baselines#dynunet", "input": "zero_filled"}, None),
    ("kmtr", "k-MTR", {"init": "aligned"}, "align"),
)  # fmt: skip
RECON_METHODS = (  # k-GIN keeps the line tokens and asinh units it was measured with, whatever the preset's tokens
    ("kgin", "k-GIN-style line interpolator", {"network_def": "@baselines#kgin", "tokenizer": "line",
                                               "kspace_norm": "asinh"}, None),
    ("kmtr", "k-MTR", {"init": "aligned"}, "align"),
)
FLOOR_METHODS = (  # (method, label, input): linear models on the raw inputs, no network (kmtr_monai.floors)
    ("floor-image", "Linear floor: fully-sampled pixels", "image"),
    ("floor-zf", "Linear floor: zero-filled pixels", "zero_filled"),
    ("floor-kspace", "Linear floor: sampled k-space values", "kspace"),
)
PROBE_ENCODERS = (  # (encoder, label, input, upstream stage): frozen encoders probed linearly (kmtr_monai.probes)
    ("kmtr", "k-MTR", "kspace", "align"),
    ("stage1", "k-space MAE, unaligned", "kspace", "kspace-mae"),
    ("scratch", "k-space ViT, random init", "kspace", None),
    ("imagemae", "Image MAE (fully-sampled image)", "image", "image-mae"),
)
PROBE_POOLINGS = ("mean", "view_time", "layout")
TASK_BUNDLES = {"regress": "regress", "classify": "classify", "segment": "segment-unetr", "recon": "recon"}
# Run order of Stage III: k-MTR on every task first, then the baselines the report's questions need most (unaligned
# and scratch encoders, the zero-filled and fully-sampled image CNNs, the image MAE under the same frozen head as
# k-MTR, DynUNet, the k-GIN-style interpolator), so that a run cut short still answers the main questions. Methods not listed run after these. The report's tables
# keep the paper's order (the order of pipeline.json).
RUN_PRIORITY = (*(m for m, _, _ in FLOOR_METHODS), *(f"probe-{e}-{p}" for e, *_ in PROBE_ENCODERS for p in PROBE_POOLINGS),
                "kmtr", "stage1", "scratch", "cnn-zf", "cnn-image", "imagemae-image", "dynunet-zf", "kgin", "vit-image",
                "cnn-kspace", "dynunet-image")  # fmt: skip


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: ``name`` is its folder under DIR; ``overrides`` select the method and are repeated at
    test; ``kind`` is ``"model"``, ``"floor"`` or ``"probe"`` (how it runs); ``meta`` holds extra fields written to
    its ``pipeline.json`` entry (a probe's ``encoder`` and ``pooling``)."""

    name: str
    bundle: str
    task: str
    method: str
    label: str
    overrides: dict = field(default_factory=dict)
    upstream: tuple[str, ...] = ()
    kind: str = "model"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"stage {self.name}: kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def image_domain(self) -> bool:
        """True when the model reads the fully-sampled image (no acceleration to vary)."""
        return self.overrides.get("input") == "image"

    @property
    def family(self) -> str:
        """The method's family, the part before its first hyphen (``cnn`` for cnn-image, cnn-zf, cnn-kspace): preset
        overrides can name it once for every input and task."""
        return self.method.split("-")[0]

    @property
    def input(self) -> str:
        """What the stage reads: ``"image"``, ``"zero_filled"`` or ``"kspace"`` (the bundles' default)."""
        return str(self.overrides.get("input", "kspace"))


def all_stages() -> list[Stage]:
    """Stage I, Stage II, every Stage III task with k-MTR and its baselines (in the paper's method order), then the
    linear floors and probes of the vector tasks."""
    stages = [Stage("image-mae", "image-mae", "pretrain", "image-mae", "Image MAE (Stage I)"),
              Stage("kspace-mae", "kspace-mae", "pretrain", "kspace-mae", "k-space MAE (Stage I)"),
              Stage("align", "align", "pretrain", "align", "Alignment (Stage II)",
                    upstream=("image-mae", "kspace-mae"))]
    for task, methods in (("regress", VECTOR_METHODS), ("classify", VECTOR_METHODS), ("segment", SEGMENT_METHODS),
                          ("recon", RECON_METHODS)):  # fmt: skip
        for method, label, overrides, upstream in methods:
            stages.append(Stage(f"{task}-{method}", TASK_BUNDLES[task], task, method, label, dict(overrides),
                                (upstream,) if upstream else ()))  # fmt: skip
    for task in ("regress", "classify"):
        for method, label, inp in FLOOR_METHODS:
            stages.append(Stage(f"{task}-{method}", TASK_BUNDLES[task], task, method, label, {"input": inp},
                                kind="floor"))  # fmt: skip
        for encoder, label, inp, upstream in PROBE_ENCODERS:
            for pooling in PROBE_POOLINGS:
                stages.append(Stage(f"{task}-probe-{encoder}-{pooling}", TASK_BUNDLES[task], task,
                                    f"probe-{encoder}-{pooling}", f"Linear probe: {label}, {pooling} pooling",
                                    {"input": inp}, (upstream,) if upstream else (), kind="probe",
                                    meta={"encoder": encoder, "pooling": pooling}))  # fmt: skip
    return stages


def run_order(stages: list[Stage]) -> list[Stage]:
    """``stages`` in the order they run: Stage I and II first, then Stage III by :data:`RUN_PRIORITY` (methods not
    in it last), task order."""
    tasks = list(TASK_BUNDLES)

    def key(s: Stage) -> tuple:
        if s.task == "pretrain":
            return (0, 0, -1)
        rank = RUN_PRIORITY.index(s.method) if s.method in RUN_PRIORITY else len(RUN_PRIORITY)
        return (1, rank, tasks.index(s.task) if s.task in tasks else len(tasks))

    return sorted(stages, key=key)


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
