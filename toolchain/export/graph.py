"""Cut a (float or QAT) functional Keras model into segments at its routed layers.

A node's segment = the largest segment among its inputs' producers, plus one when the node is a
RoutedExperts layer: segment k therefore ends with routed layer k's router, and segment k+1
starts at that layer's experts (docs/design.md "Export: segments"). Each segment becomes a
tf.function that replays the model's own layers (their QAT fake-quant wrappers included) from
the segment's input tensors to its outputs, batch 1, static shapes; the RoutedExperts node is
called with the external int32 `dispatch` / `combine` inputs.
"""
from __future__ import annotations

import copy
import dataclasses

import tensorflow as tf
import tf_keras as keras


def _inner(layer):
    return getattr(layer, "layer", layer)  # tfmot QuantizeWrapper -> the wrapped layer


def _key(tensor) -> str:
    return str(id(tensor))  # tf-keras keys its node inputs by str(id(KerasTensor))


def _is_routed(layer) -> bool:
    from toolchain.models.layers import RoutedExperts

    return isinstance(_inner(layer), RoutedExperts)


@dataclasses.dataclass
class Boundary:
    """A tensor crossing into a segment: the model image, or an earlier segment's output."""

    tensor: object  # KerasTensor
    name: str  # the name used in the segment's signature and in plan.json
    producer_segment: int | None  # None = the model input
    producer_output: int | None


@dataclasses.dataclass
class Segment:
    index: int
    nodes: list
    inputs: list  # [Boundary]
    outputs: list  # [(name, KerasTensor)]
    routed_node: object | None  # the RoutedExperts node this segment starts with (index > 0)
    routed_layer: int | None  # index into routed layers of that node


@dataclasses.dataclass
class SegmentedModel:
    model: keras.Model
    segments: list
    routed_layers: list  # [(RoutedExperts layer, router KerasTensor, x_norm KerasTensor)]
    logits: tuple  # (segment, output index)


def _topological_nodes(model):
    nodes = []
    for depth in sorted(model._nodes_by_depth, reverse=True):  # inputs have the largest depth
        for node in model._nodes_by_depth[depth]:
            if not isinstance(node.layer, keras.layers.InputLayer):
                nodes.append(node)
    return nodes


def _layer_label(layer) -> str:
    name = _inner(layer).name
    return name


def segment_model(model: keras.Model) -> SegmentedModel:
    """Assign every node to a segment and find each segment's boundary tensors."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("routevit models have one image input and one logits output")
    seg_of = {_key(model.inputs[0]): 0}
    node_segments = []
    routed = []
    for node in _topological_nodes(model):
        parents = [seg_of[_key(t)] for t in tf.nest.flatten(node.keras_inputs)]
        seg = max(parents or [0])
        if _is_routed(node.layer):
            x_norm, logits = tf.nest.flatten(node.keras_inputs)[:2]
            if seg_of[_key(logits)] != seg:
                raise ValueError(f"{_layer_label(node.layer)}: its router is not in the segment before it")
            seg += 1
            routed.append((node, x_norm, logits))
        node_segments.append((node, seg))
        for t in tf.nest.flatten(node.outputs):
            seg_of[_key(t)] = seg

    count = len(routed) + 1
    nodes = [[n for n, s in node_segments if s == k] for k in range(count)]
    outputs = [[] for _ in range(count)]  # KerasTensors in output order
    inputs = [[] for _ in range(count)]

    def add_output(seg, tensor):
        for i, t in enumerate(outputs[seg]):
            if t is tensor:
                return i
        outputs[seg].append(tensor)
        return len(outputs[seg]) - 1

    image = model.inputs[0]
    # Router logits first among a segment's outputs (after the tensors they travel with) is not
    # required; outputs are numbered in the order the next segments need them.
    for k in range(count):
        for node in nodes[k]:
            for t in tf.nest.flatten(node.keras_inputs):
                if any(b.tensor is t for b in inputs[k]):
                    continue
                if t is image:
                    inputs[k].append(Boundary(t, "image", None, None))
                elif seg_of[_key(t)] != k:
                    src = seg_of[_key(t)]
                    inputs[k].append(Boundary(t, "", src, add_output(src, t)))
    logits_seg = seg_of[_key(model.outputs[0])]
    logits_index = add_output(logits_seg, model.outputs[0])

    segments = []
    for k in range(count):
        names = {}
        out_named = []
        for i, t in enumerate(outputs[k]):
            out_named.append((_tensor_name(t, model, routed, i), t))
            names[_key(t)] = out_named[-1][0]
        segments.append(Segment(k, nodes[k], inputs[k], out_named,
                                routed[k - 1][0] if k else None, k - 1 if k else None))
    for seg in segments:
        for b in seg.inputs:
            if b.producer_segment is not None:
                b.name = segments[b.producer_segment].outputs[b.producer_output][0]
    routed_info = [(n.layer, logits, x_norm) for n, x_norm, logits in routed]
    return SegmentedModel(model, segments, routed_info, (logits_seg, logits_index))


def _tensor_name(tensor, model, routed, index) -> str:
    """A short stable name for a boundary tensor: its producing layer's name."""
    if tensor is model.outputs[0]:
        return "logits"
    layer = _inner(tensor._keras_history.layer)
    return layer.name


def segment_function(sm: SegmentedModel, k: int, input_ranges=None):
    """tf.function(batch-1 float inputs [+ dispatch, combine]) -> {output name: float tensor}.

    input_ranges[i] = (min, max) puts a fake-quant on input i so the converter gives that input
    exactly those quantisation parameters (the producing segment's output's), or None.
    """
    seg = sm.segments[k]
    specs = [tf.TensorSpec([1, *t.shape[1:]], tf.float32, name=_sig(b.name)) for b in seg.inputs
             for t in [b.tensor]]
    if seg.routed_node is not None:
        layer = _inner(seg.routed_node.layer)
        n_slots = layer.num_experts * layer.capacity
        specs += [tf.TensorSpec([n_slots], tf.int32, name="dispatch"),
                  tf.TensorSpec([layer.top_k * layer.num_patches], tf.int32, name="combine")]
    ranges = list(input_ranges or [None] * len(seg.inputs))

    def replay(*args):
        values = {}
        for b, value, rng in zip(seg.inputs, args, ranges):
            if rng is not None:
                value = tf.quantization.fake_quant_with_min_max_args(
                    value, min=float(rng[0]), max=float(rng[1]), num_bits=8, narrow_range=False)
            values[_key(b.tensor)] = value
        for node in seg.nodes:
            flat = copy.copy(node._flat_arguments)
            for kt_id, position in node._keras_inputs_ids_and_indices:
                flat[position] = values[kt_id]
            call_args, kwargs = tf.nest.pack_sequence_as(
                (node.call_args, node.call_kwargs.values()), flat)
            kwargs = dict(zip(node.call_kwargs.keys(), kwargs))
            if node is seg.routed_node:
                call_args = (list(call_args[0]) + [args[-2], args[-1]],) + tuple(call_args[1:])
            kwargs["training"] = False
            result = node.layer(*call_args, **kwargs)
            for kt, value in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(result)):
                values[_key(kt)] = value
        return {_sig(name): values[_key(t)] for name, t in seg.outputs}

    return tf.function(replay, input_signature=specs, autograph=False)


def _sig(name: str) -> str:
    """Signature-safe version of a layer name (TF signature keys: [A-Za-z0-9_.])."""
    return "".join(c if c.isalnum() or c in "_." else "_" for c in name)
