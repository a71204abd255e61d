"""Cached TFLM static libraries holding only what a project needs.

The source list is computed here (not by TFLM's Makefile, which runs generators at parse time
and builds everything): the micro core (interpreter, allocators, planner, flatbuffer and schema
utils, common.cc, quantization utils, kernel_util) plus the kernels of the project's ops
(`kernels.json`), with `--kernels cmsis-nn` swapping in kernels/cmsis_nn/ variants and the
CMSIS-NN sources they call. TFLM's platform files (debug_log.cc, micro_time.cc) are left out:
the project defines DebugLog/DebugVsnprintf and the tick functions.

Objects are cached per (tree, compiler, flags) so a new op set recompiles only new kernels;
libraries are cached per (tree, compiler, core, flags, kernel set, op set) in
`<cache>/tflm-lib/<key>/{libtflm.a,build.json}`.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import fnmatch
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from tqdm import tqdm

import toolchain
from toolchain.errors import RoutevitError
from toolchain.fsutil import atomic_output_dir
from toolchain.tflm.pieces import DOWNLOADS
from toolchain.tflm.tree import TflmTree, cache_root

log = logging.getLogger("routevit")

LIB_FORMAT = "routevit-tflm-lib/1"
KERNEL_SETS = ("reference", "cmsis-nn")
KERNELS_DIR = "tensorflow/lite/micro/kernels"

# Flags TFLM's Makefile uses for every micro build (COMMON_FLAGS / CXXFLAGS / CCFLAGS).
COMMON_FLAGS = ["-ffp-contract=off", "-fno-unwind-tables", "-fno-asynchronous-unwind-tables", "-ffunction-sections",
                "-fdata-sections", "-fmessage-length=0", "-fomit-frame-pointer"]
CXX_FLAGS = ["-std=c++17", "-fno-rtti", "-fno-exceptions", "-fno-threadsafe-statics"]
C_FLAGS = ["-std=c17"]


@functools.lru_cache(maxsize=1)
def kernel_table() -> dict:
    """kernels.json: op -> kernel sources / resolver method / CMSIS-NN source folders."""
    return json.loads(resources.files("toolchain.tflm").joinpath("kernels.json").read_text())


def resolver_method(op: str) -> str:
    """The MicroMutableOpResolver method that registers builtin `op` (e.g. CONV_2D -> AddConv2D)."""
    entry = kernel_table()["ops"].get(op)
    if entry is None:
        raise RoutevitError(f"op {op}: TFLM has no kernel for it; export a model without it")
    return entry["resolver"]


@dataclass(frozen=True)
class LibrarySpec:
    """Everything a TFLM library build depends on besides the tree and the compiler."""

    core: str                         # GCC -mcpu name, e.g. "cortex-m4"
    cpu_flags: tuple                  # e.g. ("-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", ...)
    ops: tuple                        # TFLite builtin op names
    kernels: str = "reference"        # "reference" | "cmsis-nn"
    opt_core: str = "-Os"             # TFLM's CORE_OPTIMIZATION_LEVEL
    opt_kernels: str = "-O2"          # TFLM's KERNEL_OPTIMIZATION_LEVEL (also CMSIS-NN)
    strip_error_strings: bool = False

    def __post_init__(self):
        object.__setattr__(self, "cpu_flags", tuple(self.cpu_flags))
        object.__setattr__(self, "ops", tuple(sorted(set(self.ops))))
        if self.kernels not in KERNEL_SETS:
            raise RoutevitError(f"--kernels {self.kernels}: unknown kernel set; use one of "
                                f"{', '.join(KERNEL_SETS)}")

    @property
    def cmsis_nn(self) -> bool:
        return self.kernels == "cmsis-nn"

    def defines(self) -> list[str]:
        """Defines the library is built with; the project must use the same ones (TFLM_DEFINES)."""
        d = ["TF_LITE_STATIC_MEMORY", "TF_LITE_DISABLE_X86_NEON"]
        if self.strip_error_strings:
            d += ["TF_LITE_STRIP_ERROR_STRINGS"]
        if self.cmsis_nn:
            d += ["CMSIS_NN", "ARM_NN_ENABLE_F16=0", "ARM_NN_ENABLE_F32=0"]
            if self.core == "cortex-m4":
                # CMSIS-NN's README: faster on Cortex-M4 only, bit-identical with GCC (its
                # doubling high multiply as SMULL + ADC); checked bit-exact on QEMU mps2-an386.
                d += ["CMSIS_NN_USE_REQUANTIZE_INLINE_ASSEMBLY"]
        return d


@dataclass
class Source:
    rel: str        # path relative to the tree root
    lang: str       # "c++" | "c"
    group: str      # "core" | "kernels" | "third_party"


@dataclass
class Library:
    """A built (or cached) libtflm.a and what a project needs to link against it."""

    dir: Path
    info: dict
    cache_hit: bool = False
    seconds: float = 0.0
    compiled: int = 0

    @property
    def path(self) -> Path:
        return self.dir / "libtflm.a"

    @property
    def key(self) -> str:
        return self.info["key"]

    @property
    def include_dirs(self) -> list[str]:
        return self.info["include_dirs"]

    @property
    def defines(self) -> list[str]:
        return self.info["defines"]

    def make_variables(self) -> dict:
        """TFLM_INCLUDES / TFLM_LIB / TFLM_DEFINES as the project Makefile takes them."""
        return {"TFLM_INCLUDES": " ".join(self.include_dirs),
                "TFLM_LIB": str(self.path),
                "TFLM_DEFINES": " ".join(f"-D{d}" for d in self.defines)}


# ---------------------------------------------------------------------------------------------
# Source selection


def _excluded(rel: str, patterns) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def core_sources(tree: TflmTree) -> list[Source]:
    table = kernel_table()["core"]
    skip = list(table["exclude"]) + list(table["platform_files"])
    rels = []
    for d in table["dirs"]:
        rels += [f"{d}/{p.name}" for p in sorted((tree.root / d).glob("*.cc"))]
    # The TFLite files TFLM shares (its sources.inc TFL_CC_SRCS): every .cc under tensorflow/
    # outside lite/micro and lite/experimental.
    shared_root = tree.root / table["tflite_shared_root"]
    skip_dirs = [tree.root / d for d in table["tflite_shared_skip_dirs"]]
    for p in sorted(shared_root.rglob("*.cc")):
        if not any(s in p.parents for s in skip_dirs):
            rels.append(str(p.relative_to(tree.root)))
    rels += [f"{KERNELS_DIR}/{k}" for k in table["kernel_files"]]
    return [Source(r, "c++", "core") for r in rels if not _excluded(r, skip)]


def kernel_sources(tree: TflmTree, spec: LibrarySpec, what: str = "project") -> list[Source]:
    ops_table = kernel_table()["ops"]
    check_ops(spec.ops, what)
    files: list[str] = []
    folders: list[str] = []
    for op in spec.ops:
        for k in ops_table[op]["kernels"]:
            if k not in files:
                files.append(k)
        if spec.cmsis_nn:
            for f in ops_table[op].get("cmsis_nn_sources", []):
                if f not in folders:
                    folders.append(f)
    sources = []
    for k in sorted(files):
        rel = f"{KERNELS_DIR}/{k}"
        if spec.cmsis_nn and (tree.root / KERNELS_DIR / "cmsis_nn" / k).is_file():
            rel = f"{KERNELS_DIR}/cmsis_nn/{k}"
        if not (tree.root / rel).is_file():
            raise RoutevitError(f"{tree.root}: kernel source {rel} is missing (TFLM {tree.commit[:8]} "
                                "lays its kernels out differently); set up the pinned TFLM commit")
        sources.append(Source(rel, "c++", "kernels"))
    if spec.cmsis_nn:
        if not tree.has_cmsis_nn():
            raise RoutevitError(f"{tree.root}: no CMSIS-NN in this TFLM tree; set it up with "
                                "`routevit setup-tflm` or build with --kernels reference")
        nn = kernel_table()["cmsis_nn"]
        base = tree.root / DOWNLOADS / "cmsis_nn" / "Source"
        for folder in nn["always"] + sorted(folders):
            for p in sorted((base / folder).rglob("*.c")):
                if not p.name.endswith(tuple(nn["skip_suffixes"])):
                    sources.append(Source(str(p.relative_to(tree.root)), "c", "third_party"))
    return sources


# ---------------------------------------------------------------------------------------------
# Compiling


def _tool(prefix: str, name: str) -> str:
    path = shutil.which(prefix + name)
    if path is None:
        raise RoutevitError(f"{prefix}{name}: not found on PATH; install the Arm GNU toolchain "
                            "(Debian: apt install gcc-arm-none-eabi libnewlib-arm-none-eabi)")
    return path


@functools.lru_cache(maxsize=None)
def compiler_version(gxx: str) -> str:
    r = subprocess.run([gxx, "--version"], capture_output=True, text=True)
    log.debug("run: %s --version", gxx)
    return r.stdout.splitlines()[0].strip() if r.returncode == 0 and r.stdout else "unknown"


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _object_name(rel: str) -> str:
    # Flattened so that same-named files (kernels/kernel_util.cc vs lite/kernels/kernel_util.cc)
    # stay distinct members of the archive.
    return rel.replace("/", "__").rsplit(".", 1)[0] + ".o"


@dataclass
class _Plan:
    sources: list
    include_dirs: list
    defines: list
    commands: dict      # group -> compiler + flags (no source/output)
    identity: dict
    key: str


def check_ops(ops, what: str = "project") -> None:
    """Refuse ops TFLM has no kernel for (before any tree or compiler is needed)."""
    unknown = [op for op in ops if op not in kernel_table()["ops"]]
    if unknown:
        raise RoutevitError(f"{what}: TFLM has no kernel for {', '.join(unknown)}; export a model "
                            "without these ops (see `routevit export`'s TFLM op check)")


def _plan(tree: TflmTree, spec: LibrarySpec, prefix: str, what: str) -> _Plan:
    gxx, gcc = _tool(prefix, "g++"), _tool(prefix, "gcc")
    check_ops(spec.ops, what)
    sources = core_sources(tree) + kernel_sources(tree, spec, what)
    include_dirs = [str(d) for d in tree.include_dirs(spec.core, cmsis_nn=spec.cmsis_nn)]
    defines = spec.defines()
    base = list(spec.cpu_flags) + COMMON_FLAGS + [f"-D{d}" for d in defines] + \
        [f"-I{d}" for d in include_dirs]
    commands = {
        "core": [gxx] + base + CXX_FLAGS + [spec.opt_core],
        "kernels": [gxx] + base + CXX_FLAGS + [spec.opt_kernels],
        "third_party": [gcc] + base + C_FLAGS + [spec.opt_kernels],
    }
    identity = {"tree": tree.identity(), "root": str(tree.root), "compiler": compiler_version(gxx)}
    # The key covers the exact compiler command lines, so a change of flags in routevit itself
    # (not only in the spec) gives a new library instead of a stale cache hit.
    key = _digest({"format": LIB_FORMAT, **identity, "spec": asdict(spec),
                   "sources": [s.rel for s in sources], "commands": commands})
    return _Plan(sources, include_dirs, defines, commands, identity, key)


def library_key(tree: TflmTree, spec: LibrarySpec, prefix: str = "arm-none-eabi-") -> str:
    """The cache key of the library `build_library` would make (no compiling)."""
    return _plan(tree, spec, prefix, "project").key


def build_library(tree: TflmTree, spec: LibrarySpec, *, jobs: int | None = None,
                  cache: Path | None = None, prefix: str = "arm-none-eabi-",
                  what: str = "project", progress: bool = True) -> Library:
    """Build (or fetch from the cache) libtflm.a for `spec` against `tree`."""
    started = time.monotonic()
    ar = _tool(prefix, "ar")
    plan = _plan(tree, spec, prefix, what)
    sources, include_dirs, defines, identity, key = (plan.sources, plan.include_dirs, plan.defines,
                                                     plan.identity, plan.key)
    root = cache_root(cache)
    lib_dir = root / "tflm-lib" / key
    if _complete(lib_dir):
        return Library(lib_dir, json.loads((lib_dir / "build.json").read_text()), cache_hit=True,
                       seconds=time.monotonic() - started)

    with _locked(root / "tflm-lib" / f".{key}.lock"):
        if _complete(lib_dir):   # another process built it while we waited
            return Library(lib_dir, json.loads((lib_dir / "build.json").read_text()), cache_hit=True,
                           seconds=time.monotonic() - started)
        commands = {}
        objects = []
        for s in sources:
            cmd = plan.commands[s.group]
            obj_dir = root / "tflm-obj" / _digest({**identity, "cmd": cmd})
            obj = obj_dir / _object_name(s.rel)
            objects.append(obj)
            if not obj.is_file():
                commands[obj] = cmd + ["-c", str(tree.root / s.rel)]
        log_lines: list[str] = []
        _compile_all(commands, jobs, log_lines, progress)
        with atomic_output_dir(lib_dir) as tmp:
            cmd = [ar, "rcsD", str(tmp / "libtflm.a")] + [str(o) for o in objects]
            log.debug("run: %s rcsD libtflm.a <%d objects>", ar, len(objects))
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise RoutevitError(f"{ar}: archiving libtflm.a failed: {r.stderr.strip()}")
            seconds = time.monotonic() - started
            info = {
                "format": LIB_FORMAT, "routevit_version": toolchain.__version__, "key": key,
                "tflm_commit": tree.commit, "tree": str(tree.root), "tree_identity": tree.identity(),
                "compiler": identity["compiler"], **asdict(spec), "cpu_flags": list(spec.cpu_flags),
                "ops": list(spec.ops), "defines": defines, "include_dirs": include_dirs,
                "compile_commands": {g: " ".join(c) for g, c in plan.commands.items()},
                "sources": [s.rel for s in sources], "compiled_now": len(commands),
                "build_seconds": round(seconds, 1),
            }
            (tmp / "build.json").write_text(json.dumps(info, indent=2) + "\n")
            (tmp / "build.log").write_text("\n".join(log_lines) + "\n")
    return Library(lib_dir, info, cache_hit=False, seconds=seconds, compiled=len(commands))


def _complete(lib_dir: Path) -> bool:
    return (lib_dir / "build.json").is_file() and (lib_dir / "libtflm.a").is_file()


def _compile_one(obj: Path, cmd: list[str]) -> tuple[Path, subprocess.CompletedProcess]:
    obj.parent.mkdir(parents=True, exist_ok=True)
    tmp = obj.with_name(f".{obj.name}.{os.getpid()}.tmp")
    full = cmd + ["-o", str(tmp)]
    log.debug("run: %s", " ".join(full))
    r = subprocess.run(full, capture_output=True, text=True)
    if r.returncode == 0:
        os.replace(tmp, obj)
    else:
        tmp.unlink(missing_ok=True)
    return obj, r


def _compile_all(commands: dict, jobs: int | None, log_lines: list, progress: bool) -> None:
    if not commands:
        return
    jobs = jobs or os.cpu_count() or 2
    bar = tqdm(total=len(commands), desc="TFLM library", unit="file", file=sys.stderr,
               disable=(not progress) or (not sys.stderr.isatty() and None))
    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_compile_one, obj, cmd) for obj, cmd in commands.items()]
        for fut in concurrent.futures.as_completed(futures):
            obj, r = fut.result()
            log_lines.append(" ".join(r.args))
            if r.stderr.strip():
                log_lines.append(r.stderr.rstrip())
            if r.returncode != 0:
                failures.append(r)
                for f in futures:
                    f.cancel()
            bar.update(1)
    bar.close()
    if failures:
        r = failures[0]
        src = r.args[r.args.index("-c") + 1]
        errors = [ln for ln in r.stderr.splitlines() if "error" in ln] or r.stderr.splitlines() or ["?"]
        raise RoutevitError(f"{src}: compiling for the TFLM library failed: {errors[0].strip()}; "
                            f"check the project's cpu_flags (compiler: {r.args[0]})")
