"""`routevit summarize`: parameters, active parameters per patch, MACs and activations of a model."""
import json
import sys

import click

from toolchain.errors import RoutevitError


@click.command("summarize")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="Config JSON (examples/configs/*.json). Alternative to --width/--classes/--image-size.")
@click.option("--width", type=float, help="Width multiplier of a dense MobileViTV2 (e.g. 1.0, 0.75, 0.5).")
@click.option("--classes", type=click.IntRange(min=2), help="Number of classes (default 1000).")
@click.option("--image-size", type=click.IntRange(min=8), help="Input side in pixels (default 256).")
@click.option("--in-channels", type=click.Choice(["1", "3"]), help="Input channels (default 3).")
@click.option("--strides", help="Stride schedule [stem, layer1..layer5], e.g. 2,1,2,2,2,2 (default).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def command(config_path, width, classes, image_size, in_channels, strides, as_json):
    """Per-stage parameters and MACs, trainable and active parameters, largest int8 activation."""
    from toolchain.config import ModelConfig, config_from_dict, load_config

    if config_path and any(v is not None for v in (width, classes, image_size, in_channels, strides)):
        raise RoutevitError("summarize: give either --config or --width/--classes/--image-size, not both")
    if config_path:
        cfg = load_config(config_path).model
    else:
        defaults = ModelConfig()
        model = {"width_multiplier": width if width is not None else defaults.width_multiplier,
                 "num_classes": classes or defaults.num_classes,
                 "image_size": image_size or defaults.image_size,
                 "in_channels": int(in_channels or defaults.in_channels)}
        if strides:
            try:
                model["strides"] = [int(v) for v in strides.split(",")]
            except ValueError:
                raise RoutevitError(f"--strides: {strides!r} is not a comma-separated list of integers; "
                                    "e.g. 2,1,2,2,2,2")
        cfg = config_from_dict({"model": model}, "command line").model
    from toolchain.summary import format_table, summarize  # imports TensorFlow: after the checks

    result = summarize(cfg)
    click.echo(format_table(result), err=as_json)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
