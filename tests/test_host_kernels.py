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
from host_cc import (DRIVERS, TFLM_FLAGS, compile_program, host_tflm_library,  # noqa: E402
                     render_templates, run_program)

from toolchain import routing  # noqa: E402
from toolchain.hostref import multiply_by_quantized_multiplier, requantize  # noqa: E402


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
