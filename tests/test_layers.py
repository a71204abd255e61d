"""Every custom layer: the shared helper (config, build, training step) + what it computes."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import toolchain  # noqa: F401
from layer_test_helper import run_layer_test
from toolchain.models.layers import (CUSTOM_OBJECTS, GroupNorm1, PatchFold, PatchRouter,
                                     PatchUnfold, RoutedExperts, SeparableAttention)

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.normal(size=shape).astype("float32")


def test_group_norm1_matches_groupnorm_with_one_group():
    x = rand(2, 16, 4, 8) * 3 + 1
    out = run_layer_test(GroupNorm1, {"epsilon": 1e-5, "name": "gn"}, x, (2, 16, 4, 8))
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    var = x.var(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(out.numpy(), (x - mean) / np.sqrt(var + 1e-5), atol=1e-4)


def test_patch_unfold_layout_is_row_major_patches_of_ph_pw_pixels():
    x = rand(2, 8, 6, 3)
    out = run_layer_test(PatchUnfold, {"patch_size": 2, "name": "unfold"}, x, (2, 12, 4, 3)).numpy()
    for n in range(12):
        for p in range(4):
            row, col = 2 * (n // 3) + p // 2, 2 * (n % 3) + p % 2
            np.testing.assert_array_equal(out[:, n, p], x[:, row, col])


def test_patch_fold_inverts_unfold():
    x = rand(2, 8, 6, 3)
    patches = PatchUnfold()(x)
    out = run_layer_test(PatchFold, {"height": 8, "width": 6, "patch_size": 2, "name": "fold"},
                         patches, (2, 8, 6, 3))
    np.testing.assert_array_equal(out.numpy(), x)


def test_separable_attention_matches_ml_cvnets_formula():
    n, p, d = 9, 4, 5
    qkv = rand(2, n, p, 1 + 2 * d)
    out = run_layer_test(SeparableAttention, {"attn_dropout": 0.0, "name": "core"}, qkv, (2, n, p, d))
    q, k, v = qkv[..., :1], qkv[..., 1:1 + d], qkv[..., 1 + d:]
    scores = np.exp(q - q.max(axis=1, keepdims=True))
    scores /= scores.sum(axis=1, keepdims=True)  # softmax over the N patches
    context = (k * scores).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out.numpy(), np.maximum(v, 0) * context, rtol=1e-5, atol=1e-5)


def test_patch_router_scores_mean_pooled_patches():
    x = rand(2, 16, 4, 8)
    layer_kwargs = {"num_experts": 4, "name": "router"}
    out = run_layer_test(PatchRouter, layer_kwargs, x, (2, 16, 4))
    router = PatchRouter(**layer_kwargs)
    logits = router(x).numpy()
    kernel, bias = (w.numpy() for w in router.weights)
    np.testing.assert_allclose(logits, x.mean(axis=2) @ kernel + bias, rtol=1e-5, atol=1e-5)
    assert out.shape == logits.shape


@pytest.mark.parametrize("top_k", [1, 2])
def test_routed_experts_layer(top_k):
    x, logits = rand(2, 16, 4, 8), rand(2, 16, 4)
    kwargs = {"num_experts": 4, "expert_hidden": 16, "capacity": 5, "top_k": top_k,
              "balance_loss_weight": 0.01, "z_loss_weight": 0.001, "ffn_dropout": 0.0,
              "kernel_initializer": "glorot_uniform", "name": "experts"}
    run_layer_test(RoutedExperts, kwargs, [x, logits], (2, 16, 4, 8), grad_wrt_inputs=(0, 1))


def test_routed_experts_losses_counts_and_distinct_experts():
    layer = RoutedExperts(num_experts=4, expert_hidden=16, capacity=5, balance_loss_weight=1.0,
                          z_loss_weight=0.0)
    x, logits = rand(3, 16, 4, 8), rand(3, 16, 4)
    layer([x, logits], training=True)
    # Switch loss: E * sum_e f_e p_e with f from the first choice, p the mean softmax probability
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    first = np.argmax(logits, -1)
    f = np.array([(first == e).mean() for e in range(4)])
    expected = 4 * (f * probs.mean(axis=(0, 1))).sum()
    assert len(layer.losses) == 1
    np.testing.assert_allclose(float(layer.losses[0]), expected, rtol=1e-5)
    # counts: patches processed (capped at C per image), 3 images x 16 choices seen
    assert float(layer.choices_seen.numpy()) == 48
    counts = layer.expert_counts.numpy()
    assert counts.sum() <= 48 and all(c <= 3 * 5 for c in counts)
    layer([x, logits], training=False)
    assert float(layer.choices_seen.numpy()) == 48  # inference does not count
    layer.reset_counts()
    assert layer.expert_counts.numpy().sum() == 0
    # each expert starts from its own random weights
    ups = [layer.expert_kernels[e][0].numpy() for e in range(4)]
    assert all(not np.array_equal(ups[0], u) for u in ups[1:])


def test_custom_objects_lists_every_layer():
    assert set(CUSTOM_OBJECTS) == {"GroupNorm1", "PatchFold", "PatchRouter", "PatchUnfold",
                                   "RoutedExperts", "SeparableAttention"}
    assert all(keras.utils.get_registered_name(c).startswith("routevit>")
               for c in CUSTOM_OBJECTS.values())
