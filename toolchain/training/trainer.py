"""`routevit train`: build the model from a config, train it on a dataset, write RUN/.

Everything a user can get wrong (config, dataset name, paths, CSV columns, unreadable
images, labels) is checked by `prepare()` before TensorFlow is imported and before any
folder is created. Training then runs epoch by epoch in RUN.partial/ (a checkpoint and
state.json after every epoch), keeps the weights of the best validation accuracy, stops
early when it stops improving, evaluates on the test split and writes RUN/ atomically.

Determinism: the data order and augmentation of an epoch depend only on (seed, epoch), the
model's initial weights on the seed (tf_keras.utils.set_random_seed), and TensorFlow runs
with op determinism enabled, so the same command gives the same numbers.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import toolchain
from toolchain.errors import RoutevitError
from toolchain.fsutil import atomic_output_dir
from toolchain.training import runs

log = logging.getLogger("routevit")


@dataclasses.dataclass
class TrainRequest:
    """What `routevit train` was asked to do. None = take the config file's value."""

    config: Path
    data: str
    out: Path
    epochs: int | None = None
    resume: bool = False
    seed: int | None = None
    limit_train: int | None = None
    limit_eval: int | None = None  # first N of val and test (quick runs)
    batch_size: int | None = None
    patience: int = 5  # early stopping: epochs without a better val accuracy


@dataclasses.dataclass
class Prepared:
    request: TrainRequest
    config: object  # toolchain.config.Config with overrides applied
    dataset: object  # toolchain.data.Dataset
    normalization: object  # toolchain.data.Normalization
    epochs: int
    partial: Path
    state: dict | None  # state.json of the run being resumed


def echo(message: str) -> None:
    """Human progress text: stderr, so stdout stays free for --json."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- checks (no TensorFlow)

def prepare(request: TrainRequest) -> Prepared:
    """Validate the request, load the config and dataset, decode/check every image."""
    from toolchain.config import load_config
    from toolchain.data import Normalization, load_dataset

    request = dataclasses.replace(request, out=Path(request.out), config=Path(request.config))
    for key in ("epochs", "seed", "limit_train", "limit_eval", "batch_size"):
        value = getattr(request, key)
        if value is not None and (value < 0 or (value == 0 and key != "seed" and key != "epochs")):
            raise RoutevitError(f"--{key.replace('_', '-')} {value}: must be positive")
    if request.patience < 1:
        raise RoutevitError(f"--patience {request.patience}: must be at least 1")
    config = load_config(request.config)
    partial = runs.partial_dir(request.out)
    state = None
    if request.resume:
        state = _read_state(partial)
        request = _merge_resumed_request(request, state)

    training = config.training
    overrides = {"seed": request.seed, "batch_size": request.batch_size,
                 "max_train_examples": request.limit_train, "epochs": request.epochs}
    training = dataclasses.replace(training, **{k: v for k, v in overrides.items() if v is not None})
    dataset = load_dataset(request.data)
    model_cfg = config.model
    if model_cfg.num_classes != dataset.num_classes:
        echo(f"note: {request.config} has num_classes {model_cfg.num_classes}; "
             f"{dataset.name} has {dataset.num_classes} classes: the model gets {dataset.num_classes}")
        model_cfg = dataclasses.replace(model_cfg, num_classes=dataset.num_classes)
    config = dataclasses.replace(config, model=model_cfg, training=training)
    normalization = Normalization.from_lists(training.input_mean, training.input_std,
                                             model_cfg.in_channels, source=str(request.config))
    if request.resume:
        stored = json.loads((partial / runs.CONFIG).read_text())
        if _without_epochs(stored) != _without_epochs(config.to_dict()):
            raise RoutevitError(f"{partial}: the interrupted run used a different config or options; "
                                "resume with the same --config/--data/--seed/--batch-size/--limit-train, "
                                "or train without --resume")

    for split in ("train", "val", "test"):
        if dataset.split_sizes.get(split, 0) == 0:
            raise RoutevitError(f"dataset {dataset.name}: the {split} split is empty; "
                                "training needs train, val and test images")
        dataset.arrays(split, model_cfg.image_size)  # decodes (and so checks) every image once
    epochs = training.epochs
    if epochs < 1:
        raise RoutevitError(f"{request.config}: 'training.epochs' is {epochs}; give --epochs N (N >= 1)")
    return Prepared(request, config, dataset, normalization, epochs, partial, state)


def _read_state(partial: Path) -> dict:
    state_path = partial / runs.STATE
    if not state_path.is_file():
        raise RoutevitError(f"{partial}: no interrupted run to resume (no {runs.STATE} there); "
                            "train without --resume")
    try:
        return json.loads(state_path.read_text())
    except json.JSONDecodeError:
        raise RoutevitError(f"{state_path}: unreadable; train without --resume to start again") from None


def _merge_resumed_request(request: TrainRequest, state: dict) -> TrainRequest:
    stored = state["request"]
    if request.data != stored["data"]:
        raise RoutevitError(f"--data {request.data}: the interrupted run used {stored['data']}; "
                            "resume with the same --data, or train without --resume")
    merged = {}
    for key in ("seed", "limit_train", "limit_eval", "batch_size"):
        value = getattr(request, key)
        if value is None:
            merged[key] = stored.get(key)
        elif stored.get(key) is not None and value != stored[key]:
            raise RoutevitError(f"--{key.replace('_', '-')} {value}: the interrupted run used "
                                f"{stored[key]}; resume with the same value, or train without --resume")
    return dataclasses.replace(request, **merged)


def _without_epochs(config_dict: dict) -> dict:
    data = json.loads(json.dumps(config_dict))
    data.get("training", {}).pop("epochs", None)
    return data


# ---------------------------------------------------------------- training

def train(request: TrainRequest, epoch_end: Callable[[int, dict], None] | None = None) -> dict:
    """Run `routevit train`; returns the metrics written to RUN/metrics.json.

    `epoch_end(epoch_index, record)` is called after each epoch's checkpoint is saved.
    """
    return run_prepared(prepare(request), epoch_end)


def run_prepared(prep: Prepared, epoch_end=None) -> dict:
    import tensorflow as tf
    import tf_keras as keras

    from toolchain.models import build_model
    from toolchain.training import experts
    from toolchain.training.progress import EpochProgressBar
    from toolchain.training.schedule import WarmupCosine

    request, cfg, dataset = prep.request, prep.config, prep.dataset
    tc, mc = cfg.training, cfg.model
    partial = prep.partial
    if not request.resume and partial.exists():
        echo(f"note: discarding the interrupted run in {partial} (--resume continues one)")
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    if not request.resume:
        runs.write_json(partial / runs.CONFIG, cfg.to_dict())

    keras.utils.set_random_seed(tc.seed)
    tf.config.experimental.enable_op_determinism()

    model = build_model(mc)
    n_train = dataset.num_examples("train", tc.max_train_examples)
    batch_size = min(tc.batch_size, n_train)
    steps = max(1, n_train // batch_size)
    schedule = WarmupCosine(tc.learning_rate, total_steps=steps * prep.epochs,
                            warmup_steps=round(tc.warmup_epochs * steps), cosine=tc.lr_schedule == "cosine")
    optimizer = _optimizer(tc, schedule, keras)
    model.compile(optimizer=optimizer, loss=_loss(tc, mc.num_classes, tf, keras),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])

    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, str(partial / runs.CHECKPOINTS), max_to_keep=1)
    state = prep.state or {"epochs_done": 0, "history": [], "best_val_accuracy": None, "best_epoch": None,
                           "epochs_without_improvement": 0, "stopped_early": False, "seconds": 0.0}
    state["request"] = {"data": request.data, "seed": tc.seed, "limit_train": request.limit_train,
                        "limit_eval": request.limit_eval, "batch_size": tc.batch_size}
    if request.resume:
        if manager.latest_checkpoint is None:
            raise RoutevitError(f"{partial}: no checkpoint to resume from; train without --resume")
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        echo(f"resuming {partial} after epoch {state['epochs_done']}")

    pipeline_args = dict(image_size=mc.image_size, channels=mc.in_channels, seed=tc.seed,
                         normalization=prep.normalization)
    val_ds = dataset.pipeline("val", batch_size=256, limit=request.limit_eval, **pipeline_args)
    layer_blocks = {layer.name: block for block, layer, _ in experts.routed_blocks(model)}
    session_start = time.monotonic()
    seconds_before = float(state["seconds"])

    for epoch in range(state["epochs_done"], prep.epochs):
        if state["stopped_early"]:
            break
        epoch_start = time.monotonic()
        experts.reset_counters(model)
        train_ds = dataset.pipeline("train", batch_size=batch_size, training=True, epoch=epoch,
                                    limit=tc.max_train_examples, flip=tc.augmentation.horizontal_flip,
                                    pad=tc.augmentation.random_crop_padding, **pipeline_args)
        bar = EpochProgressBar(steps, f"epoch {epoch + 1}/{prep.epochs}")
        logs = model.fit(train_ds, epochs=1, verbose=0, callbacks=[bar]).history
        shares = experts.training_shares(model)
        val = model.evaluate(val_ds, verbose=0, return_dict=True)
        record = {
            "epoch": epoch + 1,
            "loss": _last(logs["loss"]),
            "accuracy": _last(logs["accuracy"]),
            "val_loss": float(val["loss"]),
            "val_accuracy": float(val["accuracy"]),
            "learning_rate": float(schedule(optimizer.iterations)),
            "balance_loss": {layer_blocks[k[:-len("_balance")]]: _last(v) for k, v in logs.items()
                             if k.endswith("_balance") and k[:-len("_balance")] in layer_blocks},
            "expert_share": shares,
            "seconds": round(time.monotonic() - epoch_start, 2),
        }
        state["history"].append(record)
        state["epochs_done"] = epoch + 1
        if update_early_stopping(state, record, request.patience, prep.epochs):
            model.save_weights(str(partial / runs.BEST_WEIGHTS))
        manager.save(checkpoint_number=epoch + 1)
        state["seconds"] = seconds_before + (time.monotonic() - session_start)
        runs.write_json(partial / runs.STATE, state)
        echo(_epoch_line(record, prep.epochs))
        if state["stopped_early"]:
            echo(f"stopping early: val accuracy has not improved for {request.patience} epochs "
                 f"(best {state['best_val_accuracy']:.4f} at epoch {state['best_epoch']})")
        if epoch_end is not None:
            epoch_end(epoch, record)

    # The finished model is the best epoch's.
    model.load_weights(str(partial / runs.BEST_WEIGHTS))
    echo("evaluating on the test split")
    test_ds = dataset.pipeline("test", batch_size=256, limit=request.limit_eval, **pipeline_args)
    test = model.evaluate(test_ds, verbose=0, return_dict=True)
    test_shares = experts.evaluation_shares(model, test_ds)
    last_shares = state["history"][-1]["expert_share"] if state["history"] else {}
    wall = seconds_before + (time.monotonic() - session_start)
    metrics = {
        "format": runs.METRICS_FORMAT,
        "routevit_version": toolchain.__version__,
        "config_name": cfg.name,
        "test_accuracy": float(test["accuracy"]),
        "test_loss": float(test["loss"]),
        "test_examples": dataset.num_examples("test", request.limit_eval),
        "val_accuracy": state["best_val_accuracy"],
        "best_epoch": state["best_epoch"],
        "epochs_completed": state["epochs_done"],
        "epochs_requested": prep.epochs,
        "stopped_early": state["stopped_early"],
        "expert_share": last_shares,
        "test_expert_share": test_shares,
        "min_expert_share": experts.min_share(last_shares),
        "min_test_expert_share": experts.min_share(test_shares),
        "dataset": {"name": dataset.name, "num_classes": dataset.num_classes,
                    "train_examples": n_train,
                    "val_examples": dataset.num_examples("val", request.limit_eval),
                    "split_sizes": dataset.split_sizes},
        "class_names": dataset.class_names,
        "normalization": prep.normalization.to_dict(),
        "input": {"image_size": mc.image_size, "channels": mc.in_channels},
        "seed": tc.seed,
        "batch_size": batch_size,
        "trainable_params": int(sum(int(tf.size(w)) for w in model.trainable_weights)),
        "wall_time_s": round(wall, 2),
        "history": state["history"],
    }
    with atomic_output_dir(request.out) as tmp:
        model.save_weights(str(tmp / runs.WEIGHTS))
        shutil.copyfile(partial / runs.CONFIG, tmp / runs.CONFIG)
        runs.write_json(tmp / runs.METRICS, metrics)
    shutil.rmtree(partial, ignore_errors=True)
    echo(f"test accuracy {metrics['test_accuracy']:.4f} (best epoch {metrics['best_epoch']}, "
         f"{metrics['wall_time_s']:.0f} s) -> {request.out}")
    return metrics


def update_early_stopping(state: dict, record: dict, patience: int, epochs: int) -> bool:
    """Fold one epoch's record into `state`; True if it is the best so far (keep its weights).

    Sets state["stopped_early"] once `patience` epochs in a row did not beat the best val
    accuracy (strictly), unless the last requested epoch was just trained anyway.
    """
    if state["best_val_accuracy"] is None or record["val_accuracy"] > state["best_val_accuracy"]:
        state["best_val_accuracy"] = record["val_accuracy"]
        state["best_epoch"] = record["epoch"]
        state["epochs_without_improvement"] = 0
        return True
    state["epochs_without_improvement"] += 1
    if state["epochs_without_improvement"] >= patience and record["epoch"] < epochs:
        state["stopped_early"] = True
    return False


def _optimizer(tc, schedule, keras):
    if tc.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=tc.weight_decay)
        # Decay weights only: not biases, norm scales/offsets or the expert biases.
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        return optimizer
    if tc.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=schedule)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True,
                                weight_decay=tc.weight_decay or None)


def _loss(tc, num_classes, tf, keras):
    if not tc.label_smoothing:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    smoothed = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=tc.label_smoothing)

    def sparse_smoothed_crossentropy(labels, logits):
        labels = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), num_classes)
        return smoothed(labels, logits)

    return sparse_smoothed_crossentropy


def _last(values):
    return float(values[-1]) if isinstance(values, list) else float(values)


def _epoch_line(record: dict, epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f} acc {record['accuracy']:.4f}",
             f"val acc {record['val_accuracy']:.4f}"]
    for block, entry in record["expert_share"].items():
        shares = " ".join(f"{s:.2f}" for s in entry["share"])
        balance = record["balance_loss"].get(block)
        parts.append(f"{block} experts [{shares}] dropped {entry['dropped']:.2f}"
                     + (f" balance {balance:.3f}" if balance is not None else ""))
    parts.append(f"{record['seconds']:.0f} s")
    return " | ".join(parts)
