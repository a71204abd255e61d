"""The routing decision: numpy reference, Keras in-graph routing and the export path agree."""
import numpy as np
import pytest
import tensorflow as tf

import toolchain  # noqa: F401
from toolchain.config import MoEConfig
from toolchain.models.graph_routing import route_in_graph
from toolchain.models.layers import RoutedExperts
from toolchain.routing import capacity, route


def test_route_worked_example_top1_with_ties_and_overflow():
    # 5 patches, 3 experts, capacity 2. Patch 1 ties experts 0 and 2 -> expert 0 (lowest index).
    scores = np.array([[5, 1, 0], [3, -2, 3], [7, 7, 7], [0, 9, 1], [-1, -1, -1]], np.int8)
    dispatch, combine, counts = route(scores, 2, 1)
    # expert 0 takes patches 0 and 1; patches 2 and 4 (also expert 0) are dropped
    assert dispatch.tolist() == [0, 1, 3, 5, 5, 5]
    assert combine.tolist() == [0, 1, 6, 2, 6]
    assert counts.tolist() == [2, 1, 0]
    assert dispatch.dtype == np.int32 and combine.dtype == np.int32 and counts.dtype == np.int32


def test_route_worked_example_top2_priority_before_patch_order():
    scores = np.array([[9, 8, 0], [9, 0, 8], [0, 9, 8]], np.int8)
    dispatch, combine, counts = route(scores, 2, 2)
    # first choices: 0,0,1 -> expert 0 full (patches 0,1), expert 1 has patch 2;
    # second choices: 1 (patch 0 -> slot 3), 2 (patch 1 -> slot 4), 2 (patch 2 -> slot 5)
    assert dispatch.tolist() == [0, 1, 2, 0, 1, 2]
    assert combine.tolist() == [0, 1, 2, 3, 4, 5]
    assert counts.tolist() == [2, 2, 2]


def test_route_accepts_design_doc_signature_and_int8_extremes():
    scores = np.array([[-128, 127], [127, -128], [-128, -128]], np.int8)
    a = route(scores, 2, 1)
    b = route(scores, 2, 2, 1)  # route(scores, num_experts, capacity, top_k)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a[1].tolist() == [2, 0, 1]
    with pytest.raises(ValueError):
        route(scores, 3, 2, 1)  # num_experts disagrees with the scores


@pytest.mark.parametrize("n,e,cf", [(16, 4, 1.25), (5, 3, 1.1), (64, 4, 1.0), (1, 2, 0.1)])
@pytest.mark.parametrize("k", [1, 2])
def test_capacity_formula(n, e, cf, k):
    c = capacity(n, e, k, cf)
    assert c == MoEConfig(num_experts=e, top_k=k, capacity_factor=cf).capacity(n)
    assert c == min(n, int(np.ceil(round(cf * k * n / e, 9))))


def random_int8_logits(rng, batch, n, e, low=-2, high=2):
    # a narrow range gives many ties; some rows are all equal
    logits = rng.integers(low, high + 1, size=(batch, n, e)).astype(np.int8)
    logits[:, 0, :] = logits[:, 0, :1]
    return logits


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("n,e,c", [(16, 4, 4), (16, 4, 1), (9, 3, 9), (64, 8, 5), (12, 2, 7)])
def test_in_graph_routing_equals_numpy_reference(top_k, n, e, c):
    rng = np.random.default_rng(n * 100 + e * 10 + c + top_k)
    for low, high in ((-2, 2), (-128, 127), (0, 0)):
        logits = random_int8_logits(rng, 6, n, e, low, high)
        dispatch, combine, counts = (t.numpy() for t in route_in_graph(
            tf.constant(logits, tf.float32), c, top_k))
        for b in range(logits.shape[0]):
            ref = route(logits[b], c, top_k)
            np.testing.assert_array_equal(dispatch[b], ref[0])
            np.testing.assert_array_equal(combine[b], ref[1])
            np.testing.assert_array_equal(counts[b], ref[2])


def numpy_routed_ffn(layer, x, logits, top_k):
    """Per-patch reference: y[n] = sum over kept choices j of gate * expert(x[n])."""
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    weights = [[w.numpy() for w in ws] for ws in layer.expert_kernels]
    out = np.zeros_like(x)
    c = layer.capacity
    for b in range(x.shape[0]):
        _, combine, _ = route(logits[b], c, top_k)
        n_patches = x.shape[1]
        for j in range(top_k):
            for n in range(n_patches):
                slot = combine[j * n_patches + n]
                if slot == layer.num_experts * c:
                    continue
                e = slot // c
                up_k, up_b, down_k, down_b = weights[e]
                h = x[b, n] @ up_k + up_b
                h = h / (1 + np.exp(-h))
                out[b, n] += probs[b, n, e] * (h @ down_k + down_b)
    return out


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("batch", [1, 3])
def test_export_path_equals_in_graph_path_and_per_patch_reference(top_k, batch):
    rng = np.random.default_rng(top_k * 10 + batch)
    n, p, d, e, c = 16, 4, 8, 4, 3  # capacity 3 < N/E: some patches are dropped
    layer = RoutedExperts(num_experts=e, expert_hidden=12, capacity=c, top_k=top_k)
    x = rng.normal(size=(batch, n, p, d)).astype(np.float32)
    logits = random_int8_logits(rng, batch, n, e).astype(np.float32)
    in_graph = layer([x, logits]).numpy()
    routes = [route(logits[b], c, top_k) for b in range(batch)]
    dispatch = np.stack([r[0] for r in routes])
    combine = np.stack([r[1] for r in routes])
    exported = layer([x, logits, dispatch, combine]).numpy()
    np.testing.assert_array_equal(exported, in_graph)
    np.testing.assert_allclose(in_graph, numpy_routed_ffn(layer, x, logits, top_k), rtol=1e-4, atol=1e-5)
    dropped = [i for i in range(n) if routes[0][1][i] == e * c]
    if top_k == 1:  # a dropped patch gets no FFN output (the residual carries it)
        assert dropped and np.all(in_graph[0, dropped] == 0)


def test_fixed_batch_export_graph_uses_only_gather_slice_fc_ops():
    import collections

    import tf_keras as keras

    n, p, d, e, c, k = 16, 4, 8, 4, 5, 2
    inputs = [keras.Input((n, p, d), batch_size=1, name="x_norm"),
              keras.Input((n, e), batch_size=1, name="logits"),
              keras.Input((e * c,), batch_size=1, dtype="int32", name="dispatch"),
              keras.Input((k * n,), batch_size=1, dtype="int32", name="combine")]
    layer = RoutedExperts(num_experts=e, expert_hidden=12, capacity=c, top_k=k)
    model = keras.Model(inputs, layer(inputs))
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    ops = collections.Counter(op["op_name"] for op in interpreter._get_ops_details())
    allowed = {"GATHER", "STRIDED_SLICE", "SLICE", "RESHAPE", "FULLY_CONNECTED", "LOGISTIC", "MUL",
               "CONCATENATION", "ADD", "SOFTMAX"}
    assert set(ops) <= allowed, ops
    assert ops["GATHER"] == 2 + k and ops["FULLY_CONNECTED"] == 2 * e
