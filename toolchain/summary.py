"""Parameters, active parameters, multiply-accumulates and activation sizes of a model config.

How MACs are counted (per image):
- Conv2D: H_out*W_out*C_out*k*k*C_in; DepthwiseConv2D: H_out*W_out*C*k*k; Dense: in*out;
  PatchRouter: N*d*E; separable attention: 2*N*P*d (key*score accumulated over N, then
  relu(value)*context). Normalisation, activations, softmax, pooling and additions are not counted.
- macs.dense: everything outside the routed expert FFNs.
- macs.routed: the expert FFNs as the static graph (and the firmware) runs them: every expert
  processes its full buffer of C patches, E*C*P*(2*d*h) (+ C*P*d for the gate) per routed layer
  — the upper bound, since a slot left empty still costs its FLOPs on a static graph.
- macs.routed_active: the same but for the patches actually routed when none is dropped,
  k*N*P*(2*d*h + d): what a per-patch sparse kernel would need.
active_params_per_patch: trainable parameters a patch uses: all of them except, in each routed
layer, the E - k experts it is not sent to.
"""
from __future__ import annotations

import math

import numpy as np
import tf_keras as keras

from toolchain.config import STAGES, ModelConfig
from toolchain.models import build_model
from toolchain.models.layers import PatchRouter, RoutedExperts, SeparableAttention


def _count(weights) -> int:
    return int(sum(int(np.prod(w.shape)) for w in weights))


def _shape(tensor_shape):
    return [int(v) for v in tensor_shape[1:]]


def _layer_macs(layer) -> tuple[int, int, int]:
    """(dense MACs, routed MACs upper bound, routed MACs for active patches) of one layer."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        _, h, w, c = layer.output_shape
        kh, kw = layer.kernel_size
        return h * w * c * kh * kw, 0, 0
    if isinstance(layer, keras.layers.Conv2D):
        _, h, w, c_out = layer.output_shape
        kh, kw = layer.kernel_size
        c_in = layer.input_shape[-1]
        return h * w * c_out * kh * kw * c_in // layer.groups, 0, 0
    if isinstance(layer, keras.layers.Dense):
        return int(layer.input_shape[-1]) * layer.units, 0, 0
    if isinstance(layer, PatchRouter):
        _, n, _, d = layer.input_shape
        return n * d * layer.num_experts, 0, 0
    if isinstance(layer, SeparableAttention):
        _, n, p, d = layer.output_shape
        return 2 * n * p * d, 0, 0
    if isinstance(layer, RoutedExperts):
        per_patch = layer.patch_area * (2 * layer.dim * layer.expert_hidden + layer.dim)
        routed = layer.num_experts * layer.capacity * per_patch
        active = min(layer.top_k * layer.num_patches, layer.num_experts * layer.capacity) * per_patch
        return 0, routed, active
    return 0, 0, 0


def _stage_of(layer_name: str) -> str:
    for stage in STAGES:
        if layer_name.startswith(stage + "_"):
            return stage
    return "head" if layer_name.startswith("head_") else "input"


def summarize(cfg: ModelConfig) -> dict:
    """Numbers for `routevit summarize` (see module docstring for how they are counted)."""
    model = build_model(cfg, batch_size=1)
    stages = {name: {"name": name, "params": 0, "macs": 0, "routed_macs": 0, "output_shape": None}
              for name in (*STAGES, "head")}
    macs = {"dense": 0, "routed": 0, "routed_active": 0}
    largest = {"layer": None, "shape": None, "bytes_int8": 0}
    routed = []
    inactive_params = 0
    for layer in model.layers:
        stage = _stage_of(layer.name)
        dense, routed_macs, active = _layer_macs(layer)
        macs["dense"] += dense
        macs["routed"] += routed_macs
        macs["routed_active"] += active
        out_shape = _shape(layer.output_shape)
        size = int(np.prod(out_shape))
        if size > largest["bytes_int8"]:
            largest = {"layer": layer.name, "shape": out_shape, "bytes_int8": size}
        if stage in stages:
            stages[stage]["params"] += _count(layer.trainable_weights)
            stages[stage]["macs"] += dense + routed_macs
            stages[stage]["routed_macs"] += routed_macs
            stages[stage]["output_shape"] = out_shape
        if isinstance(layer, RoutedExperts):
            per_expert = _count(layer.trainable_weights) // layer.num_experts
            inactive_params += (layer.num_experts - layer.top_k) * per_expert
            routed.append({"layer": layer.name, "num_patches": layer.num_patches,
                           "patch_area": layer.patch_area, "dim": layer.dim,
                           "num_experts": layer.num_experts, "top_k": layer.top_k,
                           "capacity": layer.capacity, "expert_hidden": layer.expert_hidden,
                           "params_per_expert": per_expert, "macs": routed_macs,
                           "macs_active": active})
    trainable = _count(model.trainable_weights)
    macs["total"] = macs["dense"] + macs["routed"]
    return {
        "model": cfg.to_dict(),
        "trainable_params": trainable,
        "non_trainable_params": _count(model.non_trainable_weights),
        "active_params_per_patch": trainable - inactive_params,
        "macs": macs,
        "largest_activation": largest,
        "input_bytes_int8": int(math.prod(_shape(model.input_shape))),
        "stages": list(stages.values()),
        "routed_layers": routed,
    }


def format_table(summary: dict) -> str:
    """Human-readable table of a `summarize` result."""
    lines = [f"{'stage':<8} {'output (HxWxC / NxPxd)':<24} {'params':>12} {'MACs':>14} {'routed MACs':>12}"]
    for st in summary["stages"]:
        shape = "x".join(str(v) for v in st["output_shape"] or [])
        lines.append(f"{st['name']:<8} {shape:<24} {st['params']:>12,} {st['macs']:>14,} "
                     f"{st['routed_macs']:>12,}")
    m = summary["macs"]
    big = summary["largest_activation"]
    lines += [
        f"trainable params:         {summary['trainable_params']:,}",
        f"active params per patch:  {summary['active_params_per_patch']:,}",
        f"MACs per image:           {m['total']:,} (dense {m['dense']:,} + routed {m['routed']:,} "
        f"at full expert capacity; {m['routed_active']:,} for the routed patches alone)",
        f"largest activation:       {big['bytes_int8']:,} bytes int8 ({big['layer']}, "
        f"{'x'.join(map(str, big['shape']))})",
    ]
    for r in summary["routed_layers"]:
        lines.append(f"routed {r['layer']}: N={r['num_patches']} P={r['patch_area']} d={r['dim']} "
                     f"E={r['num_experts']} k={r['top_k']} C={r['capacity']} h={r['expert_hidden']} "
                     f"({r['params_per_expert']:,} params/expert)")
    return "\n".join(lines)
