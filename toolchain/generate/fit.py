"""Does an export fit a board? The generator's own memory budget, computed without writing anything.

`routevit fit EXP` runs the same `model_context` as `routevit generate` for every board of the
catalog (or the ones named), so the bytes it reports are the ones the generated project then
declares: weights, tensor arena (host-measured + routevit's kernels + margin), staging, routing
and protocol buffers, stack — exact — and code, estimated from builds (memory.code_estimate; the
per-board build test checks the estimate against the linker's figures).

    >>> rows = fit_export("runs/fmnist_routed.exp")                 # doctest: +SKIP
    >>> [(r["board"], r["fits"]) for r in rows][:2]                 # doctest: +SKIP
    [('mps2-an386', True), ('mps2-an500', True)]
"""
from __future__ import annotations

from pathlib import Path

from toolchain.boards import all_boards, get_board
from toolchain.errors import RoutevitError
from toolchain.generate.project import check_margin, model_context
from toolchain.plan import read_plan


def fit_export(exp_dir, board_ids=None, arena_margin_pct: float | None = None, arena_from=None,
               memory_plan: str = "in-place") -> list[dict]:
    """One row per board: fits or not, each memory region's use, and what is over by how much.

    `arena_from` (an emulate report of this export): the arena from the device's figure, on the
    boards whose kernels take the same code paths as the measured one (the others are left out)."""
    check_margin(arena_margin_pct)
    plan = read_plan(Path(exp_dir))
    boards = [get_board(b) for b in board_ids] if board_ids else all_boards()
    device = None
    if arena_from is not None:
        from toolchain.generate.arena import read_device_arena

        device = read_device_arena(arena_from, plan)
        if not board_ids:
            boards = [b for b in boards if _compatible(device, b)]
    rows = []
    for board in boards:
        _, budget, details = model_context(plan, board, arena_margin_pct, device, memory_plan)
        regions = budget.regions()
        rows.append({
            "board": board.id, "core": board.core,
            "fits": all(r["fits"] for r in regions),
            "arena_bytes": details["arena"]["bytes"], "memory_plan": memory_plan,
            "regions": [{"region": r["region"], "used": r["used"], "size": r["size"], "free": r["free"],
                         "fits": r["fits"], "largest": r["consumers"][0]["name"] if r["consumers"] else None}
                        for r in regions],
            "overflow": budget.overflow_message(),
        })
    return rows


def summary(exp_dir, rows: list[dict]) -> dict:
    return {"export": str(Path(exp_dir).resolve()), "boards": rows,
            "fits": [r["board"] for r in rows if r["fits"]]}


def _compatible(device, board) -> bool:
    """Whether the device measurement sizes this board's arena (same kernel code paths)."""
    from toolchain.generate.arena import check_compatible

    try:
        check_compatible(device, board)
    except RoutevitError:
        return False
    return True
