"""The routing decision of docs/design.md as TensorFlow ops (training graph; never exported).

Same algorithm as `toolchain.routing.route` (numpy) and the firmware's C code:
1. choices: top-k experts per patch, ties -> lowest expert index (stable descending order);
2. capacity in priority-then-patch order, per image;
3. dispatch [E*C] (N = empty slot), combine [k*N] (E*C = dropped).
"""
import tensorflow as tf


def top_k_choices(logits, top_k):
    """logits [B, N, E] -> list of top_k int32 tensors [B, N]; ties go to the lowest index."""
    num_experts = logits.shape[-1]
    expert_ids = tf.range(num_experts, dtype=tf.int32)
    masked = logits
    choices = []
    for _ in range(top_k):
        best = tf.reduce_max(masked, axis=-1, keepdims=True)
        is_best = tf.equal(masked, best)
        choice = tf.reduce_min(tf.where(is_best, expert_ids, num_experts), axis=-1)
        choices.append(choice)
        taken = tf.equal(expert_ids, choice[..., None])
        masked = tf.where(taken, tf.constant(float("-inf"), masked.dtype), masked)
    return choices


def route_in_graph(logits, capacity, top_k):
    """logits [B, N, E] (float) -> (dispatch int32 [B, E*C], combine int32 [B, k*N], counts int32 [B, E])."""
    _, num_patches, num_experts = logits.shape
    choices = top_k_choices(tf.stop_gradient(logits), top_k)
    chosen = tf.concat(choices, axis=1)  # [B, k*N]: priority 0 patches first, then priority 1
    onehot = tf.one_hot(chosen, num_experts, dtype=tf.int32)  # [B, k*N, E]
    # position of each choice inside its expert = how many earlier choices picked that expert
    position = tf.reduce_sum(tf.cumsum(onehot, axis=1, exclusive=True) * onehot, axis=-1)
    kept = position < capacity
    combine = tf.where(kept, chosen * capacity + position, num_experts * capacity)
    # dispatch[s] = the patch whose kept choice landed in slot s (slots are unique), else N
    slots = tf.range(num_experts * capacity, dtype=tf.int32)
    match = tf.equal(combine[:, None, :], slots[None, :, None])  # [B, E*C, k*N]
    patch_ids = tf.tile(tf.range(num_patches, dtype=tf.int32), [top_k])
    dispatch = tf.where(tf.reduce_any(match, axis=-1),
                        tf.reduce_sum(tf.where(match, patch_ids, 0), axis=-1), num_patches)
    counts = tf.reduce_sum(onehot * tf.cast(kept, tf.int32)[..., None], axis=1)
    return dispatch, combine, counts
