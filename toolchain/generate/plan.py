"""Read and check EXP/plan.json and its segments before anything is generated.

Every segment is checked three ways: its sha256 and size against the plan, its structure with
TensorFlow Lite's flatbuffer verifier (`tf.lite.Interpreter(model_content=...)` runs
`VerifyAndBuildFromBuffer`, which rejects truncated or corrupted flatbuffers), and its input and
output tensors against the plan's entries. Ops must be ones TFLM registers.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from toolchain.errors import RoutevitError

log = logging.getLogger("routevit")

PLAN_FORMAT = "routevit-plan/1"


@lru_cache(maxsize=None)
def tflm_op_methods() -> dict[str, str]:
    """TFLite builtin name -> MicroMutableOpResolver method, from the one op table (toolchain/tflm/kernels.json)."""
    from toolchain.tflm.library import kernel_table

    return {op: entry["resolver"] for op, entry in kernel_table()["ops"].items()}


@dataclass
class Segment:
    index: int
    file: str
    path: Path
    data: bytes
    sha256: str
    ops: list[str]
    arena_bytes: int
    persistent_bytes: int | None
    nonpersistent_bytes: int | None
    inputs: list[dict]   # plan entries, with "model" = the tflite tensor details
    outputs: list[dict]


@dataclass
class Plan:
    path: Path
    sha256: str
    raw: dict
    segments: list[Segment]
    routed_layers: list[dict]
    logits: dict
    input: dict
    num_classes: int

    @property
    def ops(self) -> list[str]:
        return sorted({op for s in self.segments for op in s.ops})


def _fail(where, what: str, todo: str):
    raise RoutevitError(f"{where}: {what}; {todo}")


def _verify_tflite(path: Path, data: bytes) -> tuple[list[dict], list[dict], list[str]]:
    """Flatbuffer-verify a .tflite and return (input details, output details, builtin op names)."""
    import tensorflow as tf

    try:
        interpreter = tf.lite.Interpreter(model_content=data)
    except Exception as exc:  # the verifier's message: "The model is not a valid Flatbuffer buffer"
        _fail(path, f"not a valid TFLite flatbuffer ({str(exc).splitlines()[0]})",
              "re-run `routevit export` to rewrite the segment")
    ops = sorted({op["op_name"] for op in interpreter._get_ops_details()})
    return interpreter.get_input_details(), interpreter.get_output_details(), ops


def _same_tensor(entry: dict, detail: dict) -> bool:
    shape = [int(v) for v in detail["shape"]]
    return list(entry.get("shape", shape)) == shape and entry.get("dtype", np.dtype(detail["dtype"]).name) == np.dtype(detail["dtype"]).name


def _int(entry, key, where):
    value = entry.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(where, f"'{key}' must be an integer, got {value!r}", "re-run `routevit export`")
    return value


def load_plan(exp_dir: Path) -> Plan:
    exp_dir = Path(exp_dir)
    plan_path = exp_dir / "plan.json"
    if not exp_dir.is_dir():
        _fail(exp_dir, "export folder not found", "run `routevit export QRUN --out EXP` first")
    if not plan_path.is_file():
        _fail(plan_path, "not found", "run `routevit export QRUN --out EXP` to write the plan and segments")
    plan_bytes = plan_path.read_bytes()
    try:
        raw = json.loads(plan_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        _fail(plan_path, f"not valid JSON ({exc})", "re-run `routevit export`")
    if not isinstance(raw, dict) or raw.get("format") != PLAN_FORMAT:
        _fail(plan_path, f"format is {raw.get('format') if isinstance(raw, dict) else None!r}, expected {PLAN_FORMAT!r}",
              "re-run `routevit export` with this routevit version")
    for key in ("model", "segments", "routed_layers", "logits"):
        if key not in raw:
            _fail(plan_path, f"missing '{key}'", "re-run `routevit export`")
    seg_entries = raw["segments"]
    if not isinstance(seg_entries, list) or not seg_entries:
        _fail(plan_path, "no segments", "re-run `routevit export`")

    model = raw["model"]
    model_input = model.get("input") or {}
    num_classes = model.get("num_classes")
    if (list(model_input.get("shape", [])).__len__() != 4 or model_input.get("dtype") != "int8"
            or not isinstance(num_classes, int) or num_classes < 1):
        _fail(plan_path, "model.input must be an int8 [N,H,W,C] tensor and model.num_classes >= 1",
              "re-run `routevit export`")

    methods = tflm_op_methods()
    routed_layers = raw["routed_layers"]
    segments: list[Segment] = []
    for position, entry in enumerate(seg_entries):
        where = f"{plan_path} segment {position}"
        if entry.get("index") != position:
            _fail(where, f"index is {entry.get('index')!r}, expected {position} (segments run in index order)",
                  "re-run `routevit export`")
        seg_path = exp_dir / str(entry.get("file", ""))
        if not entry.get("file") or not seg_path.is_file():
            _fail(seg_path, "segment file not found", "re-run `routevit export` (the export folder is incomplete)")
        data = seg_path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.get("sha256"):
            _fail(seg_path, f"sha256 {digest[:16]}... does not match the plan's {str(entry.get('sha256'))[:16]}...",
                  "the file changed after export; re-run `routevit export`")
        if "bytes" in entry and entry["bytes"] != len(data):
            _fail(seg_path, f"{len(data)} bytes but the plan says {entry['bytes']}", "re-run `routevit export`")
        in_details, out_details, ops = _verify_tflite(seg_path, data)
        if "ops" in entry and sorted(entry["ops"]) != ops:
            _fail(seg_path, f"uses ops {ops} but the plan lists {sorted(entry['ops'])}", "re-run `routevit export`")
        missing = [op for op in ops if op not in methods]
        if missing:
            _fail(seg_path, f"uses {', '.join(missing)}, which TFLM has no kernel for",
                  "change the model so it lowers to TFLM ops (see `routevit export` op check)")
        arena = entry.get("arena_bytes")
        if not isinstance(arena, int) or arena <= 0:
            _fail(where, "no measured 'arena_bytes'", "re-run `routevit export` (the host reference measures the arena)")
        inputs, outputs = entry.get("inputs") or [], entry.get("outputs") or []
        if len(inputs) != len(in_details) or len(outputs) != len(out_details):
            _fail(seg_path, f"has {len(in_details)} inputs / {len(out_details)} outputs but the plan lists "
                  f"{len(inputs)} / {len(outputs)}", "re-run `routevit export`")
        for kind, entries, details in (("input", inputs, in_details), ("output", outputs, out_details)):
            for i, (e, d) in enumerate(zip(entries, details)):
                if not _same_tensor(e, d):
                    _fail(seg_path, f"{kind} {i} is {np.dtype(d['dtype']).name}{list(map(int, d['shape']))}, the plan "
                          f"says {e.get('dtype')}{e.get('shape')}", "re-run `routevit export`")
                e = dict(e)
                e["model"] = {"shape": [int(v) for v in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                              "scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1]),
                              "bytes": int(np.prod(d["shape"])) * np.dtype(d["dtype"]).itemsize}
                entries[i] = e
        segments.append(Segment(position, entry["file"], seg_path, data, digest, ops, arena,
                                entry.get("persistent_bytes"), entry.get("nonpersistent_bytes"), inputs, outputs))

    # Routed layers: the router output and the shapes must agree.
    for r, layer in enumerate(routed_layers):
        where = f"{plan_path} routed layer {r}"
        if layer.get("index") != r:
            _fail(where, f"index is {layer.get('index')!r}, expected {r}", "re-run `routevit export`")
        for key in ("num_patches", "num_experts", "capacity", "top_k", "patch_area", "dim"):
            _int(layer, key, where)
        if layer["top_k"] not in (1, 2) or layer["top_k"] > layer["num_experts"] or not 1 <= layer["capacity"] <= layer["num_patches"]:
            _fail(where, "top_k must be 1 or 2 (<= E) and 1 <= capacity <= num_patches", "re-run `routevit export`")
        router = layer.get("router") or {}
        s, o = router.get("segment"), router.get("output")
        if not (isinstance(s, int) and 0 <= s < len(segments) and isinstance(o, int) and 0 <= o < len(segments[s].outputs)):
            _fail(where, f"router {router} is not a segment output", "re-run `routevit export`")
        out = segments[s].outputs[o]["model"]
        if out["dtype"] != "int8" or out["bytes"] != layer["num_patches"] * layer["num_experts"]:
            _fail(where, f"router output is {out['dtype']}{out['shape']}, expected int8 with N*E = "
                  f"{layer['num_patches'] * layer['num_experts']} values", "re-run `routevit export`")

    # Input sources: the image, an earlier segment's output, or routing already computed.
    for seg in segments:
        for i, entry in enumerate(seg.inputs):
            where = f"{plan_path} segment {seg.index} input {i}"
            source = entry.get("source") or {}
            kind = source.get("kind")
            model = entry["model"]
            if kind == "image":
                if model["dtype"] != "int8" or model["shape"] != list(model_input["shape"]):
                    _fail(where, f"image input is {model['dtype']}{model['shape']}, model.input says int8{model_input['shape']}",
                          "re-run `routevit export`")
            elif kind == "segment_output":
                s, o = source.get("segment"), source.get("output")
                if not (isinstance(s, int) and 0 <= s < seg.index and isinstance(o, int) and 0 <= o < len(segments[s].outputs)):
                    _fail(where, f"source {source} is not an earlier segment's output", "re-run `routevit export`")
                src = segments[s].outputs[o]["model"]
                if src["dtype"] != "int8" or model["dtype"] != "int8" or src["bytes"] != model["bytes"]:
                    _fail(where, f"source is {src['dtype']}{src['shape']}, input is {model['dtype']}{model['shape']}",
                          "re-run `routevit export`")
                requant = entry.get("requantize")
                if requant:
                    for key in ("in_zero_point", "out_zero_point", "multiplier", "shift"):
                        _int(requant, key, where + " requantize")
                elif (src["scale"], src["zero_point"]) != (model["scale"], model["zero_point"]):
                    _fail(where, f"quantization differs from its source ({src['scale']}, {src['zero_point']}) vs "
                          f"({model['scale']}, {model['zero_point']}) but 'requantize' is null", "re-run `routevit export`")
            elif kind in ("dispatch", "combine"):
                r = source.get("routed_layer")
                if not (isinstance(r, int) and 0 <= r < len(routed_layers)):
                    _fail(where, f"routed layer {r!r} does not exist", "re-run `routevit export`")
                layer = routed_layers[r]
                if layer["router"]["segment"] >= seg.index:
                    _fail(where, f"routed layer {r}'s router runs in segment {layer['router']['segment']}, not before",
                          "re-run `routevit export`")
                count = (layer["num_experts"] * layer["capacity"] if kind == "dispatch"
                         else layer["top_k"] * layer["num_patches"])
                if model["dtype"] != "int32" or model["bytes"] != 4 * count:
                    _fail(where, f"{kind} input is {model['dtype']}{model['shape']}, expected int32 with {count} values",
                          "re-run `routevit export`")
            else:
                _fail(where, f"unknown source kind {kind!r}", "re-run `routevit export`")
        for o, entry in enumerate(seg.outputs):
            if entry["model"]["dtype"] != "int8":
                _fail(f"{plan_path} segment {seg.index} output {o}", f"is {entry['model']['dtype']}; segment outputs must be int8",
                      "re-run `routevit export`")

    logits = raw["logits"]
    s, o = logits.get("segment"), logits.get("output")
    if not (isinstance(s, int) and 0 <= s < len(segments) and isinstance(o, int) and 0 <= o < len(segments[s].outputs)):
        _fail(plan_path, f"logits {logits} is not a segment output", "re-run `routevit export`")
    if segments[s].outputs[o]["model"]["bytes"] != num_classes:
        _fail(plan_path, f"logits output has {segments[s].outputs[o]['model']['bytes']} values, num_classes is {num_classes}",
              "re-run `routevit export`")

    return Plan(plan_path, hashlib.sha256(plan_bytes).hexdigest(), raw, segments, routed_layers, logits,
                dict(model_input), num_classes)
