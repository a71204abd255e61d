"""The one reader of TensorFlow Lite flatbuffers' graphs (segment .tflite files): operators in
execution order with their input/output tensor indices, and each tensor's name, shape and type.

    >>> graph = read_graph(open("EXP/segment_0.tflite", "rb").read())   # doctest: +SKIP
    >>> graph.ops[0].name, graph.tensors[graph.ops[0].outputs[0]].shape  # doctest: +SKIP
    ('CONV_2D', (1, 16, 16, 16))
"""
from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    type: str  # "INT8", "INT32", "FLOAT32", ...


@dataclass(frozen=True)
class Operator:
    name: str  # builtin name ("CONV_2D"), or "CUSTOM:<code>"
    inputs: tuple[int, ...]  # tensor indices, -1 = optional input absent
    outputs: tuple[int, ...]
    options: object  # the schema's BuiltinOptions table (or None), for op-specific readers


@dataclass(frozen=True)
class Graph:
    ops: tuple[Operator, ...]
    tensors: tuple[Tensor, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def schema():
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated

    return schema_py_generated


@functools.lru_cache(maxsize=1)
def builtin_names() -> dict:
    return {v: k for k, v in vars(schema().BuiltinOperator).items() if not k.startswith("_")}


@functools.lru_cache(maxsize=1)
def _type_names() -> dict:
    return {v: k for k, v in vars(schema().TensorType).items() if not k.startswith("_")}


def read_graph(flatbuffer: bytes) -> Graph:
    """Subgraph 0 of a .tflite flatbuffer."""
    model = schema().Model.GetRootAsModel(flatbuffer, 0)
    graph = model.Subgraphs(0)
    names, types = builtin_names(), _type_names()
    tensors = []
    for t in range(graph.TensorsLength()):
        tensor = graph.Tensors(t)
        shape = tuple(int(v) for v in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
        tensors.append(Tensor((tensor.Name() or b"").decode(), shape, types.get(tensor.Type(), str(tensor.Type()))))
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = names.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            name = f"CUSTOM:{(code.CustomCode() or b'').decode()}"
        ops.append(Operator(name, tuple(int(op.Inputs(j)) for j in range(op.InputsLength())),
                            tuple(int(op.Outputs(j)) for j in range(op.OutputsLength()) if op.Outputs(j) >= 0),
                            op.BuiltinOptions()))
    return Graph(tuple(ops), tuple(tensors), tuple(int(graph.Inputs(j)) for j in range(graph.InputsLength())),
                 tuple(int(graph.Outputs(j)) for j in range(graph.OutputsLength())))


def silu_muls(graph: Graph) -> list[int]:
    """Indices of the int8 MULs computing x * LOGISTIC(x) without broadcast: the ones routevit's
    MUL kernel turns into a table (firmware_templates/project/src/mul_kernel.h)."""
    logistic_of = {op.outputs[0]: op.inputs[0] for op in graph.ops
                   if op.name == "LOGISTIC" and op.outputs and graph.tensors[op.inputs[0]].type == "INT8"}
    found = []
    for i, op in enumerate(graph.ops):
        if op.name != "MUL" or len(op.inputs) != 2 or not op.outputs:
            continue
        a, b = op.inputs
        shapes = {graph.tensors[t].shape for t in (a, b, op.outputs[0])}
        int8 = all(graph.tensors[t].type == "INT8" for t in (a, b, op.outputs[0]))
        if int8 and len(shapes) == 1 and (logistic_of.get(b) == a or logistic_of.get(a) == b):
            found.append(i)
    return found


def silu_pairs(graph: Graph) -> list[tuple[int, int]]:
    """(LOGISTIC op, MUL op) index pairs of the SiLUs whose LOGISTIC(x) feeds nothing but the
    MUL(x, LOGISTIC(x)) of `silu_muls` and is no graph output: the pairs one fused op can
    replace (toolchain/generate/device_model.py)."""
    producer = {op.outputs[0]: i for i, op in enumerate(graph.ops) if op.outputs}
    readers: dict[int, int] = {}
    for op in graph.ops:
        for t in op.inputs:
            readers[t] = readers.get(t, 0) + 1
    outputs = set(graph.outputs)
    pairs = []
    for j in silu_muls(graph):
        a, b = graph.ops[j].inputs
        for x, s in ((a, b), (b, a)):
            i = producer.get(s)
            if (i is not None and graph.ops[i].name == "LOGISTIC" and graph.ops[i].inputs[0] == x
                    and readers.get(s) == 1 and s not in outputs):
                pairs.append((i, j))
                break
    return pairs
