"""`routevit build PROJ`: the project's firmware against a cached TFLM library.

Reads PROJ/project.json (core, cpu_flags, ops), gets libtflm.a for exactly those ops from
`toolchain.tflm.library` (cache hit in seconds), runs the project's Makefile `firmware` target
with TFLM_INCLUDES / TFLM_LIB / TFLM_DEFINES, and writes PROJ/build/ atomically:
firmware.elf, firmware.map, size.json (arm-none-eabi-size) and build.json.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
from tqdm import tqdm

import toolchain
from toolchain.errors import RoutevitError
from toolchain.manifest import read_manifest
from toolchain.fsutil import atomic_output_dir
from toolchain.tflm import find_tree
from toolchain.tflm.setup import ensure_tree
from toolchain.tflm.library import KERNEL_SETS, LibrarySpec, build_library, check_ops

log = logging.getLogger("routevit")

PROJECT_FORMAT = "routevit-project/1"
BUILD_FORMAT = "routevit-build/1"
# What a firmware build (re)writes in PROJ/build/; everything else there (e.g. the selftest) is kept.
FIRMWARE_OUTPUTS = ("firmware", "firmware.elf", "firmware.map", "size.json", "build.json",
                    "app", "app.elf", "app.map", "app_size.json")
APP_SUFFIXES = (".c", ".cc")


def load_project(proj: Path) -> dict:
    path = proj / "project.json"
    hint = f"generate it with `routevit generate EXP --board B --out {proj}`"
    if not proj.is_dir():
        raise RoutevitError(f"{proj}: no such project folder; {hint}")
    if not path.is_file():
        raise RoutevitError(f"{path}: missing, so {proj} is not a routevit project; {hint}")
    project = read_manifest(path, hint, PROJECT_FORMAT)
    for key, kind in (("core", str), ("cpu_flags", list), ("ops", list)):
        value = project.get(key)
        if not isinstance(value, kind) or (kind is list and not all(isinstance(v, str) for v in value)):
            raise RoutevitError(f"{path}: '{key}' must be a {'list of strings' if kind is list else 'string'}; "
                                f"{hint}")
    if not project["ops"]:
        raise RoutevitError(f"{path}: 'ops' is empty (a model needs at least one op); {hint}")
    if not (proj / "Makefile").is_file():
        raise RoutevitError(f"{proj / 'Makefile'}: missing; {hint}")
    return project


def _size(elf: Path, prefix: str) -> dict:
    """text/data/bss (Berkeley) plus every allocated section (System V) of the ELF."""
    tool = shutil.which(prefix + "size")
    if tool is None:
        raise RoutevitError(f"{prefix}size: not found on PATH; install the Arm GNU toolchain")
    berkeley = subprocess.run([tool, "-B", str(elf)], capture_output=True, text=True, check=True)
    log.debug("run: %s -B %s", tool, elf)
    text, data, bss = (int(v) for v in berkeley.stdout.splitlines()[1].split()[:3])
    sysv = subprocess.run([tool, "-A", "-d", str(elf)], capture_output=True, text=True, check=True)
    log.debug("run: %s -A -d %s", tool, elf)
    sections = {}
    for line in sysv.stdout.splitlines():
        m = re.match(r"^(\.\S+)\s+(\d+)\s+(\d+)\s*$", line)
        if m and int(m.group(2)) > 0 and not m.group(1).startswith((".debug", ".comment", ".ARM.attributes")):
            sections[m.group(1)] = {"bytes": int(m.group(2)), "address": int(m.group(3))}
    return {"text": text, "data": data, "bss": bss, "flash_bytes": text + data, "ram_bytes": data + bss,
            "sections": sections}


def compiler_cache(proj: Path, cache: Path | None = None) -> tuple[dict, dict]:
    """(make variables, environment) that put ccache in front of the compilers, if installed.

    Every project has the same own-kernel, board and protocol sources (only their provenance
    comments differ, which the preprocessor drops), and each own kernel parses ~100k lines of
    TFLM headers: ccache compiles each once per (core, flags) instead of once per project.
    ROUTEVIT_CCACHE=0 turns it off."""
    from toolchain.tflm.tree import cache_root

    tool = shutil.which("ccache")
    if tool is None or os.environ.get("ROUTEVIT_CCACHE") == "0":
        return {}, {}
    env = {"CCACHE_DIR": os.environ.get("CCACHE_DIR") or str(cache_root(cache) / "ccache"),
           # paths inside the project become relative, and the debug info's compile directory
           # is not hashed: the same source in another project folder hits the cache
           "CCACHE_BASEDIR": str(proj), "CCACHE_NOHASHDIR": "1"}
    return {"COMPILER_LAUNCHER": tool}, env


def _run_make(proj: Path, build_dir: Path, variables: dict, progress: bool, jobs: int | None = None,
              target: str = "firmware", env: dict | None = None) -> list[str]:
    # Parallel, with each file's messages kept together (the first error line is what we report).
    jobs = jobs or os.cpu_count() or 2
    cmd = ["make", "-C", str(proj), f"-j{jobs}", "--output-sync=target", target, f"BUILD_DIR={build_dir}"] + \
        [f"{k}={v}" for k, v in variables.items()]
    log.debug("run: %s%s", "".join(f"{k}={v} " for k, v in (env or {}).items()), " ".join(cmd))
    bar = tqdm(desc=target, unit="step", file=sys.stderr,
               disable=(not progress) or (not sys.stderr.isatty() and None))
    lines = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        log.debug("make: %s", line.rstrip())
        if " -c " in line or " -o " in line:
            bar.update(1)
    proc.wait()
    bar.close()
    if proc.returncode != 0:
        # The first diagnostic says most; make's own '***' line only names the failed target.
        errors = [ln for pattern in (r": (fatal )?error:", r"undefined reference|multiple definition", r"\*\*\*")
                  for ln in lines if re.search(pattern, ln)] or lines[-3:] or ["?"]
        log_path = proj / "build-error.log"
        log_path.write_text("\n".join([" ".join(cmd)] + lines) + "\n")
        raise RoutevitError(f"{proj / 'Makefile'}: `make {target}` failed: {errors[0].strip()[:300]}; "
                            f"full output in {log_path}")
    (proj / "build-error.log").unlink(missing_ok=True)
    return lines


def default_kernels(project: dict) -> str:
    """CMSIS-NN where the project's core has it per the board catalog, else TFLM's reference kernels."""
    from toolchain.boards import board_ids, get_board

    board = project.get("board")
    if board in board_ids():
        return get_board(board).default_kernels
    return "reference"


def check_app(app: Path, proj: Path) -> Path:
    """An application folder for `make app`: exists and holds .c/.cc files; returned absolute."""
    app = Path(app).resolve()
    if not app.is_dir():
        raise RoutevitError(f"--app {app}: no such folder; give the folder with your application's .c/.cc files "
                            "(e.g. examples/frame_loop)")
    if not any(p.suffix in APP_SUFFIXES for p in app.iterdir()):
        raise RoutevitError(f"--app {app}: no .c or .cc files there; an application calls {proj / 'src'}/"
                            "routevit_model.h (see examples/frame_loop)")
    if " " in str(app):
        raise RoutevitError(f"--app {app}: make cannot build from a path with spaces; move or link it elsewhere")
    return app


def build_project(proj, kernels: str | None = None, tflm: Path | None = None, *, jobs: int | None = None,
                  cache: Path | None = None, strip_error_strings: bool = False, prefix: str = "arm-none-eabi-",
                  progress: bool = True, app: Path | None = None) -> dict:
    """Build PROJ's firmware (and, with `app`, PROJ/build/app.elf: that folder's application
    linked against the model); return the build record (also written to PROJ/build/build.json).
    kernels None: CMSIS-NN on cores the catalog says have it, else reference."""
    started = time.monotonic()
    proj = Path(proj).resolve()
    project = load_project(proj)
    if app is not None:
        app = check_app(app, proj)
        if not (proj / "src" / "routevit_model.h").is_file():
            raise RoutevitError(f"{proj}: has no src/routevit_model.h (generated by an older routevit); "
                                f"regenerate it with `routevit generate EXP --board B --out {proj}`")
    if kernels is None:
        kernels = default_kernels(project)
    if kernels not in KERNEL_SETS:
        raise RoutevitError(f"--kernels {kernels}: unknown kernel set; use one of {', '.join(KERNEL_SETS)}")
    arena_kernels = project.get("arena_kernels")
    if arena_kernels and kernels != arena_kernels:
        raise RoutevitError(f"{proj}: its arena was sized from a device run with {arena_kernels} kernels "
                            f"(generate --arena-from), too small for {kernels}; build with --kernels "
                            f"{arena_kernels} or generate again without --arena-from")
    check_ops(project["ops"], str(proj / "project.json"))
    # No tree yet: set it up (local copies from $ROUTEVIT_TFLM_FROM, else a clone) instead of failing.
    tree = find_tree(tflm, cache) if tflm is not None else ensure_tree(cache)
    spec = LibrarySpec(project["core"], tuple(project["cpu_flags"]), tuple(project["ops"]), kernels=kernels,
                       strip_error_strings=strip_error_strings)
    click.echo(f"TFLM {tree.commit[:8]} at {tree.root}; {kernels} kernels for {len(spec.ops)} ops "
               f"({', '.join(spec.ops)})", err=True)
    lib = build_library(tree, spec, jobs=jobs, cache=cache, prefix=prefix, what=str(proj / "project.json"),
                        progress=progress)
    click.echo(f"libtflm.a {lib.key}: " + (f"cached ({lib.seconds:.1f} s)" if lib.cache_hit else
                                           f"built {lib.compiled} files in {lib.seconds:.0f} s"), err=True)

    with atomic_output_dir(proj / "build") as tmp:
        old = proj / "build"
        if old.is_dir():   # keep e.g. the selftest build; firmware outputs are made fresh
            for item in old.iterdir():
                if item.name not in FIRMWARE_OUTPUTS:
                    (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        launcher, launcher_env = compiler_cache(proj, cache)
        variables = {**lib.make_variables(), **launcher}
        _run_make(proj, tmp, variables, progress, jobs, env=launcher_env)
        elf = tmp / "firmware.elf"
        if not elf.is_file():
            raise RoutevitError(f"{proj / 'Makefile'}: `make firmware` made no $(BUILD_DIR)/firmware.elf; "
                                "regenerate the project with `routevit generate`")
        if not (tmp / "firmware.map").is_file():
            log.warning("%s: the Makefile wrote no firmware.map", proj)
        size = _size(elf, prefix)
        (tmp / "size.json").write_text(json.dumps(size, indent=2, sort_keys=True) + "\n")
        record = {
            "format": BUILD_FORMAT, "routevit_version": toolchain.__version__,
            "project": str(proj), "board": project.get("board"), "core": spec.core,
            "cpu_flags": list(spec.cpu_flags), "ops": list(spec.ops), "kernels": kernels,
            "tflm_commit": tree.commit, "tflm_tree": str(tree.root),
            "lib_key": lib.key, "lib": str(lib.path), "lib_cache_hit": lib.cache_hit,
            "lib_seconds": round(lib.seconds, 1), "defines": lib.defines, "include_dirs": lib.include_dirs,
            "compiler_launcher": launcher.get("COMPILER_LAUNCHER"),
            "elf": "firmware.elf", "elf_sha256": hashlib.sha256(elf.read_bytes()).hexdigest(),
            "size": {k: size[k] for k in ("text", "data", "bss")},
            "seconds": round(time.monotonic() - started, 1),
        }
        if app is not None:
            _run_make(proj, tmp, {**variables, "APP": str(app)}, progress, jobs, target="app", env=launcher_env)
            app_size = _size(tmp / "app.elf", prefix)
            (tmp / "app_size.json").write_text(json.dumps(app_size, indent=2, sort_keys=True) + "\n")
            record["app"] = {"source": str(app), "elf": "app.elf",
                             "elf_sha256": hashlib.sha256((tmp / "app.elf").read_bytes()).hexdigest(),
                             "size": {k: app_size[k] for k in ("text", "data", "bss")}}
            record["seconds"] = round(time.monotonic() - started, 1)
        (tmp / "build.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    if app is not None:
        click.echo(f"wrote {proj / 'build' / 'app.elf'} ({app.name}): text {app_size['text']:,} "
                   f"data {app_size['data']:,} bss {app_size['bss']:,} bytes", err=True)
    click.echo(f"wrote {proj / 'build' / 'firmware.elf'}: text {size['text']:,} data {size['data']:,} "
               f"bss {size['bss']:,} bytes ({record['seconds']:.1f} s)", err=True)
    return record
