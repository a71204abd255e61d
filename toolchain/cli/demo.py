"""`routevit demo`: every stage of the pipeline on the default dataset, one after another.

The demo is a list of `Stage`s run in order over one `DemoContext`. Each stage reads what the
earlier ones left in `ctx.paths` / `ctx.results`, writes its own folder under `ctx.out` and
records its numbers in `ctx.results[stage.name]`. To add a stage, write a function
`(ctx) -> dict` and append `Stage(name, description, function)` to `STAGES`.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable

import click

import toolchain
from toolchain.errors import RoutevitError

EXAMPLES = Path(toolchain.__file__).resolve().parents[1] / "examples" / "configs"
DEFAULT_CONFIG = EXAMPLES / "fmnist_routed.json"
DEFAULT_DATA = "fashion-mnist"

# --quick: a subset that trains and evaluates in about a minute on 2 cores.
QUICK = {"epochs": 1, "limit_train": 4000, "limit_eval": 1000}


@dataclasses.dataclass
class DemoContext:
    """What the stages share: options, output folders by name, and each stage's numbers."""

    out: Path
    config: Path
    data: str
    quick: bool
    seed: int
    paths: dict = dataclasses.field(default_factory=dict)  # e.g. "run" -> out/run
    results: dict = dataclasses.field(default_factory=dict)  # stage name -> dict of numbers

    def limit(self, key: str):
        return QUICK[key] if self.quick else None


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    description: str
    run: Callable[[DemoContext], dict]


def say(message: str) -> None:
    click.echo(message, err=True)


# ---------------------------------------------------------------- stages

def stage_train(ctx: DemoContext) -> dict:
    from toolchain.training import TrainRequest, train

    run = ctx.out / "run"
    metrics = train(TrainRequest(config=ctx.config, data=ctx.data, out=run, epochs=ctx.limit("epochs"),
                                 seed=ctx.seed, limit_train=ctx.limit("limit_train"),
                                 limit_eval=ctx.limit("limit_eval")))
    ctx.paths["run"] = run
    return {"test_accuracy": metrics["test_accuracy"], "val_accuracy": metrics["val_accuracy"],
            "min_expert_share": metrics["min_expert_share"], "wall_time_s": metrics["wall_time_s"]}


def stage_evaluate_float(ctx: DemoContext) -> dict:
    """Reload the run as a user would (load_run) and score it image by image on test images."""
    import numpy as np

    from toolchain.data import Normalization, load_dataset
    from toolchain.training import load_run

    cfg, model, meta = load_run(ctx.paths["run"])
    dataset = load_dataset(ctx.data)
    images, labels = dataset.numpy_images("test", ctx.limit("limit_eval"), image_size=cfg.model.image_size,
                                          channels=cfg.model.in_channels)
    norm = Normalization(tuple(meta["normalization"]["mean"]), tuple(meta["normalization"]["std"]))
    logits = model.predict(norm.apply(images), batch_size=256, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == labels))
    same = abs(accuracy - meta["test_accuracy"]) < 0.5 / max(1, len(labels))
    say(f"float model reloaded from {ctx.paths['run']}: test accuracy {accuracy:.4f} on {len(labels)} images"
        + ("" if same else f" (training reported {meta['test_accuracy']:.4f})"))
    return {"test_accuracy": accuracy, "images": int(len(labels)), "matches_training": same,
            "test_expert_share": meta["test_expert_share"]}


STAGES: list[Stage] = [
    Stage("train", "train the routed MobileViTV2 on the dataset", stage_train),
    Stage("evaluate-float", "reload the run and score the float model on the test split", stage_evaluate_float),
]

# int8, firmware and emulator stages (toolchain/emulate/demo_stages.py). Without a TFLM tree the
# build stage writes the report of what ran (host reference) and the emulate stage is skipped.
from toolchain.emulate import demo_stages  # noqa: E402

STAGES += [
    Stage("quantize", "quantization-aware fine-tuning (QAT) of the run", demo_stages.stage_quantize),
    Stage("export", "int8 segments + routing plan", demo_stages.stage_export),
    Stage("evaluate-host", "float vs int8 on the host reference (tflite-micro wheel)", demo_stages.stage_evaluate_host),
    Stage("generate", f"TFLM C++ project for {demo_stages.DEMO_BOARD}", demo_stages.stage_generate),
    Stage("build", "firmware with arm-none-eabi-gcc against TFLM", demo_stages.stage_build),
    Stage("emulate", f"firmware under QEMU {demo_stages.DEMO_BOARD} on test images; report",
          demo_stages.stage_emulate),
]


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
