"""Per-op profile of a firmware inference: the device's PROFILE records joined with what the
segments' flatbuffers say about each op (type, Keras layer, MACs).

    ops = segment_ops(plan)                       # static: per segment, per op
    table = profile_table(plan, records, unprofiled_counter, profiled_counter)

MACs are counted from tensor shapes, per invocation:
- CONV_2D: output elements x kh x kw x filter input channels;
- DEPTHWISE_CONV_2D: output elements x kh x kw;
- FULLY_CONNECTED: output elements x input depth (weights [units, depth]);
- BATCH_MATMUL: output elements x the contracted dimension.
Every other op (MUL, ADD, SUB, SOFTMAX, MEAN, ...) counts 0 MACs; its output elements are
reported as `elements` instead (element-wise work), so instructions per MAC are for the four
MAC ops only and the rest shows up as instructions without MACs.
"""
from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from dataclasses import dataclass

from toolchain import protocol
from toolchain.config import STAGES
from toolchain.errors import RoutevitError

MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL")
# Rows for the work outside the segments' ops (record kinds other than OP).
GLUE_ROWS = {protocol.ProfileKind.INPUTS: "(segment inputs)", protocol.ProfileKind.OUTPUTS: "(staging copies)",
             protocol.ProfileKind.ROUTING: "(routing)", protocol.ProfileKind.PREPARE: "(segment prepare, swapped)"}
INTERPRETER_ROW = "(TFLM interpreter)"


@dataclass(frozen=True)
class OpInfo:
    segment: int
    index: int
    op: str
    layer: str
    outputs: tuple[str, ...]
    output_shape: tuple[int, ...]
    macs: int
    elements: int


def layer_of(tensor_names) -> str | None:
    """The Keras layer an op belongs to, from its first output tensor's name: TFLite names it
    `[quant_]LAYER/...`, fused ops `a/...;b/...` (the last part is the op that produced it).
    None when the name says nothing (empty, `StatefulPartitionedCall:0`, `FakeQuant...`)."""
    if not tensor_names:
        return None
    parts = [p for p in tensor_names[0].split(";") if p]
    name = parts[-1] if parts else ""
    if "/" in name:
        return re.sub(r"^quant_", "", name.split("/")[0])
    name = re.sub(r"^quant_", "", name)
    return name if stage_of(name) != "other" else None


def stage_of(layer: str) -> str:
    if layer == "logits":
        return "head"
    for stage in (*STAGES, "head"):
        if layer == stage or layer.startswith(stage + "_"):
            return stage
    return "other"


def flatbuffer_ops(data: bytes, segment: int, output_layers=()) -> list[OpInfo]:
    """Every operator of subgraph 0, in execution order, with its MACs. An op's layer comes from
    its output tensor's name; a segment output is named after its signature, so its layer is the
    plan's name of that output (`output_layers`, in flatbuffer output order); an op whose names say
    nothing (the GATHERs and SLICEs of routed layers) gets the layer of the next op that has one
    (its consumer), or of the previous one at the end of a segment."""
    import numpy as np

    from toolchain.export.flatbuffer import read_graph, schema

    graph = read_graph(data)

    def shape(t: int) -> tuple[int, ...]:
        return graph.tensors[t].shape if t >= 0 else ()

    graph_outputs = {t: j for j, t in enumerate(graph.outputs)}
    out = []
    for i, op in enumerate(graph.ops):
        name, inputs, outputs = op.name, op.inputs, op.outputs
        out_names = tuple(graph.tensors[t].name for t in outputs)
        out_shape = shape(outputs[0]) if outputs else ()
        elements = int(np.prod(out_shape)) if out_shape else (1 if outputs else 0)
        macs = 0
        if name == "CONV_2D":
            _, kh, kw, cin = shape(inputs[1])
            macs = elements * kh * kw * cin
        elif name == "DEPTHWISE_CONV_2D":
            _, kh, kw, _ = shape(inputs[1])
            macs = elements * kh * kw
        elif name == "FULLY_CONNECTED":
            macs = elements * shape(inputs[1])[-1]
        elif name == "BATCH_MATMUL":
            adj_x = False
            if op.options is not None:
                options = schema().BatchMatMulOptions()
                options.Init(op.options.Bytes, op.options.Pos)
                adj_x = bool(options.AdjX())
            a = shape(inputs[0])
            macs = elements * (a[-2] if adj_x else a[-1])
        layer = layer_of(out_names)
        if outputs and outputs[0] in graph_outputs and graph_outputs[outputs[0]] < len(output_layers):
            layer = output_layers[graph_outputs[outputs[0]]]
        out.append(OpInfo(segment, i, name, layer, out_names, out_shape, int(macs),
                          0 if name in MAC_OPS else elements))
    # Ops without a layer of their own: the next op's, else the previous op's.
    following = None
    for k in range(len(out) - 1, -1, -1):
        if out[k].layer is None and following is not None:
            out[k] = dataclasses.replace(out[k], layer=following)
        following = out[k].layer or following
    previous = "?"
    for k, info in enumerate(out):
        if info.layer is None:
            out[k] = dataclasses.replace(info, layer=previous)
        previous = out[k].layer
    return out


def segment_ops(plan, fused: bool = False) -> list[list[OpInfo]]:
    """The ops of each segment as the device runs them; `fused`: the project embeds them with
    their SiLUs fused (generate --memory-plan in-place): each fused LOGISTIC is gone and its MUL
    is the fused op, so op indices are the device's."""
    from toolchain.generate.device_model import SILU_OP, silu_fusions

    out = []
    for seg in plan.segments:
        ops = flatbuffer_ops(seg.data, seg.index, [o.name for o in seg.outputs])
        if fused:
            pairs = silu_fusions(bytes(seg.data))
            gone, fused_muls = {i for i, _ in pairs}, {j for _, j in pairs}
            ops = [dataclasses.replace(info, op=SILU_OP) if info.index in fused_muls else info
                   for info in ops if info.index not in gone]
            ops = [dataclasses.replace(info, index=k) for k, info in enumerate(ops)]
        out.append(ops)
    return out


def check_records(plan, ops: list[list[OpInfo]], records, what: str) -> None:
    """The device must have recorded each op of each segment exactly once, in order."""
    got = defaultdict(list)
    for r in records:
        if r.kind == protocol.ProfileKind.OP:
            got[r.segment].append(r.index)
    for seg_ops in ops:
        if not seg_ops:
            continue
        seg = seg_ops[0].segment
        if got.get(seg, []) != list(range(len(seg_ops))):
            raise RoutevitError(f"{what}: the device profiled {len(got.get(seg, []))} op invocations of segment "
                                f"{seg}, its flatbuffer has {len(seg_ops)} ops; regenerate and rebuild the project "
                                "(a build with --strip-error-strings has no TFLM profiler hook)")


def profile_table(plan, records, unprofiled_counter: int | None, profiled_counter: int | None,
                  ops: list[list[OpInfo]] | None = None, what: str = "profile") -> dict:
    """Rows (one per op, plus the glue between ops), summaries by layer, stage and op type, and
    the agreement of the profile's total with the whole-inference counter."""
    ops = ops if ops is not None else segment_ops(plan)
    check_records(plan, ops, records, what)
    by_key = {(r.segment, r.index): r.counter for r in records if r.kind == protocol.ProfileKind.OP}
    rows = []
    for seg_ops in ops:
        for info in seg_ops:
            count = by_key[(info.segment, info.index)]
            rows.append({"segment": info.segment, "op_index": info.index, "op": info.op, "layer": info.layer,
                         "stage": stage_of(info.layer), "output_shape": list(info.output_shape),
                         "instructions": count, "macs": info.macs, "elements": info.elements,
                         "instructions_per_mac": round(count / info.macs, 4) if info.macs else None})
    ops_total = sum(r["instructions"] for r in rows)
    invoke = {r.segment: r.counter for r in records if r.kind == protocol.ProfileKind.INVOKE}
    glue = []
    for seg_ops in ops:
        if not seg_ops:
            continue
        seg = seg_ops[0].segment
        inside = sum(by_key[(o.segment, o.index)] for o in seg_ops)
        glue.append({"segment": seg, "op_index": None, "op": INTERPRETER_ROW, "layer": INTERPRETER_ROW,
                     "stage": "glue", "instructions": max(0, invoke.get(seg, inside) - inside), "macs": 0,
                     "elements": 0, "instructions_per_mac": None})
    for r in records:
        if r.kind in GLUE_ROWS:
            label = GLUE_ROWS[protocol.ProfileKind(r.kind)]
            glue.append({"segment": r.segment, "op_index": None, "op": label, "layer": label, "stage": "glue",
                         "routed_layer": r.index if r.kind == protocol.ProfileKind.ROUTING else None,
                         "instructions": r.counter, "macs": 0, "elements": 0, "instructions_per_mac": None})
    glue_total = sum(g["instructions"] for g in glue)
    total = ops_total + glue_total
    macs = sum(r["macs"] for r in rows)
    mac_rows = [r for r in rows if r["macs"]]
    mac_instructions = sum(r["instructions"] for r in mac_rows)

    def summary(key: str) -> list[dict]:
        groups: dict = {}
        for r in rows + glue:
            g = groups.setdefault(r[key], {key: r[key], "ops": 0, "instructions": 0, "macs": 0, "elements": 0})
            g["ops"] += 1 if r["op_index"] is not None else 0
            g["instructions"] += r["instructions"]
            g["macs"] += r["macs"]
            g["elements"] += r["elements"]
        out = sorted(groups.values(), key=lambda g: -g["instructions"])
        for g in out:
            g["share"] = round(g["instructions"] / total, 6) if total else None
            g["instructions_per_mac"] = round(g["instructions"] / g["macs"], 4) if g["macs"] else None
        return out

    agreement = {
        "unprofiled_counter": unprofiled_counter,
        "profiled_counter": profiled_counter,
        "profile_total": total,
        "ops_total": ops_total,
        "glue_total": glue_total,
        # profile total vs the whole-inference count of a plain INFER (the RESULT counter)
        "relative_difference": (round((total - unprofiled_counter) / unprofiled_counter, 6)
                                if unprofiled_counter else None),
        # what switching the profiler on costs: INFER_PROFILE's RESULT minus INFER's
        "profiler_overhead": (profiled_counter - unprofiled_counter
                              if profiled_counter is not None and unprofiled_counter is not None else None),
    }
    if unprofiled_counter and agreement["profiler_overhead"] is not None:
        agreement["profiler_overhead_share"] = round(agreement["profiler_overhead"] / unprofiled_counter, 6)
    return {
        "rows": rows,
        "glue": glue,
        "by_layer": summary("layer"),
        "by_stage": summary("stage"),
        "by_op": summary("op"),
        "totals": {"instructions": total, "macs": macs, "mac_op_instructions": mac_instructions,
                   "instructions_per_mac": round(total / macs, 4) if macs else None,
                   "mac_op_instructions_per_mac": round(mac_instructions / macs, 4) if macs else None,
                   "ops": len(rows)},
        "agreement": agreement,
        "mac_rule": ("MACs from tensor shapes for " + ", ".join(MAC_OPS) + "; every other op (MUL, ADD, SUB, "
                     "SOFTMAX, MEAN, ...) counts 0 MACs and its output elements are given as `elements`"),
    }


def profile_images(session, plan, images_q, indices, unprofiled: dict[int, int], timeout_s: float,
                   ops=None) -> dict:
    """INFER_PROFILE images `indices` on `session`; the profile of the first one plus, per image,
    the profiled totals (counts are static for a fixed graph: the images should agree)."""
    ops = ops if ops is not None else segment_ops(plan)
    per_image = []
    table = None
    for index in indices:
        result, records = session.infer_profile(images_q[index], what=f"INFER_PROFILE image {index}",
                                                timeout_s=timeout_s)
        t = profile_table(plan, records, unprofiled.get(index), result.counter, ops=ops,
                          what=f"{session.link.target}: INFER_PROFILE image {index}")
        per_image.append({"index": int(index), **t["agreement"]})
        if table is None:
            table = t
            table["image"] = int(index)
    if table is None:
        return {}
    table["images"] = per_image
    return table
