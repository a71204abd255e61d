"""`routevit demo`: every stage of the pipeline on the default dataset, one after another
(the stages are in toolchain/demo.py)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from toolchain.demo import DEFAULT_CONFIG, DEFAULT_DATA, QUICK, STAGES, DemoContext, say
from toolchain.errors import RoutevitError


# ---------------------------------------------------------------- command

@click.command("demo")
@click.option("--quick", is_flag=True,
              help=f"Small subset ({QUICK['limit_train']} training images, {QUICK['epochs']} epoch, "
                   f"{QUICK['limit_eval']} test images): a minute or two.")
@click.option("--out", type=click.Path(file_okay=False, writable=True), default="out/demo", show_default=True,
              help="Folder for every stage's output.")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Model config (default: examples/configs/fmnist_routed.json).")
@click.option("--data", default=DEFAULT_DATA, show_default=True, help="Dataset name.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print every stage's numbers as one JSON object.")
def command(quick, out, config, data, seed, as_json):
    """Run every stage on the default dataset (Fashion-MNIST), ending in a summary."""
    config = Path(config) if config else DEFAULT_CONFIG
    if not config.is_file():
        raise RoutevitError(f"{config}: example config not found; give --config FILE")
    ctx = DemoContext(out=Path(out), config=config, data=data, quick=quick, seed=seed)
    timings = {}
    for number, stage in enumerate(STAGES, 1):
        say(f"== [{number}/{len(STAGES)}] {stage.name}: {stage.description}")
        started = time.monotonic()
        ctx.results[stage.name] = stage.run(ctx) or {}
        timings[stage.name] = round(time.monotonic() - started, 1)
    say("== summary")
    for stage in STAGES:
        numbers = {k: v for k, v in ctx.results[stage.name].items() if isinstance(v, (int, float))}
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers.items())
        say(f"  {stage.name:<16} {timings[stage.name]:>7.1f} s  {shown}")
    say(f"outputs in {ctx.out}")
    if as_json:
        click.echo(json.dumps({"out": str(ctx.out), "quick": quick, "seconds": timings,
                               "stages": ctx.results, "paths": {k: str(v) for k, v in ctx.paths.items()}}))
    sys.stderr.flush()
