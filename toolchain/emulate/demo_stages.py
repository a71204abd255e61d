"""The int8 and firmware end of `routevit demo`: quantize (QAT), export, host evaluation, then
generate for mps2-an386, build, emulate and report.

Each function is a demo stage `(ctx) -> dict` (toolchain/cli/demo.py). The firmware stages read
the export from `ctx.paths["export"]`. Without a TFLM tree the build stage writes the report of what ran
(the host reference) and says in one line how to get TFLM; the emulate stage then reports
itself skipped.
"""
from __future__ import annotations

from pathlib import Path

import click

DEMO_BOARD = "mps2-an386"
EMULATE_IMAGES = {"quick": 50, "full": 200}


def _say(message: str) -> None:
    click.echo(message, err=True)


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
    _say(format_table(result))
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
    from toolchain.emulate.evaluation import host_only_report

    reason = tflm_missing_reason()
    if reason:
        report_dir = ctx.out / "report"
        note = f"no firmware was built: no TFLM tree could be set up ({reason})"
        host_only_report(_export(ctx), data=ctx.data, limit=_images(ctx), out=report_dir, notes=[note])
        ctx.paths["report"] = report_dir
        _say("TFLM could not be set up (no network and no local copy), so the demo stops after the host "
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
    _say(f"QEMU {DEMO_BOARD}: top-1 {report['top1']['device']:.4f} on {report['images']} images, "
         f"bit-exact with the host reference on {agreement.get('bit_exact_images')}/{agreement.get('images')}, "
         f"{counter.get('mean', 0):,.0f} instructions per image; report: {report_dir}/report.md")
    return {"images": report["images"], "device_accuracy": report["top1"]["device"],
            "host_int8_accuracy": report["top1"]["host_int8"], "bit_exact_rate": agreement.get("bit_exact_rate"),
            "instructions_mean": counter.get("mean"), "ms_at_clock_mean": (counter.get("ms_at_clock") or {}).get("mean")}
