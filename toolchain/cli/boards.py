"""`routevit boards`: the board catalog and each board's limits."""
import json
import sys

import click

from toolchain.boards import all_boards


def _kib(n: int) -> str:
    return f"{n // 1024} KB" if n < 1024 * 1024 else f"{n / (1024 * 1024):g} MB"


@click.command("boards")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def command(as_json):
    """List the boards routevit generates firmware for, with their memory limits."""
    boards = all_boards()
    if as_json:
        click.echo(json.dumps({"boards": [b.to_json() for b in boards]}, indent=2, sort_keys=True))
        return
    rows = [("board", "core", "flash", "RAM", "other memory", "clock", "QEMU", "Renode")]
    for b in boards:
        other = ", ".join(f"{r.name} {_kib(r.size)}" for r in b.regions if r.name not in ("flash", "ram"))
        renode = (b.renode or {}).get("platform", "-")
        rows.append((b.id, b.core, _kib(b.flash_bytes), _kib(b.ram_bytes), other or "-",
                     f"{b.clock_hz / 1e6:g} MHz", b.qemu_machine or "-",
                     "generated REPL" if renode == "generated" else renode))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=sys.stdout)
