"""A set-up TFLM tree: where it is, what it holds (tree.json), which include dirs it needs."""
from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from toolchain.errors import RoutevitError
from toolchain.manifest import read_manifest
from toolchain.tflm.pieces import DOWNLOADS, PINNED_COMMIT

TREE_FORMAT = "routevit-tflm-tree/1"
SETUP_HINT = "run `routevit setup-tflm` (online), or `routevit setup-tflm --from PATH` with local copies"


def cache_root(cache: Path | None = None) -> Path:
    """$ROUTEVIT_CACHE, else ~/.cache/routevit."""
    if cache is not None:
        return Path(cache)
    env = os.environ.get("ROUTEVIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "routevit"


def trees_dir(cache: Path | None = None) -> Path:
    return cache_root(cache) / "tflm"


# GCC -mcpu value -> the Cortex_DFP device folder with that core's CMSIS device header.
CORE_DEVICE = {
    "cortex-m0": "ARMCM0", "cortex-m0plus": "ARMCM0plus", "cortex-m3": "ARMCM3",
    "cortex-m4": "ARMCM4", "cortex-m7": "ARMCM7", "cortex-m23": "ARMCM23",
    "cortex-m33": "ARMCM33", "cortex-m35p": "ARMCM35P", "cortex-m55": "ARMCM55",
    "cortex-m85": "ARMCM85",
}


@dataclass
class TflmTree:
    root: Path
    manifest: dict

    # Include dirs every TFLM build needs (relative to the root). CMSIS/Core/Include is given
    # whole so its m-profile/ headers resolve in place (TFLM's create_tflm_tree misses them).
    INCLUDE_DIRS = [
        ".",
        DOWNLOADS,
        f"{DOWNLOADS}/gemmlowp",
        f"{DOWNLOADS}/flatbuffers/include",
        f"{DOWNLOADS}/ruy",
        f"{DOWNLOADS}/cmsis/CMSIS/Core/Include",
    ]
    CMSIS_NN_INCLUDE_DIRS = [
        f"{DOWNLOADS}/cmsis",
        f"{DOWNLOADS}/cmsis_nn",
        f"{DOWNLOADS}/cmsis_nn/Include",
    ]
    REQUIRED = [
        "tensorflow/lite/micro/micro_interpreter.h",
        f"{DOWNLOADS}/flatbuffers/include/flatbuffers/flatbuffers.h",
        f"{DOWNLOADS}/gemmlowp/fixedpoint/fixedpoint.h",
        f"{DOWNLOADS}/ruy/ruy/profiler/instrumentation.h",
    ]

    @classmethod
    def load(cls, root: Path) -> "TflmTree":
        root = Path(root).resolve()
        manifest_path = root / "tree.json"
        if manifest_path.is_file():
            manifest = read_manifest(manifest_path, f"set the tree up again: {SETUP_HINT}", TREE_FORMAT)
        else:
            manifest = cls._manifest_of_checkout(root)
        tree = cls(root, manifest)
        missing = [r for r in cls.REQUIRED if not (root / r).is_file()]
        if missing:
            raise RoutevitError(f"{root}: not a complete TFLM tree (missing {', '.join(missing)}); "
                                f"{SETUP_HINT}")
        return tree

    @staticmethod
    def _manifest_of_checkout(root: Path) -> dict:
        """A user's own TFLM checkout whose Makefile has already downloaded the pieces."""
        if not (root / "tensorflow/lite/micro/micro_interpreter.h").is_file():
            raise RoutevitError(f"{root}: not a TFLM tree (no tree.json, no "
                                f"tensorflow/lite/micro/micro_interpreter.h); {SETUP_HINT}")
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
        commit = r.stdout.strip() if r.returncode == 0 else None
        pieces = {}
        for name in ("flatbuffers", "gemmlowp", "ruy", "cmsis", "cmsis/Cortex_DFP", "cmsis_nn"):
            d = root / DOWNLOADS / name
            if d.is_dir():
                # No commit to record: identify the content by the path and its file listing.
                listing = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
                pieces[name] = {"path": str(d), "commit": None,
                                "listing_sha256": hashlib.sha256("\n".join(listing).encode()).hexdigest()}
        return {"format": TREE_FORMAT, "commit": commit or f"unknown:{root}",
                "pieces": pieces, "include_dirs": TflmTree.INCLUDE_DIRS, "source": "user checkout"}

    @property
    def commit(self) -> str:
        return self.manifest["commit"]

    def identity(self) -> dict:
        """What the tree's content depends on (for cache keys): commits, not paths or dates."""
        return {"commit": self.commit,
                "pieces": {k: v.get("commit") or v.get("listing_sha256") or v.get("pin")
                           for k, v in sorted(self.manifest.get("pieces", {}).items())},
                "patch": self.manifest.get("pieces", {}).get("flatbuffers", {}).get("patch")}

    def include_dirs(self, core: str | None = None, cmsis_nn: bool = False) -> list[Path]:
        dirs = [self.root / d for d in self.INCLUDE_DIRS]
        if core:
            device = CORE_DEVICE.get(core)
            if device and (self.root / DOWNLOADS / "cmsis/Cortex_DFP/Device" / device / "Include").is_dir():
                dirs.append(self.root / DOWNLOADS / "cmsis/Cortex_DFP/Device" / device / "Include")
        if cmsis_nn:
            dirs += [self.root / d for d in self.CMSIS_NN_INCLUDE_DIRS]
        return [Path(os.path.normpath(d)) for d in dirs]

    def has_cmsis_nn(self) -> bool:
        return (self.root / DOWNLOADS / "cmsis_nn/Include/arm_nnfunctions.h").is_file()


def installed_trees(cache: Path | None = None) -> list[Path]:
    d = trees_dir(cache)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if (p / "tree.json").is_file())


def find_tree(explicit: Path | None = None, cache: Path | None = None) -> TflmTree:
    """The tree given by path, else the cached tree at the pinned commit, else the only one."""
    if explicit is not None:
        return TflmTree.load(Path(explicit))
    trees = installed_trees(cache)
    if not trees:
        raise RoutevitError(f"{trees_dir(cache)}: no TFLM tree set up; {SETUP_HINT}")
    pinned = [t for t in trees if t.name == PINNED_COMMIT]
    if pinned:
        return TflmTree.load(pinned[0])
    if len(trees) == 1:
        return TflmTree.load(trees[0])
    raise RoutevitError(f"{trees_dir(cache)}: several TFLM trees ({', '.join(t.name[:8] for t in trees)}) "
                        "and none at the pinned commit; choose one with --tflm PATH")
