"""numpy twins of the kernels the firmware carries itself (docs/design.md, last section).

`sub_quantized` is routevit's int8/int16 SUB (firmware_templates/project/src/sub_kernel.cc.j2):
the rescaling multipliers in double, then TFLM's reference arithmetic (reference_ops::Sub /
BroadcastQuantSubSlow, double rounding). It equals what the tflite-micro wheel (the host
reference) computes for SUB; tests/test_host_kernels.py holds the C kernel, this twin and the
wheel to each other.

    >>> import numpy as np
    >>> a = np.array([[10, -20, 127]], np.int8); b = np.array([[3]], np.int8)
    >>> sub_quantized(a, (0.05, 1), b, (0.1, -2), (0.08, 0)).tolist()
    [[-1, -19, 73]]
"""
from __future__ import annotations

import math

import numpy as np

from toolchain.hostref import multiply_by_quantized_multiplier

# Headroom the inputs are shifted up by before rescaling (TFLM's SUB and routevit's).
LEFT_SHIFT = {np.dtype(np.int8): 20, np.dtype(np.int16): 15}
ACTIVATIONS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLM's QuantizeMultiplier(double): (Q31 multiplier, shift), real = m * 2^(shift - 31);
    the mantissa is rounded half away from zero (TfLiteRound), not to even."""
    if real == 0.0:
        return 0, 0
    mantissa, shift = math.frexp(real)
    scaled = mantissa * (1 << 31)  # exact: a power-of-two scaling of a double
    q = math.floor(abs(scaled) + 0.5) * (1 if scaled >= 0 else -1)
    if q == 1 << 31:
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q, shift


def activation_range(activation: str, scale: float, zero_point: int, dtype) -> tuple[int, int]:
    """CalculateActivationRangeQuantized: the fused activation's clamp in the output's integers."""
    info = np.iinfo(dtype)
    lo, hi = int(info.min), int(info.max)

    def quantize(value: float) -> int:  # TFLM: zero_point + TfLiteRound(value / scale) in float
        q = float(np.float32(value) / np.float32(scale))
        return zero_point + math.floor(abs(q) + 0.5) * (1 if q >= 0 else -1)

    if activation == "NONE":
        return lo, hi
    if activation == "RELU":
        return max(lo, quantize(0.0)), hi
    if activation == "RELU6":
        return max(lo, quantize(0.0)), min(hi, quantize(6.0))
    if activation == "RELU_N1_TO_1":
        return max(lo, quantize(-1.0)), min(hi, quantize(1.0))
    raise ValueError(f"activation {activation!r}: one of {', '.join(ACTIVATIONS)}")


def sub_params(first_q, second_q, out_q, dtype=np.int8) -> dict:
    """The parameters Prepare computes: scales (float32 in the flatbuffer) widened to double."""
    dtype = np.dtype(dtype)
    s1, s2, so = (float(np.float32(q[0])) for q in (first_q, second_q, out_q))
    if not (s1 > 0 and s2 > 0 and so > 0):
        raise ValueError("SUB: tensor scales must be positive")
    left_shift = LEFT_SHIFT[dtype]
    common = 2.0 * max(s1, s2)
    out_multiplier = common / (float(1 << left_shift) * so)
    if not out_multiplier < 1.0:
        raise ValueError(f"SUB: output scale {so} is too small for the input scales")
    m1, sh1 = quantize_multiplier(s1 / common)
    m2, sh2 = quantize_multiplier(s2 / common)
    mo, sho = quantize_multiplier(out_multiplier)
    return {"left_shift": left_shift, "input1_offset": -int(first_q[1]), "input2_offset": -int(second_q[1]),
            "output_offset": int(out_q[1]), "input1_multiplier": m1, "input1_shift": sh1,
            "input2_multiplier": m2, "input2_shift": sh2, "output_multiplier": mo, "output_shift": sho}


def sub_quantized(first, first_q, second, second_q, out_q, activation: str = "NONE") -> np.ndarray:
    """first - second for int8 (or int16) tensors with numpy broadcasting.

    first_q, second_q, out_q: (scale, zero_point) of the two inputs and the output."""
    first = np.asarray(first)
    second = np.asarray(second)
    dtype = first.dtype
    if dtype not in LEFT_SHIFT or second.dtype != dtype:
        raise ValueError(f"SUB: int8 or int16 inputs of one type, got {first.dtype} and {second.dtype}")
    p = sub_params(first_q, second_q, out_q, dtype)
    a, b = np.broadcast_arrays(first.astype(np.int64), second.astype(np.int64))
    shifted1 = (a + p["input1_offset"]) * (1 << p["left_shift"])
    shifted2 = (b + p["input2_offset"]) * (1 << p["left_shift"])
    scaled1 = multiply_by_quantized_multiplier(shifted1, p["input1_multiplier"], p["input1_shift"])
    scaled2 = multiply_by_quantized_multiplier(shifted2, p["input2_multiplier"], p["input2_shift"])
    raw = multiply_by_quantized_multiplier(scaled1 - scaled2, p["output_multiplier"], p["output_shift"])
    lo, hi = activation_range(activation, out_q[0], int(out_q[1]), dtype)
    return np.clip(raw + p["output_offset"], lo, hi).astype(dtype)
