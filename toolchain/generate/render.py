"""Render firmware_templates/project/** into a project folder (jinja2, deterministic)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import jinja2

import toolchain
from firmware_templates import TEMPLATES_DIR
from toolchain import protocol
from toolchain.boards import Board

log = logging.getLogger("routevit")

PROJECT_TEMPLATES = TEMPLATES_DIR / "project"
PROTOCOL_VERSION = protocol.PROTOCOL_VERSION

# Fixed routing shapes the self-test build accepts besides the plan's own layers:
# ties and over-capacity with top-1 and top-2, a single-slot capacity, a full capacity.
SELFTEST_LAYERS = (
    {"num_patches": 16, "num_experts": 4, "capacity": 5, "top_k": 1},
    {"num_patches": 16, "num_experts": 4, "capacity": 3, "top_k": 2},
    {"num_patches": 64, "num_experts": 8, "capacity": 10, "top_k": 1},
    {"num_patches": 7, "num_experts": 3, "capacity": 2, "top_k": 2},
    {"num_patches": 12, "num_experts": 5, "capacity": 1, "top_k": 1},
    {"num_patches": 49, "num_experts": 2, "capacity": 49, "top_k": 2},
)

# Templates that are only rendered with a model (they need TFLM to build).
MODEL_ONLY = {"src/tflm_glue.h", "src/main.cc", "src/model_data.cc", "src/model_data.h", "src/op_resolver.h",
              "src/tflm_glue.cc", "src/requantize.h", "src/profiler.h", "src/profiler.cc",
              "src/routevit_model.h", "src/routevit_model.cc", "src/model_profiling.h"}

# routevit's own kernels, registered instead of TFLM's for these ops (each header says why).
# Their sources are rendered and built only for a plan that uses the op.
TABLE_SOURCES = ("src/int8_table.h", "src/int8_table.cc")
BINARY_SOURCES = ("src/binary_int8.h", "src/binary_int8.cc")
CONV_SOURCES = ("src/conv_int8.h", "src/conv_int8.cc")
OWN_KERNELS = {
    "CONV_2D": {"sources": ("src/conv1x1_kernel.h", "src/conv1x1_kernel.cc", *CONV_SOURCES, *BINARY_SOURCES),
                "header": "conv1x1_kernel.h", "registration": "routevit::Register_CONV_2D_POINTWISE()"},
    "DEPTHWISE_CONV_2D": {"sources": ("src/depthwise3x3_kernel.h", "src/depthwise3x3_kernel.cc", *CONV_SOURCES),
                          "header": "depthwise3x3_kernel.h",
                          "registration": "routevit::Register_DEPTHWISE_CONV_2D_3X3()"},
    "ADD": {"sources": ("src/add_kernel.h", "src/add_kernel.cc", *BINARY_SOURCES), "header": "add_kernel.h",
            "registration": "routevit::Register_ADD_INT8_LOOP()"},
    "RELU": {"sources": ("src/relu_kernel.h", "src/relu_kernel.cc", *TABLE_SOURCES), "header": "relu_kernel.h",
             "registration": "routevit::Register_RELU_TABLE()"},
    "SUB": {"sources": ("src/sub_kernel.h", "src/sub_kernel.cc", *TABLE_SOURCES), "header": "sub_kernel.h",
            "registration": "routevit::Register_SUB_DOUBLE_SCALE()"},
    "LOGISTIC": {"sources": ("src/logistic_lut_kernel.h", "src/logistic_lut_kernel.cc", *TABLE_SOURCES),
                 "header": "logistic_lut_kernel.h", "registration": "routevit::Register_LOGISTIC_LUT()"},
    # the SiLU table comes from the LOGISTIC kernel's, so MUL carries that kernel's sources too
    "MUL": {"sources": ("src/mul_kernel.h", "src/mul_kernel.cc", "src/logistic_lut_kernel.h",
                        "src/logistic_lut_kernel.cc", *TABLE_SOURCES, *BINARY_SOURCES),
            "header": "mul_kernel.h", "registration": "routevit::Register_MUL_SILU_LUT()"},
    "SQUARED_DIFFERENCE": {"sources": ("src/squared_difference_kernel.h", "src/squared_difference_kernel.cc",
                                       *TABLE_SOURCES),
                           "header": "squared_difference_kernel.h",
                           "registration": "routevit::Register_SQUARED_DIFFERENCE_TABLE()"},
    # the SiLUs generate fuses into one op (toolchain/generate/device_model.py fuse_silu)
    "CUSTOM:ROUTEVIT_SILU": {"sources": ("src/silu_kernel.h", "src/silu_kernel.cc", *TABLE_SOURCES),
                             "header": "silu_kernel.h", "registration": "routevit::Register_SILU_LUT()",
                             "custom_code": "ROUTEVIT_SILU"},
    "MEAN": {"sources": ("src/reduce_kernel.h", "src/reduce_kernel.cc"), "header": "reduce_kernel.h",
             "registration": "routevit::Register_MEAN_CONTIGUOUS()"},
    "SUM": {"sources": ("src/reduce_kernel.h", "src/reduce_kernel.cc"), "header": "reduce_kernel.h",
            "registration": "routevit::Register_SUM_CONTIGUOUS()"},
}

# Persistent arena bytes each of routevit's own kernels allocates per op beyond what TFLM's own
# kernel for that op does (the host measures the arena with TFLM's kernels): op data rounded up
# to TFLM's 16-byte persistent alignment; the kernels static_assert their op data fits. A SiLU
# MUL also allocates its 256-entry table (SILU_TABLE_BYTES).
OWN_KERNEL_BYTES = {"CONV_2D": 16, "DEPTHWISE_CONV_2D": 16, "ADD": 80, "RELU": 0, "LOGISTIC": 272, "MUL": 16, "MEAN": 32, "SUM": 32, "SUB": 16, "SQUARED_DIFFERENCE": 16,
                    "CUSTOM:ROUTEVIT_SILU": 256}
SILU_TABLE_BYTES = 256
# Static RAM of routevit's kernel sources beyond the "other statics" estimate: binary_int8.cc's two
# 256-entry int32 rescale tables, shared by every ADD and borrowed by the pointwise CONV_2D for its
# widened pixels (the source static_asserts its size).
OWN_KERNEL_STATIC_BYTES = {"src/binary_int8.cc": 2 * 256 * 4}

# Board UART kind -> the driver template rendered as src/board/uart.c
UART_TEMPLATES = {
    "cmsdk_apb": "src/board/uart_cmsdk_apb.c.j2",
    "stm32_usart_f4": "src/board/uart_stm32_usart_f4.c.j2",
    "stm32_usart_f7": "src/board/uart_stm32_usart_f7.c.j2",
    "nrf_uarte": "src/board/uart_nrf_uarte.c.j2",
}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(PROJECT_TEMPLATES)),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.globals["own_kernel_bytes"] = OWN_KERNEL_BYTES
    env.globals["own_kernel_static_bytes"] = OWN_KERNEL_STATIC_BYTES
    env.globals["silu_op"] = "CUSTOM:ROUTEVIT_SILU"
    env.globals["silu_custom_code"] = OWN_KERNELS["CUSTOM:ROUTEVIT_SILU"]["custom_code"]
    return env


def header_lines(plan_sha256: str | None, board_id: str, extra: str = "") -> list[str]:
    """The provenance lines every generated file starts with."""
    plan = f"plan sha256 {plan_sha256}" if plan_sha256 else "no plan (self-test only)"
    lines = [f"Generated by routevit {toolchain.__version__} from {plan}, board {board_id}.",
             "Do not edit: regenerate with `routevit generate`."]
    if extra:
        lines.append(extra)
    return lines


def _header_fn(plan_sha256, board_id):
    def header(open_: str, close: str = "") -> str:
        lines = header_lines(plan_sha256, board_id)
        if close:  # block comment
            return "\n".join([f"{open_} {lines[0]}"] + [f" * {ln}" for ln in lines[1:]]) + close
        return "\n".join(f"{open_} {ln}" for ln in lines)
    return header


def routing_sizes(routed_layers: list[dict]) -> dict:
    """Static buffer sizes for ROUTE answers: the largest plan or self-test layer."""
    shapes = [{k: layer[k] for k in ("num_patches", "num_experts", "capacity", "top_k")}
              for layer in routed_layers] + list(SELFTEST_LAYERS)
    return {
        "max_dispatch_slots": max(s["num_experts"] * s["capacity"] for s in shapes),
        "max_combine_slots": max(s["top_k"] * s["num_patches"] for s in shapes),
        "max_experts": max(s["num_experts"] for s in shapes),
        # ROUTE request (1 + N*E) and ROUTED answer (2E + 4EC + 4kN)
        "max_route_payload": max(max(1 + s["num_patches"] * s["num_experts"],
                                     2 * s["num_experts"] + 4 * s["num_experts"] * s["capacity"]
                                     + 4 * s["top_k"] * s["num_patches"]) for s in shapes),
    }


def own_kernels(ops: list[str]) -> dict[str, dict]:
    """The plan's ops that routevit's own kernels serve -> their OWN_KERNELS entry."""
    return {op: OWN_KERNELS[op] for op in sorted(ops) if op in OWN_KERNELS}


def template_files(with_model: bool, board: Board, ops: list[str] = ()) -> dict[str, str]:
    """Output relative path -> template name, sorted."""
    used_own = {src for entry in own_kernels(ops).values() for src in entry["sources"]}
    unused_own = {src for entry in OWN_KERNELS.values() for src in entry["sources"]} - used_own
    out = {}
    for path in sorted(PROJECT_TEMPLATES.rglob("*.j2")):
        rel = path.relative_to(PROJECT_TEMPLATES).as_posix()
        if rel.startswith("src/board/uart_"):
            continue
        target = rel[: -len(".j2")]
        if target == "renode/board.repl":
            # Only boards without a stock Renode platform get a generated REPL.
            if not board.renode or board.renode.get("platform") != "generated":
                continue
            target = f"renode/{board.id}.repl"
        if target in MODEL_ONLY and not with_model:
            continue
        if target in unused_own or (target in used_own and not with_model):
            continue
        out[target] = rel
    out["src/board/uart.c"] = UART_TEMPLATES[board.uart["kind"]]
    return dict(sorted(out.items()))


def render_project(dest: Path, board: Board, context: dict, with_model: bool) -> list[str]:
    """Render every template into `dest` (which exists). Returns the written relative paths."""
    env = _environment()
    env.globals["header"] = _header_fn(context.get("plan_sha256"), board.id)
    ctx = dict(context)
    ctx["board"] = _board_view(board)
    ctx["protocol_version"] = PROTOCOL_VERSION
    ctx["protocol"] = protocol.c_constants()  # src/protocol_constants.h: generated, not copied
    written = []
    ops = list(ctx.get("ops", [])) + list(ctx.get("custom_ops", []))
    for target, template in template_files(with_model, board, ops).items():
        text = env.get_template(template).render(**ctx)
        out = dest / target
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        if target.startswith("qemu/") or target.endswith(".sh"):
            os.chmod(out, 0o755)
        written.append(target)
    return written


class _Obj(dict):
    """dict with attribute access for templates (missing keys are jinja-undefined)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _board_view(board: Board) -> _Obj:
    regions = [_Obj(name=r.name, origin=r.origin, size=r.size, what=r.what) for r in board.regions]
    uart = _Obj(board.uart)
    if "pins" in uart:
        uart["pins"] = _Obj(uart["pins"])
    return _Obj(id=board.id, title=board.title, core=board.core, core_family=board.core_family,
                cpu_flags=list(board.cpu_flags), fpu=board.fpu, regions=regions,
                placement=_Obj(board.placement), uart=uart, clock_hz=board.clock_hz, boot_clock_hz=board.boot_clock_hz,
                counter=board.counter, qemu=board.qemu, renode=_Obj(board.renode or {}),
                has_renode=board.renode is not None)


def model_id_literal(plan_sha256: str | None) -> str:
    """u64 model id = first 8 bytes of the plan's sha256, little-endian."""
    if not plan_sha256:
        return "0ULL"
    return f"0x{int.from_bytes(bytes.fromhex(plan_sha256)[:8], 'little'):016X}ULL"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dump_json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"
