"""Learning-rate schedules and optimizers (ssd.engine.optimizers)."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssd.config.loading import ConfigError, TrainConfig, load_config
from ssd.engine.optimizers import TF1RMSprop, learning_rate_at, make_optimizer


def tfod_train():
    return load_config("ssdlite300_mobilenetv2_coco_tfod").train


def rate(step, train_config):
    return float(learning_rate_at(tf.constant(step, tf.int64), train_config))


def test_exponential_staircase_at_its_boundaries():
    t = tfod_train()
    assert rate(0, t) == pytest.approx(0.004, rel=1e-6)
    assert rate(800_719, t) == pytest.approx(0.004, rel=1e-6)
    assert rate(800_720, t) == pytest.approx(0.004 * 0.95, rel=1e-6)
    assert rate(2 * 800_720 - 1, t) == pytest.approx(0.004 * 0.95, rel=1e-6)
    assert rate(2 * 800_720, t) == pytest.approx(0.004 * 0.95 ** 2, rel=1e-6)


def test_exponential_without_staircase_is_continuous_and_floored():
    t = dataclasses.replace(tfod_train(), lr_decay_staircase=False)
    assert rate(400_360, t) == pytest.approx(0.004 * 0.95 ** 0.5, rel=1e-6)
    assert rate(800_719, t) == pytest.approx(0.004 * 0.95 ** (800_719 / 800_720), rel=1e-6)
    floored = dataclasses.replace(t, lr_decay_factor=0.1, lr_decay_steps=10, lr_floor=1e-5)
    assert rate(10, floored) == pytest.approx(4e-4, rel=1e-6)
    assert rate(1000, floored) == pytest.approx(1e-5, rel=1e-6)


def test_piecewise_schedule_is_the_default_and_unchanged():
    t = TrainConfig()
    assert t.lr_schedule == "piecewise"
    assert rate(499, t) == pytest.approx(1e-4) and rate(500, t) == pytest.approx(1e-3)
    assert rate(100_000, t) == pytest.approx(1e-5) and rate(10**6, t) == pytest.approx(1e-5)


def tf1_rmsprop_reference(var, grads, lr, decay, momentum, epsilon):
    """numpy: TF1's RMSPropOptimizer (ms starts at 1, epsilon inside the square root)."""
    var = np.array(var, np.float64)
    ms, mom = np.ones_like(var), np.zeros_like(var)
    for g in grads:
        ms = decay * ms + (1 - decay) * g ** 2
        mom = momentum * mom + lr * g / np.sqrt(ms + epsilon)
        var = var - mom
    return var


def run_optimizer(optimizer, start, grads):
    variable = tf.Variable(start, dtype=tf.float32)
    optimizer.build([variable])
    for g in grads:
        optimizer.apply_gradients([(tf.constant(g, tf.float32), variable)])
    return variable.numpy()


def test_rmsprop_is_tf1s_update_from_the_first_step():
    start = np.array([0.5, -1.0, 2.0])
    grads = [np.array([0.3, -2.0, 5.0]), np.array([0.1, 1.0, -4.0]), np.array([-0.2, 0.5, 3.0])]
    t = tfod_train()
    optimizer = make_optimizer(t, tf.Variable(0, dtype=tf.int64))
    assert isinstance(optimizer, TF1RMSprop)
    got = run_optimizer(optimizer, start, grads)
    expected = tf1_rmsprop_reference(start, grads, 0.004, 0.9, 0.9, 1.0)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Keras' own RMSprop starts the mean square at 0: visibly larger first steps
    keras_plain = run_optimizer(keras.optimizers.RMSprop(0.004, rho=0.9, momentum=0.9, epsilon=1.0),
                                start, grads)
    assert np.max(np.abs((keras_plain - start) / (expected - start))) > 1.1


def test_rmsprop_fields_are_validated():
    with pytest.raises(ConfigError, match="train.rmsprop_decay: must be in"):
        load_config("ssdlite300_mobilenetv2_coco_tfod", {"train.rmsprop_decay": 1.0})
    with pytest.raises(ConfigError, match="train.rmsprop_epsilon: must be positive"):
        load_config("ssdlite300_mobilenetv2_coco_tfod", {"train.rmsprop_epsilon": 0.0})
    with pytest.raises(ConfigError, match="train.bias_lr_multiplier.*'rmsprop'"):
        load_config("ssdlite300_mobilenetv2_coco_tfod", {"train.bias_lr_multiplier": 2.0})
    with pytest.raises(ConfigError, match="train.lr_schedule: must be"):
        load_config("ssdlite300_mobilenetv2_coco_tfod", {"train.lr_schedule": "cosine"})
    with pytest.raises(ConfigError, match="train.lr_decay_steps: must be >= 1"):
        load_config("ssdlite300_mobilenetv2_coco_tfod", {"train.lr_decay_steps": 0})
    with pytest.raises(ConfigError, match="train.lr_decay_factor: must be in"):
        load_config("ssdlite300_mobilenetv2_coco_tfod", {"train.lr_decay_factor": 1.5})
