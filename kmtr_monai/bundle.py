"""How a bundle's configs are layered, the command that runs one, and the export to a standalone folder.

In the repository a bundle's ``configs/`` hold only what is specific to it (network, loss, batch preparation,
metrics); what every bundle needs (cohort loading, the k-space simulation chain, trainer, evaluator, handlers,
checkpointing, DDP) is written once in ``bundles/common/``, and sizes once in ``bundles/presets/``. MONAI merges a
list of config files in order (later keys win; ``a#b`` keys set one nested entry), so a run is the list

    common/train.json, presets/<preset>.json, <bundle>/configs/train.json,
    [common/<workflow>.json, <bundle>/configs/<workflow>.json]  (evaluate, inference; and multi_gpu_train)

:func:`export_bundle` flattens that list into the self-contained folder the MONAI Model Zoo and MONAI Label expect
(``configs/train.json`` standalone; ``evaluate.json`` and ``multi_gpu_train.json`` as overrides of it;
``inference.json`` standalone), with no path outside the folder.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

OVERRIDES = ("evaluate", "multi_gpu_train")


def default_bundles_dir() -> Path:
    """The repository's ``bundles/`` folder (the package is installed editable from a checkout)."""
    return Path(__file__).resolve().parent.parent / "bundles"


def bundle_names(bundles_dir: Path | None = None) -> list[str]:
    """Bundles are the folders of ``bundles/`` with a ``configs/metadata.json``."""
    root = Path(bundles_dir or default_bundles_dir())
    return sorted(p.parent.parent.name for p in root.glob("*/configs/metadata.json"))


def _bundle_dir(name_or_dir: str | Path) -> Path:
    path = Path(name_or_dir)
    if not (path / "configs" / "metadata.json").is_file():
        path = default_bundles_dir() / str(name_or_dir)
    if not (path / "configs" / "metadata.json").is_file():
        raise ValueError(f"unknown bundle {str(name_or_dir)!r}: expected one of {bundle_names()} or a bundle folder")
    return path.resolve()


def _layer(common: Path, bundle: Path, name: str) -> list[Path]:
    return [p for p in (common / f"{name}.json", bundle / "configs" / f"{name}.json") if p.is_file()]


def config_files(bundle: str | Path, workflow: str = "train", preset: str = "small", multi_gpu: bool = False
                 ) -> list[str]:  # fmt: skip
    """The ordered config list of one run of ``bundle`` (a name under ``bundles/`` or a bundle folder).

    ``workflow``: ``train``, ``evaluate`` or ``inference``; ``multi_gpu`` appends the DDP override.
    """
    if workflow not in ("train", "evaluate", "inference"):
        raise ValueError(f"workflow must be 'train', 'evaluate' or 'inference', got {workflow!r}")
    bundle = _bundle_dir(bundle)
    common, presets = bundle.parent / "common", bundle.parent / "presets"
    if not common.is_dir():  # an exported, standalone bundle: its preset is already merged in
        own = ["inference"] if workflow == "inference" else ["train"] + ([workflow] if workflow != "train" else [])
        own += ["multi_gpu_train"] if multi_gpu else []
        files = [bundle / "configs" / f"{name}.json" for name in own]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"bundle folder {bundle} lacks {missing}")
        return [str(f) for f in files]
    if not (presets / f"{preset}.json").is_file():
        raise ValueError(f"unknown preset {preset!r}: no file {presets / (preset + '.json')}")
    files = [common / "train.json", presets / f"{preset}.json", bundle / "configs" / "train.json"]
    if workflow != "train":
        layer = _layer(common, bundle, workflow)
        if workflow == "inference" and not layer:
            raise ValueError(f"bundle {bundle.name!r} has no inference config")
        files += layer
    if multi_gpu:
        files += _layer(common, bundle, "multi_gpu_train")
    return [str(f) for f in files]


def bundle_run_args(bundle: str | Path, preset: str, overrides: dict, workflow: str = "train",
                    multi_gpu: bool = False) -> dict:  # fmt: skip
    """The keyword arguments of ``monai.bundle.run`` for one bundle, preset and workflow (overrides included)."""
    bundle = _bundle_dir(bundle)
    return {"config_file": config_files(bundle, workflow, preset, multi_gpu),
            "meta_file": str(bundle / "configs" / "metadata.json"), "logging_file": str(_logging_conf(bundle)),
            "bundle_root": str(bundle), **overrides}  # fmt: skip


def bundle_command(bundle: str | Path, preset: str, overrides: dict, workflow: str = "train",
                   multi_gpu: bool = False, module: str = "monai.bundle") -> list[str]:  # fmt: skip
    """The ``python -m monai.bundle run`` command line for one bundle, preset and workflow.

    ``module="kmtr_monai.bundle_run"``: the same run, which also writes its root cause to ``$KMTR_ERROR_FILE``.
    """
    cmd = [sys.executable, "-m", module, "run"]
    for key, value in bundle_run_args(bundle, preset, overrides, workflow, multi_gpu).items():
        cmd += [f"--{key}", repr(value) if key == "config_file" else str(value)]
    return cmd


def _logging_conf(bundle: Path) -> Path:
    own = bundle / "configs" / "logging.conf"
    return own if own.is_file() else bundle.parent / "common" / "logging.conf"


def _merge_overrides(files: list[Path]) -> dict:
    """Merge override files key by key, keeping ``a#b`` keys as they are (they must stay overrides, not replace
    the whole ``a`` of the file they are merged onto)."""
    merged: dict = {}
    for f in files:
        merged.update(json.loads(f.read_text()))
    return merged


_UPSTREAM = re.compile(r"@bundle_root \+ '/\.\./([\w-]+)/models/([\w.]+)'")


def _localise(config, path: str = ""):
    """Rewrite paths that leave the bundle folder to paths inside it; any other ``..`` is an error.

    ``@bundle_root + '/../<other>/models/<file>'`` (a chained upstream checkpoint) becomes
    ``@bundle_root + '/models/<other>_<file>'``: copy that bundle's weights there, or override the key.
    """
    if isinstance(config, dict):
        return {k: _localise(v, f"{path}#{k}" if path else k) for k, v in config.items()}
    if isinstance(config, list):
        return [_localise(v, f"{path}#{i}") for i, v in enumerate(config)]
    if isinstance(config, str):
        config = _UPSTREAM.sub(lambda m: f"@bundle_root + '/models/{m.group(1)}_{m.group(2)}'", config)
        if "/.." in config or config.startswith("%"):
            raise ValueError(f"config key {path!r} = {config!r} refers outside the bundle folder; an exported "
                             "bundle must be self-contained")  # fmt: skip
    return config


def export_bundle(name: str, out: str | Path, preset: str = "small", weights: str | Path | None = None,
                  settings: dict | None = None) -> Path:  # fmt: skip
    """Write bundle ``name`` at ``preset`` as a standalone MONAI bundle folder ``out`` and return its path.

    ``configs/train.json`` is the merged, flattened layer list; ``evaluate.json`` and ``multi_gpu_train.json`` are
    override files of it; ``inference.json`` (Stage III bundles) is standalone, as MONAI Label loads it alone.
    ``settings``: top-level config values written into ``train.json`` and ``inference.json`` (e.g.
    ``{"kspace_geometry": "acquisition"}`` for weights trained in that geometry); the metadata's shapes follow them.
    ``weights``: a checkpoint of this bundle, copied to ``models/model.pt`` after a strict load into the bundle's
    network (a checkpoint of another bundle, preset or input grid is refused with the mismatch).
    """
    from monai.bundle import ConfigParser

    bundle = _bundle_dir(name)
    settings = dict(settings or {})
    train = ConfigParser.load_config_files(config_files(bundle, "train", preset))
    unknown = sorted(set(settings) - set(train))
    if unknown:
        raise ValueError(f"export {name}: settings {unknown} are not top-level keys of the bundle's train config")
    common = bundle.parent / "common"
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"export folder {out} exists and is not empty")
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "docs").mkdir(exist_ok=True)
    (out / "models").mkdir(exist_ok=True)

    def write(config: dict, file: str) -> None:
        (out / "configs" / file).write_text(json.dumps(_localise(config), indent=2) + "\n")

    train |= settings
    write(train, "train.json")
    for workflow in OVERRIDES:
        layer = _layer(common, bundle, workflow)
        if layer:
            write(_merge_overrides(layer), f"{workflow}.json")
    if _layer(common, bundle, "inference"):
        write(ConfigParser.load_config_files(config_files(bundle, "inference", preset)) | settings, "inference.json")
    meta = _concrete_metadata(bundle, ConfigParser(train), preset)
    (out / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.copy(common / "logging.conf", out / "configs" / "logging.conf")
    shutil.copy(bundle / "docs" / "README.md", out / "docs" / "README.md")
    shutil.copy(bundle.parent.parent / "LICENSE", out / "LICENSE")
    if weights is not None:
        try:
            _check_weights(out, Path(weights))
        except BaseException:
            shutil.rmtree(out)  # it was empty or absent: a refused export leaves nothing that blocks the retry
            raise
        shutil.copy(weights, out / "models" / "model.pt")
    return out


def _concrete_metadata(bundle: Path, config, preset: str) -> dict:
    """The bundle's metadata with the symbolic (S, T, H, W) shapes of its tensors replaced by the sizes the exported
    ``config`` (a ``ConfigParser``) builds its network for (H = ``n_pe``: ``crop``, or ``pe_lines`` under
    ``kspace_geometry="acquisition"``), as ``monai.bundle verify_net_in_out`` and MONAI Label read them."""
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    sizes = [int(config.get_parsed_content(k)) for k in ("n_views", "n_frames", "n_pe", "crop")]
    for tensors in meta.get("network_data_format", {}).values():
        for spec in tensors.values():
            shape = spec.get("spatial_shape", [])
            if len(shape) == 4 and all(isinstance(v, str) for v in shape):
                spec["spatial_shape"] = sizes
            elif len(shape) == 3 and all(isinstance(v, str) for v in shape):
                spec["spatial_shape"] = sizes[:3]
    meta["preset"] = preset
    return meta


def _check_weights(exported: Path, weights: Path) -> None:
    """Strictly load ``weights`` (key ``model``) into the network of the exported bundle's evaluation config (which
    builds the network without its upstream checkpoints)."""
    from monai.bundle import ConfigParser

    from kmtr_monai.engines.checkpoint import load_encoder_weights

    files = [exported / "configs" / f for f in ("train.json", "evaluate.json") if (exported / "configs" / f).is_file()]
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser["bundle_root"] = str(exported)
    load_encoder_weights(parser.get_parsed_content("network_def"), weights, key="model")
