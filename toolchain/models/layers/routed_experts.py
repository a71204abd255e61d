"""Per-patch routed expert FFNs with static capacity (docs/design.md "Per-patch routing")."""
import tensorflow as tf
import tf_keras as keras

from toolchain.models.graph_routing import route_in_graph, top_k_choices


@keras.utils.register_keras_serializable(package="routevit")
class RoutedExperts(keras.layers.Layer):
    """E expert FFNs, each run on at most `capacity` whole patches; replaces a transformer FFN.

    Called as `layer([x_norm, logits])` it routes in-graph (training, float evaluation); called
    as `layer([x_norm, logits, dispatch, combine])` it uses externally computed int32 indices
    (export: `toolchain.routing.route` on the int8 router scores). Both run the same code:

        probs = softmax(logits)                                   [B, N, E]
        rows  = reshape(x_norm, [B, N, P*d]) + a zero row          [B, N+1, P*d]
        buf   = gather(rows, dispatch)                            [B, E*C, P*d]
        expert e: buf[:, eC:(e+1)C] -> [.., d] -> FC(d, h) -> SiLU -> FC(h, d) -> [B, C, P*d]
                  times gate = gather(probs + zero row, dispatch)[:, eC:(e+1)C, e]
        out   = concat(experts, zero row)                         [B, E*C+1, P*d]
        y     = sum_j gather(out, combine[:, jN:(j+1)N])         -> [B, N, P, d]

    The caller adds y to the residual stream (patches dropped over capacity get zero).
    With a fixed batch of 1 this is GATHER / STRIDED_SLICE / RESHAPE / FULLY_CONNECTED /
    LOGISTIC / MUL / CONCATENATION / ADD / SOFTMAX only.

    Training (in-graph routing only): adds `balance_loss_weight * E * sum_e f_e p_e` (Switch
    load balancing; f_e = share of patches whose first choice is e, p_e = mean probability)
    and `z_loss_weight * mean(logsumexp(logits)^2)` via add_loss; reports the balance loss as
    metric `<name>_balance`. `expert_counts` (float32 [E], non-trainable) accumulates patches
    each expert processed while training=True, `choices_seen` the patch choices made (k*N per
    image); `reset_counts()` zeroes both.

    Example:
    >>> experts = RoutedExperts(num_experts=4, expert_hidden=16, capacity=5, name="experts")
    >>> experts([tf.zeros([1, 16, 4, 8]), tf.zeros([1, 16, 4])]).shape
    TensorShape([1, 16, 4, 8])
    """

    def __init__(self, num_experts, expert_hidden, capacity, top_k=1, balance_loss_weight=0.0,
                 z_loss_weight=0.0, ffn_dropout=0.0, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.num_experts = int(num_experts)
        self.expert_hidden = int(expert_hidden)
        self.capacity = int(capacity)
        self.top_k = int(top_k)
        self.balance_loss_weight = float(balance_loss_weight)
        self.z_loss_weight = float(z_loss_weight)
        self.ffn_dropout = float(ffn_dropout)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.dropout = keras.layers.Dropout(self.ffn_dropout)
        if self.top_k not in (1, 2) or self.top_k > self.num_experts:
            raise ValueError(f"top_k must be 1 or 2 (and <= num_experts), got {top_k}")

    def build(self, input_shape):
        x_shape = tf.TensorShape(input_shape[0])
        dim = int(x_shape[-1])
        self.num_patches = int(x_shape[1])
        self.patch_area = int(x_shape[2])
        self.dim = dim
        if self.capacity < 1 or self.capacity > self.num_patches:
            raise ValueError(f"{self.name}: capacity {self.capacity} not in 1..N={self.num_patches}")
        # One set of variables per expert: each expert's matmuls become separate
        # FULLY_CONNECTED ops with their own (per-channel) int8 weights.
        self.expert_kernels = []
        for e in range(self.num_experts):
            self.expert_kernels.append((
                self.add_weight(name=f"expert{e}_up_kernel", shape=(dim, self.expert_hidden),
                                initializer=self._fresh_initializer()),
                self.add_weight(name=f"expert{e}_up_bias", shape=(self.expert_hidden,),
                                initializer="zeros"),
                self.add_weight(name=f"expert{e}_down_kernel", shape=(self.expert_hidden, dim),
                                initializer=self._fresh_initializer()),
                self.add_weight(name=f"expert{e}_down_bias", shape=(dim,), initializer="zeros"),
            ))
        self.expert_counts = self.add_weight(
            name="expert_counts", shape=(self.num_experts,), initializer="zeros", trainable=False,
            aggregation=tf.VariableAggregation.SUM)
        self.choices_seen = self.add_weight(
            name="choices_seen", shape=(), initializer="zeros", trainable=False,
            aggregation=tf.VariableAggregation.SUM)
        super().build(input_shape)

    def _fresh_initializer(self):
        # A new initializer object per weight: one unseeded instance reused would give every
        # expert identical starting weights.
        return keras.initializers.deserialize(keras.initializers.serialize(self.kernel_initializer))

    def reset_counts(self):
        self.expert_counts.assign(tf.zeros_like(self.expert_counts))
        self.choices_seen.assign(0.0)

    def call(self, inputs, training=None):
        if len(inputs) == 2:
            x_norm, logits = inputs
            dispatch, combine, _ = route_in_graph(logits, self.capacity, self.top_k)
            self._add_router_losses(logits)
        elif len(inputs) == 4:
            x_norm, logits, dispatch, combine = inputs
        else:
            raise ValueError(f"{self.name}: call with [x_norm, logits] or "
                             f"[x_norm, logits, dispatch, combine], got {len(inputs)} inputs")
        dispatch = tf.cast(dispatch, tf.int32)
        combine = tf.cast(combine, tf.int32)
        if training is True:  # fit() passes a Python bool; inference graphs never update counts
            self._track_counts(dispatch)
        return self._run_experts(x_norm, logits, dispatch, combine, training)

    # ---- the export path: gathers, per-expert FFNs on static buffers, gathers back ----------
    def _run_experts(self, x_norm, logits, dispatch, combine, training):
        n, p, d, c, e_count = self.num_patches, self.patch_area, self.dim, self.capacity, self.num_experts
        static_batch = x_norm.shape[0]
        batch = static_batch if static_batch is not None else -1
        single = static_batch == 1  # fixed batch 1: plain 2-D gathers, as TFLite Micro runs them

        probs = tf.nn.softmax(logits, axis=-1)  # [B, N, E]
        rows = tf.reshape(x_norm, [batch, n, p * d])
        if single:
            rows, probs = rows[0], probs[0]
            dispatch, combine = tf.reshape(dispatch, [-1]), tf.reshape(combine, [-1])
            zero_row = tf.zeros([1, p * d], rows.dtype)
            zero_prob = tf.zeros([1, e_count], probs.dtype)
            axis, gather = 0, (lambda params, idx: tf.gather(params, idx, axis=0))
        else:
            zero_row = tf.zeros_like(rows[:, :1])
            zero_prob = tf.zeros_like(probs[:, :1])
            axis, gather = 1, (lambda params, idx: tf.gather(params, idx, axis=1, batch_dims=1))
        rows = tf.concat([rows, zero_row], axis=axis)  # [B, N+1, P*d]
        probs = tf.concat([probs, zero_prob], axis=axis)  # [B, N+1, E]
        buffers = gather(rows, dispatch)  # [B, E*C, P*d]
        gates = gather(probs, dispatch)  # [B, E*C, E]

        outputs = []
        for e, (up_k, up_b, down_k, down_b) in enumerate(self.expert_kernels):
            if single:
                tokens = tf.reshape(buffers[e * c:(e + 1) * c], [c * p, d])
                gate = gates[e * c:(e + 1) * c, e:e + 1]  # [C, 1]
            else:
                tokens = tf.reshape(buffers[:, e * c:(e + 1) * c], [-1, d])
                gate = gates[:, e * c:(e + 1) * c, e:e + 1]  # [B, C, 1]
            hidden = tf.nn.silu(tf.matmul(tokens, up_k) + up_b)
            hidden = self.dropout(hidden, training=training)
            out = tf.matmul(hidden, down_k) + down_b  # [C*P, d] per image
            out = tf.reshape(out, [c, p * d] if single else [batch, c, p * d])
            outputs.append(out * gate)
        outputs.append(zero_row)
        table = tf.concat(outputs, axis=axis)  # [B, E*C+1, P*d]
        result = None
        for j in range(self.top_k):
            part = gather(table, combine[j * n:(j + 1) * n] if single else combine[:, j * n:(j + 1) * n])
            result = part if result is None else result + part
        return tf.reshape(result, [batch, n, p, d])

    # ---- training-only bookkeeping ------------------------------------------------------------
    def _add_router_losses(self, logits):
        probs = tf.nn.softmax(logits, axis=-1)
        first = top_k_choices(tf.stop_gradient(logits), 1)[0]
        fraction = tf.reduce_mean(tf.one_hot(first, self.num_experts, dtype=logits.dtype), axis=[0, 1])
        mean_prob = tf.reduce_mean(probs, axis=[0, 1])
        balance = self.num_experts * tf.reduce_sum(fraction * mean_prob)
        z_loss = tf.reduce_mean(tf.square(tf.reduce_logsumexp(logits, axis=-1)))
        if self.balance_loss_weight:
            self.add_loss(self.balance_loss_weight * balance)
        if self.z_loss_weight:
            self.add_loss(self.z_loss_weight * z_loss)
        self.add_metric(balance, name=f"{self.name}_balance", aggregation="mean")

    def _track_counts(self, dispatch):
        used = tf.not_equal(tf.reshape(dispatch, [-1, self.num_experts, self.capacity]),
                            self.num_patches)
        counts = tf.reduce_sum(tf.cast(used, tf.float32), axis=[0, 2])
        images = tf.size(dispatch) // (self.num_experts * self.capacity)
        choices = tf.cast(images * self.top_k * self.num_patches, tf.float32)
        self.expert_counts.assign_add(counts)
        self.choices_seen.assign_add(choices)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape[0])

    def get_config(self):
        return {**super().get_config(), "num_experts": self.num_experts,
                "expert_hidden": self.expert_hidden, "capacity": self.capacity,
                "top_k": self.top_k, "balance_loss_weight": self.balance_loss_weight,
                "z_loss_weight": self.z_loss_weight, "ffn_dropout": self.ffn_dropout,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}
