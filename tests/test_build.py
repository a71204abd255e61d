"""TFLM library builds and `routevit build`.

Without a TFLM tree: bad input and the no-tree error. With one (`tflm` marker): the library
cache key, a tiny int8 CNN running bit-exact on QEMU against the tflite-micro wheel with
reference and CMSIS-NN kernels, and a generated project built for each board of the catalog.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REPO, error_lines, run_routevit
from tflm_support import (M4F, build_smoke_elf, host_outputs, model_ops, require_tools, run_smoke_qemu,
                          tflm_tree, tiny_int8_cnn)
from toolchain.cli import main as cli

BOARDS = sorted(json.loads((REPO / "toolchain/catalog/boards.json").read_text())["boards"])
# The ops a routed MobileViTV2 lowers to in TFLM (ARCHITECTURE.md), plus the CNN stem/head ops.
MODEL_OPS = ["ADD", "ARG_MAX", "CONCATENATION", "CONV_2D", "DEPTH_TO_SPACE", "DEPTHWISE_CONV_2D",
             "FULLY_CONNECTED", "GATHER", "LOGISTIC", "MEAN", "MUL", "RELU", "RESHAPE", "RSQRT", "SOFTMAX",
             "SPACE_TO_DEPTH", "SQUARED_DIFFERENCE", "STRIDED_SLICE", "SUB", "SUM", "HARD_SWISH"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def handmade_project(path: Path, ops=("RESHAPE",), **extra) -> Path:
    path.mkdir(parents=True)
    project = {"format": "routevit-project/1", "board": "mps2-an386", "core": M4F[0], "cpu_flags": list(M4F[1]),
               "ops": list(ops), **extra}
    (path / "project.json").write_text(json.dumps(project))
    (path / "Makefile").write_text("firmware:\n\t@echo no TFLM here\n")
    return path


# -- without a TFLM tree --------------------------------------------------------------------------

def test_build_without_a_tree_and_no_way_to_get_one_says_how(tmp_path):
    """No tree, no local copies, and cloning fails (a mirror that does not exist): one error line
    naming both ways to get TFLM; nothing is written."""
    proj = handmade_project(tmp_path / "proj")
    result = run_routevit("build", proj, env={"ROUTEVIT_CACHE": str(tmp_path / "empty-cache"), "ROUTEVIT_TFLM_FROM": "",
                                              "ROUTEVIT_TFLM_GIT_URL": f"file://{tmp_path}/none/{{owner}}/{{name}}.git"},
                          timeout=120)
    assert result.returncode == 2
    lines = [line for line in error_lines(result.stderr) if line.startswith("Error:")]
    assert len(lines) == 1 and "no TFLM tree set up" in lines[0] and "cloning it failed too" in lines[0]
    assert "ROUTEVIT_TFLM_FROM=DIR" in lines[0] and "`routevit setup-tflm --from PATH`" in lines[0]
    assert not (proj / "build").exists() and list((tmp_path / "empty-cache").rglob("tree.json")) == []


def test_build_with_a_path_that_is_no_tflm_tree(tmp_path):
    proj = handmade_project(tmp_path / "proj")
    result = invoke("build", proj, "--tflm", tmp_path)
    assert result.exit_code == 2 and "not a TFLM tree" in result.stderr and "routevit setup-tflm" in result.stderr


def test_build_refuses_what_is_not_a_project(tmp_path):
    result = invoke("build", tmp_path)
    assert result.exit_code == 2 and "project.json: missing" in result.stderr and "routevit generate" in result.stderr
    (tmp_path / "project.json").write_text("{not json")
    result = invoke("build", tmp_path)
    assert result.exit_code == 2 and "not valid JSON" in result.stderr
    (tmp_path / "project.json").write_text(json.dumps({"format": "routevit-project/1", "core": "cortex-m4",
                                                       "cpu_flags": "-mcpu=cortex-m4", "ops": ["ADD"]}))
    result = invoke("build", tmp_path)
    assert result.exit_code == 2 and "'cpu_flags' must be a list of strings" in result.stderr
    result = invoke("build", tmp_path, "--kernels", "fast")
    assert result.exit_code == 2 and "'fast' is not one of 'reference', 'cmsis-nn'" in result.stderr


def test_bad_app_folders_are_one_line_errors_before_any_compiling(tmp_path):
    proj = handmade_project(tmp_path / "proj")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no sources here")
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.c").write_text("int main(void) { return 0; }\n")
    for folder, words in ((tmp_path / "missing", "no such folder"), (empty, "no .c or .cc files"),
                          (app, "has no src/routevit_model.h")):
        result = invoke("build", proj, "--app", folder)
        lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert result.exit_code == 2 and len(lines) == 1 and words in lines[0], result.stderr
        assert "Traceback" not in result.output
    assert not (proj / "build").exists()


def test_an_op_tflm_lacks_is_refused_before_any_compiling(tmp_path):
    proj = handmade_project(tmp_path / "proj", ops=("CONV_2D", "TOPK_V2", "ONE_HOT"))
    result = invoke("build", proj)
    assert result.exit_code == 2
    assert "TFLM has no kernel for TOPK_V2, ONE_HOT" in result.stderr and "project.json" in result.stderr


def test_kernel_table_has_the_model_ops():
    from toolchain.tflm.library import kernel_table

    ops = kernel_table()["ops"]
    assert set(MODEL_OPS) <= set(ops)
    assert "TOPK_V2" not in ops and "ONE_HOT" not in ops and "CUMSUM" in ops
    assert ops["CONV_2D"]["kernels"] == ["conv.cc", "conv_common.cc"]
    assert ops["CONV_2D"]["cmsis_nn_sources"] == ["ConvolutionFunctions"]


# -- with a TFLM tree ---------------------------------------------------------------------------

@pytest.mark.tflm
def test_kernel_table_names_files_of_the_tree():
    from toolchain.tflm.library import KERNELS_DIR, kernel_table

    tree = tflm_tree()
    for op, entry in kernel_table()["ops"].items():
        for k in entry["kernels"]:
            assert (tree.root / KERNELS_DIR / k).is_file(), (op, k)
        source = "\n".join((tree.root / KERNELS_DIR / k).read_text() for k in entry["kernels"])
        assert re.search(rf"TFLMRegistration\*? ?{entry['register']}\(\)", source), op
    header = (tree.root / "tensorflow/lite/micro/micro_mutable_op_resolver.h").read_text()
    for op, entry in kernel_table()["ops"].items():
        assert re.search(rf"TfLiteStatus {entry['resolver']}\(", header), op


@pytest.mark.tflm
def test_library_cache_key_follows_what_the_library_depends_on():
    from toolchain.tflm.library import LibrarySpec, library_key

    tree = tflm_tree()
    spec = LibrarySpec(M4F[0], M4F[1], ["SOFTMAX", "CONV_2D"])
    key = library_key(tree, spec)
    assert library_key(tree, LibrarySpec(M4F[0], M4F[1], ["CONV_2D", "SOFTMAX", "CONV_2D"])) == key
    others = [
        LibrarySpec(M4F[0], M4F[1], ["CONV_2D"]),
        LibrarySpec(M4F[0], M4F[1], ["SOFTMAX", "CONV_2D"], kernels="cmsis-nn"),
        LibrarySpec("cortex-m7", ["-mcpu=cortex-m7", "-mfpu=fpv5-d16", "-mfloat-abi=hard", "-mthumb"],
                    ["SOFTMAX", "CONV_2D"]),
        LibrarySpec(M4F[0], ["-mcpu=cortex-m4", "-mfloat-abi=soft", "-mthumb"], ["SOFTMAX", "CONV_2D"]),
        LibrarySpec(M4F[0], M4F[1], ["SOFTMAX", "CONV_2D"], strip_error_strings=True),
        LibrarySpec(M4F[0], M4F[1], ["SOFTMAX", "CONV_2D"], opt_kernels="-O3"),
    ]
    keys = {library_key(tree, s) for s in others}
    assert key not in keys and len(keys) == len(others)


@pytest.mark.tflm
@pytest.mark.qemu
def test_tiny_cnn_on_qemu_is_bit_exact_with_the_wheel(tmp_path):
    """The basis of "host and device agree bit for bit": reference and CMSIS-NN kernels."""
    from toolchain.tflm.library import LibrarySpec, build_library

    tree = tflm_tree()
    require_tools("arm-none-eabi-g++", "qemu-system-arm")
    model = tiny_int8_cnn()
    ops = model_ops(model)
    assert ops == ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "RESHAPE", "SOFTMAX"]
    inputs = np.random.default_rng(1).integers(-128, 128, (16, 12, 12, 1), dtype=np.int8)
    host = host_outputs(model, inputs)
    assert len({row.tobytes() for row in host}) > 8, "inputs should give different outputs"
    ticks = {}
    for kernels in ("reference", "cmsis-nn"):
        spec = LibrarySpec(M4F[0], M4F[1], ops, kernels=kernels)
        lib = build_library(tree, spec, progress=False)
        started = time.monotonic()
        again = build_library(tree, spec, progress=False)
        assert again.cache_hit and again.path == lib.path and time.monotonic() - started < 5
        symbols = subprocess.run(["arm-none-eabi-nm", "-C", str(lib.path)], capture_output=True, text=True).stdout
        assert "tflite::Register_CONV_2D()" in symbols and "tflite::Register_ADD()" not in symbols
        assert ("arm_convolve_wrapper_s8" in symbols) == (kernels == "cmsis-nn")
        assert " T DebugLog" not in symbols, "the project provides DebugLog, not TFLM's platform file"
        elf = build_smoke_elf(tmp_path / kernels, lib, model, inputs, ops, host.shape[1])
        run = run_smoke_qemu(elf)
        assert run["returncode"] == 0, run["stderr"][-2000:]
        device = np.stack([run["outputs"][i] for i in range(len(inputs))])
        assert np.array_equal(device, host), f"{kernels}: {(device != host).sum()} int8 values differ"
        ticks[kernels] = sum(run["ticks"].values())
        assert run["arena_bytes"] > 0
    # CMSIS-NN's kernels are the reason to offer them: far fewer instructions (QEMU -icount).
    assert ticks["cmsis-nn"] * 2 < ticks["reference"]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A real `routevit export` (train -> PTQ -> export) of a tiny MobileViTV2 small enough for
    every catalog board, the 128 KB-RAM stm32f4-discovery included."""
    from export_fixture import make_small_export

    return make_small_export(tmp_path_factory.mktemp("small"))


CORE_TAG = {"cortex-m4": "7E-M", "cortex-m7": "7E-M", "cortex-m55": "8.1-M.MAIN"}


@pytest.mark.tflm
@pytest.mark.parametrize("board", BOARDS)
def test_generated_project_builds_for_each_board(board, tiny_export, tmp_path):
    tree = tflm_tree()
    require_tools("arm-none-eabi-g++", "make")
    proj = tmp_path / board
    assert invoke("generate", tiny_export, "--board", board, "--out", proj).exit_code == 0
    project = json.loads((proj / "project.json").read_text())
    (proj / "build").mkdir()
    (proj / "build" / "selftest.elf").write_bytes(b"kept")   # other build outputs survive a firmware build
    result = invoke("build", proj, "--json")
    assert result.exit_code == 0, result.output[-3000:]
    record = json.loads(result.stdout)
    build = proj / "build"
    for name in ("firmware.elf", "firmware.map", "size.json", "build.json"):
        assert (build / name).is_file(), name
    assert (build / "selftest.elf").read_bytes() == b"kept"
    assert json.loads((build / "build.json").read_text()) == record
    # CMSIS-NN by default where the catalog says the core has it (every core there does)
    from toolchain.boards import get_board

    assert record["tflm_commit"] == tree.commit and record["kernels"] == get_board(board).default_kernels
    assert record["kernels"] == "cmsis-nn"
    assert record["ops"] == sorted(project["ops"]) and record["core"] == project["core"]
    size = json.loads((build / "size.json").read_text())
    assert size["text"] > 20_000 and size["bss"] >= project["arena_bytes"]
    assert sum(s["bytes"] for s in size["sections"].values()) >= size["text"] + size["data"]
    attrs = subprocess.run(["arm-none-eabi-readelf", "-A", str(build / "firmware.elf")], capture_output=True,
                           text=True).stdout
    assert re.search(rf"Tag_CPU_arch: v{CORE_TAG[project['core']]}", attrs, re.I), attrs
    symbols = subprocess.run(["arm-none-eabi-nm", "-C", str(build / "firmware.elf")], capture_output=True,
                             text=True).stdout
    assert "tflite::MicroInterpreter::Invoke()" in symbols and "malloc" not in symbols
    # What `routevit fit` (= generate's budget) said against the linker: RAM exact but for the
    # estimated "other statics" (which err high), code estimated high by at most ~12%.
    fit = json.loads(invoke("fit", tiny_export, "--board", board, "--json").stdout)["boards"][0]
    used = {g["region"]: g["used"] for g in fit["regions"]}
    placement = get_board(board).placement
    model_bytes = size["sections"][".model_data"]["bytes"]
    flash_fit = used["flash"] + (0 if placement["model"] == "flash" else model_bytes)
    assert size["flash_bytes"] <= flash_fit <= 1.12 * size["flash_bytes"], (size, fit)
    ram_fit = sum(v for r, v in used.items() if r not in ("flash", placement["model"]))
    assert size["ram_bytes"] <= ram_fit <= size["ram_bytes"] + 1024, (size, fit)
    if board == "mps2-an386":
        # The same project again: the library comes from the cache (once: a build is ~30 s).
        again = invoke("build", proj, "--json", "--tflm", tree.root)
        assert again.exit_code == 0 and json.loads(again.stdout)["lib_cache_hit"] is True
        assert json.loads(again.stdout)["lib_key"] == record["lib_key"]


@pytest.mark.tflm
@pytest.mark.slow
@pytest.mark.parametrize("kernels", ["cmsis-nn"])
def test_every_op_in_the_kernel_table_links(kernels, tmp_path):
    """A library with all 100 ops of kernels.json and a program registering each: no missing symbol.
    With the default CMSIS-NN kernels (every op without a CMSIS-NN variant uses its reference
    source there too); the all-reference library is another 10+ minutes of CI on 2 cores."""
    from toolchain.tflm.library import LibrarySpec, build_library, kernel_table

    tree = tflm_tree()
    ops = sorted(kernel_table()["ops"])
    lib = build_library(tree, LibrarySpec(M4F[0], M4F[1], ops, kernels=kernels), progress=False)
    main = tmp_path / "all_ops.cc"
    main.write_text("\n".join([
        '#include <stdarg.h>', '#include <stddef.h>', '#include <stdint.h>',
        '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"',
        'extern "C" void DebugLog(const char*, va_list) {}',
        'extern "C" int DebugVsnprintf(char*, size_t, const char*, va_list) { return 0; }',
        'namespace tflite { uint32_t ticks_per_second() { return 1; } uint32_t GetCurrentTimeTicks() { return 0; } }',
        f'static tflite::MicroMutableOpResolver<{len(ops)}> resolver;',
        'int main() {', *[f'  resolver.{kernel_table()["ops"][op]["resolver"]}();' for op in ops],
        '  return 0;', '}']))
    flags = list(M4F[1]) + ["-std=c++17", "-fno-rtti", "-fno-exceptions", "-fno-threadsafe-statics"] + \
        [f"-I{d}" for d in lib.include_dirs] + [f"-D{d}" for d in lib.defines]
    done = subprocess.run(["arm-none-eabi-g++", *flags, str(main), str(lib.path), "--specs=nosys.specs",
                           "-Wl,--gc-sections", "-lm", "-o", str(tmp_path / "all_ops.elf")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.tflm
def test_cmsis_nn_build_of_a_generated_project(tiny_export, tmp_path):
    tflm_tree()
    require_tools("arm-none-eabi-g++", "make")
    proj = tmp_path / "proj"
    assert invoke("generate", tiny_export, "--board", "mps2-an386", "--out", proj).exit_code == 0
    result = invoke("build", proj, "--kernels", "cmsis-nn", "--json")
    assert result.exit_code == 0, result.output[-3000:]
    record = json.loads(result.stdout)
    assert record["kernels"] == "cmsis-nn" and "CMSIS_NN" in record["defines"]
    symbols = subprocess.run(["arm-none-eabi-nm", str(proj / "build/firmware.elf")], capture_output=True,
                             text=True).stdout
    assert "arm_convolve_wrapper_s8" in symbols and "arm_fully_connected_s8" in symbols


@pytest.mark.tflm
def test_a_failing_make_leaves_the_previous_build_alone(tiny_export, tmp_path):
    tflm_tree()
    require_tools("arm-none-eabi-g++", "make")
    proj = tmp_path / "proj"
    assert invoke("generate", tiny_export, "--board", "mps2-an386", "--out", proj).exit_code == 0
    assert invoke("build", proj).exit_code == 0
    before = (proj / "build/firmware.elf").read_bytes()
    main = proj / "src/main.cc"
    main.write_text(main.read_text() + "\nint this_does_not_compile = ;\n")
    result = invoke("build", proj)
    assert result.exit_code == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "`make firmware` failed" in lines[0] and "main.cc" in lines[0]
    assert (proj / "build-error.log").is_file()
    assert (proj / "build/firmware.elf").read_bytes() == before
    assert not [p for p in proj.iterdir() if p.name.startswith(".build")]
