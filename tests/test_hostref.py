"""Host reference: TFLM segments + integer routing; exactness checks, bad indices, evaluate --host."""
import json

import numpy as np
import pytest

from conftest import run_routevit


@pytest.fixture(scope="module")
def reference(int8_artifacts):
    from toolchain.data import load_dataset
    from toolchain.hostref import HostReference

    ref = HostReference(int8_artifacts["exp"])
    pixels, labels = load_dataset(int8_artifacts["data"]).numpy_images("test", 6, image_size=16, channels=3)
    return ref, [ref.quantize_pixels(p) for p in pixels]


def test_routing_between_segments_is_toolchain_routing_on_int8_scores(reference):
    from toolchain.routing import route

    ref, images = reference
    layer = ref.plan.routed_layers[0]
    for image in images:
        result = ref.run(image)
        routing = result.routing[0]
        scores = result.outputs[layer.router.segment][layer.router.output]
        d, c, n = route(scores.reshape(layer.num_patches, layer.num_experts), layer.capacity, 1)
        np.testing.assert_array_equal(routing.dispatch, d)
        np.testing.assert_array_equal(routing.combine, c)
        assert routing.counts.sum() == (c < layer.num_experts * layer.capacity).sum()
        assert result.logits.dtype == np.int8 and result.logits.shape == (3,)
        # deterministic: the same image gives the same bytes
        np.testing.assert_array_equal(ref.run(image).logits, result.logits)


def test_routing_index_out_of_range_is_refused(reference):
    from toolchain.errors import RoutevitError

    ref, images = reference
    layer = ref.plan.routed_layers[0]
    n, slots = layer.num_patches, layer.num_experts * layer.capacity
    good = ref.run(images[0]).routing[0]
    bad_dispatch = good.dispatch.copy()
    bad_dispatch[0] = n + 1
    with pytest.raises(RoutevitError, match=rf"dispatch\[0\] = {n + 1} is out of range 0..{n}"):
        ref.run(images[0], routing_override={0: (bad_dispatch, good.combine)})
    bad_combine = good.combine.copy()
    bad_combine[3] = -1
    with pytest.raises(RoutevitError, match=rf"combine\[3\] = -1 is out of range 0..{slots}"):
        ref.run(images[0], routing_override={0: (good.dispatch, bad_combine)})


def test_arena_in_plan_is_the_recording_allocators(int8_artifacts):
    from toolchain.hostref import HostReference, tflm

    ref = HostReference(int8_artifacts["exp"])
    ref.run(np.zeros(ref.plan.input.shape, np.int8))
    for seg, interp in zip(ref.plan.segments, ref.interpreters):
        usage = tflm.arena_usage(interp)
        assert usage == seg.arena.to_dict()
        assert seg.arena_bytes == usage["total"] == usage["persistent"] + usage["nonpersistent"]


def test_tflm_and_tflite_interpreter_agree_except_pinned_kernels(int8_artifacts, reference):
    """Same int8 inputs into TFLM (host reference) and tf.lite.Interpreter, op by op.

    Measured: the builtin TFLite kernels round conv/fully-connected requantization differently
    from TFLM's reference kernels, so where outputs differ the first differing op is a
    CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED off by at most 1 (one int8 step).
    """
    from toolchain.hostref.crosscheck import crosscheck

    _, images = reference
    report = crosscheck(int8_artifacts["exp"], images, reference=False)
    for seg in report:
        if seg["outputs_equal"]:
            continue
        first = seg["first_differing_op"]
        assert first["op"] in {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}, first
        assert first["max_abs_diff"] <= 1, first


def test_requantize_matches_tflm_fixed_point():
    from toolchain.export.segments import requantize_params
    from toolchain.hostref import requantize

    values = np.arange(-128, 128, dtype=np.int8)
    params = requantize_params(0.05, 3, 0.031, -7)
    got = requantize(values, params).astype(int)
    want = np.clip(np.round((values.astype(float) - 3) * 0.05 / 0.031) - 7, -128, 127)
    assert np.max(np.abs(got - want)) <= 1 and np.mean(got == want) > 0.95
    same = requantize_params(0.05, 3, 0.05, 3)
    np.testing.assert_array_equal(requantize(values, same), values)


def test_evaluate_host_cli(int8_artifacts):
    result = run_routevit("evaluate", int8_artifacts["exp"], "--host", "--data", int8_artifacts["data"],
                          "--limit", "6", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["examples"] == 6
    for key in ("float", "qat", "ptq"):
        assert 0.0 <= out[key]["top1"] <= 1.0
    assert 0.0 <= out["qat"]["agreement_with_float"] <= 1.0
    share = out["qat"]["expert_share"]["layer4.0"]["share"]
    assert len(share) == 2 and abs(sum(share) - 1.0) < 1e-9
    plan = int8_artifacts["plan"]
    assert out["qat"]["arena_bytes"] == [s["arena_bytes"] for s in plan["segments"]]
    assert "top-1" in result.stderr and "arena per segment" in result.stderr
