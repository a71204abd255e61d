"""Host g++ builds of the firmware's own C/C++ for tests (the way TFLM tests its kernels).

The firmware templates are rendered exactly as `routevit generate` renders them (same jinja2
environment, same provenance header, a real catalog board), written to a folder, compiled with
the host `g++` together with a driver from tests/fixtures/host_kernels/ and run; the driver reads
test cases on stdin and prints results on stdout, which the test compares with the Python twin.

    >>> src = render_templates(tmp / "src", ["src/routing.cc", "src/routing.h"])   # doctest: +SKIP
    >>> exe = compile_program([src / "routing.cc", DRIVERS / "routing_driver.cc"], tmp / "r",
    ...                       include_dirs=[src])                                     # doctest: +SKIP
    >>> out = run_program(exe, "16 4 5 1\\n...")                                      # doctest: +SKIP
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DRIVERS = Path(__file__).resolve().parent / "fixtures" / "host_kernels"
# Warnings are errors: the firmware is built with -Wall too, and a host warning (e.g. a shift
# of a negative value) is often the first sign of a difference between host and device.
BASE_FLAGS = ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-fno-exceptions", "-fno-rtti",
              "-ffp-contract=off"]


def gxx() -> str:
    """The host g++, or skip the test (these tests need no Arm toolchain)."""
    path = shutil.which("g++")
    if path is None:
        pytest.skip("host g++ not installed (apt install g++)")
    return path


def render_templates(dest: Path, targets, board_id: str = "mps2-an386", plan_sha256: str | None = None,
                     **context) -> Path:
    """Render firmware_templates/project/<target>.j2 for each target (e.g. "src/routing.cc") into
    dest/<basename>, with the generator's environment; returns dest."""
    from toolchain.boards import get_board
    from toolchain.generate import render

    board = get_board(board_id)
    env = render._environment()
    env.globals["header"] = render._header_fn(plan_sha256, board.id)
    ctx = {"board": render._board_view(board), "protocol_version": render.PROTOCOL_VERSION, **context}
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for target in targets:
        text = env.get_template(f"{target}.j2").render(**ctx)
        (dest / Path(target).name).write_text(text)
    return dest


def compile_program(sources, exe: Path, *, include_dirs=(), system_include_dirs=(), defines=(), libraries=(),
                    flags=None) -> Path:
    """g++ sources -> exe; a failed compile fails the test with the compiler's message.
    system_include_dirs (TFLM's) are -isystem, as the firmware Makefile passes them."""
    exe = Path(exe)
    exe.parent.mkdir(parents=True, exist_ok=True)
    command = [gxx(), *(BASE_FLAGS if flags is None else flags), *[f"-I{d}" for d in include_dirs],
               *[f"-isystem{d}" for d in system_include_dirs], *[f"-D{d}" for d in defines], *map(str, sources), *map(str, libraries), "-lm", "-o", str(exe)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"host g++ failed ({' '.join(command)}):\n{done.stderr[-6000:]}")
    return exe


def run_program(exe: Path, stdin="", args=(), timeout: float = 120):
    """Run exe with `stdin` (str or bytes); returns its stdout, of the same type (a non-zero exit
    fails the test)."""
    text = isinstance(stdin, str)
    done = subprocess.run([str(exe), *map(str, args)], input=stdin, capture_output=True, text=text,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        err = done.stderr if text else done.stderr.decode(errors="replace")
        pytest.fail(f"{exe.name} exited with {done.returncode}:\n{err[-4000:]}")
    return done.stdout


def tflm_tree():
    """The TFLM tree `routevit setup-tflm` made, or skip (the reason names TFLM)."""
    from toolchain.errors import RoutevitError
    from toolchain.tflm import find_tree

    try:
        return find_tree()
    except RoutevitError as exc:
        pytest.skip(f"no TFLM tree (run `routevit setup-tflm`): {exc}")


def host_tflm_library(ops=("SUB",)):
    """A host (x86_64 g++) build of TFLM's core plus `ops`' kernels from the cached tree, made by
    the same code as the firmware's library (toolchain.tflm.library, prefix ""); cached."""
    from toolchain.tflm.library import LibrarySpec, build_library

    tree = tflm_tree()
    gxx()
    return build_library(tree, LibrarySpec("host", (), tuple(ops)), prefix="", progress=False)
