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
    """Write TINY (with training overrides) to a file; returns its path."""
    def write(**training):
        data = json.loads(json.dumps(TINY))
        data["training"].update(training)
        path = tmp_path / f"tiny_{len(list(tmp_path.glob('tiny_*.json')))}.json"
        path.write_text(json.dumps(data))
        return path
    return write


def _history_numbers(metrics):
    return [(h["loss"], h["accuracy"], h["val_loss"], h["val_accuracy"], h["expert_share"], h["balance_loss"])
            for h in metrics["history"]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny 2-epoch run (seed 7) on a generated SSW60 folder, shared by the tests below."""
    root = tmp_path_factory.mktemp("trained")
    config = root / "tiny.json"
    config.write_text(json.dumps({**TINY, "training": {**TINY["training"], "seed": 7}}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROUTEVIT_CACHE", str(root / "cache"))
        data = f"ssw60:{make_ssw60(root / 'ssw60')}"
        metrics = train(TrainRequest(config=config, data=data, out=root / "run"))
        yield {"root": root, "config": config, "data": data, "out": root / "run", "metrics": metrics}


def test_train_writes_a_run_that_load_run_reproduces(trained, monkeypatch):
    monkeypatch.setenv("ROUTEVIT_CACHE", str(trained["root"] / "cache"))
    out, metrics = trained["out"], trained["metrics"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.json", "weights.h5"]
    assert not partial_dir(out).exists()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert [h["epoch"] for h in saved["history"]] == [1, 2]
    assert saved["class_names"] == ["American Crow", "Blue Jay", "Northern Cardinal"]
    assert saved["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert saved["dataset"]["name"] == trained["data"] and saved["test_examples"] == 6
    share = saved["expert_share"]["layer4.0"]
    assert len(share["share"]) == 2 and sum(share["share"]) == pytest.approx(1.0, abs=1e-5)
    assert saved["history"][-1]["balance_loss"]["layer4.0"] > 0
    assert saved["test_expert_share"]["layer4.0"]["patches"] > 0
    assert saved["wall_time_s"] > 0 and 0 <= saved["test_accuracy"] <= 1
    assert json.loads((out / "config.json").read_text())["training"]["seed"] == 7

    # A user (or the quantizer) reloads the run with a fixed batch of 1 and gets the same accuracy
    # from the dataset's uint8 images and the recorded normalisation.
    from toolchain.data import Normalization, load_dataset

    cfg, model, meta = load_run(out, batch_size=1)
    assert model.input_shape == (1, 16, 16, 3) and cfg.model.num_classes == 3
    images, labels = load_dataset(meta["dataset"]["name"]).numpy_images("test", None, image_size=16, channels=3)
    norm = Normalization(tuple(meta["normalization"]["mean"]), tuple(meta["normalization"]["std"]))
    predictions = [int(np.argmax(model(norm.apply(image[None]), training=False))) for image in images]
    assert np.mean(np.array(predictions) == labels) == pytest.approx(meta["test_accuracy"])


def test_interrupted_run_resumes_to_the_same_numbers(trained, monkeypatch):
    monkeypatch.setenv("ROUTEVIT_CACHE", str(trained["root"] / "cache"))
    config, data = trained["config"], trained["data"]

    def interrupt_after_first_epoch(epoch, record):
        if epoch == 0:
            raise KeyboardInterrupt  # what Ctrl-C does

    out = trained["root"] / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(TrainRequest(config=config, data=data, out=out), epoch_end=interrupt_after_first_epoch)
    assert not out.exists()  # never a half-written run folder
    state = json.loads((partial_dir(out) / "state.json").read_text())
    assert state["epochs_done"] == 1
    with pytest.raises(RoutevitError, match="--batch-size 3: the interrupted run used 6"):
        train(TrainRequest(config=config, data=data, out=out, resume=True, batch_size=3))
    resumed = train(TrainRequest(config=config, data=data, out=out, resume=True))
    assert not partial_dir(out).exists()
    whole = trained["metrics"]
    assert _history_numbers(resumed) == _history_numbers(whole)
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    _, model_a, _ = load_run(trained["out"])
    _, model_b, _ = load_run(out)
    for a, b in zip(model_a.get_weights(), model_b.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_cli_train_same_seed_same_numbers(trained):
    """A separate process with the same config and seed reproduces the run exactly; --json works."""
    out = trained["root"] / "cli_run"
    result = run_routevit("train", "--config", trained["config"], "--data", trained["data"],
                          "--out", out, "--json", env={"ROUTEVIT_CACHE": str(trained["root"] / "cache")})
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert summary["run"] == str(out) and summary["epochs_completed"] == 2
    assert "epoch 2/2" in result.stderr and "test accuracy" in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert summary["test_accuracy"] == metrics["test_accuracy"]
    assert _history_numbers(metrics) == _history_numbers(json.loads(json.dumps(trained["metrics"])))
    assert (out / "weights.h5").is_file()


def test_early_stopping_rule():
    from toolchain.training.trainer import update_early_stopping

    state = {"best_val_accuracy": None, "best_epoch": None, "epochs_without_improvement": 0,
             "stopped_early": False}
    kept = [update_early_stopping(state, {"epoch": e, "val_accuracy": acc}, patience=2, epochs=10)
            for e, acc in enumerate([0.5, 0.7, 0.7, 0.6], 1)]
    assert kept == [True, True, False, False]  # equal is not better
    assert state["stopped_early"] and state["best_epoch"] == 2 and state["best_val_accuracy"] == 0.7
    state = {"best_val_accuracy": 0.9, "best_epoch": 1, "epochs_without_improvement": 0, "stopped_early": False}
    update_early_stopping(state, {"epoch": 2, "val_accuracy": 0.1}, patience=1, epochs=2)
    assert not state["stopped_early"]  # the last epoch ran anyway: nothing was cut short


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
