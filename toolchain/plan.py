"""EXP/plan.json (`routevit-plan/1`, docs/design.md "Export: segments and plan.json"): the one
reader, validator and writer.

    >>> from toolchain.plan import read_plan
    >>> plan = read_plan("runs/exp")                                    # doctest: +SKIP
    >>> plan.input.shape, plan.num_classes, plan.routed_layers[0].capacity  # doctest: +SKIP
    >>> plan.segments[1].inputs[2].source.kind, plan.segments[0].data[:4]  # doctest: +SKIP

`read_plan(exp_dir)` parses plan.json into typed dataclasses (`Plan`, `Segment`, `TensorEntry`,
`Source`, `Requantize`, `RoutedLayer`, `ModelInput`, `Memory`, ...) and runs `validate_plan`:
every segment file against its sha256 and size, TensorFlow Lite's flatbuffer verifier, its op
list and TFLM's kernel table, its input/output tensors against the plan's entries; then the
routing (sources, dispatch/combine sizes, routers, logits). Each failure is one
`RoutevitError` line naming the file. `write_plan(exp_dir, plan)` validates the same way (the
segment files must already be in exp_dir) and writes plan.json.

Every object remembers the JSON keys it was read with (their order too) and keeps keys it does
not know in `extra`, so `Plan.to_dict()` gives back the dict it was read from: a plan read and
written again is byte-identical (`json.dumps(plan.to_dict(), indent=2) + "\\n"`).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import numpy as np

from toolchain.errors import RoutevitError

FORMAT = "routevit-plan/1"
PLAN = "plan.json"
REDO = "export again (`routevit export QRUN --out EXP`)"

_ITEMSIZE = {"int8": 1, "uint8": 1, "int16": 2, "int32": 4, "float32": 4, "int64": 8}


# ---------------------------------------------------------------------------------------- types
@dataclass(kw_only=True)
class _Json:
    """Base of the plan's objects: `to_dict()` = the JSON object, keys in the order read."""

    keys: tuple | None = field(default=None, repr=False, compare=False)  # JSON keys as read
    extra: dict = field(default_factory=dict, repr=False, compare=False)  # keys not typed here
    _LOCAL: ClassVar[frozenset] = frozenset()  # attributes that are not JSON keys
    _OMIT_NONE: ClassVar[frozenset] = frozenset()  # keys left out when None (built in code)

    def _json_names(self) -> list:
        return [f.name for f in fields(self) if f.name not in ("keys", "extra") and f.name not in self._LOCAL]

    def to_dict(self) -> dict:
        names = self._json_names()
        if self.keys is not None:
            order = list(self.keys)
            order += [n for n in names if n not in order and getattr(self, n) is not None]
        else:
            order = [n for n in names if not (n in self._OMIT_NONE and getattr(self, n) is None)]
        order += [k for k in self.extra if k not in order]
        out = {}
        for key in order:
            if key in names:
                out[key] = _dump(getattr(self, key))
            elif key in self.extra:
                out[key] = copy.deepcopy(self.extra[key])
        return out


def _dump(value):
    if isinstance(value, _Json):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


@dataclass(kw_only=True)
class Source(_Json):
    """Where a segment input comes from: kind "image", "segment_output" (segment, output),
    "dispatch" or "combine" (routed_layer)."""

    kind: str
    segment: int | None = None
    output: int | None = None
    routed_layer: int | None = None
    _OMIT_NONE: ClassVar[frozenset] = frozenset({"segment", "output", "routed_layer"})


@dataclass(kw_only=True)
class Requantize(_Json):
    """int8 -> int8 at a boundary: TFLM MultiplyByQuantizedMultiplier(x - in_zp) + out_zp."""

    in_scale: float
    in_zero_point: int
    out_scale: float
    out_zero_point: int
    multiplier: int  # Q31
    shift: int  # > 0 = left shift


@dataclass(kw_only=True)
class TensorEntry(_Json):
    """One segment input or output, in the flatbuffer's order. Outputs have no source."""

    name: str
    shape: list
    dtype: str
    scale: float | None = None
    zero_point: int | None = None
    source: Source | None = None
    requantize: Requantize | None = None
    _OMIT_NONE: ClassVar[frozenset] = frozenset({"scale", "zero_point", "source", "requantize"})

    @property
    def size(self) -> int:
        """Number of values."""
        return int(math.prod(self.shape))

    @property
    def bytes(self) -> int:
        return self.size * _ITEMSIZE.get(self.dtype, 1)


@dataclass(kw_only=True)
class Arena(_Json):
    """TFLM RecordingMicroAllocator figures of one segment (host x86_64)."""

    total: int
    persistent: int
    nonpersistent: int


@dataclass(kw_only=True)
class Segment(_Json):
    index: int
    file: str
    sha256: str
    bytes: int
    ops: list  # sorted TFLite builtin names
    arena_bytes: int
    persistent_bytes: int | None = None
    nonpersistent_bytes: int | None = None
    arena: Arena | None = None
    inputs: list = field(default_factory=list)  # [TensorEntry]
    outputs: list = field(default_factory=list)  # [TensorEntry]
    # filled in by validate_plan (read_plan / write_plan): the checked file
    path: Path | None = field(default=None, repr=False, compare=False)
    data: bytes | None = field(default=None, repr=False, compare=False)
    _LOCAL: ClassVar[frozenset] = frozenset({"path", "data"})
    _OMIT_NONE: ClassVar[frozenset] = frozenset({"persistent_bytes", "nonpersistent_bytes", "arena"})


@dataclass(kw_only=True)
class TensorRef(_Json):
    """A segment output: the router of a routed layer, or the logits."""

    segment: int
    output: int


@dataclass(kw_only=True)
class RoutedLayer(_Json):
    index: int
    router: TensorRef
    num_patches: int  # N
    patch_area: int  # P
    dim: int  # d
    num_experts: int  # E
    top_k: int  # k
    capacity: int  # C: slots per expert
    name: str | None = None  # the transformer block
    router_layer: str | None = None
    experts_layer: str | None = None
    segment: int | None = None  # the segment that takes its dispatch / combine
    capacity_factor: float | None = None
    expert_hidden: int | None = None
    _OMIT_NONE: ClassVar[frozenset] = frozenset({"name", "router_layer", "experts_layer", "segment",
                                                 "capacity_factor", "expert_hidden"})

    @property
    def label(self) -> str:
        return self.name or f"routed layer {self.index}"

    @property
    def slots(self) -> int:
        """E*C: the dispatch tensor's length."""
        return self.num_experts * self.capacity

    @property
    def choices(self) -> int:
        """k*N: the combine tensor's length."""
        return self.top_k * self.num_patches


@dataclass(kw_only=True)
class Normalization(_Json):
    mean: list
    std: list


@dataclass(kw_only=True)
class ModelInput(_Json):
    """The image tensor [1, H, W, C] int8, how pixels were normalised, and the pixel table."""

    shape: list
    dtype: str
    scale: float
    zero_point: int
    normalization: Normalization | None = None
    pixel_lut: list | None = None  # [C][256] int8 value of each uint8 pixel
    _OMIT_NONE: ClassVar[frozenset] = frozenset({"normalization", "pixel_lut"})

    @property
    def channels(self) -> int:
        return int(self.shape[3])

    def lut(self) -> list:
        """The plan's pixel table, or (older plans without one) the same table computed."""
        if self.pixel_lut is not None:
            return self.pixel_lut
        norm = self.normalization or Normalization(mean=[0.5], std=[0.5])
        return pixel_lut(norm, self.scale, self.zero_point, self.channels)


@dataclass(kw_only=True)
class Model(_Json):
    num_classes: int
    input: ModelInput
    config: dict | None = None  # ModelConfig.to_dict()
    class_names: list | None = None
    _OMIT_NONE: ClassVar[frozenset] = frozenset({"config"})


@dataclass(kw_only=True)
class Memory(_Json):
    arena_bytes_max: int | None = None
    shared_arena_bytes: int | None = None
    staging_bytes: list | None = None
    staging_bytes_max: int | None = None
    measured_on: str | None = None


@dataclass(kw_only=True)
class Plan(_Json):
    format: str
    model: Model
    segments: list  # [Segment], in run order (index = position)
    routed_layers: list  # [RoutedLayer] (index = position)
    logits: TensorRef
    routevit_version: str | None = None
    generated_by: dict | None = None
    quantization: dict | None = None  # {"method": "qat" | "ptq"}
    memory: Memory | None = None
    # set by read_plan / write_plan
    path: Path | None = field(default=None, repr=False, compare=False)  # EXP/plan.json
    sha256: str | None = field(default=None, repr=False, compare=False)  # of plan.json's bytes
    raw: dict | None = field(default=None, repr=False, compare=False)  # the JSON as read
    _LOCAL: ClassVar[frozenset] = frozenset({"path", "sha256", "raw"})
    _OMIT_NONE: ClassVar[frozenset] = frozenset({"routevit_version", "generated_by", "quantization", "memory"})

    @property
    def input(self) -> ModelInput:
        return self.model.input

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def class_names(self) -> list | None:
        return self.model.class_names

    @property
    def method(self) -> str | None:
        return (self.quantization or {}).get("method")

    @property
    def ops(self) -> list:
        return sorted({op for s in self.segments for op in s.ops})

    @property
    def folder(self) -> Path | None:
        return self.path.parent if self.path else None

    def output(self, ref: TensorRef) -> TensorEntry:
        return self.segments[ref.segment].outputs[ref.output]

    @property
    def logits_entry(self) -> TensorEntry:
        """The segment output that holds the logits (its scale / zero point dequantize them)."""
        return self.output(self.logits)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


# ---------------------------------------------------------------------------------------- parsing
class _Fields:
    """One JSON object of plan.json and where it is, for one-line errors."""

    _KINDS: ClassVar[dict] = {"int": "an integer", "number": "a number", "str": "a string", "list": "a list",
                              "dict": "an object", "ints": "a list of integers", "strs": "a list of strings",
                              "numbers": "a list of numbers"}

    def __init__(self, data, where: str, path):
        self.path, self.where = path, where
        if not isinstance(data, dict):
            self.fail(f"must be an object, got {type(data).__name__}")
        self.data = data

    def fail(self, what: str):
        _fail(self.path, f"{self.where + ': ' if self.where else ''}{what}", REDO)

    @staticmethod
    def _is(value, kind) -> bool:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind == "int":
            return isinstance(value, int) and not isinstance(value, bool)
        if kind == "number":
            return number
        if kind == "str":
            return isinstance(value, str)
        if kind == "list":
            return isinstance(value, list)
        if kind == "dict":
            return isinstance(value, dict)
        if kind in ("ints", "strs", "numbers"):
            return isinstance(value, list) and all(_Fields._is(v, kind[:-1] if kind != "numbers" else "number")
                                                   for v in value)
        raise AssertionError(kind)

    def get(self, key, kind, required=True):
        if key not in self.data:
            if required:
                self.fail(f"missing '{key}'")
            return None
        value = self.data[key]
        if value is None and not required:
            return None
        if not self._is(value, kind):
            self.fail(f"'{key}' must be {self._KINDS[kind]}, got {value!r:.60}")
        return value

    def sub(self, key, where, required=True):
        if key not in self.data or (self.data[key] is None and not required):
            if required:
                self.fail(f"missing '{key}'")
            return None
        return _Fields(self.data[key], f"{self.where + ' ' if self.where else ''}{where}".strip(), self.path)

    def common(self, cls) -> dict:
        known = {f.name for f in fields(cls)} - {"keys", "extra"} - cls._LOCAL
        return {"keys": tuple(self.data), "extra": {k: v for k, v in self.data.items() if k not in known}}


def _fail(where, what: str, todo: str):
    raise RoutevitError(f"{where}: {what}; {todo}")


def _parse_source(f: _Fields) -> Source:
    return Source(kind=f.get("kind", "str"), segment=f.get("segment", "int", False),
                  output=f.get("output", "int", False), routed_layer=f.get("routed_layer", "int", False),
                  **f.common(Source))


def _parse_requantize(f: _Fields) -> Requantize:
    return Requantize(in_scale=f.get("in_scale", "number"), in_zero_point=f.get("in_zero_point", "int"),
                      out_scale=f.get("out_scale", "number"), out_zero_point=f.get("out_zero_point", "int"),
                      multiplier=f.get("multiplier", "int"), shift=f.get("shift", "int"), **f.common(Requantize))


def _parse_tensor(f: _Fields, is_input: bool) -> TensorEntry:
    source = f.sub("source", "source") if is_input else None
    requant = f.sub("requantize", "requantize", required=False) if is_input else None
    return TensorEntry(name=f.get("name", "str"), shape=f.get("shape", "ints"), dtype=f.get("dtype", "str"),
                       scale=f.get("scale", "number", False), zero_point=f.get("zero_point", "int", False),
                       source=_parse_source(source) if source else None,
                       requantize=_parse_requantize(requant) if requant else None, **f.common(TensorEntry))


def _parse_segment(f: _Fields) -> Segment:
    arena = f.sub("arena", "arena", required=False)
    entries = {}
    for key, is_input in (("inputs", True), ("outputs", False)):
        entries[key] = [_parse_tensor(_Fields(e, f"{f.where} {key[:-1]} {i}", f.path), is_input)
                        for i, e in enumerate(f.get(key, "list"))]
    return Segment(index=f.get("index", "int"), file=f.get("file", "str"), sha256=f.get("sha256", "str"),
                   bytes=f.get("bytes", "int"), ops=f.get("ops", "strs"),
                   arena_bytes=f.get("arena_bytes", "int"),
                   persistent_bytes=f.get("persistent_bytes", "int", False),
                   nonpersistent_bytes=f.get("nonpersistent_bytes", "int", False),
                   arena=Arena(total=arena.get("total", "int"), persistent=arena.get("persistent", "int"),
                               nonpersistent=arena.get("nonpersistent", "int"), **arena.common(Arena))
                   if arena else None,
                   inputs=entries["inputs"], outputs=entries["outputs"], **f.common(Segment))


def _parse_ref(f: _Fields) -> TensorRef:
    return TensorRef(segment=f.get("segment", "int"), output=f.get("output", "int"), **f.common(TensorRef))


def _parse_routed(f: _Fields) -> RoutedLayer:
    return RoutedLayer(index=f.get("index", "int"), router=_parse_ref(f.sub("router", "router")),
                       num_patches=f.get("num_patches", "int"), patch_area=f.get("patch_area", "int"),
                       dim=f.get("dim", "int"), num_experts=f.get("num_experts", "int"),
                       top_k=f.get("top_k", "int"), capacity=f.get("capacity", "int"),
                       name=f.get("name", "str", False), router_layer=f.get("router_layer", "str", False),
                       experts_layer=f.get("experts_layer", "str", False), segment=f.get("segment", "int", False),
                       capacity_factor=f.get("capacity_factor", "number", False),
                       expert_hidden=f.get("expert_hidden", "int", False), **f.common(RoutedLayer))


def _parse_model(f: _Fields) -> Model:
    inp = f.sub("input", "input")
    norm = inp.sub("normalization", "normalization", required=False)
    model_input = ModelInput(
        shape=inp.get("shape", "ints"), dtype=inp.get("dtype", "str"), scale=inp.get("scale", "number"),
        zero_point=inp.get("zero_point", "int"),
        normalization=Normalization(mean=norm.get("mean", "numbers"), std=norm.get("std", "numbers"),
                                    **norm.common(Normalization)) if norm else None,
        pixel_lut=inp.get("pixel_lut", "list", False), **inp.common(ModelInput))
    return Model(num_classes=f.get("num_classes", "int"), input=model_input, config=f.get("config", "dict", False),
                 class_names=f.get("class_names", "strs", False), **f.common(Model))


def _parse_memory(f: _Fields) -> Memory:
    return Memory(arena_bytes_max=f.get("arena_bytes_max", "int", False),
                  shared_arena_bytes=f.get("shared_arena_bytes", "int", False),
                  staging_bytes=f.get("staging_bytes", "ints", False),
                  staging_bytes_max=f.get("staging_bytes_max", "int", False),
                  measured_on=f.get("measured_on", "str", False), **f.common(Memory))


def plan_from_dict(raw: dict, path="plan.json") -> Plan:
    """The typed plan of a plan.json dict: keys and types checked (not the segment files:
    that is `validate_plan`). `path` names the file in errors."""
    if not isinstance(raw, dict):
        _fail(path, "not a JSON object", REDO)
    if raw.get("format") != FORMAT:
        _fail(path, f"format is {raw.get('format')!r}, expected {FORMAT!r}",
              "export again with this routevit version (`routevit export QRUN --out EXP`)")
    top = _Fields(raw, "", path)
    segments = [_parse_segment(_Fields(s, f"segment {i}", path)) for i, s in enumerate(top.get("segments", "list"))]
    routed = [_parse_routed(_Fields(r, f"routed layer {i}", path))
              for i, r in enumerate(top.get("routed_layers", "list"))]
    memory = top.sub("memory", "memory", required=False)
    return Plan(format=FORMAT, model=_parse_model(top.sub("model", "model")), segments=segments,
                routed_layers=routed, logits=_parse_ref(top.sub("logits", "logits")),
                routevit_version=top.get("routevit_version", "str", False),
                generated_by=top.get("generated_by", "dict", False),
                quantization=top.get("quantization", "dict", False),
                memory=_parse_memory(memory) if memory else None, raw=raw, **top.common(Plan))


# ---------------------------------------------------------------------------------------- reading
def read_plan(exp_dir) -> Plan:
    """EXP/plan.json, typed and checked against its segment files (see the module docstring)."""
    exp_dir = Path(exp_dir)
    path = exp_dir / PLAN
    if not exp_dir.is_dir():
        _fail(exp_dir, "export folder not found", "give the --out folder of `routevit export QRUN --out EXP`")
    if not path.is_file():
        _fail(path, "not found", "give the --out folder of `routevit export QRUN --out EXP` (it writes "
              "plan.json and the segments)")
    data = path.read_bytes()
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        _fail(path, f"not valid JSON ({str(exc).splitlines()[0]})", REDO)
    plan = plan_from_dict(raw, path)
    plan.path, plan.sha256 = path, hashlib.sha256(data).hexdigest()
    validate_plan(plan, exp_dir)
    return plan


def write_plan(exp_dir, plan: Plan) -> Path:
    """Validate `plan` against the segment files already in exp_dir, then write EXP/plan.json."""
    exp_dir = Path(exp_dir)
    path = exp_dir / PLAN
    plan.path = path
    validate_plan(plan, exp_dir)
    text = plan.to_json()
    path.write_text(text)
    plan.sha256 = hashlib.sha256(text.encode()).hexdigest()
    plan.raw = json.loads(text)
    return path


# ---------------------------------------------------------------------------------------- checking
def _tflm_ops() -> set:
    from toolchain.tflm.library import kernel_table

    return set(kernel_table()["ops"])


def _verify_tflite(path: Path, data: bytes):
    """Flatbuffer-verify a .tflite: (input details, output details, sorted builtin op names)."""
    import warnings

    import tensorflow as tf

    try:  # runs the flatbuffer verifier: "The model is not a valid Flatbuffer buffer"
        with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice (LiteRT)
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_content=data)
    except Exception as exc:  # noqa: BLE001 (the verifier raises ValueError or RuntimeError)
        _fail(path, f"not a valid TFLite flatbuffer ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
              "the segment is damaged; " + REDO)
    ops = sorted({op["op_name"] for op in interpreter._get_ops_details()})
    return interpreter.get_input_details(), interpreter.get_output_details(), ops


def _check_segment_file(plan_path: Path, folder: Path, seg: Segment, position: int, kernels: set) -> None:
    """The segment's file against its plan entry; sets seg.path and seg.data."""
    where = f"{plan_path}: segment {position}"
    if seg.index != position:
        _fail(where, f"index is {seg.index}, expected {position} (segments run in index order)", REDO)
    file = folder / seg.file
    if not file.is_file():
        _fail(file, "segment file not found (the export folder is incomplete)", REDO)
    data = file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != seg.sha256 or len(data) != seg.bytes:
        _fail(file, f"does not match the plan (sha256 {digest[:12]}.., {len(data)} B; the plan says "
              f"{seg.sha256[:12]}.., {seg.bytes} B): the plan and its segments come from different exports",
              REDO)
    in_details, out_details, ops = _verify_tflite(file, data)
    if sorted(seg.ops) != ops:
        _fail(file, f"uses ops {ops} but the plan lists {sorted(seg.ops)}", REDO)
    missing = [op for op in ops if op not in kernels]
    if missing:
        _fail(file, f"uses {', '.join(missing)}, which TFLM has no kernel for",
              "change the model so it lowers to TFLM ops (see `routevit export`'s op check)")
    if seg.arena_bytes <= 0:
        _fail(where, f"arena_bytes is {seg.arena_bytes}, not a measured arena", REDO)
    for kind, entries, details in (("input", seg.inputs, in_details), ("output", seg.outputs, out_details)):
        if len(entries) != len(details):
            _fail(file, f"has {len(details)} {kind}s but the plan lists {len(entries)}", REDO)
        for i, (entry, detail) in enumerate(zip(entries, details)):
            shape = [int(v) for v in detail["shape"]]
            dtype = np.dtype(detail["dtype"]).name
            scale, zero = float(detail["quantization"][0]), int(detail["quantization"][1])
            if shape != entry.shape or dtype != entry.dtype or (entry.scale is not None and (
                    entry.zero_point != zero or abs(scale - entry.scale) > 1e-6 * abs(entry.scale))):
                _fail(file, f"{kind} {i} ({entry.name}) is {dtype}{shape} scale={scale} zero_point={zero} "
                      f"but the plan says {entry.dtype}{entry.shape} scale={entry.scale} "
                      f"zero_point={entry.zero_point}", REDO)
            if entry.scale is None and dtype == "int8":
                _fail(where, f"{kind} {i} ({entry.name}) is int8 but has no scale/zero_point", REDO)
    seg.path, seg.data = file, data


def _is_output(plan: Plan, ref_segment, ref_output, before: int | None = None) -> bool:
    limit = len(plan.segments) if before is None else before
    return (isinstance(ref_segment, int) and 0 <= ref_segment < limit and isinstance(ref_output, int)
            and 0 <= ref_output < len(plan.segments[ref_segment].outputs))


def validate_plan(plan: Plan, exp_dir) -> None:
    """The one validator (read_plan and write_plan): segment files, then model, routing, logits."""
    folder = Path(exp_dir)
    path = plan.path or folder / PLAN
    if plan.format != FORMAT:
        _fail(path, f"format is {plan.format!r}, expected {FORMAT!r}", REDO)
    if not plan.segments:
        _fail(path, "no segments", REDO)
    model_input = plan.input
    if len(model_input.shape) != 4 or model_input.shape[0] != 1 or model_input.dtype != "int8":
        _fail(path, f"model.input is {model_input.dtype}{model_input.shape}, must be an int8 [1,H,W,C] tensor", REDO)
    if plan.num_classes < 1:
        _fail(path, f"model.num_classes is {plan.num_classes}, must be >= 1", REDO)
    if plan.class_names is not None and len(plan.class_names) != plan.num_classes:
        _fail(path, f"model.class_names has {len(plan.class_names)} names for {plan.num_classes} classes", REDO)
    norm = model_input.normalization
    if norm is not None and (not norm.mean or not norm.std or any(s <= 0 for s in norm.std)):
        _fail(path, f"model.input.normalization {norm.to_dict()} needs a mean and a positive std", REDO)
    if model_input.pixel_lut is not None:
        lut = model_input.pixel_lut
        if (len(lut) != model_input.channels
                or any(not isinstance(row, list) or len(row) != 256 for row in lut)
                or any(not isinstance(v, int) or not -128 <= v <= 127 for row in lut for v in row)):
            _fail(path, f"model.input.pixel_lut must be [{model_input.channels}][256] int8 values", REDO)

    kernels = _tflm_ops()
    for position, seg in enumerate(plan.segments):
        _check_segment_file(path, folder, seg, position, kernels)

    routed = plan.routed_layers
    for r, layer in enumerate(routed):
        where = f"{path}: routed layer {r}"
        if layer.index != r:
            _fail(where, f"index is {layer.index}, expected {r}", REDO)
        if (layer.top_k not in (1, 2) or layer.top_k > layer.num_experts or layer.num_patches < 1
                or not 1 <= layer.capacity <= layer.num_patches):
            _fail(where, f"top_k {layer.top_k}, capacity {layer.capacity}, {layer.num_experts} experts, "
                  f"{layer.num_patches} patches: needs top_k 1 or 2 (<= experts) and 1 <= capacity <= patches",
                  REDO)
        ref = layer.router
        if not _is_output(plan, ref.segment, ref.output):
            _fail(where, f"router {ref.to_dict()} is not a segment output", REDO)
        out = plan.output(ref)
        if out.dtype != "int8" or out.size != layer.num_patches * layer.num_experts:
            _fail(where, f"router output is {out.dtype}{out.shape}, expected int8 with N*E = "
                  f"{layer.num_patches}*{layer.num_experts} values", REDO)
        if layer.segment is not None:
            kinds = {e.source.kind for e in (plan.segments[layer.segment].inputs
                                             if 0 <= layer.segment < len(plan.segments) else [])
                     if e.source.routed_layer == r}
            if kinds != {"dispatch", "combine"}:
                _fail(where, f"segment {layer.segment} does not take its dispatch and combine", REDO)

    for seg in plan.segments:
        for i, entry in enumerate(seg.inputs):
            where = f"{path}: segment {seg.index} input {i} ({entry.name})"
            src = entry.source
            if src.kind == "image":
                if entry.dtype != "int8" or entry.shape != model_input.shape:
                    _fail(where, f"image input is {entry.dtype}{entry.shape}, model.input says "
                          f"int8{model_input.shape}", REDO)
            elif src.kind == "segment_output":
                if not _is_output(plan, src.segment, src.output, before=seg.index):
                    _fail(where, f"source {src.to_dict()} is not an earlier segment's output", REDO)
                out = plan.segments[src.segment].outputs[src.output]
                if entry.dtype != "int8" or out.dtype != "int8" or entry.shape != out.shape:
                    _fail(where, f"is {entry.dtype}{entry.shape} but its source (segment {src.segment} output "
                          f"{src.output}) is {out.dtype}{out.shape}", REDO)
                same = (np.float32(entry.scale) == np.float32(out.scale) and entry.zero_point == out.zero_point)
                if entry.requantize is None and not same:
                    _fail(where, f"quantization (scale {entry.scale}, zero point {entry.zero_point}) differs from "
                          f"its source's ({out.scale}, {out.zero_point}) but 'requantize' is null", REDO)
                if entry.requantize is not None:
                    q = entry.requantize
                    if (q.in_zero_point, q.out_zero_point) != (out.zero_point, entry.zero_point):
                        _fail(where, f"requantize zero points ({q.in_zero_point} -> {q.out_zero_point}) are not "
                              f"the source's and the input's ({out.zero_point} -> {entry.zero_point})", REDO)
            elif src.kind in ("dispatch", "combine"):
                r = src.routed_layer
                if not (isinstance(r, int) and 0 <= r < len(routed)):
                    _fail(where, f"{src.kind} names routed layer {r!r}, which does not exist", REDO)
                layer = routed[r]
                if layer.router.segment >= seg.index:
                    _fail(where, f"routed layer {r}'s router runs in segment {layer.router.segment}, not before "
                          f"segment {seg.index}", REDO)
                want, what = ((layer.slots, f"num_experts*capacity = {layer.num_experts}*{layer.capacity}")
                              if src.kind == "dispatch" else
                              (layer.choices, f"top_k*num_patches = {layer.top_k}*{layer.num_patches}"))
                if entry.dtype != "int32" or entry.shape != [want]:
                    _fail(where, f"{src.kind} tensor is {entry.dtype}{entry.shape} but routed layer {r} has "
                          f"{what} = {want} (needs int32[{want}])", REDO)
            else:
                _fail(where, f"unknown source kind {src.kind!r}", REDO)
        for o, entry in enumerate(seg.outputs):
            if entry.dtype != "int8":
                _fail(f"{path}: segment {seg.index} output {o} ({entry.name})",
                      f"is {entry.dtype}; segment outputs must be int8", REDO)

    ref = plan.logits
    if not _is_output(plan, ref.segment, ref.output):
        _fail(path, f"logits {ref.to_dict()} is not a segment output", REDO)
    if plan.logits_entry.size != plan.num_classes:
        _fail(path, f"the logits output has {plan.logits_entry.size} values, model.num_classes is "
              f"{plan.num_classes}", REDO)


# ---------------------------------------------------------------------------------------- computed
def pixel_lut(normalization, scale: float, zero_point: int, channels: int) -> list:
    """int8 input value for each uint8 pixel value, per channel: [channels][256].

    q = clamp(floor(((p / 255 - mean) / std) / scale + 0.5) + zero_point, -128, 127), computed in
    float64. The host reference and the firmware use this table, so they quantize identically.
    `normalization`: a Normalization or {"mean": [...], "std": [...]}.
    """
    if isinstance(normalization, Normalization):
        normalization = {"mean": normalization.mean, "std": normalization.std}
    pixels = np.arange(256, dtype=np.float64) / 255.0
    table = []
    for c in range(channels):
        mean = normalization["mean"][c if len(normalization["mean"]) > 1 else 0]
        std = normalization["std"][c if len(normalization["std"]) > 1 else 0]
        q = np.floor(((pixels - mean) / std) / scale + 0.5) + zero_point
        table.append(np.clip(q, -128, 127).astype(int).tolist())
    return table
