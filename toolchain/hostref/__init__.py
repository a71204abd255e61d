"""Host reference: the exported segments on the tflite-micro wheel, routed in integer numpy.

It does exactly what the firmware does: quantize the image with the plan's pixel table, run the
segments in plan order in TFLM, and between them turn the int8 router scores into dispatch
[E*C] / combine [k*N] with `toolchain.routing.route`. Its int8 logits are therefore the
firmware's, byte for byte.

    >>> from toolchain.hostref import HostReference
    >>> ref = HostReference("runs/exp")                       # doctest: +SKIP
    >>> result = ref.run(ref.quantize_pixels(pixels_uint8))    # doctest: +SKIP
    >>> result.logits, result.routing[0].counts                # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from toolchain.errors import RoutevitError


@dataclasses.dataclass
class Routing:
    scores: np.ndarray  # int8 [N, E]
    dispatch: np.ndarray  # int32 [E*C]
    combine: np.ndarray  # int32 [k*N]
    counts: np.ndarray  # int32 [E]


@dataclasses.dataclass
class HostResult:
    logits: np.ndarray  # int8 [num_classes]
    routing: list  # [Routing] per routed layer
    outputs: list  # per segment: [int8 arrays in the segment's output order]


def rounding_divide_by_pot(x, exponent):
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).astype(np.int64)
    return (x >> exponent) + (remainder > threshold).astype(np.int64)


def multiply_by_quantized_multiplier(x, multiplier: int, shift: int):
    """TFLM's MultiplyByQuantizedMultiplier on int32 values (held in int64), exact."""
    x = np.asarray(x, np.int64)
    left = shift if shift > 0 else 0
    right = 0 if shift > 0 else -shift
    a = x * (np.int64(1) << left)
    a = np.clip(a, -(1 << 31), (1 << 31) - 1)
    overflow = (a == -(1 << 31)) & (multiplier == -(1 << 31))
    ab = a * np.int64(multiplier)
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    # SaturatingRoundingDoublingHighMul: (ab + nudge) / 2**31, truncating toward zero.
    num = ab + nudge
    high = np.where(num >= 0, num >> 31, -((-num) >> 31))
    high = np.where(overflow, (1 << 31) - 1, high)
    return rounding_divide_by_pot(high, right)


def requantize(values: np.ndarray, params) -> np.ndarray:
    """int8 -> int8 with a plan.json `requantize` entry (a `toolchain.plan.Requantize` or its
    dict; TFLM fixed point, clamped)."""
    if not isinstance(params, dict):
        params = params.to_dict()
    x = values.astype(np.int64) - params["in_zero_point"]
    y = multiply_by_quantized_multiplier(x, params["multiplier"], params["shift"])
    return np.clip(y + params["out_zero_point"], -128, 127).astype(np.int8)


class HostReference:
    """One export folder (plan.json + segments) loaded into the tflite-micro wheel."""

    def __init__(self, exp):
        from toolchain.hostref import tflm
        from toolchain.plan import read_plan

        self.folder = Path(exp)
        self.plan = read_plan(self.folder)  # toolchain.plan.Plan, segment files checked
        self.interpreters = []
        self.arena = []
        for seg in self.plan.segments:
            interp, messages = tflm.load(seg.data)
            if interp is None:
                raise RoutevitError(f"{seg.path}: TFLite Micro cannot load it "
                                    f"({' '.join(messages.split())[:200]}); export again")
            self.interpreters.append(interp)
        lut = self.plan.input.lut()
        self._lut = np.asarray(lut, np.int16).astype(np.int8)  # [C, 256]

    # ------------------------------------------------------------------ input
    def quantize_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [H, W, C] (or [1, H, W, C]) -> int8 input tensor [1, H, W, C] via the pixel table."""
        pixels = np.asarray(pixels)
        shape = self.plan.input.shape
        if pixels.ndim == 3:
            pixels = pixels[None]
        if list(pixels.shape) != shape or pixels.dtype != np.uint8:
            raise RoutevitError(f"image of shape {list(pixels.shape)} {pixels.dtype}: the model "
                                f"takes uint8 pixels {shape}; resize the image first")
        out = np.empty(pixels.shape, np.int8)
        for c in range(pixels.shape[-1]):
            out[..., c] = self._lut[c][pixels[..., c]]
        return out

    # ------------------------------------------------------------------ running
    def check_indices(self, layer: int, dispatch, combine) -> tuple:
        r = self.plan.routed_layers[layer]
        n, e, c, k = r.num_patches, r.num_experts, r.capacity, r.top_k
        dispatch = np.asarray(dispatch)
        combine = np.asarray(combine)
        for name, values, size, top in (("dispatch", dispatch, e * c, n), ("combine", combine, k * n, e * c)):
            if values.shape != (size,):
                raise RoutevitError(f"routed layer {layer} ({r.label}): {name} has shape "
                                    f"{list(values.shape)}, needs [{size}]; pass the routing's output")
            if not np.issubdtype(values.dtype, np.integer):
                raise RoutevitError(f"routed layer {layer} ({r.label}): {name} is {values.dtype}, "
                                    "needs int32 indices")
            bad = np.flatnonzero((values < 0) | (values > top))
            if bad.size:
                i = int(bad[0])
                raise RoutevitError(f"routed layer {layer} ({r.label}): {name}[{i}] = "
                                    f"{int(values[i])} is out of range 0..{top}; indices must come "
                                    "from toolchain.routing.route")
        return dispatch.astype(np.int32), combine.astype(np.int32)

    def run_segment(self, k: int, inputs: list) -> list:
        """Invoke segment k with `inputs` in its input order; returns its outputs (copies)."""
        from toolchain.hostref import tflm

        seg = self.plan.segments[k]
        interp = self.interpreters[k]
        for entry, value in zip(seg.inputs, inputs):
            kind = entry.source.kind
            if kind in ("dispatch", "combine"):
                layer = entry.source.routed_layer
                r = self.plan.routed_layers[layer]
                other = np.full(r.choices if kind == "dispatch" else r.slots, 0, np.int32)
                self.check_indices(layer, *((value, other) if kind == "dispatch" else (other, value)))
        try:
            tflm.invoke(interp, inputs)
        except RuntimeError as exc:
            raise RoutevitError(f"{seg.path}: TFLite Micro failed ({exc}); "
                                "export again") from None
        return [interp.get_output(i) for i in range(len(seg.outputs))]

    def run(self, image_int8: np.ndarray, routing_override: dict | None = None) -> HostResult:
        """Run every segment in plan order on one int8 input tensor [1, H, W, C].

        routing_override: {routed layer: (dispatch, combine)} replaces the computed indices
        (tests; they are range-checked like any other)."""
        from toolchain.routing import route

        plan = self.plan
        outputs = []
        routing = [None] * len(plan.routed_layers)
        for seg in plan.segments:
            feeds = []
            for entry in seg.inputs:
                src = entry.source
                if src.kind == "image":
                    value = np.asarray(image_int8, np.int8).reshape(entry.shape)
                elif src.kind == "segment_output":
                    value = outputs[src.segment][src.output]
                    if entry.requantize is not None:
                        value = requantize(value, entry.requantize)
                else:
                    layer = src.routed_layer
                    if routing[layer] is None:
                        routing[layer] = self._route(layer, outputs, route, routing_override)
                    value = getattr(routing[layer], src.kind)
                feeds.append(value)
            outputs.append(self.run_segment(seg.index, feeds))
        logits = outputs[plan.logits.segment][plan.logits.output].reshape(-1)
        return HostResult(logits=logits, routing=routing, outputs=outputs)

    def _route(self, layer, outputs, route, override) -> Routing:
        r = self.plan.routed_layers[layer]
        scores = outputs[r.router.segment][r.router.output]
        scores = scores.reshape(r.num_patches, r.num_experts)
        dispatch, combine, counts = route(scores, r.capacity, r.top_k)
        if override and layer in override:
            dispatch, combine = self.check_indices(layer, *override[layer])
            slots = dispatch.reshape(r.num_experts, r.capacity)
            counts = (slots != r.num_patches).sum(axis=1).astype(np.int32)
        else:
            self.check_indices(layer, dispatch, combine)
        return Routing(scores=scores, dispatch=dispatch, combine=combine, counts=counts)
