"""`routevit demo`'s stages: train, reload and score the float model, quantize (QAT), export,
host evaluation, generate for mps2-an386, build, emulate and report.

The demo is a list of `Stage`s run in order over one `DemoContext`. Each stage reads what the
earlier ones left in `ctx.paths` / `ctx.results`, writes its own folder under `ctx.out` and
returns its numbers. To add a stage, write a function `(ctx) -> dict` and append
`Stage(name, description, function)` to `STAGES`. The build stage sets TFLM up when there is no
tree (local copies from $ROUTEVIT_TFLM_FROM, else a clone); only when neither works does the
demo end after the host evaluation, with the report of what ran and one line on how to get TFLM.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import click

import toolchain

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


DEMO_BOARD = "mps2-an386"
EMULATE_IMAGES = {"quick": 50, "full": 200}


def _export(ctx) -> Path:
    from toolchain.errors import RoutevitError

    export = ctx.paths.get("export")
    if export is None:
        raise RoutevitError("demo: no export from an earlier stage; the export stage must run before generate")
    return Path(export)


def _images(ctx) -> int:
    return EMULATE_IMAGES["quick" if ctx.quick else "full"]


def tflm_missing_reason() -> str | None:
    """None once a TFLM tree is there: set up now if missing (local copies from
    $ROUTEVIT_TFLM_FROM, else a clone of the pinned commits); else why neither worked."""
    from toolchain.errors import RoutevitError
    from toolchain.tflm.setup import ensure_tree

    try:
        ensure_tree()
    except RoutevitError as exc:
        return exc.format_message()
    return None


# -- int8 (thin calls into quantization/ and toolchain/export, toolchain/hostref) ----------------

def stage_quantize(ctx) -> dict:
    from quantization.qrun import quantize_run

    qrun = ctx.out / "qrun"
    metrics = quantize_run(ctx.paths["run"], "qat", qrun, epochs=1, limit_train=ctx.limit("limit_train"),
                           limit_eval=ctx.limit("limit_eval"))
    ctx.paths["qrun"] = qrun
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and "accuracy" in k}


def stage_export(ctx) -> dict:
    from toolchain.export import export

    exp = ctx.out / "export"
    plan = export(ctx.paths["qrun"], exp)
    ctx.paths["export"] = exp
    return {"segments": len(plan["segments"]), "routed_layers": len(plan.get("routed_layers") or []),
            "model_bytes": sum(s["bytes"] for s in plan["segments"])}


def stage_evaluate_host(ctx) -> dict:
    from toolchain.hostref.evaluate import evaluate_host, format_table

    result = evaluate_host(ctx.paths["export"], ctx.data, limit=ctx.limit("limit_eval"))
    say(format_table(result))
    out = {"images": result["examples"], "float_top1": result["float"]["top1"],
           "int8_top1": result["int8"]["top1"], "int8_agreement_with_float": result["int8"]["agreement_with_float"]}
    return out


# -- firmware ----------------------------------------------------------------------------------

def stage_generate(ctx) -> dict:
    from toolchain.generate.project import generate

    project = ctx.out / "project"
    summary = generate(_export(ctx), DEMO_BOARD, project)
    ctx.paths["project"] = project
    return {"board": DEMO_BOARD, "arena_bytes": summary["arena_bytes"], "ops": len(summary["ops"]),
            **{f"{region}_used_bytes": m["used"] for region, m in summary["memory"].items()}}


def stage_build(ctx) -> dict:
    from toolchain.build import build_project
    from toolchain.emulate.host_only import host_only_report

    reason = tflm_missing_reason()
    if reason:
        report_dir = ctx.out / "report"
        note = f"no firmware was built: no TFLM tree could be set up ({reason})"
        host_only_report(_export(ctx), data=ctx.data, limit=_images(ctx), out=report_dir, notes=[note])
        ctx.paths["report"] = report_dir
        say("TFLM could not be set up (no network and no local copy), so the demo stops after the host "
             f"evaluation (report: {report_dir}/report.md); set ROUTEVIT_TFLM_FROM=DIR to local copies "
             "of TFLM and its pieces, or run `routevit setup-tflm --from PATH`, then run the demo again")
        return {"skipped": True, "reason": reason}
    record = build_project(ctx.paths["project"])
    ctx.paths["firmware"] = Path(ctx.paths["project"]) / "build" / "firmware.elf"
    return {"flash_bytes": record["size"]["text"] + record["size"]["data"],
            "ram_bytes": record["size"]["data"] + record["size"]["bss"], "kernels": record["kernels"]}


def stage_emulate(ctx) -> dict:
    from toolchain.emulate.evaluation import emulate_project

    if "firmware" not in ctx.paths:
        return {"skipped": True, "reason": "no firmware (see the build stage)"}
    report_dir = ctx.out / "report"
    report = emulate_project(ctx.paths["project"], backend="qemu", data=ctx.data, limit=_images(ctx),
                             out=report_dir, build=False, export_dir=_export(ctx))
    ctx.paths["report"] = report_dir
    agreement = report.get("agreement_device_vs_host") or {}
    counter = report.get("counter") or {}
    say(f"QEMU {DEMO_BOARD}: top-1 {report['top1']['device']:.4f} on {report['images']} images, "
         f"bit-exact with the host reference on {agreement.get('bit_exact_images')}/{agreement.get('images')}, "
         f"{counter.get('mean', 0):,.0f} instructions per image; report: {report_dir}/report.md")
    return {"images": report["images"], "device_accuracy": report["top1"]["device"],
            "host_int8_accuracy": report["top1"]["host_int8"], "bit_exact_rate": agreement.get("bit_exact_rate"),
            "instructions_mean": counter.get("mean"), "ms_at_clock_mean": (counter.get("ms_at_clock") or {}).get("mean")}


STAGES: list[Stage] = [
    Stage("train", "train the routed MobileViTV2 on the dataset", stage_train),
    Stage("evaluate-float", "reload the run and score the float model on the test split", stage_evaluate_float),
    Stage("quantize", "quantization-aware fine-tuning (QAT) of the run", stage_quantize),
    Stage("export", "int8 segments + routing plan", stage_export),
    Stage("evaluate-host", "float vs int8 on the host reference (tflite-micro wheel)", stage_evaluate_host),
    Stage("generate", f"TFLM C++ project for {DEMO_BOARD}", stage_generate),
    Stage("build", "firmware with arm-none-eabi-gcc against TFLM (set up first if missing)", stage_build),
    Stage("emulate", f"firmware under QEMU {DEMO_BOARD} on test images; report", stage_emulate),
]



