"""The optimizer and learning-rate schedule a `TrainConfig` asks for.

Schedules (`train.lr_schedule`), both read from the global step (the updates already applied)
and never below `train.lr_floor`:
  piecewise:   learning_rate * lr_factors[i] on steps [lr_boundaries[i-1], lr_boundaries[i]);
  exponential: the TF Object Detection API's `exponential_decay_learning_rate` (no burn-in):
               learning_rate * lr_decay_factor ** (step / lr_decay_steps), the exponent floored
               when `lr_decay_staircase` (the API's default). `ssdlite_mobilenet_v2_coco`:
               0.004, 800,720 steps, 0.95, staircase.

Optimizers (`train.optimizer`): "momentum" (SGD with `momentum`), "sgd", "adam", and "rmsprop",
TF1's `tf.train.RMSPropOptimizer` as the API builds it (decay `rmsprop_decay`, momentum
`momentum`, epsilon `rmsprop_epsilon`):

    ms  <- decay * ms + (1 - decay) * g^2          (ms starts at 1)
    mom <- momentum * mom + lr * g / sqrt(ms + epsilon)
    var <- var - mom

Keras 3's RMSprop computes exactly this update with rho = decay (epsilon inside the square root
too, momentum on the scaled step), but starts ms at 0. With the API's epsilon of 1 that makes
the first steps up to sqrt(1.9) ~ 1.38x larger (the gap shrinks as 0.9^t); `TF1RMSprop` starts
ms at 1, so the updates are TF1's from the first step.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from ssd.config.schema import TrainConfig
from ssd.modeling.losses import is_bias


def learning_rate_at(step, train_config: TrainConfig) -> tf.Tensor:
    """The learning rate of the update after `step` updates (module docstring).

    With the seed's piecewise boundaries [500, 80000, 100000] and factors [0.1, 1, 0.1, 0.01] the
    first 500 updates use 1e-4; with the API's exponential schedule the rate is 0.004 up to step
    800,719 and 0.0038 from step 800,720.
    """
    t = train_config
    step = tf.cast(step, tf.int64)
    if t.lr_schedule == "exponential":
        exponent = tf.cast(step, tf.float64) / float(t.lr_decay_steps)
        if t.lr_decay_staircase:
            exponent = tf.floor(exponent)
        rate = tf.cast(t.learning_rate * tf.pow(tf.constant(t.lr_decay_factor, tf.float64), exponent),
                       tf.float32)
        return tf.maximum(rate, t.lr_floor)
    if t.lr_schedule != "piecewise":
        raise ValueError(f"train.lr_schedule: unknown schedule {t.lr_schedule!r}")
    boundaries = tf.constant(t.lr_boundaries, tf.int64, shape=[len(t.lr_boundaries)])
    index = tf.reduce_sum(tf.cast(step >= boundaries, tf.int32))
    factor = tf.gather(tf.constant(t.lr_factors, tf.float32), index)
    return tf.maximum(t.learning_rate * factor, t.lr_floor)


class TF1RMSprop(keras.optimizers.RMSprop):
    """Keras' RMSprop with the mean square starting at 1, as TF1's RMSPropOptimizer's does."""

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        for velocity in self._velocities:
            velocity.assign(tf.ones_like(velocity))


def make_optimizer(train_config: TrainConfig, global_step: tf.Variable) -> keras.optimizers.Optimizer:
    """The configured optimizer with the learning rate schedule read from `global_step`."""
    def learning_rate():
        return learning_rate_at(global_step, train_config)

    t = train_config
    if t.optimizer == "momentum":
        return keras.optimizers.SGD(learning_rate, momentum=t.momentum)
    if t.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate)
    if t.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate)
    if t.optimizer == "rmsprop":
        return TF1RMSprop(learning_rate, rho=t.rmsprop_decay, momentum=t.momentum,
                          epsilon=t.rmsprop_epsilon)
    raise ValueError(f"train.optimizer: unknown optimizer {t.optimizer!r}")


def gradient_multiplier(variable, train_config: TrainConfig) -> float:
    """What a variable's gradient is multiplied by before the optimizer applies it.

    For SGD with or without momentum the update is linear in the gradient, so multiplying a
    bias's gradient by `bias_lr_multiplier` trains it at exactly that multiple of the learning
    rate, as Caffe's per-parameter `lr_mult` does (validation refuses a multiplier with Adam and
    RMSProp, whose steps do not scale with the gradient).
    """
    return train_config.bias_lr_multiplier if is_bias(variable) else 1.0
