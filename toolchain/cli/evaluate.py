"""`routevit evaluate`: accuracy of an export on the host reference (--host) or a board (--port)."""
import json

import click


@click.command("evaluate")
@click.argument("target", type=click.Path(exists=True, file_okay=False))
@click.option("--host", "backend", flag_value="host",
              help="TARGET is an export folder (EXP): run the host reference (tflite-micro wheel).")
@click.option("--port", "port", default=None, metavar="DEV",
              help="TARGET is a project folder (PROJ): evaluate on the board at serial port DEV.")
@click.option("--data", required=True, metavar="D", help="Dataset: fashion-mnist, ssw60:PATH or folder:PATH.")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="Evaluate the first N test images only.")
@click.option("--baud", type=click.IntRange(min=1), default=115200, show_default=True,
              help="With --port: the serial port's baud rate.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="With --port: report folder [default: PROJ/reports/board].")
@click.option("--export", "export_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="With --port: the export (EXP) PROJ was generated from, for the host reference.")
@click.option("--resume", is_flag=True,
              help="With --port: continue a run that stopped, keeping the results already in the report folder.")
@click.option("--profile", is_flag=True,
              help="With --port: also profile images 0..2 op by op on the board (per-op instructions, MACs).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
def command(target, backend, port, data, limit, baud, out, export_dir, resume, profile, as_json):
    """Top-1 of float / PTQ int8 / QAT int8, agreement, expert use and arena of TARGET."""
    from toolchain.errors import RoutevitError

    if (backend == "host") == (port is not None):
        raise RoutevitError("evaluate: give exactly one of --host (TARGET = EXP) or --port DEV "
                            "(TARGET = PROJ)")
    if profile and port is None:
        raise RoutevitError("evaluate: --profile needs --port DEV (the profile comes from the board); "
                            "for an emulator use `routevit emulate PROJ --profile`")
    if port is not None:
        from toolchain.cli.emulate import PROFILE_IMAGES, port_evaluation

        result, text = port_evaluation(target, port, data, limit, baud=baud, out=out, export_dir=export_dir,
                                       resume=resume, profile=PROFILE_IMAGES if profile else 0)
    else:
        from toolchain.hostref.evaluate import evaluate_host, format_table

        result = evaluate_host(target, data, limit=limit)
        text = format_table(result)
    click.echo(text, err=True)
    if as_json:
        click.echo(json.dumps(result))
