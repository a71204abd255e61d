"""Cross-check the host reference (TFLM kernels) against tf.lite.Interpreter on the same inputs.

For every segment both interpreters get the identical int8 inputs (the host reference's own
chain, routing included); every op's output tensor is compared, so a difference is pinned to
the first op whose kernels disagree, with how many elements differ and by how much.
TFLM's kernels are its reference kernels; tf.lite.Interpreter runs either its reference kernels
(`reference=True`, BUILTIN_REF) or its optimized ones.
"""
from __future__ import annotations

import numpy as np


def _tflite_interpreter(data: bytes, reference: bool):
    import tensorflow as tf

    kwargs = {"experimental_preserve_all_tensors": True}
    if reference:
        kwargs["experimental_op_resolver_type"] = tf.lite.experimental.OpResolverType.BUILTIN_REF
    else:
        kwargs["experimental_op_resolver_type"] = tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interp = tf.lite.Interpreter(model_content=data, **kwargs)
    except ValueError:
        # BUILTIN_REF lacks some op versions (DEPTH_TO_SPACE v2): use the builtin kernels.
        kwargs["experimental_op_resolver_type"] = (
            tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interp = tf.lite.Interpreter(model_content=data, **kwargs)
    interp.allocate_tensors()
    return interp


def _tflm_preserving(data: bytes):
    from tflite_micro.python.tflite_micro import runtime

    from toolchain.hostref.tflm import DEFAULT_ARENA

    return runtime.Interpreter.from_bytes(
        data, arena_size=DEFAULT_ARENA, intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors)


def crosscheck(exp, images_int8, reference: bool = True) -> list:
    """Per segment: {"index", "outputs_equal", "elements", "differing", "max_abs_diff",
    "ops": [{"op", "layer", "differing", "max_abs_diff"} for each op whose output differs]}
    summed over `images_int8` ([1,H,W,C] int8 each)."""
    from toolchain.export.tflm_check import layer_of, operators
    from toolchain.hostref import HostReference, tflm

    ref = HostReference(exp)
    report = []
    datas = [s.data for s in ref.plan.segments]
    lite = [_tflite_interpreter(d, reference) for d in datas]
    micro = [_tflm_preserving(d) for d in datas]
    op_lists = [operators(d) for d in datas]
    for k, seg in enumerate(ref.plan.segments):
        report.append({"index": k, "elements": 0, "differing": 0, "max_abs_diff": 0, "ops": {}})
    for image in images_int8:
        result = ref.run(image)
        # the inputs each segment saw, rebuilt from the host run (same as HostReference.run)
        for k, seg in enumerate(ref.plan.segments):
            feeds = []
            for entry in seg.inputs:
                src = entry.source
                if src.kind == "image":
                    feeds.append(np.asarray(image, np.int8).reshape(entry.shape))
                elif src.kind == "segment_output":
                    feeds.append(result.outputs[src.segment][src.output])
                else:
                    feeds.append(getattr(result.routing[src.routed_layer], src.kind))
            lt = lite[k]
            for detail, value in zip(lt.get_input_details(), feeds):
                lt.set_tensor(detail["index"], value)
            lt.invoke()
            tflm.invoke(micro[k], feeds)
            entry = report[k]
            for i, detail in enumerate(lt.get_output_details()):
                a = lt.get_tensor(detail["index"]).astype(np.int32)
                b = result.outputs[k][i].astype(np.int32)
                entry["elements"] += a.size
                entry["differing"] += int((a != b).sum())
                entry["max_abs_diff"] = max(entry["max_abs_diff"], int(np.abs(a - b).max()))
            graph_ops = lt._get_ops_details()
            for op_index, op in enumerate(graph_ops):
                for t in op["outputs"]:
                    a = lt.get_tensor(t).astype(np.int64)
                    b = np.asarray(micro[k].GetTensor(int(t), 0)["tensor_data"]).astype(np.int64).reshape(a.shape)
                    diff = int((a != b).sum())
                    if diff:
                        name, outs = op_lists[k][op_index]
                        key = f"{op_index}:{name}"
                        rec = entry["ops"].setdefault(key, {"op_index": op_index, "op": name,
                                                            "layer": layer_of(outs, []), "differing": 0,
                                                            "max_abs_diff": 0, "first": True})
                        rec["differing"] += diff
                        rec["max_abs_diff"] = max(rec["max_abs_diff"], int(np.abs(a - b).max()))
    for entry in report:
        entry["outputs_equal"] = entry["differing"] == 0
        ops = sorted(entry["ops"].values(), key=lambda r: r["op_index"])
        entry["ops"] = ops
        entry["first_differing_op"] = ops[0] if ops else None
    return report
