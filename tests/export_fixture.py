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
