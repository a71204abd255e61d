"""The tensor arena sized from the device's own figure instead of the host's.

`routevit generate` normally budgets the arena from the tflite-micro wheel's recording
allocator on this 64-bit host, + a margin. On the device the same MicroAllocator needs less:
its bookkeeping structs hold 32-bit pointers, and routevit's own kernels replace TFLM's
(fmnist_routed on the M4 with CMSIS-NN: 147,364 B used of 189,312 B budgeted). Every
firmware reports what its allocator used after AllocateTensors of all segments (HELLO
arena_bytes; `routevit emulate` writes it to report.json). The allocation does not depend on
the input, so one run on a board with lots of RAM (an MPS2 under QEMU) sizes the arena of a
small board of the same kernels exactly:

    routevit emulate PROJ_MPS2 --backend qemu --data D --limit 1 --out R
    routevit generate EXP --board stm32f746g-disco --arena-from R --out PROJ

What the figure does not hold, and is added: AllocateTensors plans each segment with temporary
memory above the planned tensors (TFLM's AllocationInfo per tensor and the greedy planner's
per-buffer lists, 56 B per buffer on a 32-bit core) and releases it, so used_bytes() after init
misses it. TEMP_BYTES_PER_BUFFER bounds it per tensor and per op of a segment (ops stand for
the scratch-buffer requests: CMSIS-NN's convolutions request one each). The planning memory of
a segment sits above the head planned so far and below the persistent tail so far, so only what
it exceeds the final head by is added (temp_bytes): the largest later segment's, or segment 0's
beyond its own head. Measured on fmnist_routed: an arena of exactly the used figure also
initialised.

The kernels must match: CMSIS-NN requests scratch buffers that TFLM's reference kernels do not,
and its Helium (MVE) paths on the M55 request other sizes than its DSP paths on the M4/M7.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from toolchain.boards import Board, get_board
from toolchain.errors import RoutevitError
from toolchain.plan import Plan

TEMP_BYTES_PER_BUFFER = 64
REPORT_FILE = "report.json"


@dataclass(frozen=True)
class DeviceArena:
    used_bytes: int        # the firmware's MicroAllocator::used_bytes() after init
    report: str            # the report.json it came from
    board: str             # where it was measured
    kernels: str           # the kernel set of that firmware
    memory_plan: str = "tflm"  # generate --memory-plan of that firmware (reports before it: TFLM's)
    residency: str = "resident"  # generate --residency of that firmware (swapped: the largest segment's)


def kernel_variant(board: Board, kernels: str) -> str:
    """Which code paths (and so which scratch buffers) a kernel set takes on a board's core."""
    if kernels != "cmsis-nn":
        return kernels
    core = board.core
    if core in ("cortex-m55", "cortex-m85"):
        return "cmsis-nn/mve"
    if core in ("cortex-m0", "cortex-m0plus", "cortex-m3"):
        return "cmsis-nn/base"
    return "cmsis-nn/dsp"


def read_device_arena(path, plan: Plan) -> DeviceArena:
    """The device arena figure of an emulate/evaluate report (its folder or report.json)."""
    path = Path(path)
    file = path / REPORT_FILE if path.is_dir() else path
    redo = "run `routevit emulate PROJ --data D --limit 1 --out R` on a project of this export first"
    try:
        report = json.loads(file.read_text())
    except FileNotFoundError:
        raise RoutevitError(f"--arena-from {path}: no {REPORT_FILE} there; {redo}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise RoutevitError(f"--arena-from {file}: not a readable report ({exc}); {redo}") from None
    hello = report.get("hello") if isinstance(report, dict) else None
    firmware = (report.get("memory") or {}).get("firmware") or {} if isinstance(report, dict) else {}
    if not isinstance(hello, dict) or not isinstance(hello.get("arena_bytes"), int) or not firmware.get("kernels"):
        raise RoutevitError(f"--arena-from {file}: the report has no device arena figure or kernel set "
                            f"(a host-only report, or one from before routevit 0.9); {redo}")
    from toolchain.generate.render import model_id_literal

    expected = model_id_literal(plan.sha256)[2:-3].lower()
    if str(hello.get("model_id", "")).lower() != expected:
        raise RoutevitError(f"--arena-from {file}: measured on another model (model id {hello.get('model_id')}, "
                            f"this export's is {expected}); {redo}")
    return DeviceArena(used_bytes=int(hello["arena_bytes"]), report=str(file.resolve()),
                       board=str(report.get("board") or hello.get("board")), kernels=str(firmware["kernels"]),
                       memory_plan=str(firmware.get("memory_plan") or "tflm"),
                       residency=str(firmware.get("residency") or "resident"))


def check_compatible(device: DeviceArena, board: Board) -> str:
    """The kernel set the project must be built with; refuses a measurement from other code paths."""
    measured_on = get_board(device.board)
    here, there = kernel_variant(board, device.kernels), kernel_variant(measured_on, device.kernels)
    if here != there:
        raise RoutevitError(f"--arena-from: measured on {device.board} ({there}), whose kernels allocate other "
                            f"scratch buffers than {board.id}'s ({here}); measure on a board of the same core "
                            f"kind (`routevit boards`)")
    return device.kernels


def check_memory_plan(device: DeviceArena, memory_plan: str, residency: str = "resident") -> None:
    """The device figure holds only for the memory plan and residency it was measured with."""
    if device.residency != residency:
        raise RoutevitError(f"--arena-from: measured on a firmware with --residency {device.residency}, "
                            f"not {residency}; generate with --residency {device.residency} or measure "
                            f"a --residency {residency} firmware")
    if device.memory_plan != memory_plan:
        raise RoutevitError(f"--arena-from: measured on a firmware with --memory-plan {device.memory_plan}, "
                            f"not {memory_plan}; generate with --memory-plan {device.memory_plan} or measure "
                            f"a --memory-plan {memory_plan} firmware")


def temp_bytes(plan: Plan, heads: list | None = None, residency: str = "resident") -> int:
    """A bound on what TFLM's temporary planning memory adds to the used figure.

    Segment k is planned with T_k (TEMP_BYTES_PER_BUFFER per tensor and op) above the head
    planned so far and below the persistent tail so far, both at most what they are at the end.
    For k >= 1 that head is at least segment 0's, so T_k at most is added. Segment 0 is planned
    above an empty head: it adds only what T_0 exceeds its own head by (`heads`: the
    non-persistent bytes of each segment as embedded). Without `heads`: the largest T_k.

    swapped: every segment is planned alone above an empty head, so each adds what T_k exceeds its
    own head by; the device reports the largest segment's figure, so the largest such excess is
    added (a bound whichever segment that is)."""
    from toolchain.export.flatbuffer import read_graph

    temps = [TEMP_BYTES_PER_BUFFER * (len(g.tensors) + len(g.ops))
             for g in (read_graph(seg.data) for seg in plan.segments)]
    if heads is None:
        return max(temps)
    if residency == "swapped":
        return max([0] + [t - h for t, h in zip(temps, heads)])
    return max([0, temps[0] - heads[0]] + temps[1:])
