"""`routevit train`: train a model config on a dataset into a run folder."""
import json

import click

from toolchain.data import DATASET_KINDS  # noqa: F401  (light import: no TensorFlow)


@click.command("train")
@click.option("--config", "config", required=True,
              type=click.Path(exists=True, dir_okay=False, readable=True),
              help="Model + training config JSON (see examples/configs/).")
@click.option("--data", required=True, metavar="D",
              help="Dataset: fashion-mnist, ssw60:PATH or folder:PATH.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs to train (default: the config's training.epochs).")
@click.option("--out", required=True, type=click.Path(file_okay=False, writable=True),
              help="Run folder to write (weights.h5, config.json, metrics.json).")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run in OUT.partial from its last checkpoint.")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Random seed (default: the config's training.seed). Same seed, same numbers.")
@click.option("--limit-train", type=click.IntRange(min=1), default=None, metavar="N",
              help="Train on the first N training examples only.")
@click.option("--limit-eval", type=click.IntRange(min=1), default=None, metavar="N",
              help="Validate and test on the first N examples of val and test only.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Batch size (default: the config's training.batch_size).")
@click.option("--patience", type=click.IntRange(min=1), default=5, show_default=True,
              help="Stop early after this many epochs without a better val accuracy.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's summary as one JSON object.")
def command(config, data, epochs, out, resume, seed, limit_train, limit_eval, batch_size, patience,
            as_json):
    """Train the model of --config on dataset --data and write the run folder --out.

    Checkpoints after every epoch in OUT.partial/; OUT/ appears only when training and the
    test evaluation have finished. Ctrl-C keeps OUT.partial/ for --resume.
    """
    from toolchain.training import TrainRequest, train

    request = TrainRequest(config=config, data=data, out=out, epochs=epochs, resume=resume, seed=seed,
                           limit_train=limit_train, limit_eval=limit_eval, batch_size=batch_size,
                           patience=patience)
    metrics = train(request)
    if as_json:
        summary = {key: metrics[key] for key in (
            "test_accuracy", "val_accuracy", "best_epoch", "epochs_completed", "stopped_early",
            "min_expert_share", "min_test_expert_share", "expert_share", "test_expert_share",
            "trainable_params", "wall_time_s")}
        summary["run"] = str(out)
        click.echo(json.dumps(summary))
