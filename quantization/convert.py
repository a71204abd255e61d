"""Convert one segment (a tf.function) to a full-int8 TFLite flatbuffer.

int8 activations and weights (per channel where the converter supports it: conv, depthwise,
fully connected), int8 model inputs/outputs, int32 index inputs left as they are; tensors
without a QAT fake-quant range get calibrated from `representative` (a list of
{signature input name: numpy array} feeds).
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile

import numpy as np
import tensorflow as tf

log = logging.getLogger("routevit")


def convert_segment(function, variables, representative: list[dict]) -> bytes:
    """`variables`: the model's variables the function reads (a light tf.Module holds them: the
    converter saves its trackable as a SavedModel, and saving a whole Keras model would trace
    every layer again - minutes for a MobileViT)."""
    holder = tf.Module()
    holder.variables_used = list(variables)
    holder.segment = function
    concrete = function.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], holder)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: iter(representative)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with _quiet_fd2():
        return converter.convert()


class _quiet_fd2:
    """The converter prints MLIR diagnostics to the C-level stderr; keep them for errors only."""

    def __enter__(self):
        self._file = tempfile.TemporaryFile()
        sys.stderr.flush()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, exc_type, exc, tb):
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        text = self._file.read().decode(errors="replace")
        self._file.close()
        if exc_type is not None and text.strip():
            log.error("converter output:\n%s", text[-4000:])
        return False


def signature_io(flatbuffer: bytes):
    """(inputs, outputs) of the model's serving signature: lists of
    (signature name, tensor index into the subgraph, position in the model's input/output list)."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    graph = model.Subgraphs(0)
    model_inputs = [graph.Inputs(i) for i in range(graph.InputsLength())]
    model_outputs = [graph.Outputs(i) for i in range(graph.OutputsLength())]
    sig = model.SignatureDefs(0)

    def collect(n, get, order):
        rows = []
        for i in range(n):
            tmap = get(i)
            rows.append((tmap.Name().decode(), tmap.TensorIndex(), order.index(tmap.TensorIndex())))
        return rows

    return (collect(sig.InputsLength(), sig.Inputs, model_inputs),
            collect(sig.OutputsLength(), sig.Outputs, model_outputs))


def tensor_quant(flatbuffer: bytes, tensor_index: int):
    """(shape, numpy dtype, scale or None, zero point or None) of one tensor of subgraph 0."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    tensor = model.Subgraphs(0).Tensors(tensor_index)
    dtype = {schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32,
             schema.TensorType.FLOAT32: np.float32, schema.TensorType.UINT8: np.uint8,
             schema.TensorType.INT16: np.int16}.get(tensor.Type())
    q = tensor.Quantization()
    scale = zero = None
    if q is not None and q.ScaleLength():
        scale, zero = float(q.Scale(0)), int(q.ZeroPoint(0))
    return [int(d) for d in tensor.ShapeAsNumpy()], dtype, scale, zero
