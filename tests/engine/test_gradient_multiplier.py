"""Caffe's per-parameter learning rate for biases (`train.bias_lr_multiplier`), through the real
training step: with SGD and momentum a gradient multiplied by k moves the variable exactly k times
as far, and Adam, whose steps do not scale with the gradient, is refused."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssd.config.loading import ConfigError, TrainConfig, load_config
from ssd.engine.estimator import EstimatorSpec, ModelContext
from ssd.engine.model_fn import SSDModelFn
from ssd.engine.optimizers import gradient_multiplier, make_optimizer
from ssd.engine.train_step import make_train_step

INPUTS = 3
OUTPUTS = 2
BATCH = 4


class _LinearHolder:
    """One dense layer and a loss linear in its output: the gradients of the kernel and the bias
    do not depend on the weights, so runs that differ only in the bias multiplier get the same
    gradients at every step and their moves can be compared exactly."""

    def __init__(self, train_config: TrainConfig, global_step: tf.Variable):
        keras.utils.set_random_seed(3)
        self.model = keras.Sequential([keras.Input((INPUTS,)),
                                       keras.layers.Dense(OUTPUTS, name="fc7")], name="linear")
        self.optimizer = make_optimizer(train_config, global_step)
        self._train_config = train_config

    def __call__(self, features, labels):
        output_weights = tf.constant([[0.75, -1.5]], tf.float32)
        loss = tf.reduce_sum(self.model(features["x"], training=True) * output_weights)
        return EstimatorSpec(loss=loss)

    def gradient_multiplier(self, variable):
        return gradient_multiplier(variable, self._train_config)


def _train(optimizer, multiplier, steps):
    """The dense layer's (kernel, bias) before training and after `steps` training steps."""
    train_config = TrainConfig(optimizer=optimizer, momentum=0.9, learning_rate=0.1,
                               bias_lr_multiplier=multiplier, lr_boundaries=[1], lr_factors=[0.5, 1.0])
    strategy = tf.distribute.get_strategy()
    with strategy.scope():  # as the Estimator builds them
        global_step = tf.Variable(0, dtype=tf.int64, trainable=False,
                                  aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        holder = _LinearHolder(train_config, global_step)
        holder.optimizer.build(holder.model.trainable_variables)
        step = make_train_step(strategy, holder, holder.optimizer, global_step)
    x = np.random.default_rng(0).normal(size=(steps * BATCH, INPUTS)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(({"x": x}, {"y": x[:, :1]})).batch(BATCH)
    iterator = iter(strategy.distribute_datasets_from_function(lambda context: dataset))
    layer = holder.model.get_layer("fc7")
    before = (layer.kernel.numpy(), layer.bias.numpy())
    for _ in range(steps):
        assert bool(step(iterator).finite)
    return before, (layer.kernel.numpy(), layer.bias.numpy())


@pytest.mark.parametrize("optimizer, steps", [("sgd", 1), ("momentum", 1), ("momentum", 3)])
def test_bias_moves_exactly_multiplier_times_as_far(optimizer, steps):
    (kernel0, bias0), (kernel1, bias1) = _train(optimizer, 1.0, steps)
    (kernel0_x2, bias0_x2), (kernel2, bias2) = _train(optimizer, 2.0, steps)
    np.testing.assert_array_equal(kernel0, kernel0_x2)
    np.testing.assert_array_equal(bias0, np.zeros(OUTPUTS))  # biases start at zero, as in SSD
    np.testing.assert_array_equal(bias0_x2, bias0)

    # the bias moved, by exactly twice as much (doubling is exact in floating point, and every
    # SGD and momentum operation is linear in the gradient)
    assert np.all(np.abs(bias1) > 0)
    np.testing.assert_array_equal(bias2, 2.0 * bias1)
    # the kernels moved, identically
    assert not np.array_equal(kernel1, kernel0)
    np.testing.assert_array_equal(kernel2, kernel1)


def test_bias_moves_as_hand_computed_with_sgd():
    # loss = sum_b sum_j w_j (x_b . W_j + bias_j): d/d bias_j = BATCH * w_j; the first step's
    # learning rate is 0.1 * 0.5 (the warm-up factor), times 2 for the biases
    _, (_, bias) = _train("sgd", 2.0, 1)
    expected = -0.1 * 0.5 * 2.0 * BATCH * np.array([0.75, -1.5])
    np.testing.assert_allclose(bias, expected, rtol=1e-6)


def test_multiplier_is_for_biases_only():
    holder = _LinearHolder(TrainConfig(bias_lr_multiplier=2.0), tf.Variable(0, dtype=tf.int64))
    multipliers = {v.path: holder.gradient_multiplier(v) for v in holder.model.trainable_variables}
    assert multipliers == {"linear/fc7/kernel": 1.0, "linear/fc7/bias": 2.0}


def test_ssd_model_function_offers_the_multiplier():
    config = load_config("ssd300_shapes_cpu", {"train.optimizer": "momentum",
                                               "train.bias_lr_multiplier": 2.0})
    holder = SSDModelFn(config, ModelContext(tf.Variable(0, dtype=tf.int64), num_replicas=1))
    multipliers = {v.path: holder.gradient_multiplier(v) for v in holder.model.trainable_variables}
    assert multipliers["conv1_1/bias"] == 2.0 and multipliers["conv1_1/kernel"] == 1.0
    biases = [path for path in multipliers if path.endswith("/bias")]
    assert len(biases) >= 10
    assert all(multipliers[path] == 2.0 for path in biases)
    assert all(m == 1.0 for path, m in multipliers.items() if not path.endswith("/bias"))


def test_adam_refuses_a_bias_multiplier():
    with pytest.raises(ConfigError, match=r"train\.bias_lr_multiplier.*adam"):
        load_config("ssd300_shapes_cpu", {"train.bias_lr_multiplier": 2.0})
    assert load_config("ssd300_shapes_cpu", {"train.bias_lr_multiplier": 1.0}).train.optimizer == "adam"
    with pytest.raises(ConfigError, match=r"train\.bias_lr_multiplier: must be positive"):
        load_config("ssd300_voc0712", {"train.bias_lr_multiplier": 0.0})
