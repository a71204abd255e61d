"""What a TFLM tree is made of, and the versions TFLM itself pins for each piece.

The pins are read from the TFLM tree's own download scripts (the Makefile's
`third_party_downloads.inc`, `flatbuffers_download.sh`, `ext_libs/cmsis*_download.sh`),
so a tree at another TFLM commit gets that commit's pins, not ours.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from toolchain.errors import RoutevitError

# The TFLM commit routevit is tested with (2026-08-20).
PINNED_COMMIT = "90b983c2b3f1480642e040bbd2ddb37b998f3424"

MAKE_DIR = "tensorflow/lite/micro/tools/make"
DOWNLOADS = f"{MAKE_DIR}/downloads"
FLATBUFFERS_PATCH = f"{MAKE_DIR}/flatbuffers.patch"

# Files (relative to the TFLM root) whose variable assignments carry the pins.
PIN_SCRIPTS = (
    f"{MAKE_DIR}/third_party_downloads.inc",
    f"{MAKE_DIR}/flatbuffers_download.sh",
    f"{MAKE_DIR}/ext_libs/cmsis_download.sh",
    f"{MAKE_DIR}/ext_libs/cmsis_nn_download.sh",
)


@dataclass(frozen=True)
class Piece:
    """One part of a TFLM tree: TFLM itself or a third-party download it expects."""

    name: str            # short id used in tree.json and messages
    repo: str            # GitHub owner/name
    dest: str            # where it goes, relative to the TFLM root ("." = the root)
    markers: tuple       # files that identify a copy of it by content

    @property
    def owner(self) -> str:
        return self.repo.split("/")[0]

    @property
    def repo_name(self) -> str:
        return self.repo.split("/")[1]


TFLM = Piece("tflite-micro", "tensorflow/tflite-micro", ".",
             ("tensorflow/lite/micro/micro_interpreter.h", f"{MAKE_DIR}/Makefile"))

THIRD_PARTY = (
    Piece("flatbuffers", "google/flatbuffers", f"{DOWNLOADS}/flatbuffers",
          ("include/flatbuffers/flatbuffers.h", "include/flatbuffers/base.h")),
    Piece("gemmlowp", "google/gemmlowp", f"{DOWNLOADS}/gemmlowp",
          ("fixedpoint/fixedpoint.h", "internal/detect_platform.h")),
    Piece("ruy", "google/ruy", f"{DOWNLOADS}/ruy",
          ("ruy/profiler/instrumentation.h",)),
    Piece("cmsis", "ARM-software/CMSIS_6", f"{DOWNLOADS}/cmsis",
          ("CMSIS/Core/Include/cmsis_compiler.h", "CMSIS/Core/Include/core_cm4.h")),
    Piece("cortex_dfp", "ARM-software/Cortex_DFP", f"{DOWNLOADS}/cmsis/Cortex_DFP",
          ("Device/ARMCM4/Include/ARMCM4.h",)),
    Piece("cmsis_nn", "ARM-software/CMSIS-NN", f"{DOWNLOADS}/cmsis_nn",
          ("Include/arm_nnfunctions.h",)),
)

ALL_PIECES = (TFLM,) + THIRD_PARTY
BY_NAME = {p.name: p for p in ALL_PIECES}


@dataclass(frozen=True)
class Pin:
    """A version of a piece: a commit sha or a tag, with the GitHub archive TFLM downloads."""

    ref: str             # 40-hex sha, or a tag like "v25.9.23"
    url: str | None = None
    md5: str | None = None

    @property
    def is_sha(self) -> bool:
        return re.fullmatch(r"[0-9a-f]{7,40}", self.ref) is not None

    @property
    def short(self) -> str:
        return self.ref[:8] if self.is_sha else self.ref

    def archive_dir(self, piece: Piece) -> str:
        """Top folder name inside GitHub's archive of this version (tags lose their 'v')."""
        ref = self.ref if self.is_sha else re.sub(r"^v(?=\d)", "", self.ref)
        return f"{piece.repo_name}-{ref}"


_ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Z][A-Z0-9_]*)\s*:?=\s*\"?([^\"\s]*)\"?\s*$")
_GITHUB_ARCHIVE = re.compile(
    r"github\.com/([\w.-]+)/([\w.-]+)/archive/(?:refs/tags/)?([\w.-]+?)\.(?:zip|tar\.gz)$")


def _expand(value: str, env: dict) -> str:
    """Expand ${VAR}, ${VAR#prefix} and $(VAR) the way the shell/make scripts would."""
    def sub(m):
        name, strip = m.group(1) or m.group(3), m.group(2)
        val = env.get(name, "")
        if strip and val.startswith(strip):
            val = val[len(strip):]
        return val
    return re.sub(r"\$\{(\w+)(?:#([^}]*))?\}|\$\((\w+)\)", sub, value)


def read_pins(tflm_root: Path) -> dict[str, Pin]:
    """Pins of the third-party pieces as TFLM's download scripts at `tflm_root` state them."""
    found: dict[str, Pin] = {}
    for rel in PIN_SCRIPTS:
        path = Path(tflm_root) / rel
        if not path.is_file():
            continue
        env: dict[str, str] = {}
        pending: dict[str, tuple] = {}   # variable prefix -> (repo, ref, url)
        for line in path.read_text(errors="replace").splitlines():
            m = _ASSIGN.match(line)
            if not m:
                continue
            name, value = m.group(1), _expand(m.group(2), env)
            env[name] = value
            gh = _GITHUB_ARCHIVE.search(value)
            if name.endswith("_URL") and gh:
                repo = f"{gh.group(1)}/{gh.group(2)}"
                pending[name[:-4]] = (repo, gh.group(3), value)
                found.setdefault(repo.lower(), Pin(gh.group(3), value, None))
            elif name.endswith("_MD5") and name[:-4] in pending:
                repo, ref, url = pending.pop(name[:-4])
                found[repo.lower()] = Pin(ref, url, value)
    pins = {}
    for piece in THIRD_PARTY:
        pin = found.get(piece.repo.lower())
        if pin is None:
            raise RoutevitError(
                f"{tflm_root}: TFLM's download scripts ({', '.join(PIN_SCRIPTS)}) name no version "
                f"of {piece.repo}; use a TFLM commit whose scripts pin it (e.g. {PINNED_COMMIT[:8]})")
        pins[piece.name] = pin
    return pins
