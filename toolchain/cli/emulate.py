"""`routevit emulate PROJ --backend qemu|renode --data D --limit N`: run the firmware in an
emulator on test images and write a report (accuracy, agreement with the host, cost, memory)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from toolchain.emulate.project import BACKENDS

PROFILE_IMAGES = 3  # `--profile`: images 0..2 (per-op counts do not depend on the image)


def summary_lines(report: dict, out: Path | None) -> list[str]:
    """The few lines a person reads after an evaluation (stderr)."""
    top1 = report.get("top1", {})
    fmt = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    lines = [f"{report.get('target')}: {report.get('images')} images; top-1 device {fmt(top1.get('device'))}, "
             f"host int8 {fmt(top1.get('host_int8'))}, float {fmt(top1.get('float'))}"]
    agreement = report.get("agreement_device_vs_host")
    if agreement:
        lines.append(f"bit-exact with the host reference: {agreement['bit_exact_images']}/{agreement['images']} "
                     f"images; L2r {agreement['l2_relative_error']:.3g}, cosine {agreement['cosine_similarity']:.6f}")
    counter = report.get("counter")
    if counter and counter.get("mean") is not None:
        line = f"{counter['what']}: mean {counter['mean']:,.0f} (min {counter['min']:,}, max {counter['max']:,})"
        if counter.get("ms_at_clock"):
            line += f", ~{counter['ms_at_clock']['mean']:.1f} ms at {counter['clock_hz'] / 1e6:g} MHz"
        lines.append(line)
    prof = report.get("profile")
    if prof:
        totals, agree = prof["totals"], prof["agreement"]
        top = ", ".join(f"{g['op']} {100 * g['share']:.1f}%" for g in prof["by_op"][:4])
        lines.append(f"profile of image {prof['image']}: {totals['ops']} ops, {totals['instructions']:,} "
                     f"instructions for {totals['macs']:,} MACs ({totals['instructions_per_mac']} per MAC); "
                     f"{top}; profile total vs INFER {100 * (agree['relative_difference'] or 0):+.3f}%, "
                     f"profiler overhead {agree['profiler_overhead']:,}")
    if out is not None:
        lines.append(f"report: {out}/report.md")
    return lines


def selftest_summary(result: dict) -> list[str]:
    return [f"{result['target']}: self-test firmware answered HELLO (protocol {result['hello']['version']}, "
            f"board {result['hello']['board']}), PING and {result['route_checks']} ROUTE checks identical to "
            f"toolchain.routing; {result['wall_seconds']:.1f} s"]


@click.command("emulate")
@click.argument("project", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--backend", type=click.Choice(BACKENDS), default="qemu", show_default=True,
              help="Emulator to run the firmware in.")
@click.option("--data", default="fashion-mnist", show_default=True,
              help="Dataset: fashion-mnist, ssw60:PATH or folder:PATH (its test split).")
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True,
              help="Number of test images.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder [default: PROJ/reports/BACKEND].")
@click.option("--timeout-per-image", type=click.FloatRange(min=0.001), default=120.0, show_default=True,
              help="Seconds to wait for one inference before declaring the firmware hung.")
@click.option("--export", "export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="The export (EXP) the project was generated from, for the host reference "
                   "[default: the one project.json names].")
@click.option("--no-build", is_flag=True, help="Use build/firmware.elf as it is (do not rebuild).")
@click.option("--selftest", is_flag=True,
              help="Run the self-test firmware (build/selftest.elf, no TFLM needed): HELLO, PING and "
                   "ROUTE checked against the host routing; no report.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Emulator instances run at once (one per core); the report is the same as with 1.")
@click.option("--resume", is_flag=True,
              help="Continue a run that stopped (crash, timeout, Ctrl-C): keep the results already in "
                   "the report folder's device_results.jsonl and run only the remaining images.")
@click.option("--profile", is_flag=True,
              help="Also profile the first images op by op on the device (per-op instructions, MACs, "
                   "instructions per MAC; a section and a chart in the report).")
@click.option("--profile-images", type=click.IntRange(min=1), default=PROFILE_IMAGES, show_default=True,
              help="With --profile: how many images (from image 0) to profile; counts are static.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def command(project, backend, data, limit, out, timeout_per_image, export_dir, no_build, selftest, jobs, resume,
            profile, profile_images, as_json):
    """Run PROJECT's firmware under QEMU or Renode on test images; write a report folder."""
    from toolchain.emulate.evaluation import emulate_project
    from toolchain.emulate.selftest import selftest_project

    if selftest:
        result = selftest_project(project, backend=backend, timeout_s=timeout_per_image)
        for line in selftest_summary(result):
            click.echo(line, err=True)
        if as_json:
            click.echo(json.dumps(result))
        return
    out = out or (Path(project) / "reports" / backend)
    report = interruptible(lambda: emulate_project(
        project, backend=backend, data=data, limit=limit, out=out, timeout_per_image=timeout_per_image,
        build=not no_build, export_dir=export_dir, jobs=jobs, resume=resume,
        profile=profile_images if profile else 0), out)
    for line in summary_lines(report, out):
        click.echo(line, err=True)
    if as_json:
        click.echo(json.dumps({"report_dir": str(Path(out).resolve()), **_headline(report)}))


def interruptible(run, out: Path | None):
    """Ctrl-C: one line saying where the partial report is and how to continue, exit code 130."""
    try:
        return run()
    except KeyboardInterrupt:
        where = f"; the finished images are in {out} (continue with --resume)" if out else ""
        click.echo(f"Interrupted{where}", err=True)
        raise SystemExit(130) from None


def _headline(report: dict) -> dict:
    """The JSON numbers (the full report is in REPORT/report.json)."""
    keys = ("target", "board", "backend", "dataset", "images", "progress", "top1", "agreement_device_vs_host",
            "expert_counts_match_host", "counter", "memory", "experts", "wall_seconds")
    out = {k: report.get(k) for k in keys}
    if report.get("profile"):
        out["profile"] = {k: report["profile"][k] for k in ("totals", "agreement", "by_op", "by_stage")}
    if out.get("agreement_device_vs_host"):
        out["agreement_device_vs_host"] = {k: v for k, v in out["agreement_device_vs_host"].items()}
    return out


def port_evaluation(project, port: str, data: str, limit: int | None, baud: int = 115200,
                    out: Path | None = None, export_dir: Path | None = None,
                    resume: bool = False, profile: int = 0) -> tuple[dict, str]:
    """(JSON numbers, human text) of `routevit evaluate PROJ --port DEV`: the same session and
    report as `emulate`, against a board on a serial port."""
    from toolchain.emulate.evaluation import evaluate_on_port

    out = Path(out) if out else Path(project) / "reports" / "board"
    report = interruptible(lambda: evaluate_on_port(
        Path(project), port=port, baud=baud, data=data, limit=limit or 200, out=out,
        export_dir=Path(export_dir) if export_dir else None, resume=resume, profile=profile), out)
    return {"report_dir": str(out.resolve()), **_headline(report)}, "\n".join(summary_lines(report, out))
