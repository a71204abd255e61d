"""`routevit train`: run folder contents, load_run, determinism, --resume, early stopping, bad input."""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import error_lines, make_ssw60, run_routevit
from toolchain.errors import RoutevitError
from toolchain.training import TrainRequest, load_run, partial_dir, train

TINY = {
    "name": "tiny_routed",
    "model": {"width_multiplier": 0.25, "num_classes": 3, "image_size": 16, "in_channels": 3,
              "strides": [1, 1, 1, 1, 2, 2], "transformer_depths": [1, 1, 1],
              "moe": {"layers": ["layer4.0"], "num_experts": 2, "expert_hidden": 16}},
    "training": {"batch_size": 6, "epochs": 2, "learning_rate": 0.003, "seed": 0,
                 "augmentation": {"horizontal_flip": True, "random_crop_padding": 1}},
}


@pytest.fixture
def tiny_config(tmp_path):
    def write(**training):
        data = json.loads(json.dumps(TINY))
        data["training"].update(training)
        path = tmp_path / f"tiny_{len(list(tmp_path.glob('tiny_*.json')))}.json"
        path.write_text(json.dumps(data))
        return path
    return write


def _history_numbers(metrics):
    return [(h["loss"], h["accuracy"], h["val_loss"], h["val_accuracy"], h["expert_share"])
            for h in metrics["history"]]


def test_train_writes_a_run_that_load_run_reproduces(tmp_path, ssw60_dir, tiny_config):
    out = tmp_path / "run"
    metrics = train(TrainRequest(config=tiny_config(), data=f"ssw60:{ssw60_dir}", out=out))
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.json", "weights.h5"]
    assert not partial_dir(out).exists()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert [h["epoch"] for h in saved["history"]] == [1, 2]
    assert saved["class_names"] == ["American Crow", "Blue Jay", "Northern Cardinal"]
    assert saved["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert saved["dataset"]["name"] == f"ssw60:{ssw60_dir}" and saved["test_examples"] == 6
    share = saved["expert_share"]["layer4.0"]
    assert len(share["share"]) == 2 and sum(share["share"]) == pytest.approx(1.0, abs=1e-5)
    assert saved["history"][-1]["balance_loss"]["layer4.0"] > 0
    assert saved["test_expert_share"]["layer4.0"]["patches"] > 0
    assert saved["wall_time_s"] > 0 and 0 <= saved["test_accuracy"] <= 1

    # A user (or the quantizer) reloads the run with a fixed batch of 1 and gets the same accuracy
    # from the dataset's uint8 images and the recorded normalisation.
    from toolchain.data import Normalization, load_dataset

    cfg, model, meta = load_run(out, batch_size=1)
    assert model.input_shape == (1, 16, 16, 3) and cfg.model.num_classes == 3
    images, labels = load_dataset(meta["dataset"]["name"]).numpy_images("test", None, image_size=16, channels=3)
    norm = Normalization(tuple(meta["normalization"]["mean"]), tuple(meta["normalization"]["std"]))
    predictions = [int(np.argmax(model(norm.apply(image[None]), training=False))) for image in images]
    assert np.mean(np.array(predictions) == labels) == pytest.approx(meta["test_accuracy"])


def test_same_seed_same_numbers_and_resume_continues_exactly(tmp_path, ssw60_dir, tiny_config):
    config = tiny_config(seed=7)
    data = f"ssw60:{ssw60_dir}"
    whole = train(TrainRequest(config=config, data=data, out=tmp_path / "whole"))

    def interrupt_after_first_epoch(epoch, record):
        if epoch == 0:
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(TrainRequest(config=config, data=data, out=out), epoch_end=interrupt_after_first_epoch)
    assert not out.exists()  # never a half-written run folder
    state = json.loads((partial_dir(out) / "state.json").read_text())
    assert state["epochs_done"] == 1
    with pytest.raises(RoutevitError, match="--batch-size 3: the interrupted run used 6"):
        train(TrainRequest(config=config, data=data, out=out, resume=True, batch_size=3))
    resumed = train(TrainRequest(config=config, data=data, out=out, resume=True))
    assert not partial_dir(out).exists()
    assert _history_numbers(resumed) == _history_numbers(whole)
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    assert (out / "weights.h5").read_bytes() != b""
    _, model_a, _ = load_run(tmp_path / "whole")
    _, model_b, _ = load_run(out)
    for a, b in zip(model_a.get_weights(), model_b.get_weights()):
        np.testing.assert_array_equal(a, b)

    other = train(TrainRequest(config=config, data=data, out=tmp_path / "other", seed=8, epochs=1))
    assert other["history"][0]["loss"] != whole["history"][0]["loss"]


def test_early_stopping_keeps_the_best_epoch(tmp_path, ssw60_dir, tiny_config):
    # A learning rate of ~0 cannot improve val accuracy, so patience 1 stops after epoch 2.
    metrics = train(TrainRequest(config=tiny_config(learning_rate=1e-12, lr_schedule="constant"),
                                 data=f"ssw60:{ssw60_dir}", out=tmp_path / "run", epochs=5, patience=1))
    assert metrics["stopped_early"] is True
    assert metrics["epochs_completed"] == 2 and metrics["best_epoch"] == 1


def test_cli_train_json(tmp_path, ssw60_dir, tiny_config):
    out = tmp_path / "cli_run"
    result = run_routevit("train", "--config", tiny_config(), "--data", f"ssw60:{ssw60_dir}",
                          "--epochs", "1", "--out", out, "--json",
                          env={"ROUTEVIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert summary["run"] == str(out) and summary["epochs_completed"] == 1
    assert summary["test_accuracy"] == json.loads((out / "metrics.json").read_text())["test_accuracy"]
    assert "epoch 1/1" in result.stderr and "test accuracy" in result.stderr


def _break_column(root):
    path = root / "images_inat.csv"
    path.write_text(path.read_text().replace("asset_id,", "id,", 1))


def _break_label(root):
    path = root / "images_inat.csv"
    lines = path.read_text().splitlines()
    fields = lines[3].split(",")
    fields[1] = "60"  # the label column
    lines[3] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")


def _break_image(root):
    (root / "images_inat" / "104.jpg").write_bytes((root / "images_inat" / "104.jpg").read_bytes()[:300])


@pytest.mark.parametrize("case, data, breaker, expected", [
    ("unknown dataset", "mnist", None, "dataset 'mnist': unknown dataset name"),
    ("missing path", "ssw60:{tmp}/nowhere", None, "nowhere: dataset path does not exist"),
    ("missing column", "ssw60:{ssw}", _break_column, "images_inat.csv: missing column 'asset_id'"),
    ("label out of range", "ssw60:{ssw}", _break_label, "images_inat.csv:4: label 60 is out of range 0..2"),
    ("corrupt image", "ssw60:{ssw}", _break_image, "104.jpg: cannot read image"),
    ("no fashion-mnist", "fashion-mnist:{tmp}/empty", None, "apt-get install dataset-fashion-mnist"),
])
def test_cli_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, tiny_config, case, data, breaker,
                                                          expected):
    ssw = make_ssw60(tmp_path / "ssw60", per_split={"train": 2, "val": 1, "test": 1})
    (tmp_path / "empty").mkdir()
    if breaker:
        breaker(ssw)
    out = tmp_path / "out" / "run"
    result = run_routevit("train", "--config", tiny_config(), "--data", data.format(tmp=tmp_path, ssw=ssw),
                          "--epochs", "1", "--out", out, env={"ROUTEVIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert expected in lines[0]
    assert result.stdout == ""
    assert not out.exists() and not partial_dir(out).exists()
    assert not (tmp_path / "cache" / "datasets").exists() or not any(
        p.name.startswith(".") for p in (tmp_path / "cache" / "datasets").iterdir())


def test_cli_resume_without_an_interrupted_run(tmp_path, tiny_config):
    result = run_routevit("train", "--config", tiny_config(), "--data", "fashion-mnist", "--epochs", "1",
                          "--out", tmp_path / "run", "--resume")
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"Error: {tmp_path / 'run.partial'}: no interrupted run to resume (no state.json there); "
        "train without --resume"]
