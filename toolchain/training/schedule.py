"""Learning-rate schedule: linear warm-up, then cosine decay to zero (or constant)."""
import math

import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable(package="routevit")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """`peak` reached linearly over `warmup_steps`, then cosine decay to 0 at `total_steps`.

    With `cosine=False` the rate stays at `peak` after warm-up.

    Example:
        >>> schedule = WarmupCosine(peak=1e-3, total_steps=100, warmup_steps=10)
        >>> round(float(schedule(5)), 6), round(float(schedule(100)), 6)
        (0.0005, 0.0)
    """

    def __init__(self, peak, total_steps, warmup_steps=0, cosine=True):
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.cosine = bool(cosine)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        peak = tf.constant(self.peak, tf.float32)
        warmup = tf.constant(max(self.warmup_steps, 1), tf.float32)
        warm = peak * tf.minimum(1.0, step / warmup) if self.warmup_steps else peak
        if not self.cosine:
            return warm
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = 0.5 * peak * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "cosine": self.cosine}
