"""`routevit export`: segments cut at routers, static expert buffers, TFLM-only ops, plan.json, refusals."""
import json
import shutil

import numpy as np
import pytest

from conftest import error_lines, run_routevit


def _fc_input_shapes(data: bytes):
    """[(input shape, output tensor name)] of every FULLY_CONNECTED op, read from the flatbuffer."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    from toolchain.export.tflm_check import builtin_names

    names = builtin_names()
    model = schema.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    found = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        if names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())] == "FULLY_CONNECTED":
            shape = graph.Tensors(op.Inputs(0)).ShapeAsNumpy().tolist()
            found.append((shape, graph.Tensors(op.Outputs(0)).Name().decode()))
    return found


def test_experts_run_on_static_buffers_smaller_than_all_patches(int8_artifacts):
    exp, plan = int8_artifacts["exp"], int8_artifacts["plan"]
    assert len(plan["segments"]) == len(plan["routed_layers"]) + 1 == 2
    for layer in plan["routed_layers"]:
        n, c, p, d, e = (layer[k] for k in ("num_patches", "capacity", "patch_area", "dim", "num_experts"))
        assert 1.0 <= layer["capacity_factor"] <= 1.25 and c < n
        data = (exp / plan["segments"][layer["segment"]]["file"]).read_bytes()
        experts = [s for s, name in _fc_input_shapes(data) if layer["experts_layer"] in name]
        # two FULLY_CONNECTED per expert; the up projection takes [C*P, d]
        assert len(experts) == 2 * e
        assert [s for s in experts if s[-1] == d] and all(s[0] == c * p for s in experts)
        assert c * p < n * p


def test_segments_hold_only_static_tflm_ops(int8_artifacts):
    from toolchain.export.tflm_check import DYNAMIC_SHAPE_OPS, op_names
    from toolchain.hostref import tflm

    for exp in (int8_artifacts["exp"], int8_artifacts["exp"] / "baselines" / "ptq", int8_artifacts["exp_dense"]):
        plan = json.loads((exp / "plan.json").read_text())
        for seg in plan["segments"]:
            data = (exp / seg["file"]).read_bytes()
            ops = op_names(data)
            assert ops == seg["ops"]
            assert not set(ops) & {"SHAPE", "REDUCE_PROD", "FILL", "PACK"} and not set(ops) & DYNAMIC_SHAPE_OPS
            interp, messages = tflm.load(data)
            assert interp is not None, messages


def test_plan_describes_int8_boundaries_and_routing(int8_artifacts):
    plan = int8_artifacts["plan"]
    seg0, seg1 = plan["segments"]
    assert [i["source"]["kind"] for i in seg0["inputs"]] == ["image"]
    kinds = sorted(i["source"]["kind"] for i in seg1["inputs"])
    assert kinds == ["combine", "dispatch", "segment_output", "segment_output", "segment_output"]
    layer = plan["routed_layers"][0]
    assert plan["segments"][layer["router"]["segment"]]["outputs"][layer["router"]["output"]]["shape"] == \
        [1, layer["num_patches"], layer["num_experts"]]
    for entry in seg1["inputs"]:
        if entry["source"]["kind"] == "segment_output":
            out = seg0["outputs"][entry["source"]["output"]]
            assert entry["requantize"] is None  # QAT boundary ranges are pinned: bytes pass unchanged
            assert (entry["scale"], entry["zero_point"], entry["dtype"]) == (out["scale"], out["zero_point"], "int8")
        elif entry["source"]["kind"] == "dispatch":
            assert entry["shape"] == [layer["num_experts"] * layer["capacity"]] and entry["dtype"] == "int32"
    for seg in plan["segments"]:
        assert seg["arena_bytes"] == seg["persistent_bytes"] + seg["nonpersistent_bytes"] > 0
    assert plan["memory"]["staging_bytes"][0] > 0
    lut = np.asarray(plan["model"]["input"]["pixel_lut"])
    assert lut.shape == (3, 256) and np.all(np.diff(lut, axis=1) >= 0)
    assert (int8_artifacts["exp"] / "baselines" / "ptq" / "plan.json").is_file()


def test_dense_model_is_one_segment(int8_artifacts):
    plan = int8_artifacts["plan_dense"]
    assert len(plan["segments"]) == 1 and plan["routed_layers"] == []
    assert plan["logits"] == {"segment": 0, "output": 0}


def test_export_refuses_an_op_tflm_lacks(tmp_path):
    """TOPK_V2 is not in TFLite Micro: the op and its layer are named, before any build."""
    import tensorflow as tf
    import tf_keras as keras

    from toolchain.errors import RoutevitError
    from toolchain.export.segments import convert_model

    class TopTwo(keras.layers.Layer):
        def call(self, x):
            return tf.math.top_k(tf.reshape(x, [-1, 32]), k=2).values

    image = keras.Input((4, 4, 2), batch_size=1, name="image")
    x = keras.layers.Conv2D(2, 1, name="conv")(image)
    x = TopTwo(name="top_two")(x)
    model = keras.Model(image, keras.layers.Dense(3, name="head")(x))
    images = np.random.default_rng(0).uniform(-1, 1, (4, 4, 4, 2)).astype(np.float32)
    with pytest.raises(RoutevitError, match=r"op TOPK_V2 \(from layer top_two\)"):
        convert_model(model, images, progress=False)


def test_export_cli_refuses_a_float_run(int8_artifacts, tmp_path):
    result = run_routevit("export", int8_artifacts["run"], "--out", tmp_path / "e")
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "routevit quantize" in lines[0], lines
    assert not (tmp_path / "e").exists()


def test_plan_that_does_not_match_its_segments_is_refused(int8_artifacts, tmp_path):
    from toolchain.errors import RoutevitError
    from toolchain.hostref import HostReference

    exp = tmp_path / "exp"
    shutil.copytree(int8_artifacts["exp"], exp)
    plan = json.loads((exp / "plan.json").read_text())
    plan["segments"][1]["inputs"][0]["shape"] = [7]
    (exp / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(RoutevitError, match="export again"):
        HostReference(exp)
    # swapped segment file: sha256 mismatch, one line and exit 2 from the CLI
    shutil.copytree(int8_artifacts["exp"], tmp_path / "exp2")
    shutil.copyfile(tmp_path / "exp2" / "segment_0.tflite", tmp_path / "exp2" / "segment_1.tflite")
    result = run_routevit("evaluate", tmp_path / "exp2", "--host", "--data", int8_artifacts["data"])
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "does not match the plan" in lines[0], lines


# ---------------------------------------------------------------- toolchain.plan: the one reader
def test_read_plan_is_typed_and_writes_back_byte_identical(int8_artifacts, tmp_path):
    from toolchain.plan import read_plan, write_plan

    for exp in (int8_artifacts["exp"], int8_artifacts["exp"] / "baselines" / "ptq", int8_artifacts["exp_dense"]):
        text = (exp / "plan.json").read_text()
        plan = read_plan(exp)
        assert plan.to_json() == text and plan.raw == json.loads(text)
        raw = json.loads(text)
        assert plan.input.shape == raw["model"]["input"]["shape"] and plan.num_classes == raw["model"]["num_classes"]
        assert plan.logits_entry.scale == raw["segments"][raw["logits"]["segment"]]["outputs"][raw["logits"]["output"]]["scale"]
        for seg, entry in zip(plan.segments, raw["segments"]):
            assert seg.data == (exp / entry["file"]).read_bytes() and seg.ops == entry["ops"]
            assert [i.source.kind for i in seg.inputs] == [i["source"]["kind"] for i in entry["inputs"]]
        for layer, entry in zip(plan.routed_layers, raw["routed_layers"]):
            assert (layer.capacity, layer.num_experts, layer.router.segment) == \
                (entry["capacity"], entry["num_experts"], entry["router"]["segment"])
    # the writer: same plan, same bytes (it validates against the segment files already there)
    copy = tmp_path / "copy"
    shutil.copytree(int8_artifacts["exp"], copy)
    (copy / "plan.json").unlink()
    write_plan(copy, read_plan(int8_artifacts["exp"]))
    assert (copy / "plan.json").read_text() == (int8_artifacts["exp"] / "plan.json").read_text()


def _tamper(int8_artifacts, tmp_path, change):
    exp = tmp_path / "exp"
    shutil.copytree(int8_artifacts["exp"], exp, ignore=shutil.ignore_patterns("baselines", "reference"))
    plan = json.loads((exp / "plan.json").read_text())
    change(plan)
    (exp / "plan.json").write_text(json.dumps(plan, indent=2))
    return exp


def _capacity_off_by_one(plan):
    plan["routed_layers"][0]["capacity"] -= 1


@pytest.mark.parametrize("case, change, names, says", [
    ("tampered sha256", lambda p: p["segments"][0].update(sha256="0" * 64), "segment_0.tflite",
     "does not match the plan"),
    ("missing key", lambda p: p["routed_layers"][0].pop("num_experts"), "plan.json",
     "routed layer 0: missing 'num_experts'"),
    ("wrong format", lambda p: p.update(format="routevit-plan/0"), "plan.json",
     "format is 'routevit-plan/0', expected 'routevit-plan/1'"),
    ("capacity vs dispatch", _capacity_off_by_one, "plan.json", "(dispatch): dispatch tensor is int32["),
])
def test_read_plan_refuses_a_bad_plan_in_one_line(int8_artifacts, tmp_path, case, change, names, says):
    from toolchain.errors import RoutevitError
    from toolchain.plan import read_plan

    exp = _tamper(int8_artifacts, tmp_path, change)
    with pytest.raises(RoutevitError) as info:
        read_plan(exp)
    message = info.value.format_message()
    assert len(message.splitlines()) == 1, message
    assert str(exp / names) in message and says in message, message
    assert "export again" in message, message
    if case == "capacity vs dispatch":
        layer = json.loads((exp / "plan.json").read_text())["routed_layers"][0]
        assert f"num_experts*capacity = {layer['num_experts']}*{layer['capacity']}" in message, message
