"""The firmware's own C/C++ built with the host g++ against its Python twin (the way TFLM tests
kernels): the same rendered template sources the firmware compiles, on seeded random inputs and
the edge cases, compared value for value. No Arm toolchain; TFLM headers only for the SUB kernel.

One group per firmware source: routing.cc, requantize.h, sub_kernel.cc, tflm_glue.cc (log
formatter). Drivers: tests/fixtures/host_kernels/. Compile helper: tests/host_cc.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_cc import (
    DRIVERS,
    compile_program,
    host_tflm_library,
    render_templates,
    run_program,
)

from toolchain import routing
from toolchain.hostref import multiply_by_quantized_multiplier, requantize


# =========================================================================== routing.cc
@pytest.fixture(scope="module")
def routing_exe(tmp_path_factory):
    root = tmp_path_factory.mktemp("routing")
    src = render_templates(root / "src", ["src/routing.cc", "src/routing.h"])
    return compile_program([src / "routing.cc", DRIVERS / "routing_driver.cc"], root / "routing",
                           include_dirs=[src])


def routing_cases():
    """(name, scores int8 [N,E], C, k): edge cases first, then seeded random ones."""
    cases = [
        ("all tied top-1", np.zeros((6, 3), np.int8), 2, 1),
        ("all tied top-2", np.full((6, 3), -7, np.int8), 3, 2),
        ("tie on second choice", np.array([[5, 3, 3, 3], [3, 5, 3, 3], [1, 1, 9, 1]], np.int8), 2, 2),
        ("over capacity, everything to expert 0", np.tile(np.array([[9, 0, 0]], np.int8), (8, 1)), 3, 1),
        ("over capacity top-2", np.tile(np.array([[9, 8, 0, 0]], np.int8), (8, 1)), 3, 2),
        ("E=1 C=N", np.arange(-3, 4, dtype=np.int8).reshape(7, 1), 7, 1),
        ("E=1 C=1", np.arange(5, dtype=np.int8).reshape(5, 1), 1, 1),
        ("C=N top-2", np.array([[1, 2], [2, 1], [0, 0], [-128, 127]], np.int8), 4, 2),
        ("C=1", np.array([[3, 1, 2], [3, 2, 1], [1, 3, 2], [2, 1, 3], [3, 3, 3]], np.int8), 1, 1),
        ("C=1 top-2", np.array([[3, 1, 2], [3, 2, 1], [1, 3, 2], [2, 1, 3], [3, 3, 3]], np.int8), 1, 2),
        ("int8 extremes", np.array([[-128, 127], [127, -128], [-128, -128], [127, 127]], np.int8), 2, 2),
        ("N=1", np.array([[0, 4, 4]], np.int8), 1, 2),
        ("top_k = E", np.array([[1, 2], [2, 1], [5, 5]], np.int8), 2, 2),
        ("demo shape 64x8", np.random.default_rng(5).integers(-128, 128, (64, 8), dtype=np.int8), 10, 1),
    ]
    rng = np.random.default_rng(20261023)
    for i in range(300):
        n = int(rng.integers(1, 70))
        e = int(rng.integers(1, 9))
        k = int(rng.integers(1, min(2, e) + 1))
        c = int(rng.integers(1, n + 1))
        # narrow ranges give many ties; full range the rest of the time
        low, high = ((-2, 3) if i % 3 == 0 else (-128, 128))
        cases.append((f"random {i}", rng.integers(low, high, (n, e)).astype(np.int8), c, k))
    return cases


def test_routing_cc_equals_numpy_route(routing_exe):
    cases = routing_cases()
    stdin = "".join(f"{s.shape[0]} {s.shape[1]} {c} {k}\n{' '.join(map(str, s.ravel().tolist()))}\n"
                    for _, s, c, k in cases)
    lines = run_program(routing_exe, stdin).splitlines()
    assert len(lines) == 3 * len(cases), lines[:6]
    for index, (name, scores, c, k) in enumerate(cases):
        got = lines[3 * index: 3 * index + 3]
        want = routing.route(scores, c, k)
        for line, label, expected in zip(got, ("dispatch", "combine", "counts"), want):
            words = line.split()
            assert words[0] == label, f"{name}: {line}"
            assert [int(w) for w in words[1:]] == expected.tolist(), f"{name}: {label} differs"


def test_routing_cc_refuses_shapes_numpy_refuses(routing_exe):
    """top_k 3 or top_k > E: Route returns false (the firmware answers ROUTE with an error)."""
    stdin = "2 2 1 3\n0 0 0 0\n3 1 3 2\n1 2 3\n"
    assert run_program(routing_exe, stdin).split() == ["unsupported", "unsupported"]
    for scores, c, k in ((np.zeros((2, 2), np.int8), 1, 3), (np.zeros((3, 1), np.int8), 3, 2)):
        with pytest.raises(ValueError):
            routing.route(scores, c, k)


# =========================================================================== requantize.h
@pytest.fixture(scope="module")
def requantize_exe(tmp_path_factory):
    root = tmp_path_factory.mktemp("requantize")
    src = render_templates(root / "src", ["src/requantize.h"])
    return compile_program([DRIVERS / "requantize_driver.cc"], root / "requantize", include_dirs=[src])


def requantize_cases():
    """plan.json `requantize` entries: edge cases, then random scale pairs through the exporter's
    own parameter function (toolchain.export.segments.requantize_params)."""
    from toolchain.export.segments import requantize_params

    every = np.arange(-128, 128, dtype=np.int8)
    cases = [
        # name, in_zp, out_zp, multiplier, shift
        ("identity-like, saturating zero points", -128, 127, 1 << 30, 1),
        ("multiplier 2^31-1 (largest Q31)", 0, 0, (1 << 31) - 1, 0),
        ("multiplier 2^31-1, shift +1 saturates", 5, -3, (1 << 31) - 1, 1),
        ("multiplier 2^30 (0.5), ties at every odd value", 0, 0, 1 << 30, 0),
        ("multiplier 2^30, negative shift, ties", 3, 0, 1 << 30, -1),
        ("shift -7", -20, 17, 1518500250, -7),
        ("shift -30", 0, 0, (1 << 31) - 1, -30),
        ("shift -31", 0, 0, (1 << 31) - 1, -31),
        ("shift +7 saturates both ways", 0, 0, 1 << 30, 7),
        ("zero points at the ends", 127, -128, 1431655765, 0),
        ("zero points at the other ends", -128, 127, 1431655765, 0),
    ]
    rng = np.random.default_rng(31)
    for i in range(200):
        in_scale, out_scale = float(rng.uniform(1e-3, 0.2)), float(rng.uniform(1e-3, 0.2))
        if i % 5 == 0:
            out_scale = float(np.nextafter(np.float32(in_scale), np.float32(1)))  # ratio just under 1
        p = requantize_params(in_scale, int(rng.integers(-128, 128)), out_scale, int(rng.integers(-128, 128)))
        cases.append((f"random {i}", p["in_zero_point"], p["out_zero_point"], p["multiplier"], p["shift"]))
    return [(name, {"in_zero_point": a, "out_zero_point": b, "multiplier": m, "shift": s}, every)
            for name, a, b, m, s in cases]


def test_requantize_h_equals_host_reference(requantize_exe):
    cases = requantize_cases()
    stdin = "".join(f"rq {p['in_zero_point']} {p['out_zero_point']} {p['multiplier']} {p['shift']} "
                    f"{len(v)}\n{' '.join(map(str, v.tolist()))}\n" for _, p, v in cases)
    lines = run_program(requantize_exe, stdin).splitlines()
    assert len(lines) == len(cases)
    saturated = 0
    for (name, params, values), line in zip(cases, lines):
        want = requantize(values, params)
        assert [int(w) for w in line.split()] == want.tolist(), f"{name}: {params}"
        saturated += int(np.sum((want == -128) | (want == 127)))
    assert saturated > 1000  # the cases do reach the clamp


def test_multiply_by_quantized_multiplier_on_int32(requantize_exe):
    """The fixed-point core on the int32 range TFLM defines it for (|x| * 2^left fits int32)."""
    rng = np.random.default_rng(7)
    cases = []
    for multiplier in (1 << 30, (1 << 31) - 1, 1073741825, 1518500250, 2147483520, -(1 << 31), -1518500250, 0):
        for shift in (-31, -20, -5, -1, 0, 1, 4):
            bound = (1 << 31) >> max(shift, 0)
            x = np.concatenate([rng.integers(-bound, bound, 40),
                                [0, 1, -1, bound - 1, -bound, 255, -255, (1 << 15), -(1 << 15)]])
            cases.append((multiplier, shift, x.astype(np.int64)))
    stdin = "".join(f"mbqm {m} {s} {len(x)}\n{' '.join(map(str, x.tolist()))}\n" for m, s, x in cases)
    lines = run_program(requantize_exe, stdin).splitlines()
    assert len(lines) == len(cases)
    for (m, s, x), line in zip(cases, lines):
        want = multiply_by_quantized_multiplier(x, m, s)
        assert [int(w) for w in line.split()] == want.tolist(), f"multiplier {m} shift {s}"


# =========================================================================== tflm_glue.cc (log formatter)
# TFLM 90b983c2 has no vsnprintf of its own: MicroVsnprintf/MicroSnprintf (micro_log.cc) call the
# platform's DebugVsnprintf, and every platform file in the tree (debug_log.cc, cortex_m_generic/)
# implements that with the C library's vsnprintf, i.e. newlib's, which needs malloc and stdio —
# what the firmware keeps out of its link. (TFLM's Makefile can download eyalroz/printf, but that
# is a third-party download, not part of the tree.) So the firmware keeps its own FormatV and
# this group holds it to the C/Python semantics for the conversions TFLM's messages use.
@pytest.fixture(scope="module")
def format_exe(tmp_path_factory):
    from host_cc import tflm_tree

    tree = tflm_tree()  # debug_log.h / micro_time.h, the declarations tflm_glue.cc implements
    root = tmp_path_factory.mktemp("format")
    src = render_templates(root / "src", ["src/tflm_glue.cc", "src/tflm_glue.h", "src/board/board.h"])
    return compile_program([src / "tflm_glue.cc", DRIVERS / "format_driver.cc"], root / "format",
                           include_dirs=[src], system_include_dirs=tree.include_dirs(),
                           defines=["TF_LITE_STATIC_MEMORY"])


_LENGTH = __import__("re").compile(r"(%[-+ #0]*\d*(?:\.\d+)?)(?:ll|l|z)")


def python_format(fmt: str, args) -> str:
    """What C's vsnprintf prints, via Python's % (the same conversions without length modifiers)."""
    values = []
    for kind, value in args:
        if kind == "u":
            value &= 0xFFFFFFFF  # C reads the bits of an unsigned
        values.append(value)
    return _LENGTH.sub(r"\1", fmt) % tuple(values)


def _near_tie(value: float, precision: int) -> bool:
    scaled = abs(value) * 10 ** precision
    return abs(scaled - np.floor(scaled) - 0.5) < 1e-4


def format_cases():
    """(buffer size, format, [(type, value)]): TFLM's own formats and messages, then random ones."""
    cases = [
        (64, "%d", [("i", 0)]), (64, "%d", [("i", -1)]), (64, "%d", [("i", -2**31)]), (64, "%d", [("i", 2**31 - 1)]),
        (64, "%u", [("u", 0)]), (64, "%u", [("u", 2**32 - 1)]), (64, "%u", [("u", -5)]),
        (64, "%x", [("u", 0xdeadbeef)]), (64, "%X", [("u", 0xdeadbeef)]), (64, "%x", [("u", 0)]),
        (64, "%08X", [("u", 0xbeef)]), (64, "%02X", [("u", 7)]), (64, "%02X", [("u", 0x1ff)]),
        (64, "%#5x", [("u", 255)]), (64, "%#x", [("u", 1)]), (64, "%4d", [("i", 7)]), (64, "%4d", [("i", -7)]),
        (64, "%2d", [("i", 12345)]), (64, "%05d", [("i", -42)]), (64, "%-6d|", [("i", -42)]),
        (64, "%+d", [("i", 5)]), (64, "% d", [("i", 5)]), (64, "%+d", [("i", -5)]), (64, "%.3d", [("i", 7)]),
        (64, "%5s|", [("s", "ab")]), (64, "%-5s|", [("s", "ab")]), (64, "%5s", [("s", "abcdefgh")]),
        (64, "%.2s", [("s", "abcdef")]), (64, "%s", [("s", "")]), (64, "%c%c%c", [("c", "a"), ("c", "Z"), ("c", "0")]),
        (64, "%3c|", [("c", "q")]), (64, "%-3c|", [("c", "q")]), (64, "100%%", []), (64, "plain text", []),
        (64, "%f", [("d", 0.0)]), (64, "%f", [("d", -0.0)]), (64, "%f", [("d", 1.5)]), (64, "%f", [("d", -2.25)]),
        (64, "%6.2f", [("d", 3.14159)]), (64, "%6.2f", [("d", -3.14159)]), (64, "%2.2f", [("d", 99.999)]),
        (64, "%.0f", [("d", 2.4)]), (64, "%.0f", [("d", -0.4)]), (64, "%10.4f|", [("d", 0.0078125)]),
        (64, "%-10.3f|", [("d", 12.0)]), (64, "%08.3f", [("d", -1.25)]), (64, "%f", [("d", 0.00392156862745098)]),
        (64, "%f", [("d", 123456789.25)]), (64, "%.9f", [("d", 0.1)]),
        (64, "%ld", [("l", -(2**40))]), (64, "%lld", [("L", -(2**63))]), (64, "%lld", [("L", 2**63 - 1)]),
        (64, "%lu", [("l", 2**40)]), (64, "%llu", [("U", 2**64 - 1)]), (64, "%zu", [("z", 123456789012)]),
        (64, "%llx", [("U", 2**64 - 1)]), (64, "%lx", [("l", 2**35 + 10)]),
        # messages from the TFLM tree, verbatim
        (160, "Failed to allocate tail memory. Requested: %u, available %u, missing: %u",
         [("u", 4096), ("u", 1000), ("u", 3096)]),
        (160, "Node %s (number %d) failed to invoke with status %d", [("s", "SUB"), ("i", 12), ("i", 1)]),
        (160, "Type %s (%d) not supported.", [("s", "FLOAT64"), ("i", 11)]),
        (160, "Didn't find op for builtin opcode '%s'", [("s", "TOPK_V2")]),
        (160, "%s:%d %s", [("s", "tensorflow/lite/micro/kernels/sub.cc"), ("i", 87), ("s", "status == kTfLiteOk")]),
        (160, "%4d | %6.2f%% |", [("i", 3), ("d", 41.5)]),
        # truncation: the return value is the full length; the buffer holds size-1 characters
        (1, "%d", [("i", 123)]), (4, "%d", [("i", -123456)]), (6, "abc%sdef", [("s", "XYZ")]),
        (5, "%08X", [("u", 0xabc)]), (3, "%6.2f", [("d", 1.0)]), (0, "%s", [("s", "ignored")]),
    ]
    rng = np.random.default_rng(2026)
    alphabet = [chr(c) for c in range(32, 127) if chr(c) != "%"]
    for _ in range(400):
        kind = rng.choice(["d", "u", "x", "X", "s", "f", "c", "ld", "lld", "llu", "zu"])
        flag = rng.choice(["", "", "-", "0"]) if kind not in ("s", "c") else rng.choice(["", "-"])
        width = str(int(rng.integers(1, 20))) if rng.random() < 0.5 else ""
        if kind == "f":
            precision = int(rng.integers(0, 8))
            value = float(rng.uniform(-1e6, 1e6) if rng.random() < 0.5 else rng.normal(0, 3))
            if _near_tie(value, precision):
                continue  # FormatV rounds the double times 10^p, printf the exact binary value
            cases.append((int(rng.integers(1, 40)), f"<%{flag}{width}.{precision}f>", [("d", value)]))
            continue
        if kind == "s":
            text = "".join(rng.choice(alphabet, int(rng.integers(0, 12))))
            cases.append((int(rng.integers(1, 40)), f"[%{flag}{width}s]", [("s", text)]))
            continue
        if kind == "c":
            cases.append((40, f"[%{flag}{width}c]", [("c", str(rng.choice(alphabet)))]))
            continue
        spec = {"d": ("i", -2**31, 2**31), "u": ("u", 0, 2**32), "x": ("u", 0, 2**32), "X": ("u", 0, 2**32),
                "ld": ("l", -2**63, 2**63), "lld": ("L", -2**63, 2**63), "llu": ("U", 0, 2**64),
                "zu": ("z", 0, 2**64)}[kind]
        magnitude = int(rng.integers(0, 64))
        value = int(rng.integers(0, 2**63)) >> magnitude
        if spec[1] < 0 and rng.random() < 0.5:
            value = -value
        value = max(spec[1], min(spec[2] - 1, value))
        cases.append((int(rng.integers(1, 40)), f"v=%{flag}{width}{kind};", [(spec[0], value)]))
    return cases


@pytest.mark.tflm
def test_log_formatter_equals_printf_semantics(format_exe):
    cases = format_cases()
    stdin = "".join("\t".join([str(size), fmt] + [f"{t}:{v}" for t, v in args]) + "\n" for size, fmt, args in cases)
    lines = run_program(format_exe, stdin).splitlines()
    assert len(lines) == len(cases)
    for (size, fmt, args), line in zip(cases, lines):
        want = python_format(fmt, args)
        returned, _, hexed = line.partition(" ")
        got = bytes.fromhex(hexed).decode("latin-1")
        assert (int(returned), got) == (len(want), want[:max(size - 1, 0)]), f"{fmt!r} {args} size {size}"


# =========================================================================== sub_kernel.cc
# routevit's SUB kernel runs inside TFLM's MicroInterpreter from a host g++ build of the tree
# (toolchain.tflm.library with prefix "": the firmware library's own source list and flags).
SUB_MODELS = [
    # name, first shape, second shape, first range, second range, fused relu
    ("same shape", (1, 4, 4, 8), (1, 4, 4, 8), 1.0, 3.0, False),
    ("GroupNorm x - mean [N,P,d] - [N,P,1]", (1, 16, 4, 8), (1, 16, 4, 1), 5.0, 1.0, False),
    ("per-channel [1,4,4,8] - [1,1,1,8]", (1, 4, 4, 8), (1, 1, 1, 8), 2.0, 2.0, False),
    ("first broadcast [1,1,1,8] - [1,4,4,8]", (1, 1, 1, 8), (1, 4, 4, 8), 0.5, 4.0, False),
    ("fused RELU", (1, 6, 6, 4), (1, 6, 6, 4), 3.0, 3.0, True),
    ("tiny vs huge range", (1, 2, 2, 16), (1, 2, 1, 16), 80.0, 0.02, False),
    # one-value second input, >= 1024 elements: the runtime-table path (int8_table.h)
    ("GroupNorm x - mean, table path [1,16,4,32] - [1,1,1,1]", (1, 16, 4, 32), (1, 1, 1, 1), 4.0, 1.0, False),
    ("table path, first input single [1,1,1,1] - [1,8,8,24]", (1, 1, 1, 1), (1, 8, 8, 24), 2.0, 6.0, False),
]


def _sub_model(first_shape, second_shape, first_range, second_range, relu, seed):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec(first_shape, tf.float32), tf.TensorSpec(second_shape, tf.float32)])
    def sub(a, b):
        d = a - b
        return tf.nn.relu(d) if relu else d

    rng = np.random.default_rng(seed)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([sub.get_concrete_function()], sub)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # asymmetric calibration ranges give non-zero zero points
    converter.representative_dataset = lambda: ([rng.uniform(-first_range, first_range * 0.7, first_shape).astype(np.float32),
                                                 rng.uniform(-second_range * 0.6, second_range, second_shape).astype(np.float32)]
                                                for _ in range(8))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def _sub_wiring(model: bytes):
    """[(shape, (scale, zp)) per graph input], SUB's (first, second) as graph input positions,
    output (scale, zp), fused activation name."""
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_content=model)
    ops = interp._get_ops_details()
    assert [o["op_name"] for o in ops] == ["SUB"], ops
    inputs = interp.get_input_details()
    position = {d["index"]: i for i, d in enumerate(inputs)}
    first, second = (position[t] for t in ops[0]["inputs"])
    out = interp.get_output_details()[0]
    out_q = tuple(out["quantization"])
    # the fused RELU shows as a clamp at the zero point; TFLite builtin options are not exposed here
    return [(tuple(d["shape"]), tuple(d["quantization"])) for d in inputs], (first, second), out_q


@pytest.fixture(scope="module")
def sub_setup(tmp_path_factory):
    library = host_tflm_library(("SUB",))
    root = tmp_path_factory.mktemp("sub")
    src = render_templates(root / "src", ["src/sub_kernel.cc", "src/sub_kernel.h", "src/int8_table.cc",
                                          "src/int8_table.h"])
    exe = compile_program([src / "sub_kernel.cc", src / "int8_table.cc", DRIVERS / "sub_driver.cc"], root / "sub",
                          include_dirs=[src], system_include_dirs=library.include_dirs,
                          defines=library.defines, libraries=[library.path])
    models = []
    rng = np.random.default_rng(404)
    specs = list(SUB_MODELS)
    for i in range(4):  # random ranges: more scale / zero-point combinations
        specs.append((f"random ranges {i}", (1, 3, 5, 8), (1, 3, 5, 8) if i % 2 else (1, 1, 5, 8),
                      float(rng.uniform(0.05, 20)), float(rng.uniform(0.05, 20)), False))
    for seed, (name, s1, s2, r1, r2, relu) in enumerate(specs):
        path = root / f"sub_{seed}.tflite"
        path.write_bytes(_sub_model(s1, s2, r1, r2, relu, seed))
        models.append((name, path, relu))
    return exe, models


def _sub_inputs(rng, shapes, count):
    records = []
    for r in range(count):
        tensors = []
        for shape, _ in shapes:
            if r == 0:
                tensors.append(np.full(shape, -128, np.int8))
            elif r == 1:
                tensors.append(np.full(shape, 127, np.int8))
            else:
                tensors.append(rng.integers(-128, 128, shape, dtype=np.int8))
        if r == 2:  # the extremes against each other: saturation both ways
            tensors = [np.full(shapes[0][0], 127, np.int8), np.full(shapes[1][0], -128, np.int8)]
        records.append(tensors)
    return records


@pytest.mark.tflm
def test_sub_kernel_equals_numpy_twin_and_the_wheel(sub_setup):
    from tflite_micro.python.tflite_micro import runtime

    from toolchain.hostref.kernels import sub_quantized

    exe, models = sub_setup
    rng = np.random.default_rng(99)
    checked = clamped = 0
    for name, path, relu in models:
        shapes, (first, second), out_q = _sub_wiring(path.read_bytes())
        records = _sub_inputs(rng, shapes, 40)
        stdin = b"".join(t.tobytes() for tensors in records for t in tensors)
        device = np.frombuffer(run_program(exe, stdin, args=[path, "routevit"]), np.int8)
        wheel = runtime.Interpreter.from_bytes(path.read_bytes())
        out_shape = np.broadcast_shapes(shapes[first][0], shapes[second][0])
        device = device.reshape(len(records), *out_shape)
        for r, tensors in enumerate(records):
            twin = sub_quantized(tensors[first], shapes[first][1], tensors[second], shapes[second][1], out_q,
                                 "RELU" if relu else "NONE")
            for i, t in enumerate(tensors):
                wheel.set_input(t, i)
            wheel.invoke()
            host = wheel.get_output(0).reshape(out_shape)
            assert np.array_equal(twin, host), f"{name} record {r}: numpy twin != tflite-micro wheel"
            assert np.array_equal(device[r], twin), f"{name} record {r}: firmware SUB != numpy twin"
            checked += twin.size
            clamped += int(np.sum((twin == -128) | (twin == 127)))
    assert checked > 30_000 and clamped > 100



def _tree_float32_params(first_q, second_q, out_q):
    """SUB's parameters as TFLM 90b983c2's sub_common.cc computes them: the ratios in float32."""
    from toolchain.hostref.kernels import quantize_multiplier, sub_params

    s1, s2, so = (np.float32(q[0]) for q in (first_q, second_q, out_q))
    twice = np.float32(2) * max(s1, s2)
    p = sub_params(first_q, second_q, out_q)
    p["input1_multiplier"], p["input1_shift"] = quantize_multiplier(float(np.float32(s1 / twice)))
    p["input2_multiplier"], p["input2_shift"] = quantize_multiplier(float(np.float32(s2 / twice)))
    p["output_multiplier"], p["output_shift"] = quantize_multiplier(
        float(np.float32(twice / (np.float32(1 << 20) * so))))
    return p


def _sub_with(p, a, b):
    s1 = (a.astype(np.int64) + p["input1_offset"]) * (1 << p["left_shift"])
    s2 = (b.astype(np.int64) + p["input2_offset"]) * (1 << p["left_shift"])
    raw = multiply_by_quantized_multiplier(
        multiply_by_quantized_multiplier(s1, p["input1_multiplier"], p["input1_shift"])
        - multiply_by_quantized_multiplier(s2, p["input2_multiplier"], p["input2_shift"]),
        p["output_multiplier"], p["output_shift"])
    return np.clip(raw + p["output_offset"], -128, 127).astype(np.int8)


@pytest.mark.tflm
def test_sub_kernel_rounds_near_ties_like_the_wheel_where_the_trees_sub_does_not(sub_setup, tmp_path):
    """Why the firmware has its own SUB (docs/design.md): with TFLM 90b983c2's float32 multipliers
    some (a, b) pairs on a rounding near-tie land one step away from the wheel. An output scale
    that has such pairs is found in numpy and written into a real SUB model; on those pairs the
    tree's SUB (host build) differs from the wheel, routevit's does not."""
    from tflite_micro.python.tflite_micro import runtime

    from toolchain.hostref.kernels import sub_params, sub_quantized

    exe, models = sub_setup
    _, path, _ = models[0]  # same-shape SUB
    model = path.read_bytes()
    shapes, (first, second), out_q = _sub_wiring(model)
    q1, q2 = shapes[first][1], shapes[second][1]
    a, b = (g.astype(np.int8) for g in np.meshgrid(np.arange(-128, 128), np.arange(-128, 128), indexing="ij"))
    rng = np.random.default_rng(3)
    for _ in range(400):
        scale = np.float32(out_q[0] * rng.uniform(0.7, 1.4))
        candidate = (float(scale), out_q[1])
        ties = _sub_with(sub_params(q1, q2, candidate), a, b) != _sub_with(_tree_float32_params(q1, q2, candidate), a, b)
        if ties.any():
            break
    else:
        pytest.fail("no output scale with a float32/double near-tie found")
    old = np.float32(out_q[0]).tobytes()
    assert model.count(old) == 1
    patched = tmp_path / "sub_near_tie.tflite"
    patched.write_bytes(model.replace(old, scale.tobytes()))
    assert _sub_wiring(patched.read_bytes())[2][0] == pytest.approx(float(scale), rel=0, abs=0)

    # every near-tie pair, then random pairs, laid out over the model's [1,4,4,8] inputs
    pairs_a, pairs_b = a[ties], b[ties]
    size = int(np.prod(shapes[first][0]))
    count = -(-len(pairs_a) // size) + 4
    flat_a = rng.integers(-128, 128, count * size).astype(np.int8)
    flat_b = rng.integers(-128, 128, count * size).astype(np.int8)
    flat_a[:len(pairs_a)], flat_b[:len(pairs_b)] = pairs_a, pairs_b
    records = [[None, None] for _ in range(count)]
    for r in range(count):
        records[r][first] = flat_a[r * size:(r + 1) * size].reshape(shapes[first][0])
        records[r][second] = flat_b[r * size:(r + 1) * size].reshape(shapes[second][0])
    stdin = b"".join(t.tobytes() for tensors in records for t in tensors)
    ours = np.frombuffer(run_program(exe, stdin, args=[patched, "routevit"]), np.int8)
    tree = np.frombuffer(run_program(exe, stdin, args=[patched, "tflm"]), np.int8)
    wheel = runtime.Interpreter.from_bytes(patched.read_bytes())
    host = []
    for tensors in records:
        for i, t in enumerate(tensors):
            wheel.set_input(t, i)
        wheel.invoke()
        host.append(wheel.get_output(0).reshape(-1))
    host = np.concatenate(host)
    twin = sub_quantized(flat_a, q1, flat_b, q2, (float(scale), out_q[1]))
    assert np.array_equal(host, twin) and np.array_equal(ours, twin)
    tree_twin = _sub_with(_tree_float32_params(q1, q2, (float(scale), out_q[1])), flat_a, flat_b)
    assert np.array_equal(tree, tree_twin)  # the tree's SUB is what the float32 model says
    assert np.array_equal(np.flatnonzero(tree != host), np.arange(len(pairs_a)))  # exactly the near-ties
