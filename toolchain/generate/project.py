"""`routevit generate`: plan + segments + board -> TFLM C++ project (see docs/design.md).

Same inputs give byte-identical output: no timestamps, sorted keys and file lists, and
provenance (routevit version, plan sha256, board) in the first lines of every file.
"""
from __future__ import annotations

import logging
import math
import struct
from functools import lru_cache
from pathlib import Path

import toolchain
from toolchain.boards import Board, get_board
from toolchain.errors import RoutevitError
from toolchain.fsutil import atomic_output_dir
from toolchain.generate import device_model, memory, render
from toolchain.plan import Plan, read_plan
from toolchain.protocol import CRC_BYTES, HEADER_BYTES, MsgType, STOP_SENTINEL, encode_frame

log = logging.getLogger("routevit")

STACK_BYTES = 16 * 1024          # call stack of TFLM kernels and the protocol code
# Static storage routevit_model.cc gives the interpreters and the op resolver; the firmware
# static_asserts the objects fit. sizeof(tflite::MicroInterpreter) is 1,552 B and
# MicroMutableOpResolver<N> 48 + 36 N B at TFLM 90b983c2 (arm-none-eabi-g++ 13, 32-bit).
INTERPRETER_OBJECT_BYTES = 1600
OP_RESOLVER_BASE_BYTES = 64
OP_REGISTRATION_BYTES = 40
OTHER_STATICS_BYTES = 2048       # counters, parser state, libc data: 1,384-1,408 B in real builds, rounded up
MIN_PAYLOAD = 256
DEFAULT_ARENA_MARGIN_PCT = 10.0
FORMAT = "routevit-project/1"


@lru_cache(maxsize=None)
def tflm_op_methods() -> dict[str, str]:
    """TFLite builtin name -> MicroMutableOpResolver method, from the one op table (toolchain/tflm/kernels.json)."""
    from toolchain.tflm.library import kernel_table

    return {op: entry["resolver"] for op, entry in kernel_table()["ops"].items()}


def _align(n: int, a: int = 16) -> int:
    return (n + a - 1) // a * a


def base_context(board: Board, plan_sha256: str | None, routed_layers: list[dict],
                 extra_payload: int = 0, stack_bytes: int = STACK_BYTES,
                 answer_payload: int | None = None) -> dict:
    """`extra_payload`: the largest request beyond ROUTE (the INFER image); `answer_payload`: the
    largest answer beyond HELLO/ROUTED (None: as large as a request)."""
    sizes = render.routing_sizes(routed_layers)
    systick_hz = (board.qemu or {}).get("cpu_clock_hz", board.clock_hz)
    return {
        "plan_sha256": plan_sha256,
        "routed_layers": routed_layers,
        "selftest_layers": list(render.SELFTEST_LAYERS),
        "max_payload": max(MIN_PAYLOAD, sizes["max_route_payload"], extra_payload),
        # The answer buffer needs only the largest answer: at camera resolution the image
        # request is 27-48 KB and no answer is more than a few KB. No answer may exceed
        # kMaxPayload (the host's decoder takes HELLO's figure as the limit); PROFILE pages.
        "max_answer": min(max(MIN_PAYLOAD, sizes["max_route_payload"], extra_payload),
                          max(MIN_PAYLOAD, sizes["max_route_payload"],
                              extra_payload if answer_payload is None else answer_payload)),
        "stack_bytes": stack_bytes,
        "systick_clock_hz": systick_hz,
        "model_id_literal": render.model_id_literal(plan_sha256),
        "stop_frame_bytes": list(encode_frame(MsgType.STOP, 0, b"\x00")),
        "own_kernels": {},
        "own_kernel_sources": [],
        "custom_ops": [],
        "frame_in_arena": False,
        **sizes,
    }


def render_selftest_project(board: Board, dest: Path) -> list[str]:
    """A project without a model (only the `selftest` target builds); for tests and bring-up."""
    return render.render_project(Path(dest), board, base_context(board, None, []), with_model=False)


def _hex_rows(data: bytes, per_row: int = 16) -> str:
    rows = []
    for i in range(0, len(data), per_row):
        rows.append("    " + ", ".join(f"0x{b:02x}" for b in data[i:i + per_row]) + ",")
    return "\n".join(rows)


def _float_literal(value: float) -> str:
    # Exact float32 round trip: 9 significant digits.
    f32 = struct.unpack("<f", struct.pack("<f", value))[0]
    text = f"{f32:.9g}"
    if "e" not in text and "." not in text:
        text += ".0"
    return text + "f"


def _c_string(text: str) -> str:
    """A C string literal for any text (non-ASCII as UTF-8 octal escapes)."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= byte < 127:
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def arena_plan(plan: Plan, margin_pct: float | None, device=None, board: Board | None = None,
               heads: list | None = None, memory_plan: str = "in-place", residency: str = "resident") -> dict:
    """resident: one shared MicroAllocator for all interpreters, so their persistent parts add up
    and the non-persistent head is reused. swapped: one interpreter at a time over a fresh
    allocator, so the arena is the largest segment's persistent part + head.

    `device` (arena.DeviceArena): the figure a firmware of this export reported, + TFLM's
    temporary planning memory (toolchain/generate/arena.py) instead of the host measurement.
    `heads`: the non-persistent bytes the wheel plans for each device segment (with its memory
    plan), in place of the export's figures."""
    if device is not None:
        from toolchain.generate import arena as device_arena

        kernels = device_arena.check_compatible(device, board)
        device_arena.check_memory_plan(device, memory_plan, residency)
        margin_pct = 0.0 if margin_pct is None else margin_pct
        temp = device_arena.temp_bytes(plan, heads, residency)
        total = _align(math.ceil(device.used_bytes * (1.0 + margin_pct / 100.0)) + temp)
        return {"measured_bytes": device.used_bytes,
                "basis": (f"used on the device ({device.board}, {kernels} kernels) "
                          f"+ {temp} B of TFLM's temporary planning memory"), "report": device.report,
                "source": "device", "device_board": device.board, "kernels": kernels, "temp_bytes": temp,
                "own_kernel_bytes": 0, "margin_pct": margin_pct, "bytes": total, "memory_plan": memory_plan,
                "residency": residency}
    margin_pct = DEFAULT_ARENA_MARGIN_PCT if margin_pct is None else margin_pct
    split = all(s.persistent_bytes is not None and s.nonpersistent_bytes is not None for s in plan.segments)
    own_per_segment = own_kernel_arena_bytes(plan, memory_plan, per_segment=True)
    if residency == "swapped":
        heads = heads or [s.nonpersistent_bytes for s in plan.segments]
        alone = [(s.persistent_bytes + h if split else s.arena_bytes) + own
                 for s, h, own in zip(plan.segments, heads, own_per_segment)]
        largest = max(range(len(alone)), key=alone.__getitem__)
        measured, own = alone[largest] - own_per_segment[largest], own_per_segment[largest]
        total = _align(math.ceil(alone[largest] * (1.0 + margin_pct / 100.0)) + 16)
        return {"measured_bytes": measured, "source": "host", "own_kernel_bytes": own, "memory_plan": memory_plan,
                "basis": (f"the largest segment's (segment {largest}) persistent bytes + its non-persistent part, "
                          "one segment prepared at a time (swapped residency)"),
                "margin_pct": margin_pct, "bytes": total, "residency": residency}
    if split:
        head = max(heads) if heads else max(s.nonpersistent_bytes for s in plan.segments)
        measured = sum(s.persistent_bytes for s in plan.segments) + head
        basis = ("sum of the segments' persistent bytes + the largest non-persistent part"
                 + (f" ({memory_plan} memory plan)" if heads else ""))
    else:
        measured = sum(s.arena_bytes for s in plan.segments)
        basis = ("sum of the segments' arenas" if len(plan.segments) > 1 else "the segment's arena")
    own = sum(own_per_segment)
    # 16 bytes of alignment slack per interpreter on top of the margin
    total = _align(math.ceil((measured + own) * (1.0 + margin_pct / 100.0)) + 16 * len(plan.segments))
    return {"measured_bytes": measured, "basis": basis, "source": "host", "own_kernel_bytes": own,
            "memory_plan": memory_plan, "residency": residency,
            "margin_pct": margin_pct, "bytes": total}


def own_kernel_arena_bytes(plan: Plan, memory_plan: str = "tflm", per_segment: bool = False):
    """What routevit's own kernels add to the arena beyond TFLM's kernels (render.OWN_KERNEL_BYTES),
    for the segments as embedded with `memory_plan` (in-place: SiLUs fused): the total, or a
    list per segment."""
    from toolchain.export.flatbuffer import read_graph, silu_muls

    per = []
    for seg in plan.segments:
        graph = read_graph(device_model.device_flatbuffer(seg.data, in_place=memory_plan == "in-place"))
        per.append(sum(render.OWN_KERNEL_BYTES.get(op.name, 0) for op in graph.ops)
                   + render.SILU_TABLE_BYTES * len(silu_muls(graph)))
    return per if per_segment else sum(per)


def model_context(plan: Plan, board: Board, margin_pct: float | None,
                  device=None, memory_plan: str = "in-place",
                  residency: str = "resident") -> tuple[dict, memory.MemoryBudget, dict]:
    """Template context, memory budget and report details for a plan on a board."""
    layers = plan.routed_layers
    # Which segment outputs must survive until later: other segments' inputs, routers, logits.
    needed = {(plan.logits.segment, plan.logits.output)}
    needed |= {(layer.router.segment, layer.router.output) for layer in layers}
    for seg in plan.segments:
        for entry in seg.inputs:
            if entry.source.kind == "segment_output":
                needed.add((entry.source.segment, entry.source.output))
    stage = {key: f"g_stage_{key[0]}_{key[1]}" for key in sorted(needed)}
    stages = [{"symbol": sym, "segment": s, "output": o, "name": plan.segments[s].outputs[o].name,
               "bytes": plan.segments[s].outputs[o].bytes} for (s, o), sym in sorted(stage.items())]

    from toolchain.export.tflm_check import operators

    seg_ctx = []
    embedded_segments, embedded_ops = [], []  # per segment, as embedded (SiLUs fused with the in-place plan)
    for seg in plan.segments:
        inputs = []
        for i, entry in enumerate(seg.inputs):
            src = entry.source
            kind = src.kind
            requant = (entry.requantize.to_dict() if kind == "segment_output" and entry.requantize is not None
                       else None)
            if kind == "image":
                expr, text = "image", "the int8 image"
            elif kind == "segment_output":
                expr = stage[(src.segment, src.output)]
                text = f"segment {src.segment} output {src.output}"
            else:
                expr = f"g_{kind}_{src.routed_layer}"
                text = f"routed layer {src.routed_layer} {kind} indices"
            inputs.append({"index": i, "name": entry.name, "src": expr, "source_text": text,
                           "bytes": entry.bytes, "requantize": requant})
        outputs = [{"index": o, "stage": stage.get((seg.index, o))} for o in range(len(seg.outputs))]
        routes_after = [{"index": layer.index, "name": layer.label,
                         "router_stage": stage[(layer.router.segment, layer.router.output)]}
                        for layer in layers if layer.router.segment == seg.index]
        embedded = device_model.device_flatbuffer(seg.data, in_place=memory_plan == "in-place")
        embedded_segments.append(embedded)
        embedded_ops.append(operators(embedded))
        seg_ctx.append({"index": seg.index, "file": seg.file, "sha256": seg.sha256, "bytes": len(embedded),
                        "device_sha256": device_model.sha256(embedded), "export_bytes": len(seg.data),
                        "head_bytes": device_model.head_bytes(embedded),
                        "hex_rows": _hex_rows(embedded), "inputs": inputs, "outputs": outputs,
                        "routes_after": routes_after})

    if residency not in ("resident", "swapped"):
        raise RoutevitError(f"residency {residency!r}: must be resident or swapped")
    swapped = residency == "swapped" and len(plan.segments) > 1
    arena = arena_plan(plan, margin_pct, device, board, [c["head_bytes"] for c in seg_ctx], memory_plan, residency)
    # Profiler records of one INFER_PROFILE: each op of each segment, inputs/Invoke/outputs per
    # segment, one per routed layer (+ one Prepare per segment when swapped).
    op_counts = [len(seg_ops) for seg_ops in embedded_ops]
    profile = {"op_counts": op_counts,
               "max_records": sum(n + 3 + swapped for n in op_counts) + len(layers)}
    shape = [int(v) for v in plan.input.shape]
    input_bytes = math.prod(shape)
    result_bytes = 10 + plan.num_classes + sum(2 * layer.num_experts for layer in layers)
    ops = plan.ops  # the builtins the TFLM library builds (a fused SiLU calls LOGISTIC's and MUL's code)
    custom_ops = sorted({name for seg_ops in embedded_ops for name, _ in seg_ops if name.startswith("CUSTOM:")})
    stack_bytes = STACK_BYTES
    runtime_objects = {"interpreter_bytes": INTERPRETER_OBJECT_BYTES,
                       "resolver_bytes": OP_RESOLVER_BASE_BYTES + OP_REGISTRATION_BYTES * (len(ops) + len(custom_ops))}
    image_readers = [(seg.index, i) for seg in plan.segments for i, entry in enumerate(seg.inputs)
                     if entry.source.kind == "image"]
    if not any(s == 0 for s, _ in image_readers):
        raise RoutevitError(f"{plan.path}: segment 0 does not read the image; re-export the model "
                            "(routevit export)")
    ctx = base_context(board, plan.sha256, [dict(layer.to_dict(), name=layer.label) for layer in layers],
                       extra_payload=max(input_bytes, result_bytes), stack_bytes=stack_bytes,
                       # RESULT, or one PROFILE_RECORDS answer with every record (header + 8 B each)
                       answer_payload=max(result_bytes, 4 + 8 * profile["max_records"]))
    logits_entry = plan.logits_entry
    class_names = plan.class_names or []
    # Between inferences only segment 0 is prepared when swapped: its head alone is what lies idle.
    idle = device_model.idle_region(embedded_segments[:1] if swapped else embedded_segments,
                                    image_input=next(i for s, i in image_readers if s == 0))
    frame_bytes = HEADER_BYTES + ctx["max_payload"] + CRC_BYTES
    # The evaluation firmware's frames go to the arena's idle head when they fit there.
    frame_in_arena = idle["bytes"] >= frame_bytes
    ctx.update({
        "segments": seg_ctx, "stages": stages, "arena": arena, "profile": profile, "ops": ops, "op_methods": tflm_op_methods(),
        "custom_ops": custom_ops,
        "idle": idle, "frame_in_arena": frame_in_arena,
        "own_kernels": render.own_kernels(ops + custom_ops),
        "own_kernel_sources": sorted({src for entry in render.own_kernels(ops + custom_ops).values()
                                      for src in entry["sources"] if src.endswith(".cc")}),
        "num_classes": plan.num_classes,
        "logits": {"stage": stage[(plan.logits.segment, plan.logits.output)],
                   "scale_literal": _float_literal(float(logits_entry.scale if logits_entry.scale is not None else 1.0))},
        "input": {"shape": shape, "bytes": input_bytes, "scale_literal": _float_literal(float(plan.input.scale)),
                  "zero_point": int(plan.input.zero_point),
                  "pixel_lut_rows": [", ".join(str(int(v)) for v in row) for row in plan.input.lut()]},
        "class_name_literals": [_c_string(class_names[c] if c < len(class_names) else "")
                                for c in range(plan.num_classes)],
        "max_plan_experts": max([layer.num_experts for layer in layers], default=0),
        "image_input_of_segment_0": next(i for s, i in image_readers if s == 0),
        "image_beyond_segment_0": any(s != 0 for s, _ in image_readers),
        "runtime_objects": runtime_objects,
        "swapped": swapped, "interpreter_slots": 1 if swapped else len(plan.segments),
    })

    budget = memory.MemoryBudget(board)
    model_region, arena_region = board.placement["model"], board.placement["arena"]
    for seg in seg_ctx:
        budget.add(f"model weights ({seg['file']})", _align(seg["bytes"]), model_region)
    budget.add("code: TFLM runtime + kernels for " + f"{len(ops)} ops + routevit", memory.code_estimate(ops),
               "flash", estimate=True)
    budget.add("tensor arena (one segment prepared at a time)" if swapped else "tensor arena (shared by all segments)",
               arena["bytes"], arena_region)
    if stages:
        budget.add("staging buffers (segment outputs kept between segments)",
                   sum(_align(s["bytes"]) for s in stages), "ram")
    routing_bytes = sum(4 * l.slots + 4 * l.choices + 2 * l.num_experts for l in layers)
    routing_bytes += 4 * ctx["max_dispatch_slots"] + 4 * ctx["max_combine_slots"] + 2 * ctx["max_experts"]
    budget.add("routing index buffers (dispatch, combine, counts)", routing_bytes, "ram")
    budget.add(f"profiler records ({profile['max_records']} x 8 bytes)", 8 * profile["max_records"], "ram")
    if frame_in_arena:
        budget.add("protocol answer buffer (frames land in the arena's idle head)", ctx["max_answer"] + 16, "ram")
    else:
        budget.add("protocol buffers (frame parser + answer)", ctx["max_payload"] + ctx["max_answer"] + 16, "ram")
    slots = ctx["interpreter_slots"]
    budget.add(f"TFLM interpreters ({slots} x {INTERPRETER_OBJECT_BYTES} B) and op resolver",
               slots * INTERPRETER_OBJECT_BYTES + runtime_objects["resolver_bytes"], "ram")
    if any(s != 0 for s, _ in image_readers):
        budget.add("quantized image (read by a segment after the first)", _align(input_bytes), "ram")
    budget.add("stack", stack_bytes, "ram")
    own_statics = sum(render.OWN_KERNEL_STATIC_BYTES.get(src, 0) for src in ctx["own_kernel_sources"])
    if own_statics:
        budget.add("routevit kernels' shared tables", own_statics, "ram")
    budget.add("other statics", OTHER_STATICS_BYTES, "ram", estimate=True)

    details = {
        "arena": arena,
        "segments": [{"file": s.file, "bytes": len(s.data), "sha256": s.sha256, "device_bytes": c["bytes"],
                      "device_sha256": c["device_sha256"], "arena_bytes": s.arena_bytes,
                      "persistent_bytes": s.persistent_bytes, "nonpersistent_bytes": s.nonpersistent_bytes,
                      # the head TFLM plans for the segment as embedded (memory_plan.py), vs
                      # nonpersistent_bytes: TFLM's own plan of the export's file
                      "device_nonpersistent_bytes": c["head_bytes"]}
                     for s, c in zip(plan.segments, seg_ctx)],
        "staging": stages and [{k: s[k] for k in ("segment", "output", "name", "bytes")} for s in stages],
        "routed_layers": [{"name": l.name or "", "num_patches": l.num_patches, "num_experts": l.num_experts,
                           "capacity": l.capacity, "top_k": l.top_k, "patch_area": l.patch_area,
                           "dim": l.dim, "expert_buffer_bytes": l.capacity * l.patch_area * l.dim}
                          for l in layers],
        "stack_bytes": stack_bytes,
        "max_payload": ctx["max_payload"],
        "idle_buffer": dict(idle, frame_in_arena=frame_in_arena),
    }
    return ctx, budget, details


def export_relative(plan: Plan, out: Path) -> str:
    import os

    return os.path.relpath(Path(plan.path).resolve().parent, Path(out).resolve())


def project_json(plan: Plan, board: Board, ctx: dict, details: dict, out: Path) -> dict:
    return {
        "format": FORMAT,
        "generated_by": render.header_lines(plan.sha256, board.id)[0],
        "routevit_version": toolchain.__version__,
        "board": board.id,
        "core": board.core,
        "core_family": board.core_family,
        "cpu_flags": list(board.cpu_flags),
        "fpu": board.fpu,
        "ops": ctx["ops"],
        "arena_bytes": ctx["arena"]["bytes"],
        # Set when the arena was sized from a device run: `routevit build` must use these kernels.
        "arena_kernels": ctx["arena"].get("kernels"),
        "memory_plan": ctx["arena"]["memory_plan"],
        # swapped: the firmware prepares each segment again on every inference
        "residency": ctx["arena"]["residency"],
        # routevit_model_idle_buffer: the arena bytes idle between inferences (the evaluation
        # firmware's frames land there when frame_in_arena)
        "idle_buffer": details["idle_buffer"],
        "plan_sha256": plan.sha256,
        # Where the export was, so `routevit emulate PROJ` finds its host reference (load_project
        # checks the sha256): relative to the project first (both moved together), then absolute.
        "export": {"path": str(Path(plan.path).resolve().parent), "relative": export_relative(plan, out),
                   "plan_sha256": plan.sha256},
        "segments": [{"file": s["file"], "bytes": s["bytes"], "sha256": s["sha256"]} for s in details["segments"]],
        "num_classes": plan.num_classes,
        "input": {"shape": ctx["input"]["shape"], "scale": float(plan.input.scale),
                  "zero_point": int(plan.input.zero_point)},
        "routed_layers": [{"num_patches": l.num_patches, "num_experts": l.num_experts, "capacity": l.capacity,
                           "top_k": l.top_k} for l in plan.routed_layers],
        "qemu": {"machine": board.qemu["machine"]} if board.qemu else None,
        "renode": board.renode,
        "clock_hz": board.clock_hz,
        "counter": board.counter,
        "uart": {"name": board.uart["name"], "kind": board.uart["kind"], "base": board.uart["base"],
                 "baud": board.uart["baud"]},
        "protocol": {"version": render.PROTOCOL_VERSION, "max_payload": ctx["max_payload"],
                     "stop_sentinel": STOP_SENTINEL.decode()},
        "targets": {"firmware": "build/firmware.elf", "selftest": "build/selftest.elf", "app": "build/app.elf"},
        "make_variables": ["TFLM_INCLUDES", "TFLM_LIB", "TFLM_DEFINES", "CROSS_COMPILE", "BUILD_DIR", "OPT_FLAGS",
                           "APP", "COMPILER_LAUNCHER"],
    }


def check_margin(arena_margin_pct: float | None) -> None:
    if arena_margin_pct is not None and not 0 <= arena_margin_pct <= 1000:
        raise RoutevitError(f"--arena-margin {arena_margin_pct}: must be between 0 and 1000 (percent)")


def generate(exp_dir: Path, board_id: str, out: Path, arena_margin_pct: float | None = None,
             arena_from: Path | None = None, memory_plan: str = "in-place", residency: str = "resident") -> dict:
    """Check everything, then write the project atomically. Returns a summary dict.

    arena_margin_pct None: 10% over the host measurement, 0% over a device one (`arena_from`,
    an emulate report of this export; toolchain/generate/arena.py)."""
    check_margin(arena_margin_pct)
    board = get_board(board_id)
    plan = read_plan(Path(exp_dir))
    device = None
    if arena_from is not None:
        from toolchain.generate.arena import read_device_arena

        device = read_device_arena(arena_from, plan)
    ctx, budget, details = model_context(plan, board, arena_margin_pct, device, memory_plan, residency)
    overflow = budget.overflow_message()
    if overflow:
        raise RoutevitError(f"{plan.path}: the model does not fit {board.id}: {overflow}; choose a board with "
                            "more memory (`routevit boards`) or a smaller model (width, experts, expert size)")
    header = render.header_lines(plan.sha256, board.id)
    report = memory.report_json(budget, header[0], details)
    with atomic_output_dir(Path(out)) as tmp:
        files = render.render_project(tmp, board, ctx, with_model=True)
        (tmp / "project.json").write_text(render.dump_json(project_json(plan, board, ctx, details, out)))
        (tmp / "memory_report.json").write_text(render.dump_json(report))
        (tmp / "memory_report.md").write_text(memory.report_markdown(budget, header, details) + "\n")
        files += ["memory_report.json", "memory_report.md", "project.json"]
    log.info("generated %s for %s from %s", out, board.id, plan.path)
    return {"project": str(Path(out).resolve()), "board": board.id, "plan_sha256": plan.sha256,
            "files": sorted(files), "arena_bytes": ctx["arena"]["bytes"], "ops": ctx["ops"],
            "memory": {r["region"]: {"used": r["used"], "size": r["size"]} for r in report["regions"]}}
