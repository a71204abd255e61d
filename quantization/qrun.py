"""The QRUN folder written by `routevit quantize` and how to load it.

    QRUN/
      quant.json          {"format": "routevit-quant/1", "method": "qat"|"ptq", "source_run": ...,
                           "dataset", "class_names", "normalization", "calibration": {...}}
      config.json         the source run's config (model + training)
      weights.h5          qat: the QAT model's weights (tfmot wrappers, fake-quant ranges);
                          ptq: the float weights (the converter calibrates everything)
      float_weights.h5    the source run's float weights (float reference and PTQ baseline)
      calibration.npz     uint8 calibration images (see quantization.calibration)
      metrics.json        float accuracy of the source run; qat: fine-tune history and the
                          fake-quant model's val/test accuracy
"""
from __future__ import annotations

import json
from pathlib import Path

from toolchain.errors import RoutevitError
from toolchain.manifest import read_manifest

FORMAT = "routevit-quant/1"
QUANT = "quant.json"
CONFIG = "config.json"
WEIGHTS = "weights.h5"
FLOAT_WEIGHTS = "float_weights.h5"
METRICS = "metrics.json"


def read_meta(qrun) -> dict:
    qrun = Path(qrun)
    if not qrun.is_dir():
        raise RoutevitError(f"{qrun}: no such folder; give the --out folder of `routevit quantize`")
    path = qrun / QUANT
    if not path.is_file():
        hint = ""
        if (qrun / "metrics.json").is_file() and (qrun / "weights.h5").is_file():
            hint = " (this is a float training run: run `routevit quantize RUN --method qat|ptq --out QRUN` first)"
        raise RoutevitError(f"{qrun}: not a quantized run, {QUANT} missing{hint}; "
                            "give the --out folder of `routevit quantize`")
    meta = read_manifest(path, "run `routevit quantize` again", FORMAT)
    for name in (CONFIG, WEIGHTS, FLOAT_WEIGHTS):
        if not (qrun / name).is_file():
            raise RoutevitError(f"{qrun / name}: missing; run `routevit quantize` again")
    return meta


def load_float_model(qrun, batch_size=None):
    """(config, float keras model with the source run's weights)."""
    from toolchain.config import load_config
    from toolchain.models import build_model

    qrun = Path(qrun)
    config = load_config(qrun / CONFIG)
    model = build_model(config.model, batch_size=batch_size)
    _load(model, qrun / FLOAT_WEIGHTS)
    return config, model


def load_export_model(qrun):
    """(config, meta, model to export): the QAT model for method qat, else the float model."""
    from quantization.qat import quantize_for_training

    qrun = Path(qrun)
    meta = read_meta(qrun)
    config, model = load_float_model(qrun)
    if meta["method"] == "qat":
        model = quantize_for_training(model)
        _load(model, qrun / WEIGHTS)
    return config, meta, model


def _load(model, path: Path):
    try:
        model.load_weights(str(path))
    except (ValueError, OSError) as exc:
        raise RoutevitError(f"{path}: does not fit the model of its config.json "
                            f"({str(exc).splitlines()[0]}); run `routevit quantize` again") from None


def quantize_run(run, method: str, out, *, epochs: int = 1, limit_train=None, limit_eval=None,
                 data: str | None = None, calibration_count: int = 256, learning_rate=None,
                 batch_size=None, seed=None) -> dict:
    """`routevit quantize`: write QRUN for `method` ("qat" or "ptq"); returns metrics.json."""
    import shutil
    import time

    import toolchain
    from quantization import calibration
    from quantization.ptq import ptq_metrics
    from toolchain.data import Normalization, load_dataset
    from toolchain.fsutil import atomic_output_dir
    from toolchain.training import load_run

    if method not in ("qat", "ptq"):
        raise RoutevitError(f"--method {method}: unknown; use qat or ptq")
    run = Path(run)
    if (run / QUANT).is_file():
        raise RoutevitError(f"{run}: is already a quantized run; give the float training run "
                            "(the --out folder of `routevit train`)")
    started = time.monotonic()
    config, model, run_meta = load_run(run)
    data = data or run_meta.get("dataset", {}).get("name")
    if not data:
        raise RoutevitError(f"{run}/metrics.json: names no dataset; pass --data")
    dataset = load_dataset(data)
    mc = config.model
    if dataset.num_classes != mc.num_classes:
        raise RoutevitError(f"dataset {data}: {dataset.num_classes} classes but the model of {run} "
                            f"has {mc.num_classes}; use the dataset the run was trained on")
    norm = run_meta.get("normalization") or {"mean": config.training.input_mean,
                                              "std": config.training.input_std}
    normalization = Normalization.from_lists(norm["mean"], norm["std"], mc.in_channels)
    seed = config.training.seed if seed is None else seed
    images = calibration.sample_images(dataset, "train", calibration_count, mc.image_size,
                                       mc.in_channels)
    metrics = {"format": FORMAT, "routevit_version": toolchain.__version__, "method": method,
               "source_run": str(run.resolve()), "float_test_accuracy": run_meta.get("test_accuracy"),
               "float_test_examples": run_meta.get("test_examples")}
    qat_model = None
    if method == "qat":
        from quantization.qat import fine_tune, quantize_for_training

        qat_model = quantize_for_training(model)
        lr = learning_rate if learning_rate is not None else config.training.learning_rate * 0.1
        result = fine_tune(qat_model, dataset, config, normalization, epochs=epochs,
                           learning_rate=lr, batch_size=batch_size or config.training.batch_size,
                           limit_train=limit_train, limit_eval=limit_eval, seed=seed)
        metrics.update({"qat_epochs": epochs, "qat_learning_rate": lr,
                        "qat_limit_train": limit_train, **{f"qat_{k}": v for k, v in result.items()}})
    else:
        metrics.update(ptq_metrics(run_meta))
    meta = {"format": FORMAT, "routevit_version": toolchain.__version__, "method": method,
            "source_run": str(run.resolve()), "dataset": data,
            "class_names": list(run_meta.get("class_names") or dataset.class_names),
            "normalization": normalization.to_dict(),
            "calibration": {"split": "train", "count": int(len(images)), "file": calibration.FILE}}
    metrics["wall_time_s"] = round(time.monotonic() - started, 2)
    with atomic_output_dir(Path(out)) as tmp:
        shutil.copyfile(run / "config.json", tmp / CONFIG)
        shutil.copyfile(run / "weights.h5", tmp / FLOAT_WEIGHTS)
        if qat_model is not None:
            qat_model.save_weights(str(tmp / WEIGHTS))
        else:
            shutil.copyfile(run / "weights.h5", tmp / WEIGHTS)
        calibration.save(tmp, images, "train")
        (tmp / QUANT).write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
