"""The Estimator layer with a toy linear model, checked against a numpy SGD-momentum reference."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssd import estimator as estimator_lib
from ssd.estimator import (Estimator, EstimatorSpec, ModelFunction, NonFiniteLossError, RunConfig,
                           ServingInputReceiver)
from ssd.modes import ModeKeys

DIM = 3
BATCH = 4
NUM_BATCHES = 6
LR = 0.05
MOMENTUM = 0.9


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_BATCHES * BATCH, DIM)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.3).astype(np.float32)[:, None]
    return x, y


def _input_fn(input_context=None):
    x, y = _data()
    return tf.data.Dataset.from_tensor_slices(({"x": x}, {"y": y})).batch(BATCH)


class _MeanSquaredError:
    def __init__(self):
        self.total, self.count = 0.0, 0

    def update(self, outputs):
        self.total += float(np.sum(outputs["squared_error"]))
        self.count += len(outputs["squared_error"])

    def result(self):
        return {"mse": self.total / self.count}


class _LinearModelFn(ModelFunction):
    def __init__(self, params, context):
        self.params = params
        self.model = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(1, kernel_initializer="zeros")])
        self.optimizer = keras.optimizers.SGD(params["lr"], momentum=MOMENTUM)
        self._network = context.compile(self.model)

    def __call__(self, features, labels, mode, params):
        prediction = self._network(features["x"], training=mode == ModeKeys.TRAIN)
        if mode == ModeKeys.PREDICT:
            return EstimatorSpec(mode, predictions={"y": prediction[:, 0]})
        squared_error = tf.reduce_sum(tf.square(prediction - labels["y"]), axis=1)
        if mode == ModeKeys.EVAL:
            return EstimatorSpec(mode, eval_outputs={"squared_error": squared_error})
        replica = tf.distribute.get_replica_context()
        count = replica.all_reduce("sum", tf.cast(tf.shape(squared_error)[0], tf.float32))
        loss = tf.reduce_sum(squared_error) / count
        return EstimatorSpec(mode, loss=loss, scalars={"mse": loss})

    def create_evaluator(self):
        return _MeanSquaredError()


def _reference(step_batches):
    """Keras SGD with momentum on mean squared error, in numpy: v = m v - lr g; w += v."""
    x, y = _data()
    w, b = np.zeros((DIM, 1)), np.zeros(1)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for i in step_batches:
        xb, yb = x[i * BATCH:(i + 1) * BATCH].astype(np.float64), y[i * BATCH:(i + 1) * BATCH]
        residual = xb @ w + b - yb
        gw, gb = 2 * xb.T @ residual / BATCH, 2 * residual.sum(0) / BATCH
        vw, vb = MOMENTUM * vw - LR * gw, MOMENTUM * vb - LR * gb
        w, b = w + vw, b + vb
    return w, b


def _summary_tags(directory):
    tags = {}
    for path in glob.glob(str(directory / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, set()).add(event.step)
    return tags


def _estimator(model_dir, lr=LR, **overrides):
    settings = dict(save_checkpoints_steps=2, keep_checkpoint_max=10, save_summary_steps=2,
                    log_step_count_steps=2)
    settings.update(overrides)
    config = RunConfig(model_dir=str(model_dir), **settings)
    return Estimator(_LinearModelFn, {"lr": lr}, config)


def _weights(estimator):
    kernel, bias = estimator.model.get_weights()
    return kernel, bias


def test_train_checkpoints_resume_evaluate_predict(tmp_path):
    estimator = _estimator(tmp_path)
    seen = []
    estimator.train(_input_fn, max_steps=6, hooks=[lambda step, scalars: seen.append((step, scalars))])
    assert estimator.global_step == 6
    assert [step for step, _ in seen] == [1, 2, 3, 4, 5, 6]
    x, y = _data()
    np.testing.assert_allclose(float(seen[0][1]["loss"]), np.mean(y[:BATCH] ** 2), rtol=1e-5)  # zero init
    assert float(seen[0][1]["learning_rate"]) == pytest.approx(LR)
    steps = sorted(int(p.split("-")[-1].split(".")[0]) for p in glob.glob(str(tmp_path / "ckpt-*.index")))
    assert steps == [2, 4, 6]
    w, b = _reference(range(6))
    kernel, bias = _weights(estimator)
    np.testing.assert_allclose(kernel, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bias, b, rtol=1e-4, atol=1e-5)
    tags = _summary_tags(tmp_path)
    assert {2, 4, 6} <= tags["loss"] and {2, 4, 6} <= tags["learning_rate"]
    assert {2, 4, 6} <= tags["global_step/sec"]

    # A new Estimator resumes: step, weights and momentum restored; the input restarts.
    resumed = _estimator(tmp_path)
    resumed.train(_input_fn, max_steps=9)
    assert resumed.global_step == 9
    w, b = _reference([0, 1, 2, 3, 4, 5, 0, 1, 2])
    kernel, bias = _weights(resumed)
    np.testing.assert_allclose(kernel, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bias, b, rtol=1e-4, atol=1e-5)

    # Training to a step already reached does nothing.
    resumed.train(_input_fn, max_steps=9)
    assert resumed.global_step == 9

    # Evaluate and predict from an older checkpoint.
    x, y = _data()
    w4, b4 = _reference(range(4))
    metrics = _estimator(tmp_path).evaluate(_input_fn, checkpoint_path=str(tmp_path / "ckpt-4"))
    assert metrics["global_step"] == 4
    np.testing.assert_allclose(metrics["mse"], np.mean((x @ w4 + b4 - y) ** 2), rtol=1e-4)
    predictions = list(_estimator(tmp_path).predict(_input_fn, checkpoint_path=str(tmp_path / "ckpt-4")))
    assert len(predictions) == len(x)
    np.testing.assert_allclose([p["y"] for p in predictions], (x @ w4 + b4)[:, 0], rtol=1e-4, atol=1e-5)


def test_input_exhaustion_stops_and_saves(tmp_path):
    estimator = _estimator(tmp_path, save_checkpoints_steps=None)
    estimator.train(_input_fn, max_steps=100)
    assert estimator.global_step == NUM_BATCHES
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith(f"ckpt-{NUM_BATCHES}")


def test_non_finite_loss_stops_before_the_update_and_is_never_saved(tmp_path):
    def input_fn(input_context=None):
        x, y = _data()
        x[3 * BATCH] = np.nan  # batch index 3 -> the 4th step
        return tf.data.Dataset.from_tensor_slices(({"x": x}, {"y": y})).batch(BATCH)

    estimator = _estimator(tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"at step 4 .*loss=nan") as error:
        estimator.train(input_fn, max_steps=6)
    assert error.value.step == 4
    assert estimator.global_step == 3
    assert np.all(np.isfinite(estimator.model.get_weights()[0]))
    for index in glob.glob(str(tmp_path / "ckpt-*.index")):
        reader = tf.train.load_checkpoint(index[: -len(".index")])
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                assert np.all(np.isfinite(value)), name


def test_exploding_learning_rate_is_reported_with_its_step(tmp_path):
    estimator = _estimator(tmp_path, lr=1e30)
    with pytest.raises(NonFiniteLossError, match="loss is not finite at step"):
        estimator.train(_input_fn, max_steps=6)
    latest = tf.train.latest_checkpoint(str(tmp_path))
    if latest:
        reader = tf.train.load_checkpoint(latest)
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                assert np.all(np.isfinite(value)), name


def test_train_and_evaluate_and_export(tmp_path, monkeypatch):
    estimator = _estimator(tmp_path, jit_compile=True)
    logged = []
    monkeypatch.setattr(estimator_lib.logging, "info", lambda fmt, *args: logged.append(fmt % args))
    metrics = estimator.train_and_evaluate(_input_fn, _input_fn, max_steps=5, eval_every_steps=2)
    # progress and ETA count towards max_steps, not towards the next evaluation
    assert [line.split(":")[0] for line in logged if line.startswith("step ")] == ["step 2/5", "step 4/5"]
    assert metrics["global_step"] == 5
    x, y = _data()
    w, b = _reference(range(5))
    np.testing.assert_allclose(metrics["mse"], np.mean((x @ w + b - y) ** 2), rtol=1e-4)
    assert glob.glob(str(tmp_path / "eval" / "events.out.tfevents.*"))

    def serving_input_receiver_fn():
        return ServingInputReceiver({"x": tf.TensorSpec([None, DIM], tf.float32)},
                                    lambda received: {"x": received["x"]})

    export_dir = estimator.export_saved_model(str(tmp_path / "export"), serving_input_receiver_fn)
    loaded = tf.saved_model.load(export_dir)
    out = loaded.signatures["serving_default"](x=tf.constant(x[:2]))
    np.testing.assert_allclose(out["y"].numpy(), (x[:2] @ w + b)[:, 0], rtol=1e-4, atol=1e-5)


def test_evaluate_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _estimator(tmp_path).evaluate(_input_fn)


def test_run_config_checks_mixed_precision(tmp_path):
    with pytest.raises(ValueError, match="mixed_precision"):
        RunConfig(model_dir=str(tmp_path), mixed_precision="fp8")


def test_checkpoints_by_seconds_and_kept_count(tmp_path):
    estimator = _estimator(tmp_path, save_checkpoints_steps=None, save_checkpoints_secs=1e-9,
                           keep_checkpoint_max=2)
    estimator.train(_input_fn, max_steps=5)
    indexes = sorted(p.name for p in tmp_path.glob("ckpt-*.index"))
    assert indexes == ["ckpt-4.index", "ckpt-5.index"]  # one per step, the last two kept
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-5")
