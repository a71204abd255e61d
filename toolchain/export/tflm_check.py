"""Check a segment op by op against TFLite Micro before anything is built.

Two checks: (1) no op from the dynamic-shape family (they appear when a batch or shape is not
static; TFLM refuses REDUCE_PROD, and the others mean the graph computes shapes at run time);
(2) the tflite-micro wheel, which registers every TFLM kernel, loads and prepares the segment:
a missing op ("Didn't find op for builtin opcode") or a kernel refusing a type at Prepare names
the op and the Keras layer it came from.
"""
from __future__ import annotations

import re

from toolchain.errors import RoutevitError
from toolchain.export import flatbuffer

DYNAMIC_SHAPE_OPS = frozenset({"SHAPE", "REDUCE_PROD", "FILL", "PACK", "UNPACK", "RANGE",
                               "BROADCAST_ARGS", "BROADCAST_TO", "WHERE"})


def builtin_names() -> dict:
    return flatbuffer.builtin_names()


def operators(data: bytes) -> list:
    """[(op name, [output tensor names])] of subgraph 0 in execution order."""
    graph = flatbuffer.read_graph(data)
    return [(op.name, [graph.tensors[t].name for t in op.outputs]) for op in graph.ops]


def op_names(data: bytes) -> list:
    return sorted({name for name, _ in operators(data)})


def layer_of(tensor_names, layer_names) -> str:
    """The Keras layer an op came from: the longest model layer name inside its tensor names."""
    best = ""
    for tensor in tensor_names:
        for layer in layer_names:
            if len(layer) > len(best) and re.search(rf"(^|[/;_]){re.escape(layer)}(/|;|:|$)", tensor):
                best = layer
    if best:
        return best.removeprefix("quant_")
    return tensor_names[0] if tensor_names else "?"


def check_segment(data: bytes, label: str, layer_names) -> object:
    """Refuse the segment (RoutevitError) unless TFLM can run it; returns the loaded interpreter."""
    from toolchain.hostref import tflm

    ops = operators(data)
    for name, outputs in ops:
        if name in DYNAMIC_SHAPE_OPS or name.startswith("CUSTOM"):
            raise RoutevitError(
                f"{label}: op {name} (from layer {layer_of(outputs, layer_names)}) "
                f"{'is a dynamic-shape op' if name in DYNAMIC_SHAPE_OPS else 'is a custom op'} "
                "that TFLite Micro cannot run; build the model with batch_size=1 and static shapes")
    interp, messages = tflm.load(data)
    if interp is not None:
        return interp
    missing = re.search(r"Didn't find op for builtin opcode '(\w+)'", messages)
    if missing:
        op = missing.group(1)
        where = [layer_of(outs, layer_names) for name, outs in ops if name == op]
        raise RoutevitError(f"{label}: op {op} (from layer {where[0] if where else '?'}) is not in "
                            "TFLite Micro; change that layer to ops TFLM has")
    failed = re.search(r"Node (\S+) \(number (\d+)\w*\) failed to prepare", messages)
    if failed:
        index = int(failed.group(2))
        name, outs = ops[index] if index < len(ops) else (failed.group(1), [])
        detail = messages.strip().splitlines()[0][:200]
        raise RoutevitError(f"{label}: op {name} (from layer {layer_of(outs, layer_names)}) is "
                            f"refused by TFLite Micro ({detail}); change that layer")
    raise RoutevitError(f"{label}: TFLite Micro cannot load this segment "
                        f"({' '.join(messages.split())[:300]}); check the model's ops")
