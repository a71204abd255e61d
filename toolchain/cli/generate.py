"""`routevit generate EXP --board B --out PROJ`: the TFLM C++ project for a board."""
import json
import sys

import click

from toolchain.cli.options import arena_options


@click.command("generate")
@click.argument("exp", type=click.Path(file_okay=False, path_type=str))
@click.option("--board", required=True, help="Board id from `routevit boards`.")
@click.option("--out", required=True, type=click.Path(path_type=str), help="Project folder to write.")
@arena_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def command(exp, board, out, arena_margin, arena_from, memory_plan, residency, as_json):
    """Generate the firmware project for EXP (plan.json + segments) on a board."""
    from toolchain.generate.project import generate

    summary = generate(exp, board, out, arena_margin, arena_from, memory_plan, residency)
    for region, m in summary["memory"].items():
        click.echo(f"{region}: {m['used']:,} of {m['size']:,} bytes", err=True)
    click.echo(f"wrote {summary['project']} ({len(summary['files'])} files; arena {summary['arena_bytes']:,} bytes; "
               f"see memory_report.md)", err=True)
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True), file=sys.stdout)
