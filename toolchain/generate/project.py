"""`routevit generate`: plan + segments + board -> TFLM C++ project (see docs/design.md)."""
from __future__ import annotations

from pathlib import Path

from toolchain.boards import Board
from toolchain.generate import render
from toolchain.protocol import MsgType, encode_frame

STACK_BYTES = 16 * 1024
MIN_PAYLOAD = 256


def base_context(board: Board, plan_sha256: str | None, routed_layers: list[dict],
                 extra_payload: int = 0) -> dict:
    sizes = render.routing_sizes(routed_layers)
    systick_hz = (board.qemu or {}).get("cpu_clock_hz", board.clock_hz)
    return {
        "plan_sha256": plan_sha256,
        "routed_layers": routed_layers,
        "selftest_layers": list(render.SELFTEST_LAYERS),
        "max_payload": max(MIN_PAYLOAD, sizes["max_route_payload"], extra_payload),
        "stack_bytes": STACK_BYTES,
        "systick_clock_hz": systick_hz,
        "model_id_literal": render.model_id_literal(plan_sha256),
        "stop_frame_bytes": list(encode_frame(MsgType.STOP, 0, b"\x00")),
        **sizes,
    }


def render_selftest_project(board: Board, dest: Path) -> list[str]:
    """A project without a model (only the `selftest` target builds); for tests and bring-up."""
    return render.render_project(Path(dest), board, base_context(board, None, []), with_model=False)
