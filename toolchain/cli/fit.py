"""`routevit fit EXP [--board B ...]`: which boards an export fits, before generating anything."""
import json
import sys

import click

from toolchain.cli.options import arena_options



def _kb(n: int) -> str:
    return f"{n / 1024:,.1f} KB"


@click.command("fit")
@click.argument("exp", type=click.Path(exists=False, path_type=str))
@click.option("--board", "boards", multiple=True, help="Board id from `routevit boards` (repeatable; "
              "default: the whole catalog).")
@arena_options
@click.option("--search", is_flag=True, help="With a CONFIG: for each board it does not fit, also find the "
              "largest input size and the largest width of that config that do (one export per probe).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def command(exp, boards, arena_margin, arena_from, memory_plan, residency, search, as_json):
    """Whether EXP (the --out folder of `routevit export`), or a model CONFIG (.json) before any
    training, fits each board's flash and RAM, and by how much.

    The figures are `routevit generate`'s memory budget for that board: exact for weights, arena,
    buffers and stack, estimated for code. A CONFIG is exported with its initial weights (PTQ on
    random images; weights, ops and arena do not depend on the values)."""
    from pathlib import Path

    from toolchain.errors import RoutevitError
    from toolchain.generate.fit import fit_config, fit_export, summary

    found = None
    if Path(exp).is_file() and exp.endswith(".json"):
        if arena_from is not None:
            raise RoutevitError("--arena-from measures an export's firmware; fit the export, not its config")
        result = fit_config(exp, list(boards) or None, arena_margin, memory_plan, search, residency=residency,
                            log=lambda line: click.echo(line, err=True))
        rows, found = result["rows"], result["search"]
    elif search:
        raise RoutevitError("--search needs a model CONFIG (.json): an export has one input size and width")
    else:
        rows = fit_export(exp, list(boards) or None, arena_margin, arena_from, memory_plan, residency)
    if as_json:
        out = summary(exp, rows)
        if found is not None:
            out["search"] = found
        click.echo(json.dumps(out, sort_keys=True), file=sys.stdout)
        return
    table = [("board", "core", "fits", "memory (used / size, free)")]
    for r in rows:
        mem = "; ".join(f"{g['region']} {_kb(g['used'])} / {_kb(g['size'])} "
                        f"({'+' if g['free'] >= 0 else '-'}{_kb(abs(g['free']))}"
                        f"{'' if g['fits'] else ' OVER'})" for g in r["regions"])
        table.append((r["board"], r["core"], "yes" if r["fits"] else "NO", mem))
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        click.echo("  ".join([c.ljust(w) for c, w in zip(row[:3], widths)] + [row[3]]), file=sys.stdout)
    fits = [r["board"] for r in rows if r["fits"]]
    if not fits:
        # the board whose worst region is the least over
        closest = min(rows, key=lambda r: max(-g["free"] for g in r["regions"]))
        click.echo(f"fits no board; closest: {closest['board']} ({closest['overflow']}); make the model smaller "
                   "(width, input size, experts, expert size)", err=True)
    for board, what in (found or {}).items():
        size, width = what["largest_image_size"], what["largest_width"]
        click.echo(f"{board}: fits at {f'{size} px' if size else 'no smaller input size'} (this width), "
                   f"at {f'width {width}' if width else 'no smaller width'} (this input size)", file=sys.stdout)
