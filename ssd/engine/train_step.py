"""The distributed training step, several steps per call.

`make_train_step(strategy, model_fn, optimizer, global_step, steps_per_loop)` builds the step
function `step(iterator, count)`: up to `count` (<= steps_per_loop) training steps in one
tf.function call, `count` a tensor so that another count does not trace again. In each step each
replica runs `model_fn(features, labels)` under a gradient tape, the loss and the scalars are
SUM-reduced across replicas, and the update is applied only when the loss is finite, decided in
cross-replica context so that every replica (and worker) applies it or none does. Under float16
loss scaling (a `keras.optimizers.LossScaleOptimizer`), a step whose gradients overflow on ANY
replica is skipped by every replica (the optimizer then lowers the scale); only a non-finite loss
is fatal: it sets a flag on the device (not in any checkpoint) that makes every later step do
nothing, so the host may learn of it later (ssd.engine.training) with nothing applied after the
last good step; `TrainStep.resume()` clears it. A call stops early at a non-finite loss or when
the input runs out (read with `get_next_as_optional`, so the count of steps done is exact). It
returns a `StepResult` of tensors: the steps applied, their examples, and the last step's scalars.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one call of the step function returns (tensors, read by the session only when needed)."""

    scalars: dict  # the call's last step: "loss", the model function's scalars (both summed over
    #                replicas), "learning_rate"; the failing step's when the call stopped on one
    finite: tf.Tensor  # bool: False when the call stopped on a non-finite loss
    examples: tf.Tensor  # int64: examples in the steps applied
    summary_tensors: dict  # the first replica's EstimatorSpec.summary_tensors of the last step
    applied: tf.Tensor | None = None  # int64: steps applied (None: one step, applied when finite)

    def applied_steps(self) -> tf.Tensor:
        return tf.cast(self.finite, tf.int64) if self.applied is None else self.applied


# --- the step --------------------------------------------------------------------------------

def _gradients(model_fn, optimizer, variables, features, labels):
    """One replica: (gradients, loss, the spec's scalars, summary tensors)."""
    scales_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    with tf.GradientTape() as tape:
        spec = model_fn(features, labels)
        if spec.loss is None:
            raise ValueError("the model function returned no loss")
        loss = tf.cast(spec.loss, tf.float32)
        scaled = optimizer.scale_loss(loss) if scales_loss else loss
    grads = tape.gradient(scaled, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    scalars = {name: tf.cast(value, tf.float32) for name, value in spec.scalars.items()}
    return grads, loss, scalars, dict(spec.summary_tensors or {})


def _overflowed(grads) -> tf.Tensor:
    """1.0 when a gradient holds a NaN or Inf (a float16 loss-scale overflow), else 0.0."""
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
    return 1.0 - tf.cast(finite, tf.float32)


def _empty_like(value: tf.Tensor) -> tf.Tensor:
    """A filler of the dtype of `value` (unknown dimensions 0), for a step that did not run."""
    shape = [0 if d is None else d for d in value.shape.as_list()] if value.shape.rank is not None else [0]
    return tf.zeros(shape, value.dtype) if value.dtype != tf.string else tf.fill(shape, "")


class TrainStep:
    """The distributed step function (see make_train_step): step(iterator, count=1) -> StepResult."""

    def __init__(self, function: Callable, halted: tf.Variable, steps_per_loop: int):
        self._function = function
        self._halted = halted
        self.steps_per_loop = steps_per_loop
        self._counts: dict[int, tf.Tensor] = {}

    def __call__(self, iterator, count: int = 1) -> StepResult:
        if not 1 <= count <= self.steps_per_loop:
            raise ValueError(f"count must be in [1, {self.steps_per_loop}], got {count}")
        if count not in self._counts:  # a tensor: another count does not trace the graph again
            self._counts[count] = tf.constant(count, tf.int32)
        return StepResult(*self._function(iterator, self._counts[count]))

    def resume(self) -> None:
        """Lets steps apply again after a non-finite loss (once the host has seen it)."""
        self._halted.assign(0)


def make_train_step(strategy: tf.distribute.Strategy, model_fn: Callable,
                    optimizer: keras.optimizers.Optimizer, global_step: tf.Variable,
                    steps_per_loop: int = 1) -> TrainStep:
    """The step function of the module docstring. Build it after `optimizer.build(...)`;
    `model_fn.model.trainable_variables` are trained, each gradient multiplied by
    `model_fn.gradient_multiplier(variable)` when the model function has that method. With
    `steps_per_loop` > 1 the step's graph is traced twice (the first step of a call, and the loop
    of the others), so the first call takes longer."""
    if steps_per_loop < 1:
        raise ValueError(f"steps_per_loop must be >= 1, got {steps_per_loop}")
    variables = model_fn.model.trainable_variables
    scales_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    # an optional hook of the model function: a per-variable gradient factor (e.g. Caffe's 2x
    # learning rate for biases), applied here and nowhere else
    multiplier_of = getattr(model_fn, "gradient_multiplier", None)
    multipliers = [1.0 if multiplier_of is None else float(multiplier_of(v)) for v in variables]
    with strategy.scope():
        # set by a step whose loss is not finite: every later step does nothing until the host,
        # which reads results only now and then, has seen it. Not in any checkpoint.
        halted = tf.Variable(0, dtype=tf.int64, trainable=False, name="halted_on_non_finite_loss",
                             aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def replica_gradients(features, labels):
        grads, loss, scalars, summary = _gradients(model_fn, optimizer, variables, features, labels)
        grads = [g if m == 1.0 else g * tf.cast(m, g.dtype) for g, m in zip(grads, multipliers)]
        examples = tf.cast(tf.shape(tf.nest.flatten(features)[0])[0], tf.float32)
        overflow = _overflowed(grads) if scales_loss else tf.constant(0.0)
        return grads, (loss, examples, overflow), scalars, summary

    def replica_apply(grads, any_overflow):
        if scales_loss:
            # The loss-scale optimizer decides to skip from the gradients it is handed, before
            # they are all-reduced; an overflow on any replica must make every replica skip.
            poison = tf.where(any_overflow > 0, float("nan"), 0.0)
            grads = [g + tf.cast(poison, g.dtype) for g in grads]
        optimizer.apply_gradients(zip(grads, variables))

    def total(value):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)

    def one_step(features, labels):
        learning_rate = tf.cast(optimizer.learning_rate, tf.float32)  # before this step's update
        grads, counts, scalars, summary = strategy.run(replica_gradients, args=(features, labels))
        loss, examples, overflows = (total(v) for v in counts)
        scalars = {"loss": loss, **{name: total(v) for name, v in scalars.items()}}
        finite = tf.math.is_finite(loss)

        def apply():
            strategy.run(replica_apply, args=(grads, overflows))
            global_step.assign_add(1)

        def halt():
            halted.assign(1)

        # cross-replica: every replica and worker decides the same, from the all-reduced loss
        tf.cond(finite, apply, halt)
        scalars["learning_rate"] = learning_rate
        first = tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], summary)
        return scalars, finite, tf.cast(examples, tf.int64), first

    def guarded_step(iterator):
        """(scalars, finite, examples, summary, ran): one step, unless the input has run out or
        an earlier loss was not finite."""
        optional = iterator.get_next_as_optional()
        runs = tf.logical_and(optional.has_value(), tf.equal(halted, 0))
        traced = []

        def run():
            outputs = one_step(*optional.get_value())
            traced.append(outputs)
            return outputs + (tf.constant(True),)

        def skip():  # traced after `run` (tf.cond traces its true branch first): its structure
            scalars, _, examples, summary = traced[0]
            return (tf.nest.map_structure(_empty_like, scalars), tf.constant(True),
                    tf.zeros([], tf.int64), tf.nest.map_structure(_empty_like, summary),
                    tf.constant(False))

        return tf.cond(runs, run, skip)

    def counted_step(iterator):
        """guarded_step, its examples counted only when its update was applied, and whether it was."""
        scalars, finite, examples, summary, ran = guarded_step(iterator)
        applied = tf.logical_and(ran, finite)
        return scalars, finite, tf.where(applied, examples, tf.zeros_like(examples)), summary, applied

    @tf.function
    def steps(iterator, count):
        scalars, finite, examples, summary, applied = counted_step(iterator)
        done = tf.cast(applied, tf.int64)
        if steps_per_loop > 1:
            def more(i, going, *_):
                return tf.logical_and(i < count, going)

            def body(i, going, done, examples, scalars, finite, summary):
                scalars, finite, new_examples, summary, applied = counted_step(iterator)
                return (i + 1, applied, done + tf.cast(applied, tf.int64), examples + new_examples,
                        scalars, finite, summary)

            _, _, done, examples, scalars, finite, summary = tf.while_loop(
                more, body, (tf.constant(1), applied, done, examples, scalars, finite, summary))
        return scalars, finite, examples, summary, done

    return TrainStep(steps, halted, steps_per_loop)


