"""A real, tiny export folder (plan.json + segment_0.tflite) for generator/firmware tests.

A small Keras CNN is converted to full-int8 TFLite with TF's converter; its arena is measured
with the tflite-micro wheel's recording allocator. One
segment, no routed layers: the plan format of docs/design.md without the MoE parts.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

import toolchain  # noqa: F401  (TF_USE_LEGACY_KERAS before TF)

NUM_CLASSES = 10
INPUT_SHAPE = (1, 12, 12, 1)


def tiny_cnn_tflite(seed: int = 0, dense_units: int = 0) -> bytes:
    """Int8 TFLite bytes of a tiny CNN (CONV_2D, MAX_POOL_2D, RESHAPE, FULLY_CONNECTED).
    `dense_units` > 0 adds a big hidden dense layer (for too-big-model tests)."""
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(INPUT_SHAPE[1:], batch_size=1)
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    if dense_units:
        x = keras.layers.Dense(dense_units, activation="relu")(x)
        x = keras.layers.Dense(dense_units, activation="relu")(x)
    outputs = keras.layers.Dense(NUM_CLASSES)(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [rng.uniform(-1, 1, INPUT_SHAPE).astype(np.float32)] for _ in range(16))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def measure_arena(model: bytes) -> dict:
    """Arena figures from the tflite-micro wheel's RecordingMicroAllocator (after one Invoke):
    {"arena_bytes": total, "persistent_bytes": tail, "nonpersistent_bytes": head}."""
    import ctypes
    import os
    import re
    import sys
    import tempfile

    from tflite_micro.python.tflite_micro import runtime

    interpreter = runtime.Interpreter.from_bytes(model, arena_size=max(1 << 20, 8 * len(model)))
    index = 0
    while True:  # valid inputs (zeros: in-range gather indices); the arena is not zeroed
        try:
            detail = interpreter.get_input_details(index)
        except Exception:
            break
        interpreter.set_input(np.zeros(detail["shape"], detail["dtype"]), index)
        index += 1
    interpreter.invoke()
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as capture:
        for fd in saved:  # PrintAllocations writes through the C runtime's log
            os.dup2(capture.fileno(), fd)
        try:
            interpreter.print_allocations()
            libc.fflush(None)
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
        capture.seek(0)
        text = capture.read().decode(errors="replace")
    figures = {key: int(re.search(rf"Arena allocation {key} (\d+) bytes", text).group(1))
               for key in ("total", "head", "tail")}
    return {"arena_bytes": figures["total"], "persistent_bytes": figures["tail"],
            "nonpersistent_bytes": figures["head"]}


def tensor_entry(detail: dict, name: str) -> dict:
    scale, zero_point = detail["quantization"]
    return {"name": name, "shape": [int(v) for v in detail["shape"]],
            "dtype": np.dtype(detail["dtype"]).name, "scale": float(scale), "zero_point": int(zero_point)}


def write_export(out: Path, model: bytes) -> Path:
    """Write EXP/segment_0.tflite and EXP/plan.json for a one-segment model."""
    import tensorflow as tf

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "segment_0.tflite").write_bytes(model)
    interpreter = tf.lite.Interpreter(model_content=model)
    ops = sorted({op["op_name"] for op in interpreter._get_ops_details()})
    image = tensor_entry(interpreter.get_input_details()[0], "image")
    logits = tensor_entry(interpreter.get_output_details()[0], "logits")
    plan = {
        "format": "routevit-plan/1",
        "routevit_version": toolchain.__version__,
        "model": {"config": {"name": "tiny-cnn-fixture"}, "num_classes": NUM_CLASSES,
                  "class_names": [f"class_{i}" for i in range(NUM_CLASSES)],
                  "input": {**{k: image[k] for k in ("shape", "dtype", "scale", "zero_point")},
                            "normalization": {"mean": [0.5], "std": [0.5]}}},
        "segments": [{
            "index": 0, "file": "segment_0.tflite", "sha256": hashlib.sha256(model).hexdigest(),
            "bytes": len(model), "ops": ops, **measure_arena(model),
            "inputs": [{**image, "source": {"kind": "image"}}],
            "outputs": [logits]}],
        "routed_layers": [],
        "logits": {"segment": 0, "output": 0},
    }
    (out / "plan.json").write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n")
    return out


def make_tiny_export(out: Path, dense_units: int = 0) -> Path:
    return write_export(out, tiny_cnn_tflite(dense_units=dense_units))


# ------------------------------------------------------------------ a routed two-segment export
ROUTED = {"num_patches": 16, "patch_area": 4, "dim": 8, "num_experts": 4, "top_k": 1, "capacity": 5}


def _int8_convert(fn, samples) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: iter(samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Q31 multiplier and shift with real = multiplier * 2^(shift - 31) (TFLite's QuantizeMultiplier)."""
    import math

    if real == 0:
        return 0, 0
    fraction, shift = math.frexp(real)
    multiplier = round(fraction * (1 << 31))
    if multiplier == 1 << 31:
        multiplier //= 2
        shift += 1
    return int(multiplier), int(shift)


def requantize_reference(values: np.ndarray, rq: dict) -> np.ndarray:
    """numpy version of the boundary requantization (TFLM double rounding)."""
    x = values.astype(np.int64) - rq["in_zero_point"]
    left, right = max(rq["shift"], 0), max(-rq["shift"], 0)
    a = x * (1 << left)
    ab = a * rq["multiplier"]
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = ab + nudge
    high = np.where(high >= 0, high >> 31, -((-high) >> 31))  # integer division truncating toward zero
    if right:
        mask = (1 << right) - 1
        remainder = high & mask
        threshold = (mask >> 1) + (high < 0)
        high = (high >> right) + (remainder > threshold)
    return np.clip(high + rq["out_zero_point"], -128, 127).astype(np.int8)


def make_routed_export(out: Path, seed: int = 0) -> Path:
    """Two int8 segments cut after a router, like `routevit export` writes them: segment 0 ends
    with x [1,N,P,d] and router logits [1,N,E]; segment 1 gathers patches into expert buffers
    [E*C, P*d] with the dispatch indices, runs an expert, gathers back with combine, adds the
    residual and classifies. Segment 1's x input is quantised independently, so the boundary
    needs requantization."""
    import tensorflow as tf

    from toolchain import routing

    n, p, d, e, c = (ROUTED[k] for k in ("num_patches", "patch_area", "dim", "num_experts", "capacity"))
    rng = np.random.default_rng(seed)
    w_conv = tf.constant(rng.normal(0, 0.5, (3, 3, 1, d)).astype(np.float32))
    w_router = tf.constant(rng.normal(0, 1.0, (d, e)).astype(np.float32))
    w_expert = tf.constant(rng.normal(0, 0.3, (p * d, p * d)).astype(np.float32))
    w_head = tf.constant(rng.normal(0, 0.1, (n * p * d, NUM_CLASSES)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 1], tf.float32)])
    def segment0(image):
        x = tf.nn.relu(tf.nn.conv2d(image, w_conv, 1, "SAME"))
        x = tf.reshape(x, [1, n, p, d])
        router = tf.reshape(tf.reshape(tf.reduce_mean(x, axis=2), [n, d]) @ w_router, [1, n, e])
        return x, router

    @tf.function(input_signature=[tf.TensorSpec([1, n, p, d], tf.float32), tf.TensorSpec([e * c], tf.int32),
                                  tf.TensorSpec([n], tf.int32)])
    def segment1(x, dispatch, combine):
        rows = tf.concat([tf.reshape(x, [n, p * d]), tf.zeros([1, p * d])], axis=0)
        experts = tf.nn.relu(tf.gather(rows, dispatch) @ w_expert)
        y = tf.gather(tf.concat([experts, tf.zeros([1, p * d])], axis=0), combine)
        return tf.reshape(rows[:n] + y, [1, n * p * d]) @ w_head

    images = [rng.uniform(-1, 1, (1, 8, 8, 1)).astype(np.float32) for _ in range(16)]
    seg0 = _int8_convert(segment0, [[im] for im in images])
    seg1_samples = []
    for im in images:
        x, router = (t.numpy() for t in segment0(im))
        dispatch, combine, _ = routing.route(router.reshape(n, e), c, 1)
        # calibrating x over a wider range gives segment 1 its own x scale: a real requantization
        seg1_samples.append([x * 1.7, dispatch, combine])
    seg1 = _int8_convert(segment1, seg1_samples)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan_segments = []
    details = []
    for index, data in enumerate((seg0, seg1)):
        name = f"segment_{index}.tflite"
        (out / name).write_bytes(data)
        interpreter = tf.lite.Interpreter(model_content=data)
        details.append((interpreter.get_input_details(), interpreter.get_output_details()))
        plan_segments.append({"index": index, "file": name, "sha256": hashlib.sha256(data).hexdigest(),
                              "bytes": len(data), "ops": sorted({o["op_name"] for o in interpreter._get_ops_details()}),
                              **measure_arena(data)})
    in0, out0 = details[0]
    # segment 0 outputs: identify x (4-D) and router (3-D) by rank
    x_out = next(i for i, t in enumerate(out0) if len(t["shape"]) == 4)
    r_out = 1 - x_out
    plan_segments[0]["inputs"] = [{**tensor_entry(in0[0], "image"), "source": {"kind": "image"}}]
    plan_segments[0]["outputs"] = [tensor_entry(out0[i], nm) for i, nm in ((0, "x" if x_out == 0 else "router_logits"),
                                                                             (1, "x" if x_out == 1 else "router_logits"))]
    in1, out1 = details[1]
    inputs1 = []
    for t in in1:
        if len(t["shape"]) == 4:
            entry = tensor_entry(t, "x")
            src = plan_segments[0]["outputs"][x_out]
            mult, shift = quantize_multiplier(src["scale"] / entry["scale"])
            entry["source"] = {"kind": "segment_output", "segment": 0, "output": x_out}
            same = (src["scale"], src["zero_point"]) == (entry["scale"], entry["zero_point"])
            entry["requantize"] = None if same else {
                "in_scale": src["scale"], "in_zero_point": src["zero_point"], "out_scale": entry["scale"],
                "out_zero_point": entry["zero_point"], "multiplier": mult, "shift": shift}
        else:
            kind = "dispatch" if int(t["shape"][0]) == e * c else "combine"
            entry = tensor_entry(t, kind)
            entry["source"] = {"kind": kind, "routed_layer": 0}
        inputs1.append(entry)
    plan_segments[1]["inputs"] = inputs1
    plan_segments[1]["outputs"] = [tensor_entry(out1[0], "logits")]
    plan = {
        "format": "routevit-plan/1", "routevit_version": toolchain.__version__,
        "model": {"config": {"name": "routed-fixture"}, "num_classes": NUM_CLASSES,
                  "class_names": [f"class_{i}" for i in range(NUM_CLASSES)],
                  "input": {**{k: plan_segments[0]["inputs"][0][k] for k in ("shape", "dtype", "scale", "zero_point")},
                            "normalization": {"mean": [0.5], "std": [0.5]}}},
        "segments": plan_segments,
        "routed_layers": [{"index": 0, "name": "fixture/transformer_0", "router": {"segment": 0, "output": r_out},
                           **ROUTED, "capacity_factor": 1.25, "expert_hidden": p * d}],
        "logits": {"segment": 1, "output": 0},
    }
    (out / "plan.json").write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n")
    return out


def host_reference(exp: Path, image: np.ndarray):
    """Segments on the tflite-micro wheel + numpy routing and requantization: (logits, counts)."""
    from tflite_micro.python.tflite_micro import runtime

    from toolchain import routing

    plan = json.loads((Path(exp) / "plan.json").read_text())
    outputs, routes = {}, {}
    for seg in plan["segments"]:
        interpreter = runtime.Interpreter.from_bytes((Path(exp) / seg["file"]).read_bytes())
        for i, entry in enumerate(seg["inputs"]):
            src = entry["source"]
            if src["kind"] == "image":
                value = image
            elif src["kind"] == "segment_output":
                value = outputs[(src["segment"], src["output"])]
                if entry.get("requantize"):
                    value = requantize_reference(value, entry["requantize"])
            else:
                value = routes[src["routed_layer"]][0 if src["kind"] == "dispatch" else 1]
            interpreter.set_input(np.asarray(value).reshape(entry["shape"]).astype(entry["dtype"]), i)
        interpreter.invoke()
        for o in range(len(seg["outputs"])):
            outputs[(seg["index"], o)] = interpreter.get_output(o)
        for layer in plan["routed_layers"]:
            if layer["router"]["segment"] == seg["index"]:
                scores = outputs[(seg["index"], layer["router"]["output"])].reshape(layer["num_patches"], layer["num_experts"])
                routes[layer["index"]] = routing.route(scores, layer["capacity"], layer["top_k"])
    logits = outputs[(plan["logits"]["segment"], plan["logits"]["output"])].reshape(-1)
    return logits, [routes[i][2] for i in sorted(routes)]
