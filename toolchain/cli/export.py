"""`routevit export`: int8 TFLite Micro segments + plan.json from a quantized run."""
import json

import click


@click.command("export")
@click.argument("qrun", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False, writable=True),
              help="Export folder to write (plan.json, segment_*.tflite).")
@click.option("--no-ptq-baseline", is_flag=True,
              help="For a QAT run, skip converting the PTQ baseline (baselines/ptq/).")
@click.option("--calibration-limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="Calibrate on the first N of QRUN's calibration images only.")
@click.option("--json", "as_json", is_flag=True, help="Print a summary as one JSON object.")
def command(qrun, out, no_ptq_baseline, calibration_limit, as_json):
    """Convert QRUN (from `routevit quantize`) into int8 segments cut after each router.

    Every segment is checked op by op in the TFLite Micro runtime; its arena is measured with
    TFLM's recording allocator and written into plan.json.
    """
    from toolchain.export import export

    plan = export(qrun, out, ptq_baseline=not no_ptq_baseline, calibration_limit=calibration_limit)
    for seg in plan["segments"]:
        click.echo(f"segment {seg['index']}: {seg['bytes']:,} B, arena {seg['arena_bytes']:,} B, "
                   f"ops {' '.join(seg['ops'])}", err=True)
    click.echo(f"-> {out}", err=True)
    if as_json:
        click.echo(json.dumps({
            "out": str(out), "method": plan["quantization"]["method"],
            "segments": [{k: s[k] for k in ("index", "file", "bytes", "arena_bytes", "ops")}
                         for s in plan["segments"]],
            "memory": plan["memory"]}))
