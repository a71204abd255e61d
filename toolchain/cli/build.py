"""`routevit build PROJ`: build the project's firmware against a cached TFLM library."""
import json
import logging

import click

from toolchain.tflm.library import KERNEL_SETS


@click.command("build")
@click.argument("proj", type=click.Path(exists=True, file_okay=False, dir_okay=True))
@click.option("--kernels", type=click.Choice(KERNEL_SETS), default=None,
              help="TFLM reference kernels, or CMSIS-NN optimized kernels where TFLM has them "
                   "[default: cmsis-nn on cores the board catalog says have it (Cortex-M4F/M7/M55), "
                   "else reference].")
@click.option("--tflm", type=click.Path(exists=True, file_okay=False), default=None,
              help="TFLM tree to use (default: the one `routevit setup-tflm` put in the cache).")
@click.option("--jobs", "-j", type=click.IntRange(1, 256), default=None,
              help="Parallel compiles for the TFLM library (default: CPU count).")
@click.option("--strip-error-strings", is_flag=True,
              help="Build TFLM with TF_LITE_STRIP_ERROR_STRINGS (smaller, no TFLM error text).")
@click.option("--app", type=click.Path(file_okay=False, dir_okay=True), default=None,
              help="Also build PROJ/build/app.elf: this folder's .c/.cc application linked against the "
                   "model's C API (src/routevit_model.h), e.g. examples/frame_loop.")
@click.option("--json", "as_json", is_flag=True, help="Print the build record (build.json) as one JSON object.")
@click.option("-v", "--verbose", is_flag=True, help="Log every compiler and make call.")
def command(proj, kernels, tflm, jobs, strip_error_strings, app, as_json, verbose):
    """Build PROJ/build/firmware.elf (+ .map, size.json, build.json) [and app.elf]."""
    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    from toolchain.build import build_project

    record = build_project(proj, kernels=kernels, tflm=tflm, jobs=jobs, strip_error_strings=strip_error_strings,
                           app=app)
    if as_json:
        click.echo(json.dumps(record, sort_keys=True))
