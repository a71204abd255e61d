"""The segment flatbuffers as the device gets them: the export's .tflite with what TFLM never
reads taken out, so the weights' flash shrinks without one computed value changing.

What goes, and why TFLM (90b983c2) does not miss it:
- per-channel zero-point vectors whose values are all equal become one value. Every int8
  weight and int32 bias is symmetric (zero point 0 in each channel), and the converter writes
  an int64 per channel: 8 bytes of flash per output channel, twice per conv. MicroAllocator
  reads `zero_point()->Get(0)` for every channel when the vector is shorter than the scales
  (micro_allocator.cc, "As a space-saving optimization...");
- the per-channel scales of the int32 biases of CONV_2D and DEPTHWISE_CONV_2D: the kernels
  derive their per-channel multipliers from the input, filter and output scales alone
  (kernel_util.cc PopulateConvolutionQuantizationParams; the bias scale check there is a
  TODO and only for uint8), and the first scale, which becomes `params.scale`, stays;
- tensor and subgraph names, the signature defs and quantization min/max: TFLM looks up
  tensors by index and never reads them;
- metadata entries other than "OfflineMemoryAllocation" (the only one TFLM reads); their
  buffers are emptied, so buffer indices stay as they are.

With the in-place memory plan, each SiLU whose LOGISTIC(x) feeds only its MUL(x, LOGISTIC(x))
also becomes one custom op, ROUTEVIT_SILU(x, q) -> y (`fuse_silu`; q: a one-byte constant with
the LOGISTIC output's quantization), which routevit's kernel runs as TFLM's LOGISTIC then MUL
folded into a 256-entry table (firmware_templates/project/src/silu_kernel.h): the LOGISTIC's
output tensor, as large as x, is gone from the arena, and y can be planned over x. The wheel
has no such op, so that segment's values are checked by the host g++ build of the kernel
(tests/test_own_kernels.py) and on QEMU/Renode; `head_bytes` measures it on a memory twin.

Buffer data stays 16-byte aligned as the converter writes it (TFLM reads int32 biases and
CMSIS-NN reads weights through word loads in place).

The host reference keeps running the export's files; tests/test_generate.py checks that the
tflite-micro wheel gives identical outputs for both on random inputs, and the QEMU/Renode
bit-exactness tests run the compacted ones.

    >>> small = device_flatbuffer(open("EXP/segment_0.tflite", "rb").read())  # doctest: +SKIP
    >>> len(small) < len(open("EXP/segment_0.tflite", "rb").read())           # doctest: +SKIP
    True
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np

from toolchain.errors import RoutevitError
from toolchain.export.flatbuffer import schema

# The metadata entry TFLM reads (micro_allocation_info.cc kOfflineMemAllocMetadata).
TFLM_METADATA = {b"OfflineMemoryAllocation"}
BUFFER_ALIGNMENT = 16
# Builtin codes (schema BuiltinOperator) whose int32 bias scales no int8 kernel reads.
PER_CHANNEL_BIAS_OPS = {3, 4}  # CONV_2D, DEPTHWISE_CONV_2D
TFLITE_FILE_IDENTIFIER = b"TFL3"
SILU_CUSTOM_CODE = "ROUTEVIT_SILU"
SILU_OP = f"CUSTOM:{SILU_CUSTOM_CODE}"  # its name in flatbuffer.read_graph


def _aligned_buffer_class():
    base = schema().BufferT

    class AlignedBufferT(base):
        """A Buffer whose data vector starts on a 16-byte boundary (the generated Pack aligns
        to 1)."""

        def Pack(self, builder):
            data = None
            if self.data is not None and len(self.data):
                payload = np.asarray(self.data, dtype=np.uint8).tobytes()
                builder.StartVector(1, len(payload), BUFFER_ALIGNMENT)
                builder.head = builder.head - len(payload)
                builder.Bytes[builder.head:builder.head + len(payload)] = payload
                builder.vectorNumElems = len(payload)
                data = builder.EndVector()
            fb = schema()
            fb.BufferStart(builder)
            if data is not None:
                fb.BufferAddData(builder, data)
            fb.BufferAddOffset(builder, self.offset)
            fb.BufferAddSize(builder, self.size)
            return fb.BufferEnd(builder)

    return AlignedBufferT


@functools.lru_cache(maxsize=64)
def _compact(data: bytes, in_place: bool) -> bytes:
    fb = schema()
    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    offline = _offline_plan(data, model) if in_place else None
    conv_codes = {i for i, code in enumerate(model.operatorCodes or [])
                  if max(code.builtinCode, code.deprecatedBuiltinCode) in PER_CHANNEL_BIAS_OPS}
    for graph in model.subgraphs or []:
        graph.name = None
        biases = {int(op.inputs[2]) for op in graph.operators or []
                  if op.opcodeIndex in conv_codes and len(op.inputs) > 2 and op.inputs[2] >= 0}
        for t in biases:
            q = graph.tensors[t].quantization
            if graph.tensors[t].type == fb.TensorType.INT32 and q is not None and q.scale is not None \
                    and len(q.scale) > 1:
                q.scale = [q.scale[0]]
                q.zeroPoint = [int(q.zeroPoint[0])] if q.zeroPoint is not None and len(q.zeroPoint) else q.zeroPoint
        for tensor in graph.tensors or []:
            tensor.name = None
            q = tensor.quantization
            if q is None:
                continue
            q.min = q.max = None
            zp = q.zeroPoint
            if zp is not None and len(zp) > 1 and np.all(np.asarray(zp) == zp[0]):
                q.zeroPoint = [int(zp[0])]
    model.signatureDefs = None
    kept = []
    for entry in model.metadata or []:
        if entry.name in TFLM_METADATA:
            kept.append(entry)
        elif 0 <= entry.buffer < len(model.buffers or []):
            model.buffers[entry.buffer].data = None
    if offline is not None and not kept:
        entry = fb.MetadataT()
        entry.name = b"OfflineMemoryAllocation"
        entry.buffer = len(model.buffers)
        plan_buffer = fb.BufferT()
        plan_buffer.data = np.asarray(offline, dtype="<i4").view(np.uint8)
        plan_buffer.offset = plan_buffer.size = 0
        model.buffers.append(plan_buffer)
        kept.append(entry)
    model.metadata = kept or None
    aligned = _aligned_buffer_class()
    buffers = []
    for buf in model.buffers or []:
        new = aligned()
        new.data, new.offset, new.size = buf.data, buf.offset, buf.size
        if buf.offset:
            raise RoutevitError("a segment keeps its weights outside the flatbuffer (buffer offsets); "
                                "re-export it with `routevit export` (segments over 2 GB are not supported)")
        buffers.append(new)
    model.buffers = buffers
    return _pack(model, len(data))


def _offline_plan(data: bytes, model) -> list | None:
    """The OfflineMemoryAllocation words of memory_plan.py for subgraph 0, or None when
    in-place ops would not make the head smaller (TFLM then plans as it always does)."""
    from toolchain.export.flatbuffer import read_graph
    from toolchain.generate import memory_plan

    if len(model.subgraphs or []) != 1:
        return None
    graph = read_graph(data)
    tensors = model.subgraphs[0].tensors or []
    constant = {t for t, tensor in enumerate(tensors)
                if 0 < tensor.buffer < len(model.buffers) and model.buffers[tensor.buffer].data is not None
                and len(model.buffers[tensor.buffer].data)}
    offsets, head, without = memory_plan.plan(graph, constant)
    return memory_plan.metadata_words(offsets) if head < without else None


def _pack(model, size_hint: int = 1024) -> bytes:
    builder = __import__("flatbuffers").Builder(size_hint)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_FILE_IDENTIFIER)
    return bytes(builder.Output())


def _drop_tensors(graph, dead: set) -> None:
    """Removes tensors `dead` (used by no op) from subgraph `graph` (object API), renumbering."""
    remap, kept = {}, []
    for t, tensor in enumerate(graph.tensors):
        if t not in dead:
            remap[t] = len(kept)
            kept.append(tensor)
    graph.tensors = kept

    def renumber(indices):
        return None if indices is None else [remap[int(t)] if t >= 0 else int(t) for t in indices]

    for op in graph.operators:
        op.inputs, op.outputs = renumber(op.inputs), renumber(op.outputs)
        op.intermediates = renumber(op.intermediates)
    graph.inputs, graph.outputs = renumber(graph.inputs), renumber(graph.outputs)


@functools.lru_cache(maxsize=64)
def silu_fusions(data: bytes) -> tuple[tuple[int, int], ...]:
    """The (LOGISTIC, MUL) op index pairs of `data` that `fuse_silu` fuses: flatbuffer.silu_pairs
    whose MUL has no fused activation."""
    from toolchain.export.flatbuffer import read_graph, silu_pairs

    model = schema().Model.GetRootAsModel(data, 0)
    if model.SubgraphsLength() != 1:
        return ()
    graph = read_graph(data)
    found = []
    for i, j in silu_pairs(graph):
        options = graph.ops[j].options
        if options is not None:
            mul = schema().MulOptions()
            mul.Init(options.Bytes, options.Pos)
            if mul.FusedActivationFunction() != 0:
                continue
        found.append((i, j))
    return tuple(found)


@functools.lru_cache(maxsize=64)
def fuse_silu(data: bytes) -> bytes:
    """`data` with every fusable SiLU (flatbuffer.silu_pairs, MUL without a fused activation)
    as one ROUTEVIT_SILU op in the MUL's place; the LOGISTIC and its output are removed.
    Returns `data` itself when there is none."""
    pairs = silu_fusions(data)
    if not pairs:
        return data
    fb = schema()
    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    graph = model.subgraphs[0]
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.CUSTOM
    code.customCode = SILU_CUSTOM_CODE.encode()
    code.version = 1
    model.operatorCodes.append(code)
    dead_ops, dead_tensors = set(), set()
    for i, j in pairs:
        x, s = int(graph.operators[i].inputs[0]), int(graph.operators[i].outputs[0])
        quantization = fb.QuantizationParametersT()
        quantization.scale = [float(v) for v in graph.tensors[s].quantization.scale]
        quantization.zeroPoint = [int(v) for v in graph.tensors[s].quantization.zeroPoint]
        constant = fb.TensorT()
        constant.shape, constant.type, constant.quantization = [1], fb.TensorType.INT8, quantization
        constant.buffer = len(model.buffers)
        holder = fb.BufferT()
        holder.data = np.zeros(1, np.uint8)  # the value is never read; data makes it a constant
        model.buffers.append(holder)
        graph.tensors.append(constant)
        mul = graph.operators[j]
        mul.opcodeIndex = len(model.operatorCodes) - 1
        mul.inputs = [x, len(graph.tensors) - 1]
        mul.builtinOptionsType, mul.builtinOptions = 0, None
        dead_ops.add(i)
        dead_tensors.add(s)
    graph.operators = [op for k, op in enumerate(graph.operators) if k not in dead_ops]
    model.signatureDefs = None  # their tensor indices would be stale; _compact drops them anyway
    _drop_tensors(graph, dead_tensors)
    return _pack(model)


def device_flatbuffer(data: bytes, in_place: bool = True, fuse: bool | None = None) -> bytes:
    """The segment `data` (a .tflite flatbuffer) as the firmware embeds it; `in_place`: with
    the offline memory plan of memory_plan.py (in-place elementwise ops); `fuse` (default: as
    `in_place`): with its SiLUs fused (`fuse_silu`)."""
    data = bytes(data)
    if in_place if fuse is None else fuse:
        data = fuse_silu(data)
    return _compact(data, bool(in_place))


def memory_twin(device_data: bytes) -> bytes:
    """`device_data` with each ROUTEVIT_SILU(x, q) -> y run as TFLM's MUL(x, q) -> y: the same
    tensors, lifetimes and offline plan, no scratch buffer either way, so the wheel plans the
    same head; its values mean nothing."""
    fb = schema()
    model = fb.ModelT.InitFromPackedBuf(bytearray(device_data), 0)
    codes = model.operatorCodes or []
    custom = {k for k, c in enumerate(codes) if (c.customCode or b"") == SILU_CUSTOM_CODE.encode()}
    if not custom:
        return device_data
    mul = next((k for k, c in enumerate(codes) if max(c.builtinCode, c.deprecatedBuiltinCode)
                == fb.BuiltinOperator.MUL), None)
    if mul is None:
        code = fb.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.MUL
        code.version = 1
        codes.append(code)
        mul = len(codes) - 1
    for op in model.subgraphs[0].operators:
        if op.opcodeIndex in custom:
            op.opcodeIndex = mul
            op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.MulOptions, fb.MulOptionsT()
    return _pack(model)


def planned_offsets(device_data: bytes) -> list | None:
    """The arena-head offset of each tensor from a device segment's OfflineMemoryAllocation
    metadata (memory_plan.ONLINE for tensors TFLM plans), or None when it has none."""
    fb = schema()
    model = fb.Model.GetRootAsModel(device_data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() in TFLM_METADATA:
            words = model.Buffers(entry.Buffer()).DataAsNumpy().view("<i4")
            return [int(v) for v in words[3:3 + int(words[2])]]
    return None


def idle_region(segments: list[bytes], image_input: int) -> dict:
    """Where the arena is idle between two inferences, from the device segments' offline plans:
    every segment's tensors lie in [0, extent) of the arena (TFLM places all interpreters'
    heads from its start), and nothing there is live between inferences except segment 0's
    image input (graph input `image_input`). {"offset", "bytes", "image_offset", "extent"} of
    the larger side of that input; bytes 0 when segment 0 has no offline plan. (A segment TFLM
    plans itself only adds to the head; the extent counts the offline-planned ones, which lie
    exactly where their plans say.)"""
    from toolchain.export.flatbuffer import read_graph
    from toolchain.generate.memory_plan import ALIGNMENT, ONLINE, tensor_bytes

    none = {"offset": 0, "bytes": 0, "image_offset": 0, "extent": 0}
    if planned_offsets(segments[0]) is None:
        return none
    extent = 0
    for data in segments:
        offsets = planned_offsets(data)
        if offsets is None:
            continue
        graph = read_graph(data)
        extent = max([extent] + [o + tensor_bytes(graph.tensors[t]) for t, o in enumerate(offsets) if o != ONLINE])
    graph = read_graph(segments[0])
    image = graph.inputs[image_input]
    start = planned_offsets(segments[0])[image]
    if start == ONLINE:
        return none
    end = -(-(start + tensor_bytes(graph.tensors[image])) // ALIGNMENT) * ALIGNMENT
    before, after = start, max(0, extent - end)
    offset, size = (0, before) if before >= after else (end, after)
    return {"offset": offset, "bytes": size, "image_offset": start, "extent": extent}


@functools.lru_cache(maxsize=64)
def head_bytes(device_data: bytes) -> int:
    """The arena head (non-persistent bytes) the tflite-micro wheel plans for a device
    flatbuffer: with its offline plan when it has one, on its `memory_twin` when it has
    ROUTEVIT_SILU ops."""
    from toolchain.export.flatbuffer import read_graph
    from toolchain.hostref import tflm

    device_data = memory_twin(device_data)
    interp, messages = tflm.load(device_data)
    if interp is None:
        raise RoutevitError(f"TFLite Micro refuses a device segment ({' '.join(messages.split())[:200]}); "
                            "regenerate with --memory-plan tflm and report this")
    graph = read_graph(device_data)
    dtypes = {"INT8": np.int8, "INT32": np.int32, "INT16": np.int16, "FLOAT32": np.float32, "INT64": np.int64}
    tflm.invoke(interp, [np.zeros(graph.tensors[t].shape, dtypes[graph.tensors[t].type]) for t in graph.inputs])
    return tflm.arena_usage(interp)["nonpersistent"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
