"""An offline memory plan for a segment: TFLM's greedy placement, plus in-place elementwise ops.

TFLM's GreedyMemoryPlanner gives every activation tensor its own buffer for its whole
lifetime. At an elementwise op whose input dies there, the output could take the input's
place: the kernel reads element i before it writes element i and never reads it again. In a
MobileViT the pattern is everywhere: SiLU is LOGISTIC then MUL, so at every MUL three
tensors of the block's widest shape (x, LOGISTIC(x), the product) are live; with the product
written over LOGISTIC(x) two are. Residual ADDs, GroupNorm's SUB/MUL/ADD chains and
RESHAPEs (TFLM's reshape skips its copy when input and output share a buffer) gain likewise.

The plan goes into the segment as TFLM's "OfflineMemoryAllocation" metadata (micro/docs/
memory_management.md: version, subgraphs, tensor count, one offset per tensor into the
arena's head, -1 = planned at run time). TFLM places what stays online (the kernels'
scratch buffers) around the fixed offsets.

Which ops may write over an input (every kernel the firmware and the tflite-micro wheel run
for them reads input element i, then writes output element i, in one pass):
- ADD, SUB, MUL, SQUARED_DIFFERENCE: TFLM reference, CMSIS-NN arm_elementwise_{add,mul}_s8,
  routevit's table kernels (int8_table.cc LookUpInt8 loads four, then stores four); with a
  broadcast, only the input whose shape equals the output's is overwritten, which the
  broadcast loops index like the output;
- LOGISTIC, QUANTIZE (int8 to int8), routevit's fused SiLU (CUSTOM:ROUTEVIT_SILU): elementwise
  tables and requantize loops;
- RESHAPE: a copy skipped when the buffers are the same.
Only int8 tensors of the output's byte size qualify, the input must not be a segment output,
and it must be last used by this op.

    >>> offsets, arena = plan_offsets(model, graph)        # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field

ALIGNMENT = 16  # MicroArenaBufferAlignment()
ONLINE = -1     # kOnlinePlannedBuffer
IN_PLACE_OPS = frozenset({"ADD", "SUB", "MUL", "SQUARED_DIFFERENCE", "LOGISTIC", "QUANTIZE", "RESHAPE",
                          "CUSTOM:ROUTEVIT_SILU"})
ELEMENT_BYTES = {"INT8": 1, "UINT8": 1, "INT16": 2, "INT32": 4, "FLOAT32": 4, "INT64": 8, "BOOL": 1}


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


@dataclass
class Buffer:
    """One arena buffer: the tensors sharing it and the op scopes it is live in (TFLM's
    AllocationInfo numbering: subgraph inputs at 0, op i at i + 1)."""
    tensors: list = field(default_factory=list)
    first: int = 0
    last: int = 0
    bytes: int = 0
    offset: int = ONLINE


def tensor_bytes(tensor) -> int:
    n = ELEMENT_BYTES.get(tensor.type, 0)
    for d in tensor.shape:
        n *= max(int(d), 0)
    return n


def lifetimes(graph, planned: set) -> dict:
    """{tensor: [first, last]} for the tensors in `planned`, as TFLM's
    AllocationInfoBuilder::MarkAllocationLifetimes counts them."""
    life = {}

    def touch(t, scope, create):
        if t not in planned:
            return
        if t not in life:
            life[t] = [scope, scope]
        elif create and life[t][0] > scope:
            life[t][0] = scope
        life[t][1] = max(life[t][1], scope)

    for t in graph.inputs:
        touch(t, 0, True)
    for i, op in enumerate(graph.ops, start=1):
        for t in op.outputs:
            touch(t, i, True)
        for t in op.inputs:
            if t >= 0:
                touch(t, i, False)
    end = len(graph.ops)
    for t in graph.outputs:
        touch(t, end, True)
    return life


def in_place_pairs(graph, life: dict) -> dict:
    """{output tensor: input tensor it may overwrite}."""
    outputs = set(graph.outputs)
    pairs = {}
    for i, op in enumerate(graph.ops, start=1):
        if op.name not in IN_PLACE_OPS or len(op.outputs) != 1:
            continue
        out = op.outputs[0]
        if out not in life or graph.tensors[out].type != "INT8":
            continue
        for t in op.inputs:
            if (t >= 0 and t in life and t not in outputs and life[t][1] == i
                    and graph.tensors[t].type == "INT8"
                    and tensor_bytes(graph.tensors[t]) == tensor_bytes(graph.tensors[out])
                    and (op.name == "RESHAPE" or graph.tensors[t].shape == graph.tensors[out].shape)):
                pairs[out] = t
                break
    return pairs


def greedy_place(buffers: list) -> int:
    """TFLM's greedy order (largest first, each at the lowest offset free for its lifetime);
    sets each buffer's offset and returns the head size."""
    placed = []
    for buf in sorted(buffers, key=lambda b: (-b.bytes, b.first, b.tensors[0])):
        overlapping = sorted((p for p in placed if p.first <= buf.last and buf.first <= p.last),
                             key=lambda p: p.offset)
        offset = 0
        for p in overlapping:
            if offset + buf.bytes <= p.offset:
                break
            offset = max(offset, p.offset + p.bytes)
        buf.offset = offset
        placed.append(buf)
    return max((b.offset + b.bytes for b in buffers), default=0)


def plan(graph, constant: set) -> tuple[list, int, int]:
    """(one offset per tensor, head bytes with in-place ops, head bytes without them) for
    subgraph `graph` (flatbuffer.Graph); `constant`: tensors holding data in the flatbuffer."""
    planned = {t for t, tensor in enumerate(graph.tensors)
               if t not in constant and tensor_bytes(tensor) > 0}
    life = lifetimes(graph, planned)
    separate = [Buffer([t], lo, hi, _align(tensor_bytes(graph.tensors[t]))) for t, (lo, hi) in life.items()]
    without = greedy_place(separate)

    pairs = in_place_pairs(graph, life)
    group_of = {}
    buffers = []
    for t in sorted(life, key=lambda t: (life[t][0], t)):
        source = pairs.get(t)
        if source is not None and source in group_of:
            buf = group_of[source]
        else:
            buf = Buffer(first=life[t][0], last=life[t][1])
            buffers.append(buf)
        buf.tensors.append(t)
        buf.first, buf.last = min(buf.first, life[t][0]), max(buf.last, life[t][1])
        buf.bytes = max(buf.bytes, _align(tensor_bytes(graph.tensors[t])))
        group_of[t] = buf
    head = greedy_place(buffers)
    offsets = [ONLINE] * len(graph.tensors)
    for buf in buffers:
        for t in buf.tensors:
            offsets[t] = buf.offset
    return offsets, head, without


def metadata_words(offsets: list) -> list:
    """The "OfflineMemoryAllocation" buffer: version 1, 1 subgraph, the offsets."""
    return [1, 1, len(offsets)] + list(offsets)
