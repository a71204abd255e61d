"""Options more than one command takes, defined once."""
import click


MEMORY_PLANS = ("in-place", "tflm")
RESIDENCIES = ("resident", "swapped")


def arena_options(command):
    """--arena-margin, --arena-from, --memory-plan and --residency, as `routevit generate` and `routevit fit`
    take them."""
    command = click.option(
        "--residency", "residency", type=click.Choice(RESIDENCIES), default="resident", show_default=True,
        help="resident: every segment's interpreter stays prepared, so the arena holds all their persistent "
             "parts; swapped: one segment is prepared at a time and each is prepared again on every inference, "
             "so the arena holds only the largest segment, for one AllocateTensors per segment per inference "
             "(a multi-segment, i.e. routed, model only).")(command)
    command = click.option(
        "--memory-plan", "memory_plan", type=click.Choice(MEMORY_PLANS), default="in-place", show_default=True,
        help="in-place: an offline memory plan in each segment where elementwise ops write over an input "
             "that dies there (toolchain/generate/memory_plan.py); tflm: TFLM's own greedy planner.")(command)
    command = click.option(
        "--arena-from", "arena_from", type=click.Path(exists=True, path_type=str),
        help="Size the arena from what a firmware of this export used on a device: the --out folder "
             "(or report.json) of `routevit emulate`/`evaluate` on a board with the same kernels.")(command)
    return click.option(
        "--arena-margin", "arena_margin", type=float, default=None,
        help="Percent added to the measured tensor arena [default: 10 over the host measurement, "
             "0 over a device one].")(command)
