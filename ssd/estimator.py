"""The shape of tf.estimator (gone from TensorFlow >= 2.16), carried on TF2 primitives.

Nothing here knows about detection: it trains, evaluates, predicts and exports whatever model
function it is given, under any tf.distribute strategy.

The model function
------------------
`Estimator(model_fn, params, config)` takes `model_fn` as a factory. The Estimator calls it once,
inside `strategy.scope()`, to create the object that owns the Keras model and its optimizer:

    holder = model_fn(params, context)                # context: ModelContext
    spec = holder(features, labels, mode, params)     # per mode -> EstimatorSpec

The returned holder is the per-mode model function of tf.estimator (`features, labels, mode,
params` -> spec) with its variables held as attributes instead of in a graph:
  holder.model      a built keras.Model (its variables are what checkpoints save and restore);
  holder.optimizer  an unbuilt Keras optimizer, or None for inference-only use. The Estimator wraps
                    it in a dynamic LossScaleOptimizer under float16 and builds it in the scope.
Optional, used when present (subclass `ModelFunction` for defaults):
  holder.create_evaluator()        -> evaluator with update(outputs: dict of numpy) and result() -> dict
  holder.summary_images(tensors)   -> {name: images [N, H, W, C] float in [0, 1]} for TensorBoard,
                                      run eagerly (outside XLA) on `spec.summary_tensors` of replica 0.
The context gives the holder the training step counter (for learning-rate schedules), the number of
replicas in sync, and `context.compile(fn)`, which XLA-compiles the network call when
`RunConfig.jit_compile` is set. Only the network is compiled: collectives (the all-reduces of a
multi-replica step) cannot run inside an XLA cluster on every device type, and host-side ops such
as NMS or image drawing have no XLA kernels.

What a spec means per mode:
  TRAIN    `loss` is this replica's share of the global loss. The optimizer SUMS gradients across
           replicas (Keras 3 all-reduces with ReduceOp.SUM), so the shares must add up to the loss
           of the global batch, e.g. sum of per-example losses / global count. `scalars` (loss
           components, accuracy, ...) are shares too and are summed across replicas for logging.
  EVAL     `eval_outputs`: batched tensors handed (as numpy) to the holder's evaluator.
  PREDICT  `predictions`: batched tensors; `predict` yields them one example at a time.

Training
--------
`train(input_fn, max_steps)`: `input_fn(input_context)` returns a tf.data.Dataset of
(features, labels) batched to `input_context.get_per_replica_batch_size(global_batch)` and sharded
by the input context; `strategy.distribute_datasets_from_function` calls it once per worker. Each
step runs `strategy.run` for the gradients, SUM-reduces the loss, and applies the update only when
the loss is finite: a NaN or Inf loss raises `NonFiniteLossError` naming the step and the
non-finite components, before the update, so no checkpoint ever holds the weights it would have
produced (weights are also checked before every save). Under float16 loss scaling a step whose
GRADIENTS overflow is normal and skipped by the optimizer; only a non-finite loss is fatal.

Checkpoints (`tf.train.Checkpoint` of model, optimizer and global step, kept by a
`tf.train.CheckpointManager`) are written every `save_checkpoints_steps` steps and/or
`save_checkpoints_secs` seconds and at the end; training resumes from the latest one. A checkpoint
is published by an atomic rename of the `checkpoint` index file after its data is complete, so a
process killed at any moment leaves the previous checkpoint usable. The input position is not
saved: distributed iterators are not checkpointable, and saving a single-device iterator would put
its shuffle and prefetch buffers (hundreds of decoded images) into every checkpoint. A resumed run
continues from the restored step with a freshly started (reshuffled) input pipeline.

Multi-worker: every worker runs the same steps; only the chief writes checkpoints and summaries
into `model_dir`. The other workers save into a temporary directory `model_dir/.tmp_<task>_*`
(saving may involve collectives, so they must take part) that is removed when training ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from ssd.distribute import is_chief, task_name
from ssd.modes import ModeKeys
from ssd.precision import TRAINING_POLICIES, dtype_policy
from ssd.summaries import flat_scalars, format_metrics, write_images, write_scalar

@dataclasses.dataclass
class RunConfig:
    """Where and how often the Estimator writes things, and how it runs the step."""

    model_dir: str
    save_checkpoints_steps: int | None = 1000  # None or 0: not by steps
    save_checkpoints_secs: float | None = None  # None or 0: not by time
    keep_checkpoint_max: int = 5
    save_summary_steps: int = 100  # 0: no scalar summaries
    log_step_count_steps: int = 100  # 0: no progress logs
    save_image_summary_steps: int = 0  # 0: no image summaries
    tf_random_seed: int | None = None
    train_distribute: tf.distribute.Strategy | None = None  # None: the default strategy
    mixed_precision: str = "none"  # "none", "float16" or "bfloat16"
    jit_compile: bool = False

    def __post_init__(self):
        if self.mixed_precision not in TRAINING_POLICIES:
            raise ValueError(f"RunConfig.mixed_precision must be one of {sorted(TRAINING_POLICIES)}, "
                             f"got {self.mixed_precision!r}")
        if self.keep_checkpoint_max < 1:
            raise ValueError(f"RunConfig.keep_checkpoint_max must be >= 1, got {self.keep_checkpoint_max}")


@dataclasses.dataclass
class EstimatorSpec:
    """What a model function returns for one mode (see the module docstring)."""

    mode: str
    loss: tf.Tensor | None = None
    scalars: Mapping[str, tf.Tensor] = dataclasses.field(default_factory=dict)
    predictions: Mapping[str, tf.Tensor] | None = None
    eval_outputs: Mapping[str, tf.Tensor] | None = None
    summary_tensors: Mapping[str, tf.Tensor] | None = None


@dataclasses.dataclass(frozen=True)
class ModelContext:
    """Handed to the model function factory by the Estimator."""

    global_step: tf.Variable  # int64, incremented once per applied training step
    num_replicas: int
    jit_compile: bool = False

    def compile(self, fn: Callable) -> Callable:
        """`fn` XLA-compiled when the run asks for it, else `fn` itself."""
        return tf.function(fn, jit_compile=True) if self.jit_compile else fn


class ModelFunction:
    """Optional base class for model function holders: defaults for the optional hooks."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer | None = None

    def __call__(self, features, labels, mode: str, params) -> EstimatorSpec:
        raise NotImplementedError

    def create_evaluator(self):
        raise NotImplementedError(f"{type(self).__name__} does not support evaluation")

    def summary_images(self, tensors: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {}


@dataclasses.dataclass
class ServingInputReceiver:
    """A serving signature: named input specs and the map from received tensors to features."""

    receiver_specs: Mapping[str, tf.TensorSpec]
    features_fn: Callable[[dict[str, tf.Tensor]], Any]


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


class Estimator:
    """Trains, evaluates, predicts with and exports a model function (module docstring)."""

    def __init__(self, model_fn: Callable[[Any, ModelContext], Any], params: Any, config: RunConfig):
        self._model_fn = model_fn
        self._params = params
        self._config = config
        self._strategy = config.train_distribute or tf.distribute.get_strategy()
        self._is_chief = is_chief(self._strategy)
        self._holder = None
        self._optimizer = None
        self._global_step = None
        self._checkpoint = None
        self._loaded_checkpoint = None  # the checkpoint the in-memory state equals, if any
        self._train_step = None
        self._eval_step = None
        self._predict_step = None
        os.makedirs(config.model_dir, exist_ok=True)

    # --- state --------------------------------------------------------------------------------

    @property
    def config(self) -> RunConfig:
        return self._config

    @property
    def model_dir(self) -> str:
        return self._config.model_dir

    @property
    def strategy(self) -> tf.distribute.Strategy:
        return self._strategy

    @property
    def is_chief(self) -> bool:
        return self._is_chief

    @property
    def model(self) -> keras.Model:
        """The Keras model (created on first use), e.g. to load pretrained weights before training."""
        return self._state().model

    @property
    def global_step(self) -> int:
        self._state()
        return int(self._global_step.numpy())

    def latest_checkpoint(self) -> str | None:
        return tf.train.latest_checkpoint(self.model_dir)

    def _state(self):
        if self._holder is not None:
            return self._holder
        if self._config.tf_random_seed is not None:
            keras.utils.set_random_seed(self._config.tf_random_seed)
        with self._strategy.scope():
            self._global_step = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="global_step",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            context = ModelContext(self._global_step, self._strategy.num_replicas_in_sync,
                                   self._config.jit_compile)
            with dtype_policy(TRAINING_POLICIES[self._config.mixed_precision]):
                holder = self._model_fn(self._params, context)
            items = {"model": holder.model, "global_step": self._global_step}
            optimizer = getattr(holder, "optimizer", None)
            if optimizer is not None:
                # The inner optimizer is saved under the same name with or without loss scaling,
                # so a run may switch mixed precision on resume.
                items["optimizer"] = optimizer
                if self._config.mixed_precision == "float16":
                    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
                    items["loss_scale_optimizer"] = optimizer
                # Keras 3 optimizers must be built in the scope before the first distributed step.
                optimizer.build(holder.model.trainable_variables)
        self._optimizer = optimizer
        self._checkpoint = tf.train.Checkpoint(**items)
        self._holder = holder
        return holder

    def _checkpoint_variables(self) -> list:
        variables = list(self._holder.model.variables)
        if self._optimizer is not None:
            variables += list(self._optimizer.variables)
        return variables

    def _restore(self, checkpoint_path: str | None, required: bool) -> None:
        """Loads `checkpoint_path` (or the latest in model_dir) unless the state already equals it."""
        self._state()
        path = checkpoint_path or self.latest_checkpoint()
        if path is None:
            if required:
                raise FileNotFoundError(f"no checkpoint in {self.model_dir} to load; train first "
                                        f"or pass checkpoint_path")
            return
        if path == self._loaded_checkpoint:
            return
        self._checkpoint.restore(path).expect_partial()
        self._loaded_checkpoint = path
        logging.info("restored %s (step %d)", path, int(self._global_step.numpy()))

    # --- training -----------------------------------------------------------------------------

    def train(self, input_fn: Callable, max_steps: int,
              hooks: Sequence[Callable[[int, Mapping[str, tf.Tensor]], None]] = ()) -> "Estimator":
        """Trains until the global step reaches `max_steps` (resuming from model_dir).

        Each hook is called as hook(step, scalars) after every applied step (scalars: the summed
        loss components and the learning rate, as tensors).
        """
        self._restore(None, required=False)
        if self.global_step >= max_steps:
            logging.info("global step %d already reaches max_steps %d; nothing to train",
                         self.global_step, max_steps)
            return self
        with self._training_session(hooks) as session:
            session.run(self._distributed_iterator(input_fn), max_steps)
        return self

    def train_and_evaluate(self, train_input_fn: Callable, eval_input_fn: Callable,
                           max_steps: int, eval_every_steps: int) -> dict:
        """Alternates training and evaluation every `eval_every_steps` steps up to `max_steps`.

        The input pipeline keeps running across evaluations. Only the chief evaluates; the
        other workers go on and wait for it at the next collective. Returns the last metrics
        (empty on non-chief workers).
        """
        if eval_every_steps < 1:
            raise ValueError(f"eval_every_steps must be >= 1, got {eval_every_steps}")
        self._restore(None, required=False)
        metrics: dict = {}
        with self._training_session() as session:
            iterator = self._distributed_iterator(train_input_fn)
            while self.global_step < max_steps:
                target = min((self.global_step // eval_every_steps + 1) * eval_every_steps, max_steps)
                if not session.run(iterator, target, final_step=max_steps):
                    break
                if self._is_chief:
                    metrics = self._evaluate_state(eval_input_fn, steps=None)
        if self._is_chief and not metrics:
            metrics = self._evaluate_state(eval_input_fn, steps=None)
        return metrics

    def _distributed_iterator(self, input_fn: Callable):
        dataset = self._strategy.distribute_datasets_from_function(input_fn)
        return iter(dataset)

    @contextlib.contextmanager
    def _training_session(self, hooks=()):
        self._state()
        if self._optimizer is None:
            raise ValueError("the model function has no optimizer; it cannot be trained")
        if self._train_step is None:
            self._train_step = self._make_train_step()
        session = _TrainingSession(self, hooks)
        try:
            yield session
        finally:
            session.close()

    def _make_train_step(self):
        strategy = self._strategy
        holder = self._holder
        optimizer = self._optimizer
        params = self._params
        global_step = self._global_step
        variables = holder.model.trainable_variables
        scales_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        scalar_names: list[str] = []  # filled while tracing: the order of the packed scalars

        def replica_gradients(features, labels):
            with tf.GradientTape() as tape:
                spec = holder(features, labels, ModeKeys.TRAIN, params)
                if spec.loss is None:
                    raise ValueError("the model function returned no loss in TRAIN mode")
                loss = tf.cast(spec.loss, tf.float32)
                scaled = optimizer.scale_loss(loss) if scales_loss else loss
            grads = tape.gradient(scaled, variables,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            scalars = {"loss": loss}
            scalars.update({k: tf.cast(v, tf.float32) for k, v in spec.scalars.items()})
            scalars["_examples"] = tf.cast(tf.shape(tf.nest.flatten(features)[0])[0], tf.float32)
            scalars["_overflows"] = tf.constant(0.0)
            if scales_loss:
                finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
                scalars["_overflows"] = 1.0 - tf.cast(finite, tf.float32)
            scalar_names[:] = list(scalars)
            # one vector, so that a single all-reduce sums every scalar across replicas
            return grads, tf.stack(list(scalars.values())), dict(spec.summary_tensors or {})

        def replica_apply(grads, any_overflow):
            if scales_loss:
                # The loss-scale optimizer decides to skip from the gradients it is handed, before
                # they are all-reduced; an overflow on any replica must make every replica skip.
                poison = tf.where(any_overflow > 0, float("nan"), 0.0)
                grads = [g + tf.cast(poison, g.dtype) for g in grads]
            optimizer.apply_gradients(zip(grads, variables))

        def first_replica(value):
            return strategy.experimental_local_results(value)[0]

        @tf.function
        def train_step(iterator):
            learning_rate = tf.cast(optimizer.learning_rate, tf.float32)  # before this step's update
            features, labels = next(iterator)
            grads, packed, summary = strategy.run(replica_gradients, args=(features, labels))
            packed = strategy.reduce(tf.distribute.ReduceOp.SUM, packed, axis=None)
            scalars = dict(zip(scalar_names, tf.unstack(packed)))
            examples = tf.cast(scalars.pop("_examples"), tf.int64)
            overflows = scalars.pop("_overflows")
            finite = tf.math.is_finite(scalars["loss"])
            # Decided in cross-replica context, identically on every worker, so either all
            # replicas apply the update (and its collectives) or none does.
            if finite:
                strategy.run(replica_apply, args=(grads, overflows))
                global_step.assign_add(1)
            scalars["learning_rate"] = learning_rate
            return scalars, finite, examples, tf.nest.map_structure(first_replica, summary)

        return train_step

    # --- evaluation, prediction, export ------------------------------------------------------

    def evaluate(self, input_fn: Callable, checkpoint_path: str | None = None,
                 steps: int | None = None) -> dict:
        """Runs the holder's evaluator over `input_fn`'s dataset (all of it, or `steps` batches).

        Loads `checkpoint_path`, by default the latest checkpoint in model_dir. Returns the
        evaluator's result plus "global_step"; the chief also writes it to model_dir/eval.
        """
        self._restore(checkpoint_path, required=True)
        return self._evaluate_state(input_fn, steps)

    def _evaluate_state(self, input_fn: Callable, steps: int | None) -> dict:
        holder = self._holder
        evaluator = holder.create_evaluator()
        if self._eval_step is None:
            self._eval_step = tf.function(
                lambda features, labels: dict(holder(features, labels, ModeKeys.EVAL, self._params).eval_outputs))
        started = time.time()
        batches = 0
        for features, labels in input_fn(tf.distribute.InputContext()):
            if steps is not None and batches >= steps:
                break
            outputs = self._eval_step(features, labels)
            evaluator.update(tf.nest.map_structure(lambda t: t.numpy(), outputs))
            batches += 1
        result = dict(evaluator.result())
        result["global_step"] = self.global_step
        logging.info("evaluation at step %d over %d batches (%.1f s): %s", result["global_step"],
                     batches, time.time() - started, format_metrics(result))
        if self._is_chief:
            writer = tf.summary.create_file_writer(os.path.join(self.model_dir, "eval"))
            with writer.as_default():
                for name, value in flat_scalars(result).items():
                    write_scalar(name, value, result["global_step"])
            writer.close()
        return result

    def predict(self, input_fn: Callable, checkpoint_path: str | None = None) -> Iterator[dict]:
        """Yields one dict of numpy values per example of `input_fn`'s dataset.

        The dataset's elements may be features or (features, labels); labels are ignored.
        """
        self._restore(checkpoint_path, required=True)
        holder = self._holder
        if self._predict_step is None:
            self._predict_step = tf.function(
                lambda features: dict(holder(features, None, ModeKeys.PREDICT, self._params).predictions))
        for element in input_fn(tf.distribute.InputContext()):
            features = element[0] if isinstance(element, tuple) and len(element) == 2 else element
            batch = tf.nest.map_structure(lambda t: t.numpy(), self._predict_step(features))
            size = len(next(iter(batch.values())))
            for i in range(size):
                yield {name: values[i] for name, values in batch.items()}

    def export_saved_model(self, export_dir_base: str,
                           serving_input_receiver_fn: Callable[[], ServingInputReceiver],
                           checkpoint_path: str | None = None) -> str:
        """Writes a SavedModel to export_dir_base/<timestamp> with a "serving_default" signature.

        The signature takes the receiver's named tensors, maps them to features with
        `features_fn` and returns the PREDICT spec's predictions.
        """
        self._restore(checkpoint_path, required=True)
        holder = self._holder
        receiver = serving_input_receiver_fn()
        names = list(receiver.receiver_specs)
        specs = [tf.TensorSpec(s.shape, s.dtype, name=n) for n, s in receiver.receiver_specs.items()]

        @tf.function(input_signature=specs)
        def serve(*tensors):
            features = receiver.features_fn(dict(zip(names, tensors)))
            return dict(holder(features, None, ModeKeys.PREDICT, self._params).predictions)

        module = tf.Module()
        module.model = holder.model
        module.serve = serve
        export_dir = os.path.join(export_dir_base, datetime.datetime.now().strftime("%Y%m%d%H%M%S"))
        tmp_dir = export_dir + ".tmp"
        tf.saved_model.save(module, tmp_dir, signatures={"serving_default": serve.get_concrete_function()})
        os.replace(tmp_dir, export_dir)
        logging.info("exported %s", export_dir)
        return export_dir


class _TrainingSession:
    """The host-side loop: step calls, logs, summaries and checkpoints at their cadences."""

    def __init__(self, estimator: Estimator, hooks=()):
        self._estimator = estimator
        self._hooks = list(hooks)
        config = estimator.config
        self._config = config
        if estimator.is_chief:
            self._checkpoint_dir = config.model_dir
            self._scratch_dir = None
            self._writer = tf.summary.create_file_writer(config.model_dir)
        else:
            self._scratch_dir = tempfile.mkdtemp(prefix=f".tmp_{task_name(estimator.strategy)}_",
                                                 dir=config.model_dir)
            self._checkpoint_dir = self._scratch_dir
            self._writer = tf.summary.create_noop_writer()
        self._manager = tf.train.CheckpointManager(
            estimator._checkpoint, self._checkpoint_dir, max_to_keep=config.keep_checkpoint_max)
        self._saved_step = estimator.global_step
        self._saved_time = time.time()
        self._log_time = time.time()
        self._log_step = estimator.global_step
        self._log_examples = 0
        self._summary_time = time.time()
        self._summary_step = estimator.global_step
        self._traced = False

    def run(self, iterator, max_steps: int, final_step: int | None = None) -> bool:
        """Trains up to `max_steps`; False when the input ran out first. `final_step` (default
        max_steps) is where the whole run ends: the log's progress and ETA count towards it."""
        estimator = self._estimator
        final_step = max_steps if final_step is None else final_step
        step = estimator.global_step
        exhausted = False
        with self._writer.as_default():
            while step < max_steps:
                try:
                    scalars, finite, examples, summary_tensors = estimator._train_step(iterator)
                except (tf.errors.OutOfRangeError, StopIteration):
                    logging.info("input exhausted at step %d (before max_steps %d)", step, max_steps)
                    exhausted = True
                    break
                if not bool(finite):
                    raise NonFiniteLossError(step + 1, {k: float(v) for k, v in scalars.items()},
                                             self._latest_saved())
                step += 1
                self._log_examples += int(examples)
                if not self._traced and self._config.log_step_count_steps > 1:
                    # the first step also builds the graph: rates and ETA start after it
                    self._log_time, self._log_step, self._log_examples = time.time(), step, 0
                self._traced = True
                self._after_step(step, final_step, scalars, summary_tensors)
                for hook in self._hooks:
                    hook(step, scalars)
            self._save(step)
            self._writer.flush()
        return not exhausted

    def _latest_saved(self) -> str | None:
        return self._manager.latest_checkpoint

    def _after_step(self, step, max_steps, scalars, summary_tensors) -> None:
        config = self._config
        values = None
        if config.log_step_count_steps and step % config.log_step_count_steps == 0:
            values = {k: float(v) for k, v in scalars.items()}
            now = time.time()
            steps_per_sec = (step - self._log_step) / max(now - self._log_time, 1e-9)
            examples_per_sec = self._log_examples / max(now - self._log_time, 1e-9)
            eta = datetime.timedelta(seconds=round((max_steps - step) / max(steps_per_sec, 1e-9)))
            logging.info("step %d/%d: %s | %.3f steps/s, %.2f examples/s, ETA %s", step, max_steps,
                         format_metrics(values), steps_per_sec, examples_per_sec, eta)
            self._log_time, self._log_step, self._log_examples = now, step, 0
        if config.save_summary_steps and step % config.save_summary_steps == 0:
            values = values or {k: float(v) for k, v in scalars.items()}
            now = time.time()
            rate = (step - self._summary_step) / max(now - self._summary_time, 1e-9)
            for name, value in values.items():
                write_scalar(name, value, step)
            write_scalar("global_step/sec", rate, step)
            self._summary_time, self._summary_step = now, step
        if (config.save_image_summary_steps and step % config.save_image_summary_steps == 0
                and self._estimator.is_chief and summary_tensors):
            images = self._estimator._holder.summary_images(summary_tensors)
            for name, batch in images.items():
                write_images(name, batch, step)
        by_steps = config.save_checkpoints_steps and step % config.save_checkpoints_steps == 0
        by_secs = (config.save_checkpoints_secs
                   and time.time() - self._saved_time >= config.save_checkpoints_secs)
        if by_steps or by_secs:
            self._save(step)

    def _save(self, step: int) -> None:
        if step == self._saved_step and self._manager.latest_checkpoint is not None:
            return
        estimator = self._estimator
        bad = _first_non_finite(estimator._checkpoint_variables())
        if bad is not None:
            raise FloatingPointError(f"variable {bad} is not finite at step {step}; the checkpoint "
                                     f"was not written (latest good: {self._latest_saved()})")
        path = self._manager.save(checkpoint_number=step)
        self._writer.flush()
        self._saved_step, self._saved_time = step, time.time()
        if estimator.is_chief:
            estimator._loaded_checkpoint = path
            logging.info("saved checkpoint %s", path)

    def close(self) -> None:
        self._writer.close()
        if self._scratch_dir:
            shutil.rmtree(self._scratch_dir, ignore_errors=True)


def _first_non_finite(variables) -> str | None:
    for variable in variables:
        value = np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)
        if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
            return getattr(variable, "path", None) or variable.name
    return None
