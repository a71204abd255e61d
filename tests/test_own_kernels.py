"""routevit's table, loop and reduce kernels (ADD, RELU, LOGISTIC, MUL, MEAN, SUM, SQUARED_DIFFERENCE,
SUB, the fused SiLU) against the wheel.

Each kernel claims to compute exactly what TFLM's reference kernel computes, only faster
(firmware_templates/project/src/conv1x1_kernel.h, depthwise3x3_kernel.h, add_kernel.h, relu_kernel.h, logistic_lut_kernel.h, mul_kernel.h,
reduce_kernel.h, binary_int8.h), so the
wheel is their twin. Real int8 models made by the TFLite converter run in TFLM's MicroInterpreter
from a host g++ build of the tree, once with routevit's registrations and once with TFLM's, and in
the wheel; all three must agree value for value, on random inputs, every int8 value and the
saturating extremes. (That the fast paths are taken shows in the QEMU profile:
benchmarks/results/profile_fmnist_routed_mps2-an386.md.)
"""
from __future__ import annotations

import numpy as np
import pytest

from host_cc import DRIVERS, compile_program, host_tflm_library, render_templates, run_program

pytestmark = pytest.mark.tflm

KERNELS = ["conv1x1_kernel", "depthwise3x3_kernel", "conv_int8", "add_kernel", "relu_kernel", "binary_int8", "logistic_lut_kernel", "mul_kernel", "reduce_kernel", "squared_difference_kernel", "sub_kernel",
           "silu_kernel", "int8_table"]
SOURCES = [f"src/{k}.{ext}" for k in KERNELS for ext in ("cc", "h")]


def _convert(function, shapes, ranges, seed):
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], function)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # asymmetric calibration ranges give non-zero zero points
    converter.representative_dataset = lambda: ([rng.uniform(-r, 0.6 * r, s).astype(np.float32)
                                                 for s, r in zip(shapes, ranges)] for _ in range(16))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def silu_model(shape, value_range, seed):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
    def silu(x):
        return x * tf.sigmoid(x), tf.sigmoid(x * 0.5)  # SiLU, and a LOGISTIC that feeds no MUL

    return _convert(silu, [shape], [value_range], seed)


def reduce_model(shape, mean_axes, sum_axes, keepdims, value_range, seed):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
    def reduce(x):
        return (tf.reduce_mean(x, axis=mean_axes, keepdims=keepdims),
                tf.reduce_sum(x, axis=sum_axes, keepdims=keepdims))

    return _convert(reduce, [shape], [value_range], seed)


def group_norm_model(shape, value_range, seed):
    """GroupNorm(1)'s int8 chain as the converter writes it: MEAN, SQUARED_DIFFERENCE and SUB
    against the one-value mean, MUL by the one-value rsqrt (the runtime-table paths)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
    def norm(x):
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        var = tf.reduce_mean(tf.math.squared_difference(x, mean), axis=[1, 2, 3], keepdims=True)
        return (x - mean) * tf.math.rsqrt(var + 1e-5)

    return _convert(norm, [shape], [value_range], seed)


def conv_model(shape, filters, kernel, value_range, seed, bias_scale=0.5):
    """Convolutions as the converter writes them (per-channel int8 weights, int32 bias): a plain
    one, one with a fused RELU6 (a clamp inside int8), and one without bias."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    channels = shape[-1]
    w1 = rng.normal(0, 0.4, (kernel, kernel, channels, filters)).astype(np.float32)
    w2 = rng.normal(0, 0.4, (kernel, kernel, channels, filters)).astype(np.float32)
    w3 = rng.normal(0, 0.4, (kernel, kernel, channels, filters)).astype(np.float32)
    b1 = rng.normal(0, bias_scale, filters).astype(np.float32)
    b2 = rng.normal(0, bias_scale, filters).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
    def conv(x):
        return (tf.nn.conv2d(x, w1, 1, "SAME") + b1, tf.nn.relu6(tf.nn.conv2d(x, w2, 1, "SAME") + b2),
                tf.nn.conv2d(x, w3, 1, "SAME"))

    return _convert(conv, [shape], [value_range], seed)


def depthwise_model(shape, stride, padding, value_range, seed, bias_scale=0.5):
    """3x3 depthwise convolutions as the converter writes them: with bias, with a fused RELU6."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    channels = shape[-1]
    w1 = rng.normal(0, 0.5, (3, 3, channels, 1)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (3, 3, channels, 1)).astype(np.float32)
    b1 = rng.normal(0, bias_scale, channels).astype(np.float32)
    strides = [1, stride, stride, 1]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
    def depthwise(x):
        return (tf.nn.depthwise_conv2d(x, w1, strides, padding) + b1,
                tf.nn.relu6(tf.nn.depthwise_conv2d(x, w2, strides, padding) + b1))

    return _convert(depthwise, [shape], [value_range], seed)


def residual_model(shape, value_range, seed):
    """A residual ADD of two same-shape tensors at different scales, RELU, and an ADD with a fused RELU
    over a per-channel MUL."""
    import tensorflow as tf

    channels = shape[-1]
    scale = np.random.default_rng(seed).uniform(-1.5, 1.5, channels).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
    def residual(x):
        r = tf.nn.relu(x)
        return x + r, tf.nn.relu(x * scale + r), r

    return _convert(residual, [shape], [value_range], seed)


def affine_model(shape, trailing_dims, value_range, seed):
    """GroupNorm's affine (x * gamma + beta over the trailing dimensions) and a per-row scale and
    shift by the row mean (broadcast over the last dimension)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    gamma = rng.uniform(-2.0, 2.0, shape[-trailing_dims:]).astype(np.float32)
    beta = rng.uniform(-1.0, 1.0, shape[-trailing_dims:]).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
    def affine(x):
        row = tf.reduce_mean(x, axis=-1, keepdims=True)
        return x * gamma + beta, x * row, x + row

    return _convert(affine, [shape], [value_range], seed)


MODELS = [
    ("pointwise conv 16->24 [1,8,8,16]", lambda: conv_model((1, 8, 8, 16), 24, 1, 3.0, 31), {"CONV_2D"}),
    ("pointwise conv, odd pixels and channels 12->7 [1,5,7,12]", lambda: conv_model((1, 5, 7, 12), 7, 1, 5.0, 32),
     {"CONV_2D"}),
    ("pointwise conv 64->65, large bias [1,4,4,64]", lambda: conv_model((1, 4, 4, 64), 65, 1, 2.0, 33, 20.0),
     {"CONV_2D"}),
    ("pointwise conv 256->8, the widest the scratch holds [1,3,3,256]",
     lambda: conv_model((1, 3, 3, 256), 8, 1, 1.0, 39), {"CONV_2D"}),
    ("pointwise conv 260->4, too wide: TFLM's kernel [1,2,2,260]", lambda: conv_model((1, 2, 2, 260), 4, 1, 1.0, 40),
     {"CONV_2D"}),
    ("depthwise 3x3 SAME [1,9,7,16]", lambda: depthwise_model((1, 9, 7, 16), 1, "SAME", 3.0, 35),
     {"DEPTHWISE_CONV_2D"}),
    ("depthwise 3x3 stride 2 SAME [1,8,8,32]", lambda: depthwise_model((1, 8, 8, 32), 2, "SAME", 3.0, 36),
     {"DEPTHWISE_CONV_2D"}),
    ("depthwise 3x3 stride 2 SAME, odd size, large bias [1,7,5,8]",
     lambda: depthwise_model((1, 7, 5, 8), 2, "SAME", 4.0, 37, 20.0), {"DEPTHWISE_CONV_2D"}),
    ("depthwise 3x3 VALID [1,6,6,12]", lambda: depthwise_model((1, 6, 6, 12), 1, "VALID", 2.0, 38),
     {"DEPTHWISE_CONV_2D"}),
    ("depthwise 3x3 on 1x2 pixels, every tap a border one [1,1,2,4]",
     lambda: depthwise_model((1, 1, 2, 4), 1, "SAME", 3.0, 41), {"DEPTHWISE_CONV_2D"}),
    ("depthwise 3x3, 6 channels: TFLM's kernel [1,5,5,6]", lambda: depthwise_model((1, 5, 5, 6), 1, "SAME", 3.0, 42),
     {"DEPTHWISE_CONV_2D"}),
    ("conv 3x3 and 6 channels: TFLM's kernel", lambda: conv_model((1, 6, 6, 6), 8, 3, 2.0, 34), {"CONV_2D"}),
    ("residual ADD, RELU [1,16,16,16]", lambda: residual_model((1, 16, 16, 16), 4.0, 21), {"ADD", "RELU", "MUL"}),
    ("residual ADD, odd size below the table threshold [1,3,5,7]", lambda: residual_model((1, 3, 5, 7), 2.0, 22),
     {"ADD", "RELU", "MUL"}),
    ("affine and row broadcast [1,16,4,32]", lambda: affine_model((1, 16, 4, 32), 1, 3.0, 23), {"ADD", "MUL", "MEAN"}),
    ("affine over two dims [1,8,8,12], odd rows", lambda: affine_model((1, 8, 8, 12), 2, 6.0, 24),
     {"ADD", "MUL", "MEAN"}),
    ("GroupNorm chain [1,16,4,32]", lambda: group_norm_model((1, 16, 4, 32), 3.0, 8),
     {"MEAN", "SQUARED_DIFFERENCE", "SUB", "MUL"}),
    ("GroupNorm chain, below the table threshold [1,4,4,8]", lambda: group_norm_model((1, 4, 4, 8), 5.0, 9),
     {"MEAN", "SQUARED_DIFFERENCE", "SUB", "MUL"}),
    ("SiLU [1,8,8,16]", lambda: silu_model((1, 8, 8, 16), 6.0, 1), {"LOGISTIC", "MUL"}),
    ("SiLU odd size [1,3,5,7]", lambda: silu_model((1, 3, 5, 7), 0.7, 2), {"LOGISTIC", "MUL"}),
    ("SiLU wide range", lambda: silu_model((1, 4, 4, 8), 40.0, 3), {"LOGISTIC", "MUL"}),
    ("GroupNorm mean (1,2,3), sum (1,)", lambda: reduce_model((1, 16, 4, 32), [1, 2, 3], [1], True, 3.0, 4),
     {"MEAN", "SUM"}),
    ("pool mean (1,2), sum (2,) no keepdims", lambda: reduce_model((1, 5, 5, 12), [1, 2], [2], False, 9.0, 5),
     {"MEAN", "SUM"}),
    ("router mean (2,), sum (-1,)", lambda: reduce_model((1, 16, 4, 32), [2], [-1], True, 1.5, 6),
     {"MEAN", "SUM"}),
    ("non-contiguous (1,3): TFLM's kernel", lambda: reduce_model((1, 4, 6, 8), [1, 3], [1, 3], True, 2.0, 7),
     {"MEAN", "SUM"}),
]


@pytest.fixture(scope="module")
def kernels_exe(tmp_path_factory):
    library = host_tflm_library(("LOGISTIC", "MUL", "MEAN", "SUM", "SQUARED_DIFFERENCE", "SUB", "ADD", "RSQRT", "RELU", "CONV_2D", "DEPTHWISE_CONV_2D"))
    root = tmp_path_factory.mktemp("own_kernels")
    src = render_templates(root / "src", SOURCES)
    return compile_program([src / f"{k}.cc" for k in KERNELS] + [DRIVERS / "own_kernels_driver.cc"],
                           root / "own_kernels",
                           include_dirs=[src], system_include_dirs=library.include_dirs,
                           defines=library.defines, libraries=[library.path])


def _records(rng, shape, count):
    records = [np.full(shape, -128, np.int8), np.full(shape, 127, np.int8)]
    records.append(np.arange(np.prod(shape)).reshape(shape).astype(np.int64) % 256 - 128)  # every value
    records += [rng.integers(-128, 128, shape, dtype=np.int8) for _ in range(count - 3)]
    return [r.astype(np.int8) for r in records]


@pytest.mark.parametrize("name,make,ops", MODELS, ids=[m[0] for m in MODELS])
def test_own_kernel_equals_tflm_and_the_wheel(kernels_exe, tmp_path, name, make, ops):
    from tflite_micro.python.tflite_micro import runtime

    from toolchain.export.flatbuffer import read_graph

    model = make()
    graph = read_graph(model)
    assert ops <= {op.name for op in graph.ops}, [op.name for op in graph.ops]
    path = tmp_path / "model.tflite"
    path.write_bytes(model)
    shape = graph.tensors[graph.inputs[0]].shape
    out_shapes = [graph.tensors[t].shape for t in graph.outputs]
    records = _records(np.random.default_rng(11), shape, 24)
    stdin = b"".join(r.tobytes() for r in records)
    ours = np.frombuffer(run_program(kernels_exe, stdin, args=[path, "routevit"]), np.int8)
    tflm = np.frombuffer(run_program(kernels_exe, stdin, args=[path, "tflm"]), np.int8)
    assert np.array_equal(ours, tflm), f"{name}: routevit's kernels != TFLM's kernels from the same tree"
    wheel = runtime.Interpreter.from_bytes(model, arena_size=1 << 20)
    per_record = sum(int(np.prod(s)) for s in out_shapes)
    assert ours.size == per_record * len(records)
    saturated = 0
    for r, record in enumerate(records):
        wheel.set_input(record, 0)
        wheel.invoke()
        expected = np.concatenate([wheel.get_output(o).reshape(-1) for o in range(len(out_shapes))])
        got = ours[r * per_record:(r + 1) * per_record]
        assert np.array_equal(got, expected), f"{name} record {r}: routevit's kernels != tflite-micro wheel"
        saturated += int(np.sum((got == -128) | (got == 127)))
    assert len(np.unique(ours)) > 8  # the outputs really vary: not a constant that happens to match


SILU_MODELS = [m for m in MODELS if m[0].startswith("SiLU")]


@pytest.mark.parametrize("name,make,ops", SILU_MODELS, ids=[m[0] for m in SILU_MODELS])
def test_fused_silu_segment_equals_the_wheel_on_the_export(kernels_exe, tmp_path, name, make, ops):
    """The device segment (`routevit generate`'s default in-place plan: SiLU fused into
    ROUTEVIT_SILU, y planned over x) in TFLM with routevit's kernels, against the wheel running
    the converter's LOGISTIC + MUL: equal on every int8 value, the extremes and random inputs.
    The LOGISTIC that feeds no MUL stays a LOGISTIC."""
    from tflite_micro.python.tflite_micro import runtime

    from toolchain.export.flatbuffer import read_graph
    from toolchain.generate.device_model import SILU_OP, device_flatbuffer, head_bytes

    model = make()
    device = device_flatbuffer(model)
    names = [op.name for op in read_graph(device).ops]
    exported = [op.name for op in read_graph(model).ops]
    assert names.count(SILU_OP) == 1 and names.count("LOGISTIC") == exported.count("LOGISTIC") - 1 == 1, names
    assert names.count("MUL") == exported.count("MUL") - 1, names  # x * 0.5 stays a MUL
    assert head_bytes(device) <= head_bytes(device_flatbuffer(model, fuse=False))
    path = tmp_path / "device.tflite"
    path.write_bytes(device)
    graph = read_graph(model)
    shape = graph.tensors[graph.inputs[0]].shape
    records = _records(np.random.default_rng(12), shape, 16)
    ours = np.frombuffer(run_program(kernels_exe, b"".join(r.tobytes() for r in records), args=[path, "routevit"]),
                         np.int8)
    wheel = runtime.Interpreter.from_bytes(model, arena_size=1 << 20)
    expected = []
    for record in records:
        wheel.set_input(record, 0)
        wheel.invoke()
        expected += [wheel.get_output(o).reshape(-1) for o in range(len(graph.outputs))]
    expected = np.concatenate(expected)
    assert ours.shape == expected.shape
    assert np.array_equal(ours, expected), f"{name}: fused SiLU segment != tflite-micro wheel on the export"
    assert len(np.unique(ours)) > 8
