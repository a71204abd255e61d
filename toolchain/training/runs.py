"""A training run folder and how to load it.

A finished run ``RUN/`` holds:

    weights.h5     keras HDF5 weights for build_model(cfg.model) (the best epoch by val accuracy)
    config.json    the effective config (the file given, with command-line overrides applied)
    metrics.json   test accuracy, per-epoch history, expert shares, dataset, normalisation, ...

While training, everything lives in ``RUN.partial/`` (checkpoints every epoch, state.json);
the finished run is written atomically and the partial folder removed, so ``RUN/`` is never
half-written and ``--resume`` picks up ``RUN.partial/`` after an interruption.

Example:
    >>> from toolchain.training import load_run
    >>> cfg, model, meta = load_run("runs/fmnist_routed", batch_size=1)   # doctest: +SKIP
    >>> meta["normalization"], meta["test_accuracy"]                      # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from toolchain.errors import RoutevitError
from toolchain.manifest import read_manifest

WEIGHTS = "weights.h5"
CONFIG = "config.json"
METRICS = "metrics.json"
STATE = "state.json"
CHECKPOINTS = "checkpoints"
BEST_WEIGHTS = "best.weights.h5"
METRICS_FORMAT = "routevit-train/1"


def partial_dir(run: Path) -> Path:
    """Where a run trains before it is complete: ``RUN.partial`` beside ``RUN``."""
    run = Path(run)
    return run.with_name(run.name + ".partial")


def write_json(path: Path, data) -> None:
    """Write JSON via a temp file and rename, so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_run_metadata(run) -> dict:
    """metrics.json of a finished run; a missing or foreign folder raises RoutevitError."""
    run = Path(run)
    if not run.is_dir():
        hint = " (training was interrupted: `routevit train ... --resume`)" if partial_dir(run).is_dir() else ""
        raise RoutevitError(f"{run}: no such run folder{hint}; give the --out folder of `routevit train`")
    for name in (WEIGHTS, CONFIG, METRICS):
        if not (run / name).is_file():
            raise RoutevitError(f"{run}: not a finished training run ({name} missing); "
                                "give the --out folder of `routevit train`")
    return read_manifest(run / METRICS, "train the run again with this routevit", METRICS_FORMAT)


def load_run(run, batch_size: int | None = None):
    """(config, model, meta) of a finished run.

    config: `toolchain.config.Config` (``config.model`` is the ModelConfig); model: a tf-keras
    model from ``build_model(config.model, batch_size)`` with the run's weights; meta: the
    parsed metrics.json (``normalization``, ``class_names``, ``test_accuracy``, ...).
    """
    from toolchain.config import load_config
    from toolchain.models import build_model

    run = Path(run)
    meta = read_run_metadata(run)
    config = load_config(run / CONFIG)
    model = build_model(config.model, batch_size=batch_size)
    try:
        model.load_weights(str(run / WEIGHTS))
    except (ValueError, OSError) as exc:
        raise RoutevitError(f"{run / WEIGHTS}: does not fit the model of {run / CONFIG} "
                            f"({str(exc).splitlines()[0]}); train the run again") from None
    return config, model, meta
