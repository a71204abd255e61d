"""`routevit quantize`: QAT fine-tuning (tfmot) or PTQ preparation of a trained run."""
import json

import click


@click.command("quantize")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--method", type=click.Choice(["qat", "ptq"]), required=True,
              help="qat: fine-tune with fake quantization; ptq: calibration only.")
@click.option("--out", required=True, type=click.Path(file_okay=False, writable=True),
              help="QRUN folder to write.")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True,
              help="QAT fine-tuning epochs.")
@click.option("--limit-train", type=click.IntRange(min=1), default=None, metavar="N",
              help="QAT on the first N training examples only.")
@click.option("--limit-eval", type=click.IntRange(min=1), default=None, metavar="N",
              help="Evaluate the QAT model on the first N val/test examples only.")
@click.option("--data", default=None, metavar="D",
              help="Dataset (default: the one the run was trained on).")
@click.option("--calibration", "calibration_count", type=click.IntRange(min=1), default=256,
              show_default=True, help="Calibration images stored in QRUN (first N of train).")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="QAT learning rate (default: 0.1 x the run's, cosine to 0).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="QAT batch size (default: the run's).")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json as one JSON object.")
def command(run, method, out, epochs, limit_train, limit_eval, data, calibration_count,
            learning_rate, batch_size, as_json):
    """Quantize the float training run RUN into QRUN (then `routevit export QRUN`)."""
    from quantization.qrun import quantize_run

    metrics = quantize_run(run, method, out, epochs=epochs, limit_train=limit_train,
                           limit_eval=limit_eval, data=data, calibration_count=calibration_count,
                           learning_rate=learning_rate, batch_size=batch_size)
    line = f"{method} -> {out}"
    if method == "qat":
        line += (f": fake-quant test accuracy {metrics['qat_test_accuracy']:.4f} "
                 f"(float {metrics['float_test_accuracy']:.4f})")
    click.echo(line, err=True)
    if as_json:
        click.echo(json.dumps(metrics))
