"""The host stays out of the training step's way: no device->host reads between the points where
something is due, several steps per call (train.steps_per_loop) with the same logs, summaries,
checkpoints and weights as one, and exact steps on a non-finite loss or exhausted input in the
middle of a call. Trained with the toy linear model of test_estimator (numpy reference there)."""

import glob
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import ops

from ssd.config.loading import load_config
from ssd.config.schema import ConfigError
from ssd.engine.estimator import ModelContext, NonFiniteLossError, RunConfig
from ssd.engine.train_step import make_train_step
from ssd.engine.training import Cadence, TrainingSession
from ssd.modeling.checkpoints import Checkpointer
from tests.engine.test_estimator import (BATCH, LR, NUM_BATCHES, _LinearModelFn, _checkpoint_weights, _data,
                                         assert_no_non_finite_checkpoint,
                                         _estimator, _input_fn, _reference, _summary_tags)

ROOT = Path(__file__).resolve().parent.parent.parent


class ReadCounter:
    """Counts device->host reads: every .numpy(), bool(), int(), float() of an eager tensor."""

    def __init__(self, monkeypatch):
        self.count = 0
        original = ops._EagerTensorBase._numpy

        def counted(tensor):
            self.count += 1
            return original(tensor)

        monkeypatch.setattr(ops._EagerTensorBase, "_numpy", counted)


class CallLog:
    """Wraps a step function: the read count before and after each call, and its count."""

    def __init__(self, step_fn, reads: ReadCounter):
        self._step_fn, self._reads = step_fn, reads
        self.calls = []  # (reads before, reads after, count)

    def __call__(self, iterator, count):
        before = self._reads.count
        result = self._step_fn(iterator, count)
        self.calls.append((before, self._reads.count, count))
        return result

    def reads_after_each_call(self) -> dict[int, int]:
        """{step reached by a call: reads between its end and the next call's start}."""
        ends = np.cumsum([count for _, _, count in self.calls])
        return {int(end): self.calls[i + 1][0] - self.calls[i][1] for i, end in enumerate(ends[:-1])}


def _repeated_input_fn(input_context=None):
    x, y = _data()
    return tf.data.Dataset.from_tensor_slices(({"x": x}, {"y": y})).batch(BATCH).repeat()


def _linear_session(tmp_path, reads, steps_per_loop, cadence):
    strategy = tf.distribute.get_strategy()
    with strategy.scope():  # as the Estimator builds them
        global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
        holder = _LinearModelFn({"lr": LR}, ModelContext(global_step, 1))
        holder.optimizer.build(holder.model.trainable_variables)
    step = CallLog(make_train_step(strategy, holder, holder.optimizer, global_step, steps_per_loop), reads)
    checkpointer = Checkpointer({"model": holder.model, "global_step": global_step}, str(tmp_path), 5)
    session = TrainingSession(step, checkpointer, tf.summary.create_noop_writer(), cadence, start_step=0,
                              steps_per_loop=steps_per_loop)
    iterator = iter(strategy.distribute_datasets_from_function(_repeated_input_fn))
    return session, step, iterator, holder, global_step


def test_the_read_counter_sees_reads(monkeypatch):
    reads = ReadCounter(monkeypatch)
    value = tf.constant(2.5)
    float(value), int(tf.constant(3)), bool(tf.constant(True)), value.numpy()
    assert reads.count == 4


@pytest.mark.slow
@pytest.mark.parametrize("steps_per_loop", [1, 4])
def test_steps_that_neither_log_nor_save_read_nothing_from_the_device(tmp_path, monkeypatch, steps_per_loop):
    reads = ReadCounter(monkeypatch)
    cadence = Cadence(save_checkpoints_steps=None, save_summary_steps=0, log_step_count_steps=0)
    session, step, iterator, holder, global_step = _linear_session(tmp_path, reads, steps_per_loop, cadence)
    assert session.run(iterator, max_steps=22)
    first_call_started, last_call_ended = step.calls[0][0], step.calls[-1][1]
    assert last_call_ended - first_call_started == 0  # 22 steps, not one read
    assert [count for _, _, count in step.calls] == ([1] * 22 if steps_per_loop == 1 else [4] * 5 + [2])
    assert reads.count > last_call_ended  # the end of the run checks (and the checkpointer reads)
    assert session.step == int(global_step.numpy()) == 22
    w, b = _reference([i % NUM_BATCHES for i in range(22)])
    np.testing.assert_allclose(holder.model.get_weights()[0], w, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("steps_per_loop", [1, 4])
def test_reads_happen_only_after_the_steps_that_log(tmp_path, monkeypatch, steps_per_loop):
    reads = ReadCounter(monkeypatch)
    cadence = Cadence(save_checkpoints_steps=None, save_summary_steps=0, log_step_count_steps=10)
    session, step, iterator, _, _ = _linear_session(tmp_path, reads, steps_per_loop, cadence)
    session.run(iterator, max_steps=30)
    after = step.reads_after_each_call()
    # the session's first step is always logged
    assert {end for end, count in after.items() if count} == {1, 10, 20}
    assert set(after) >= {1, 10, 20}


class _PicturedLinearModelFn(_LinearModelFn):
    """The linear model with its inputs as summary pictures."""

    def __call__(self, features, labels):
        spec = super().__call__(features, labels)
        spec.summary_tensors = {"x": features["x"]}
        return spec

    def summary_images(self, tensors):
        return {"inputs": tf.reshape(tf.sigmoid(tensors["x"]), [-1, 1, 3, 1])}


def _train_with_cadences(model_dir, steps_per_loop, logged):
    from ssd.engine.estimator import Estimator
    config = RunConfig(model_dir=str(model_dir), save_checkpoints_steps=5, keep_checkpoint_max=10,
                       save_summary_steps=2, log_step_count_steps=3, save_image_summary_steps=4,
                       steps_per_loop=steps_per_loop)
    estimator = Estimator(_PicturedLinearModelFn, {"lr": LR}, config)
    logged.clear()
    estimator.train(_repeated_input_fn, max_steps=13)
    steps = sorted(int(p.split("-")[-1].split(".")[0]) for p in glob.glob(str(model_dir / "ckpt-*.index")))
    lines = [line.split(":")[0] for line in logged if line.startswith("step ") and "/13:" in line]
    return estimator, steps, lines, _summary_tags(model_dir)


@pytest.mark.slow
def test_several_steps_per_call_log_summarize_save_and_train_as_one(tmp_path, monkeypatch):
    from ssd.engine import training
    logged = []
    monkeypatch.setattr(training.logging, "info", lambda fmt, *args: logged.append(fmt % args))
    one, steps_one, lines_one, tags_one = _train_with_cadences(tmp_path / "one", 1, logged)
    four, steps_four, lines_four, tags_four = _train_with_cadences(tmp_path / "four", 4, logged)
    assert steps_one == steps_four == [5, 10, 13]
    assert lines_one == lines_four == [f"step {s}/13" for s in (1, 3, 6, 9, 12, 13)]
    assert tags_one["loss"] == tags_four["loss"] == {1, 2, 4, 6, 8, 10, 12, 13}
    assert tags_one["global_step/sec"] == tags_four["global_step/sec"] == {2, 4, 6, 8, 10, 12, 13}
    assert tags_one["inputs"] == tags_four["inputs"] == {4, 8, 12}
    assert one.global_step == four.global_step == 13
    for a, b in zip(one.model.get_weights(), four.model.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    w, b = _reference([i % NUM_BATCHES for i in range(13)])
    np.testing.assert_allclose(four.model.get_weights()[0], w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(four.model.get_weights()[1], b, rtol=1e-4, atol=1e-5)


def _input_with_nan_at_step(step, repeat=False):
    def input_fn(input_context=None):
        x, y = _data()
        x[(step - 1) * BATCH] = np.nan
        dataset = tf.data.Dataset.from_tensor_slices(({"x": x}, {"y": y})).batch(BATCH)
        return dataset.repeat() if repeat else dataset

    return input_fn


@pytest.mark.slow
def test_a_non_finite_loss_inside_a_call_stops_at_its_step(tmp_path):
    # calls of steps 1-3 (a save at 3), then 4-6: step 5 is not finite, 6 does not run
    estimator = _estimator(tmp_path, steps_per_loop=4, save_checkpoints_steps=3, save_summary_steps=0,
                           log_step_count_steps=0)
    with pytest.raises(NonFiniteLossError, match=r"at step 5 .*loss=nan") as error:
        estimator.train(_input_with_nan_at_step(5), max_steps=12)
    assert error.value.step == 5 and np.isnan(error.value.values["loss"])
    assert error.value.latest_checkpoint == str(tmp_path / "ckpt-3")
    assert estimator.global_step == 4
    w, b = _reference(range(4))
    np.testing.assert_allclose(estimator.model.get_weights()[0], w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(estimator.model.get_weights()[1], b, rtol=1e-4, atol=1e-5)
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-3")
    np.testing.assert_allclose(_checkpoint_weights(str(tmp_path / "ckpt-3"))[0], _reference(range(3))[0],
                               rtol=1e-4, atol=1e-5)
    assert_no_non_finite_checkpoint(tmp_path)


@pytest.mark.slow
def test_a_non_finite_loss_seen_only_at_the_end_leaves_nothing_applied_after_it(tmp_path):
    # nothing due before step 12: calls 1-4, 5-8 (step 6 not finite), 9-12 (nothing runs)
    estimator = _estimator(tmp_path, steps_per_loop=4, save_checkpoints_steps=None, save_summary_steps=0,
                           log_step_count_steps=0)
    with pytest.raises(NonFiniteLossError, match=r"at step 6 .*latest good checkpoint: none yet") as error:
        estimator.train(_input_with_nan_at_step(6, repeat=True), max_steps=12)
    assert error.value.step == 6 and estimator.global_step == 5
    w, b = _reference(range(5))
    np.testing.assert_allclose(estimator.model.get_weights()[0], w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(estimator.model.get_weights()[1], b, rtol=1e-4, atol=1e-5)
    assert tf.train.latest_checkpoint(str(tmp_path)) is None

    # the next run of the same Estimator trains again from the last good step
    estimator.train(_repeated_input_fn, max_steps=8)
    assert estimator.global_step == 8
    w, b = _reference([0, 1, 2, 3, 4, 0, 1, 2])
    np.testing.assert_allclose(estimator.model.get_weights()[0], w, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_input_running_out_inside_a_call_counts_the_steps_exactly(tmp_path, monkeypatch):
    from ssd.engine import training
    logged = []
    monkeypatch.setattr(training.logging, "info", lambda fmt, *args: logged.append(fmt % args))
    # 6 batches; calls 1 (logged), 2-4 (logged), 5-8: steps 5 and 6 run, then the input is out
    estimator = _estimator(tmp_path, steps_per_loop=4, save_checkpoints_steps=None, save_summary_steps=0,
                           log_step_count_steps=4)
    estimator.train(_input_fn, max_steps=100)
    assert estimator.global_step == NUM_BATCHES
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith(f"ckpt-{NUM_BATCHES}")
    assert f"input exhausted at step {NUM_BATCHES} (before max_steps 100)" in logged
    assert [line.split(":")[0] for line in logged if "/100:" in line] == ["step 1/100", "step 4/100"]
    w, b = _reference(range(NUM_BATCHES))
    np.testing.assert_allclose(estimator.model.get_weights()[0], w, rtol=1e-4, atol=1e-5)


MIRRORED_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from ssd.engine.estimator import Estimator, NonFiniteLossError, RunConfig
from tests.engine.test_estimator import BATCH, LR, _LinearModelFn, _data

def input_fn(context, nan_row=None):
    x, y = _data()
    if nan_row is not None:
        x[nan_row] = np.nan
    per_replica = context.get_per_replica_batch_size(BATCH)
    return tf.data.Dataset.from_tensor_slices(({"x": x}, {"y": y})).batch(per_replica)

report = {}
for name, nan_row in (("clean", None), ("nan", 4 * BATCH + 3)):  # step 5, the second replica's half
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    config = RunConfig(model_dir=sys.argv[1] + "/" + name, save_checkpoints_steps=None, save_summary_steps=0,
                       log_step_count_steps=0, train_distribute=strategy, steps_per_loop=3)
    estimator = Estimator(_LinearModelFn, {"lr": LR}, config)
    try:
        estimator.train(lambda context: input_fn(context, nan_row), max_steps=6)
        error = None
    except NonFiniteLossError as e:
        error = e.step
    report[name] = {"replicas": strategy.num_replicas_in_sync, "global_step": estimator.global_step,
                    "error_step": error, "weights": [w.tolist() for w in estimator.model.get_weights()]}
print("REPORT " + json.dumps(report))
"""


@pytest.mark.slow
def test_mirrored_replicas_run_several_steps_per_call_and_stop_together(tmp_path):
    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    report = json.loads(line[len("REPORT "):])
    clean, nan = report["clean"], report["nan"]
    assert clean["replicas"] == nan["replicas"] == 2
    assert (clean["global_step"], clean["error_step"]) == (6, None)
    w, b = _reference(range(6))
    np.testing.assert_allclose(clean["weights"][0], w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(clean["weights"][1], b, rtol=1e-4, atol=1e-5)
    assert (nan["global_step"], nan["error_step"]) == (4, 5)
    w, b = _reference(range(4))
    np.testing.assert_allclose(nan["weights"][0], w, rtol=1e-4, atol=1e-5)


def test_steps_per_loop_is_checked():
    assert load_config("ssd300_shapes_cpu").train.steps_per_loop == 1
    assert load_config("ssd300_shapes_cpu", {"train.steps_per_loop": 10}).train.steps_per_loop == 10
    with pytest.raises(ConfigError, match=r"train\.steps_per_loop: must be >= 1, got 0$"):
        load_config("ssd300_shapes_cpu", {"train.steps_per_loop": 0})
    with pytest.raises(ValueError, match="RunConfig.steps_per_loop must be >= 1, got 0"):
        RunConfig(model_dir="unused", steps_per_loop=0)


@pytest.mark.slow
def test_hooks_see_every_step_with_several_steps_per_call(tmp_path):
    seen = {}
    for steps_per_loop in (1, 4):
        estimator = _estimator(tmp_path / str(steps_per_loop), steps_per_loop=steps_per_loop)
        hooked = seen[steps_per_loop] = []
        estimator.train(_input_fn, max_steps=6,
                        hooks=[lambda step, scalars, hooked=hooked: hooked.append((step, float(scalars["loss"])))])
    assert [step for step, _ in seen[4]] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([loss for _, loss in seen[4]], [loss for _, loss in seen[1]], rtol=1e-6)


def test_a_stop_signal_waits_for_the_steps_of_the_call_in_flight(tmp_path):
    import signal
    from ssd.engine.interrupts import LocalStop, StopSignals, TrainingInterrupted
    from ssd.engine.train_step import StepResult
    weight = tf.Variable(0.0)

    def step_fn(iterator, count):
        for _ in range(count):
            weight.assign_add(1.0)
            if float(weight.numpy()) == 6.0:
                signal.raise_signal(signal.SIGTERM)  # arrives in the middle of the call of steps 5-8
        return StepResult({"loss": tf.constant(0.5)}, tf.constant(True), tf.constant(2 * count, tf.int64), {},
                          tf.constant(count, tf.int64))

    with StopSignals() as signals:
        session = TrainingSession(step_fn, Checkpointer({"w": weight}, str(tmp_path), max_to_keep=5),
                                  tf.summary.create_noop_writer(),
                                  Cadence(save_checkpoints_steps=None, save_summary_steps=0, log_step_count_steps=0),
                                  start_step=0, stop=LocalStop(signals), steps_per_loop=4)
        with pytest.raises(TrainingInterrupted) as stopped:
            session.run(iterator=None, max_steps=100)
    assert (stopped.value.step, stopped.value.checkpoint) == (8, str(tmp_path / "ckpt-8"))
    assert float(tf.train.load_checkpoint(str(tmp_path / "ckpt-8")).get_tensor("w/.ATTRIBUTES/VARIABLE_VALUE")) == 8.0
