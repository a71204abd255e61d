"""Convert a (QAT or float) routevit model into int8 TFLite segments, in order.

Segments are converted one after another. Every input of segment k+1 that an earlier segment
produced gets a fake-quant with exactly that output's int8 range, so the converter gives the
input the same scale and zero point and the bytes pass unchanged between segments
(`requantize: null` in plan.json). The representative data of segment k+1 is what segments
0..k compute in float on the calibration images, with dispatch/combine from
`toolchain.routing.route` on the float router scores.
"""
from __future__ import annotations

import dataclasses
import hashlib
import sys

import numpy as np

from toolchain.errors import RoutevitError


@dataclasses.dataclass
class ConvertedSegment:
    index: int
    flatbuffer: bytes
    inputs: list  # plan.json input entries, in the flatbuffer's input order
    outputs: list  # plan.json output entries, in the flatbuffer's output order
    ops: list
    arena: dict
    interpreter: object = None


def _quant_range(scale: float, zero_point: int):
    return ((-128 - zero_point) * scale, (127 - zero_point) * scale)


def _same_quant(a, b) -> bool:
    # Exact: plan readers (generate) pass bytes unchanged only for identical float32 scales.
    return a[1] == b[1] and np.float32(a[0]) == np.float32(b[0])


def requantize_params(in_scale, in_zero, out_scale, out_zero) -> dict:
    """TFLM-style fixed-point requantization from (in_scale, in_zero) to (out_scale, out_zero)."""
    import math

    ratio = in_scale / out_scale
    mantissa, exponent = math.frexp(ratio)  # ratio = mantissa * 2**exponent, 0.5 <= mantissa < 1
    multiplier = int(round(mantissa * (1 << 31)))
    if multiplier == (1 << 31):
        multiplier //= 2
        exponent += 1
    return {"in_scale": in_scale, "in_zero_point": in_zero, "out_scale": out_scale,
            "out_zero_point": out_zero, "multiplier": multiplier, "shift": exponent}


def convert_model(model, images: np.ndarray, layer_label: str = "segment", progress=True,
                  pin_boundaries: bool = True) -> tuple:
    """(SegmentedModel, [ConvertedSegment]) for `model` calibrated on float `images` [n,H,W,C].

    pin_boundaries: give each segment input its producer's int8 range through a fake-quant (QAT
    models). For a float (PTQ) model that fake-quant would become a DEQUANTIZE/QUANTIZE pair, so
    PTQ relies on calibration instead: a boundary tensor is calibrated from the same float values
    on both sides; any difference left is written as a `requantize` in plan.json.
    """
    from quantization.convert import convert_segment, signature_io, tensor_quant
    from toolchain.export.graph import _inner, _sig, segment_function, segment_model
    from toolchain.export.tflm_check import check_segment, operators
    from toolchain.hostref import tflm
    from toolchain.routing import route

    sm = segment_model(model)
    layer_names = [layer.name for layer in model.layers] + [_inner(layer).name for layer in model.layers]
    quant = {}  # output name -> (scale, zero point)
    stores = [{"image": img[None].astype(np.float32)} for img in images]
    converted = []
    from tqdm import tqdm

    bar = tqdm(total=len(sm.segments) * (len(images) + 1), desc="export", unit="step",
               file=sys.stderr, disable=None if progress else True, leave=False)
    for seg in sm.segments:
        ranges = [None if b.name not in quant or not pin_boundaries else _quant_range(*quant[b.name])
                  for b in seg.inputs]
        function = segment_function(sm, seg.index, ranges)
        names = [_sig(b.name) for b in seg.inputs]
        routed = None
        if seg.routed_node is not None:
            layer = _inner(seg.routed_node.layer)
            router_name = _inner(sm.routed_layers[seg.routed_layer][1]._keras_history.layer).name
            routed = (layer, router_name)
            names += ["dispatch", "combine"]
        representative = []
        for store in stores:
            args = [store[b.name] for b in seg.inputs]
            if routed:
                layer, router_name = routed
                dispatch, combine, _ = route(store[router_name][0], layer.capacity, layer.top_k)
                args += [dispatch, combine]
            representative.append(dict(zip(names, args)))
            out = function(*args)
            for name, _ in seg.outputs:
                store[name] = out[_sig(name)].numpy()
            bar.update(1)
        try:
            flatbuffer = convert_segment(function, model.weights, representative)
        except Exception as exc:  # the converter's errors are long MLIR dumps
            first = str(exc).strip().splitlines()[0][:300]
            raise RoutevitError(f"{layer_label} {seg.index}: the TFLite converter failed ({first}); "
                                "see the log above") from None
        bar.update(1)
        label = f"{layer_label} {seg.index}"
        interp = check_segment(flatbuffer, label, layer_names)
        check_full_int8(flatbuffer, label, layer_names)
        sig_in, sig_out = signature_io(flatbuffer)
        by_sig = {_sig(b.name): b for b in seg.inputs}
        inputs = [None] * len(sig_in)
        for sig_name, tensor, position in sig_in:
            shape, dtype, scale, zero = tensor_quant(flatbuffer, tensor)
            entry = {"name": sig_name, "shape": shape, "dtype": np.dtype(dtype).name}
            if sig_name in ("dispatch", "combine"):
                entry["source"] = {"kind": sig_name, "routed_layer": seg.routed_layer}
            else:
                b = by_sig[sig_name]
                entry.update(name=b.name, scale=scale, zero_point=zero)
                if b.producer_segment is None:
                    entry["source"] = {"kind": "image"}
                    entry["requantize"] = None
                else:
                    entry["source"] = {"kind": "segment_output", "segment": b.producer_segment}
                    produced = quant[b.name]
                    entry["requantize"] = (None if _same_quant(produced, (scale, zero)) else
                                           requantize_params(produced[0], produced[1], scale, zero))
            inputs[position] = entry
        outputs = [None] * len(sig_out)
        by_out = {_sig(name): name for name, _ in seg.outputs}
        for sig_name, tensor, position in sig_out:
            shape, dtype, scale, zero = tensor_quant(flatbuffer, tensor)
            name = by_out[sig_name]
            outputs[position] = {"name": name, "shape": shape, "dtype": np.dtype(dtype).name,
                                 "scale": scale, "zero_point": zero}
            quant[name] = (scale, zero)
            if np.dtype(dtype) != np.int8:
                raise RoutevitError(f"{label}: output {name} is {np.dtype(dtype).name}, not int8; "
                                    "give export a quantized run")
        for entry in inputs:
            if entry["source"]["kind"] == "segment_output":
                entry["source"]["output"] = [o["name"] for o in converted[entry["source"]["segment"]].outputs].index(entry["name"])
            if entry["source"]["kind"] in ("image", "segment_output") and entry["dtype"] != "int8":
                raise RoutevitError(f"{label}: input {entry['name']} is {entry['dtype']}, not int8; "
                                    "give export a quantized run")
        # One inference on a representative input records the arena.
        feeds = []
        for entry in inputs:
            if entry["source"]["kind"] in ("dispatch", "combine"):
                feeds.append(representative[0][entry["source"]["kind"]])
            else:
                value = representative[0][_sig(entry["name"])]
                q = np.round(value / entry["scale"]) + entry["zero_point"]
                feeds.append(np.clip(q, -128, 127).astype(np.int8))
        tflm.invoke(interp, feeds)
        arena = tflm.arena_usage(interp)
        converted.append(ConvertedSegment(seg.index, flatbuffer, inputs, outputs,
                                          sorted({name for name, _ in operators(flatbuffer)}),
                                          arena, interp))
    bar.close()
    return sm, converted


def check_full_int8(flatbuffer: bytes, label: str, layer_names) -> None:
    """Refuse float arithmetic inside a segment: every op must read and write int8/int32 only."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    from toolchain.export.tflm_check import layer_of, operators

    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    graph = model.Subgraphs(0)
    for i, (name, outputs) in enumerate(operators(flatbuffer)):
        op = graph.Operators(i)
        tensors = [op.Inputs(j) for j in range(op.InputsLength())] + \
                  [op.Outputs(j) for j in range(op.OutputsLength())]
        if any(t >= 0 and graph.Tensors(t).Type() == schema.TensorType.FLOAT32 for t in tensors):
            raise RoutevitError(f"{label}: op {name} (from layer {layer_of(outputs, layer_names)}) "
                                "computes in float32, the segment is not full int8; give export a "
                                "quantized run (QRUN from `routevit quantize`)")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
