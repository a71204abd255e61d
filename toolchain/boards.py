"""The board catalog: one data file (`toolchain/catalog/boards.json`), read here.

Example:
    >>> from toolchain.boards import get_board
    >>> b = get_board("mps2-an386")
    >>> b.core, b.flash_bytes, b.qemu_machine
    ('cortex-m4', 4194304, 'mps2-an386')
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from toolchain.errors import RoutevitError

CATALOG_PATH = Path(__file__).resolve().parent / "catalog" / "boards.json"

# The catalog's counter names; what HELLO then announces is toolchain.protocol.CounterKind.
COUNTERS = ("systick", "dwt")


@dataclass(frozen=True)
class MemoryRegion:
    name: str
    origin: int
    size: int
    what: str = ""


@dataclass(frozen=True)
class Board:
    id: str
    title: str
    core_family: str
    core: str
    cpu_flags: tuple[str, ...]
    fpu: bool
    regions: tuple[MemoryRegion, ...]
    placement: dict
    uart: dict
    clock_hz: int
    boot_clock_hz: int
    counter: str
    qemu: dict | None
    renode: dict | None
    raw: dict = field(repr=False, compare=False, default_factory=dict)
    cmsis_nn: bool = False  # the core runs TFLM's CMSIS-NN kernels (`routevit build` uses them by default)

    @property
    def default_kernels(self) -> str:
        return "cmsis-nn" if self.cmsis_nn else "reference"

    def region(self, name: str) -> MemoryRegion:
        for r in self.regions:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def flash_bytes(self) -> int:
        return self.region("flash").size

    @property
    def ram_bytes(self) -> int:
        return self.region("ram").size

    @property
    def qemu_machine(self) -> str | None:
        return self.qemu["machine"] if self.qemu else None

    def to_json(self) -> dict:
        """Plain JSON view (sizes as integers) for `routevit boards --json` and templates."""
        return {
            "id": self.id,
            "title": self.title,
            "core": self.core,
            "core_family": self.core_family,
            "cpu_flags": list(self.cpu_flags),
            "fpu": self.fpu,
            "cmsis_nn": self.cmsis_nn,
            "memory": {r.name: {"origin": r.origin, "size": r.size, "what": r.what} for r in self.regions},
            "placement": dict(self.placement),
            "uart": dict(self.uart),
            "clock_hz": self.clock_hz,
            "boot_clock_hz": self.boot_clock_hz,
            "counter": self.counter,
            "qemu": self.qemu,
            "renode": self.renode,
        }


def _int(value) -> int:
    return int(value, 0) if isinstance(value, str) else int(value)


@lru_cache(maxsize=None)
def _catalog() -> dict:
    with open(CATALOG_PATH) as f:
        return json.load(f)


def _parse(board_id: str, raw: dict, cores: dict) -> Board:
    core = cores[raw["core_family"]]
    regions = tuple(
        MemoryRegion(name, _int(r["origin"]), _int(r["size"]), r.get("what", ""))
        for name, r in raw["memory"].items())
    uart = {k: (_int(v) if k in ("base", "rcc_base", "gpio_base") else v) for k, v in raw["uart"].items()}
    return Board(
        id=board_id, title=raw["title"], core_family=raw["core_family"], core=core["core"],
        cpu_flags=tuple(core["cpu_flags"]), fpu=bool(core["fpu"]), regions=regions,
        placement=dict(raw["placement"]), uart=uart, clock_hz=int(raw["clock_hz"]),
        boot_clock_hz=int(raw.get("boot_clock_hz", raw["clock_hz"])), counter=_counter(board_id, raw["counter"]),
        qemu=raw.get("qemu"), renode=raw.get("renode"), raw=raw, cmsis_nn=bool(core.get("cmsis_nn", False)))


def _counter(board_id: str, name: str) -> str:
    if name not in COUNTERS:
        raise RoutevitError(f"{CATALOG_PATH}: board {board_id}: counter {name!r} is not one of "
                            f"{', '.join(COUNTERS)}; fix the catalog entry")
    return name


def board_ids() -> list[str]:
    return sorted(_catalog()["boards"])


def all_boards() -> list[Board]:
    cat = _catalog()
    return [_parse(b, cat["boards"][b], cat["cores"]) for b in board_ids()]


def get_board(board_id: str) -> Board:
    cat = _catalog()
    if board_id not in cat["boards"]:
        raise RoutevitError(
            f"board {board_id!r}: not in the catalog; choose one of {', '.join(board_ids())} "
            "(see `routevit boards`)")
    return _parse(board_id, cat["boards"][board_id], cat["cores"])
