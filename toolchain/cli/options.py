"""Options more than one command takes, defined once."""
import click


def arena_options(command):
    """--arena-margin and --arena-from, as `routevit generate` and `routevit fit` take them."""
    command = click.option(
        "--arena-from", "arena_from", type=click.Path(exists=True, path_type=str),
        help="Size the arena from what a firmware of this export used on a device: the --out folder "
             "(or report.json) of `routevit emulate`/`evaluate` on a board with the same kernels.")(command)
    return click.option(
        "--arena-margin", "arena_margin", type=float, default=None,
        help="Percent added to the measured tensor arena [default: 10 over the host measurement, "
             "0 over a device one].")(command)
