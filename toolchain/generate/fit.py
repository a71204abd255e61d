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
               memory_plan: str = "in-place", residency: str = "resident") -> list[dict]:
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
        _, budget, details = model_context(plan, board, arena_margin_pct, device, memory_plan, residency)
        regions = budget.regions()
        rows.append({
            "board": board.id, "core": board.core,
            "fits": all(r["fits"] for r in regions),
            "arena_bytes": details["arena"]["bytes"], "memory_plan": memory_plan,
            "residency": residency, "regions": [{"region": r["region"], "used": r["used"], "size": r["size"], "free": r["free"],
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


# ------------------------------------------------------------------ a config, before training

# Widths the search tries (ml-cvnets' MobileViTV2 family and the narrower camera sizes).
SEARCH_WIDTHS = (2.0, 1.75, 1.5, 1.25, 1.0, 0.75, 0.5, 0.375, 0.25)
CALIBRATION_IMAGES = 4


def export_untrained(config, out: Path, progress: bool = False) -> Path:
    """EXP for a config's model with its initial weights, PTQ-calibrated on random images: the
    segments have the ops, tensors, weight bytes and arena of a trained export (none of those
    depends on the values), so `fit` can answer before any training. Returns `out`."""
    import numpy as np

    import toolchain
    from toolchain.data import Normalization
    from toolchain.export import _export_variant
    from toolchain.fsutil import atomic_output_dir
    from toolchain.models import build_model

    mc = config.model
    norm = {"mean": list(config.training.input_mean), "std": list(config.training.input_std)}
    pixels = np.random.default_rng(0).integers(0, 256, (CALIBRATION_IMAGES, mc.image_size, mc.image_size,
                                                       mc.in_channels), dtype=np.uint8)
    images = Normalization.from_lists(norm["mean"], norm["std"], mc.in_channels).apply(pixels)
    meta = {"normalization": norm, "class_names": None, "method": "ptq", "source_run": None}
    model = build_model(mc)
    _distinct_weights(model)
    with atomic_output_dir(Path(out)) as tmp:
        _export_variant(model, config, meta, images, tmp, "ptq", "segment", progress,
                        toolchain.__version__, Path(out))
    return Path(out)


def _distinct_weights(model) -> None:
    """Random values in every weight: initial biases and BN offsets are all zeros, and the
    converter stores identical constant buffers once, so an untrained export would be smaller
    than a trained one."""
    import numpy as np

    rng = np.random.default_rng(0)
    for weight in model.weights:
        name = weight.name
        shape = tuple(weight.shape)
        if "moving_variance" in name or "gamma" in name:
            weight.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        else:
            weight.assign(rng.normal(0.0, 0.1, shape).astype(np.float32))


def fit_config(config_path, board_ids=None, arena_margin_pct: float | None = None,
               memory_plan: str = "in-place", search: bool = False, workdir: Path | None = None,
               log=None, residency: str = "resident") -> dict:
    """`fit_export` on `export_untrained(config)`; with `search`, for every board the config
    does not fit: the largest input size (at its width) and the largest width (at its input
    size) of the same config that fit, each by bisection over the candidates below the
    config's (one export per probe). {"rows", "search": {board: {...}}}."""
    import copy
    import tempfile

    from toolchain.config import load_config

    config = load_config(Path(config_path))
    tmp_root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="routevit-fit-"))
    probes: dict = {}

    def rows_for(image_size: int, width: float) -> dict:
        key = (image_size, width)
        if key not in probes:
            variant = copy.deepcopy(config)
            variant.model.image_size, variant.model.width_multiplier = image_size, width
            variant.model.validate(str(config_path))
            if log:
                log(f"fit: exporting {config_path} at {image_size} px, width {width} (random weights)")
            exp = export_untrained(variant, tmp_root / f"exp-{image_size}-{width}")
            probes[key] = {r["board"]: r for r in fit_export(exp, board_ids, arena_margin_pct, None, memory_plan, residency)}
        return probes[key]

    def largest(candidates: list, fits) -> object:
        """The largest candidate (candidates ascending) that fits, by bisection; None if none."""
        lo, hi, best = 0, len(candidates) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            if fits(candidates[mid]):
                best, lo = candidates[mid], mid + 1
            else:
                hi = mid - 1
        return best

    size, width = config.model.image_size, config.model.width_multiplier
    base = rows_for(size, width)
    found = {}
    if search:
        sizes = [s for s in _valid_sizes(config.model.strides) if s < size]
        widths = sorted(w for w in SEARCH_WIDTHS if w < width)
        for board, row in base.items():
            if row["fits"]:
                continue
            found[board] = {
                "largest_image_size": largest(sizes, lambda s: rows_for(s, width)[board]["fits"]),
                "largest_width": largest(widths, lambda w: rows_for(size, w)[board]["fits"]),
            }
    return {"config": str(Path(config_path).resolve()), "image_size": size, "width_multiplier": width,
            "rows": list(base.values()), "search": found, "probes": len(probes)}


def _valid_sizes(strides) -> list[int]:
    """Input sizes whose every MobileViT map holds 2x2 patches, multiples of the total stride."""
    from toolchain.config import working_image_sizes

    return working_image_sizes(strides, limit=64)
