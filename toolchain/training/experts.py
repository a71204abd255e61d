"""How routed layers share their patches among experts (training counters and evaluation)."""
from __future__ import annotations

import numpy as np


def routed_blocks(model) -> list:
    """[(block name like "layer4.1", RoutedExperts layer, RoutedLayerInfo)] in graph order."""
    from toolchain.models import routed_layer_info, routed_layers

    return [(info.block, layer, info) for layer, info in zip(routed_layers(model), routed_layer_info(model))]


def reset_counters(model) -> None:
    for _, layer, _ in routed_blocks(model):
        layer.reset_counts()


def training_shares(model) -> dict:
    """{block: {"share": [per expert], "dropped": fraction}} from the counters since the last reset.

    share = patches an expert processed / patches processed by all experts of that layer;
    dropped = patch choices that found their expert full (the residual carried them).
    """
    result = {}
    for block, layer, _ in routed_blocks(model):
        counts = np.asarray(layer.expert_counts.numpy(), np.float64)
        choices = float(layer.choices_seen.numpy())
        result[block] = _shares(counts, choices)
    return result


def evaluation_shares(model, dataset) -> dict:
    """Same figures over `dataset` (batches of images) with the routing the model uses at inference."""
    import tf_keras as keras

    from toolchain.models.graph_routing import route_in_graph

    blocks = routed_blocks(model)
    if not blocks:
        return {}
    probe = keras.Model(model.inputs, [model.get_layer(info.router).output for _, _, info in blocks])
    counts = [np.zeros(info.num_experts, np.float64) for _, _, info in blocks]
    choices = [0.0] * len(blocks)
    for images, _ in dataset:
        outputs = probe(images, training=False)
        if len(blocks) == 1:
            outputs = [outputs]
        for i, ((_, _, info), logits) in enumerate(zip(blocks, outputs)):
            _, _, per_image = route_in_graph(logits, info.capacity, info.top_k)
            counts[i] += per_image.numpy().sum(axis=0)
            choices[i] += int(logits.shape[0]) * info.top_k * info.num_patches
    return {block: _shares(c, n) for (block, _, _), c, n in zip(blocks, counts, choices)}


def min_share(shares: dict) -> float | None:
    values = [s for entry in shares.values() for s in entry["share"]]
    return min(values) if values else None


def _shares(counts: np.ndarray, choices: float) -> dict:
    processed = float(counts.sum())
    share = (counts / processed).tolist() if processed else [0.0] * len(counts)
    dropped = 1.0 - processed / choices if choices else 0.0
    return {"share": [round(s, 6) for s in share], "dropped": round(max(0.0, dropped), 6),
            "patches": int(processed)}
