"""The training step and the host-side loop around it.

`make_train_step(strategy, model_fn, optimizer, global_step)` builds the distributed step: each
replica runs `model_fn(features, labels)` under a gradient tape, the loss and the
scalars are SUM-reduced across replicas, and the update is applied only when the loss is finite,
decided in cross-replica context so that every replica (and worker) applies it or none does.
Under float16 loss scaling (a `keras.optimizers.LossScaleOptimizer`), a step whose gradients
overflow on ANY replica is skipped by every replica (the optimizer then lowers the scale); only a
non-finite loss is fatal. The step returns a `StepResult`.

`TrainingSession(step_fn, checkpointer, writer, cadence, start_step, ...)` calls the step until
a target step, and at the cadences of `Cadence` logs progress (rate, ETA), writes scalar and image
summaries into `writer` and saves checkpoints with `checkpointer` (every N steps and/or seconds,
and when a run ends). The first step of a session and the run's last step are always logged and
their scalars written (when the cadence logs and writes at all), so that a run shorter than the
cadence shows its losses too; before the first step, which traces the step's graph and fills the
input pipeline (seconds to minutes), the log says so, and the first step's line says how long it
took. A non-finite loss raises `NonFiniteLossError` before its update is applied;
the checkpointer refuses non-finite weights, so no checkpoint ever holds them. A stop policy
(ssd.engine.interrupts) may end the run after any step with a checkpoint of it. Collaborators come
in explicitly: the session knows nothing of the Estimator, the model or the distribution.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from typing import Callable, Mapping, Protocol, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from ssd.modeling.checkpoints import Checkpointer
from ssd.engine.summaries import format_metrics, write_images, write_scalar

Hook = Callable[[int, Mapping[str, tf.Tensor]], None]


class StopPolicy(Protocol):
    """Decides after each step whether to save and stop (ssd.engine.interrupts)."""

    def after_step(self, step: int, save: Callable[[], str | None]) -> None: ...


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf; nothing from that step was applied or saved."""

    def __init__(self, step: int, values: Mapping[str, float], latest_checkpoint: str | None):
        self.step = step
        self.values = dict(values)
        self.latest_checkpoint = latest_checkpoint
        bad = {k: v for k, v in self.values.items() if not np.isfinite(v)}
        shown = ", ".join(f"{k}={v}" for k, v in bad.items())
        where = latest_checkpoint or "none yet"
        super().__init__(f"loss is not finite at step {step} ({shown}); the update was not applied "
                         f"and no checkpoint holds it (latest good checkpoint: {where})")


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one training step returns (tensors)."""

    scalars: dict  # "loss", the model function's scalars (both summed over replicas), "learning_rate"
    finite: tf.Tensor  # bool: the loss was finite and the update applied
    examples: tf.Tensor  # int64: examples in the global batch
    summary_tensors: dict  # the first replica's EstimatorSpec.summary_tensors


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


def make_train_step(strategy: tf.distribute.Strategy, model_fn: Callable,
                    optimizer: keras.optimizers.Optimizer, global_step: tf.Variable
                    ) -> Callable[[object], StepResult]:
    """step(distributed iterator) -> StepResult (module docstring). Build it in strategy.scope()
    after `optimizer.build(...)`; `model_fn.model.trainable_variables` are trained, each
    gradient multiplied by `model_fn.gradient_multiplier(variable)` when the model function has
    that method."""
    variables = model_fn.model.trainable_variables
    scales_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    # an optional hook of the model function: a per-variable gradient factor (e.g. Caffe's 2x
    # learning rate for biases), applied here and nowhere else
    multiplier_of = getattr(model_fn, "gradient_multiplier", None)
    multipliers = [1.0 if multiplier_of is None else float(multiplier_of(v)) for v in variables]

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

    @tf.function
    def step(iterator):
        learning_rate = tf.cast(optimizer.learning_rate, tf.float32)  # before this step's update
        features, labels = next(iterator)
        grads, counts, scalars, summary = strategy.run(replica_gradients, args=(features, labels))
        loss, examples, overflows = (total(v) for v in counts)
        scalars = {"loss": loss, **{name: total(v) for name, v in scalars.items()}}
        finite = tf.math.is_finite(loss)
        if finite:  # cross-replica: every worker decides the same
            strategy.run(replica_apply, args=(grads, overflows))
            global_step.assign_add(1)
        scalars["learning_rate"] = learning_rate
        first = tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], summary)
        return scalars, finite, tf.cast(examples, tf.int64), first

    return lambda iterator: StepResult(*step(iterator))


# --- the loop --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Cadence:
    """How often the session logs, writes summaries and saves (0 or None: never by that rule)."""

    save_checkpoints_steps: int | None = 1000
    save_checkpoints_secs: float | None = None
    save_summary_steps: int = 100
    log_step_count_steps: int = 100
    save_image_summary_steps: int = 0


def _due(step: int, every: int | None) -> bool:
    return bool(every) and step % every == 0


class TrainingSession:
    """Calls the step function up to a target step; logs, summaries and checkpoints on the way."""

    def __init__(self, step_fn: Callable[[object], StepResult], checkpointer: Checkpointer,
                 writer: tf.summary.SummaryWriter, cadence: Cadence, start_step: int,
                 on_save: Callable[[str], None] | None = None, hooks: Sequence[Hook] = (),
                 summary_images: Callable[[Mapping], Mapping] | None = None,
                 stop: StopPolicy | None = None):
        """`on_save(path)` is called after each checkpoint; each hook(step, scalars) after each
        applied step; `summary_images(summary_tensors)` -> {tag: images} (None: no images);
        `stop.after_step(step, save)` after each applied step (ssd.engine.interrupts: it saves and raises
        TrainingInterrupted when a stop was requested; None: never stops early)."""
        self._step_fn = step_fn
        self._checkpointer = checkpointer
        self._writer = writer
        self._cadence = cadence
        self._on_save = on_save
        self._hooks = list(hooks)
        self._summary_images = summary_images
        self._stop = stop
        self.step = start_step
        self._start_step = start_step
        self._first_step_started: float | None = None  # when this session's first step began
        now = time.time()
        self._saved = (start_step, now)  # step and time of the last save
        self._logged = (start_step, now, 0)  # step, time, examples since
        self._summarized = (start_step, now)
        self._traced = False

    @property
    def latest_checkpoint(self) -> str | None:
        return self._checkpointer.latest

    def run(self, iterator, max_steps: int, final_step: int | None = None) -> bool:
        """Trains up to `max_steps` and saves; False when the input ran out first. `final_step`
        (default max_steps) is where the whole run ends: the log's progress and ETA count to it."""
        final_step = max_steps if final_step is None else final_step
        exhausted = False
        with self._writer.as_default():
            while self.step < max_steps:
                if self.step == self._start_step:
                    logging.info("step %d: tracing the training step's graph and filling the input "
                                 "pipeline; the first step takes longer than the others",
                                 self.step + 1)
                    self._first_step_started = time.time()
                try:
                    result = self._step_fn(iterator)
                except (tf.errors.OutOfRangeError, StopIteration):
                    logging.info("input exhausted at step %d (before max_steps %d)", self.step, max_steps)
                    exhausted = True
                    break
                self._after_step(result, final_step)
            self.save()
            self._writer.flush()
        return not exhausted

    def _after_step(self, result: StepResult, final_step: int) -> None:
        if not bool(result.finite):
            raise NonFiniteLossError(self.step + 1, {k: float(v) for k, v in result.scalars.items()},
                                     self.latest_checkpoint)
        self.step += 1
        self._count_examples(int(result.examples))
        step = self.step
        first = step == self._start_step + 1
        always = first or step == final_step  # shown whatever the cadence, when it shows anything
        if _due(step, self._cadence.log_step_count_steps) or (always and self._cadence.log_step_count_steps):
            self._log_progress(result.scalars, final_step)
        if _due(step, self._cadence.save_summary_steps) or (always and self._cadence.save_summary_steps):
            self._write_scalars(result.scalars, first)
        if _due(step, self._cadence.save_image_summary_steps):
            self._write_images(result.summary_tensors)
        if _due(step, self._cadence.save_checkpoints_steps) or self._save_time_due():
            self.save()
        for hook in self._hooks:
            hook(step, result.scalars)
        if self._stop is not None:
            self._stop.after_step(step, self.save)

    def _count_examples(self, examples: int) -> None:
        step, since, count = self._logged
        if not self._traced and self._cadence.log_step_count_steps > 1:
            # the first step also builds the graph: rates and ETA start after it
            step, since, count = self.step, time.time(), -examples
        self._traced = True
        self._logged = (step, since, count + examples)

    def _log_progress(self, scalars: Mapping, final_step: int) -> None:
        last_step, since, examples = self._logged
        now = time.time()
        metrics = format_metrics({k: float(v) for k, v in scalars.items()})
        if self.step == last_step:  # the first step, whose time is the graph's building
            seconds = now - (self._first_step_started or now)
            logging.info("step %d/%d: %s | first step %.1f s (graph traced; rate and ETA from the "
                         "next logged step)", self.step, final_step, metrics, seconds)
        else:
            elapsed = max(now - since, 1e-9)
            steps_per_sec = (self.step - last_step) / elapsed
            eta = datetime.timedelta(seconds=round((final_step - self.step) / max(steps_per_sec, 1e-9)))
            logging.info("step %d/%d: %s | %.3f steps/s, %.2f examples/s, ETA %s", self.step,
                         final_step, metrics, steps_per_sec, examples / elapsed, eta)
        self._logged = (self.step, now, 0)

    def _write_scalars(self, scalars: Mapping, first: bool = False) -> None:
        last_step, since = self._summarized
        now = time.time()
        for name, value in scalars.items():
            write_scalar(name, float(value), self.step)
        if not first:  # the first step's time is mostly the graph's building, no rate
            write_scalar("global_step/sec", (self.step - last_step) / max(now - since, 1e-9), self.step)
        self._summarized = (self.step, now)

    def _write_images(self, summary_tensors: Mapping) -> None:
        if self._summary_images is None or not summary_tensors:
            return
        for name, batch in self._summary_images(summary_tensors).items():
            write_images(name, batch, self.step)

    def _save_time_due(self) -> bool:
        every = self._cadence.save_checkpoints_secs
        return bool(every) and time.time() - self._saved[1] >= every

    def save(self) -> str | None:
        """Saves the current step unless it is saved already; returns the latest checkpoint."""
        if self.step == self._saved[0] and self.latest_checkpoint is not None:
            return self.latest_checkpoint
        path = self._checkpointer.save(self.step)
        self._writer.flush()
        self._saved = (self.step, time.time())
        if self._on_save is not None:
            self._on_save(path)
        return path
