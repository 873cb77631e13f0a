"""The shape of tf.estimator (gone from TensorFlow >= 2.16) for SSD, carried on TF2 primitives.

`Estimator(model_fn, model_config, run_config)` trains a model function under any tf.distribute
strategy (ssd.engine.training) and evaluates, predicts with and exports its checkpoints through
the model function's inference (`model_fn.inference`; SSD's is `ssd.engine.model_fn.SSDInference`).

The model function
------------------
`model_fn` is a factory. The Estimator calls it once, inside `strategy.scope()` and under the
run's precision policy, to create the object that owns the Keras model and its optimizer:

    holder = model_fn(model_config, context)    # context: ModelContext
    spec = holder(features, labels)             # one training step's EstimatorSpec

  holder.model      a built keras.Model (its variables are what checkpoints save and restore);
  holder.optimizer  an unbuilt Keras optimizer. The Estimator wraps it in a dynamic
                    LossScaleOptimizer under float16 and builds it in the scope (Keras 3
                    optimizers must be built there before the first distributed step).
For evaluate / predict / export, the factory has `model_fn.inference(model_config, model_dir)`,
an object with `evaluate(checkpoint_path, input_fn, data_files, write_summaries) -> dict`,
`predict(checkpoint_path, dataset) -> iterator of dicts` and `export(checkpoint_path, export_dir)
-> step`.
Optional (subclass `ModelFunction` for the default):
  holder.summary_images(tensors)  -> {name: images [N, H, W, C] float in [0, 1]} for TensorBoard,
                                     run eagerly on `spec.summary_tensors` of replica 0.
The context gives the holder the step counter (for learning-rate schedules), the number of
replicas in sync, and `context.compile(fn)`, which XLA-compiles the network call when
`RunConfig.jit_compile` is set. Only the network is compiled: collectives cannot run inside an XLA
cluster on every device type, and NMS or image drawing have no XLA kernels.

`spec.loss` is this replica's share of the global loss: Keras 3 optimizers SUM gradients across
replicas, so the shares must add up to the loss of the global batch (sum of per-example losses /
global count). `spec.scalars` (components, accuracy, ...) are shares too, summed for logging.

Training, checkpoints, workers
------------------------------
`train(input_fn, max_steps)`: `input_fn(input_context)` returns a tf.data.Dataset of (features,
labels) batched per replica and sharded by the input context. Checkpoints (ssd.modeling.checkpoints) are
written every `save_checkpoints_steps` steps and/or `save_checkpoints_secs` seconds and at the end;
training resumes from the latest. The input position is not saved (distributed iterators are not
checkpointable, and a single-device iterator would put its shuffle buffer into every checkpoint):
a resumed run continues from the restored step with a freshly started, reshuffled pipeline.
`RunConfig.steps_per_loop` steps run per call of the step function (ssd.engine.training: the
host reads the step's results only where a log, summary or checkpoint is due). Every worker runs
the same steps; only the chief writes checkpoints and summaries into model_dir,
the others save into a scratch directory `model_dir/.tmp_<task>_*` (saving may involve
collectives, so they take part) removed when training ends. With `stop_signals`
(ssd.engine.interrupts), a SIGINT/SIGTERM ends training after a checkpoint of the step reached (on every
worker, at the same step) with TrainingInterrupted. Resuming skips a damaged newest checkpoint
for the newest intact one (ssd.modeling.checkpoints).
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
import tensorflow as tf
from absl import logging

from ssd.modeling import checkpoints

from ssd.engine.distribute import is_chief, task_name
from ssd.engine.interrupts import StopSignals, stop_policy
from ssd.precision import TRAINING_POLICIES, dtype_policy
from ssd.engine.train_step import TrainStep, make_train_step
from ssd.engine.training import Cadence, Hook, NonFiniteLossError, TrainingSession

__all__ = ["RunConfig", "EstimatorSpec", "ModelContext", "ModelFunction", "NonFiniteLossError",
           "Estimator"]


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
    steps_per_loop: int = 1  # training steps per call of the step function (ssd.engine.training)

    def __post_init__(self):
        if self.mixed_precision not in TRAINING_POLICIES:
            raise ValueError(f"RunConfig.mixed_precision must be one of {sorted(TRAINING_POLICIES)}, "
                             f"got {self.mixed_precision!r}")
        if self.keep_checkpoint_max < 1:
            raise ValueError(f"RunConfig.keep_checkpoint_max must be >= 1, got {self.keep_checkpoint_max}")
        if self.steps_per_loop < 1:
            raise ValueError(f"RunConfig.steps_per_loop must be >= 1, got {self.steps_per_loop}")

    def cadence(self) -> Cadence:
        return Cadence(self.save_checkpoints_steps, self.save_checkpoints_secs, self.save_summary_steps,
                       self.log_step_count_steps, self.save_image_summary_steps)


@dataclasses.dataclass
class EstimatorSpec:
    """What a model function returns for a training step (see the module docstring)."""

    loss: tf.Tensor | None = None
    scalars: Mapping[str, tf.Tensor] = dataclasses.field(default_factory=dict)
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
    """Optional base class for model function holders: the default of the optional hook."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer

    def __call__(self, features, labels) -> EstimatorSpec:
        raise NotImplementedError

    def summary_images(self, tensors: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {}


@dataclasses.dataclass
class _TrainingState:
    """What the model function factory created in the strategy scope."""

    holder: Any
    optimizer: keras.optimizers.Optimizer  # the loss-scale wrapper under float16
    global_step: tf.Variable
    items: dict  # the checkpoint's objects under their keys (ssd.modeling.checkpoints)
    step_fn: TrainStep | None = None
    restored: str | None = None  # the checkpoint the in-memory state equals, if any


class _InputPipeline:
    """The training input's distributed iterator, its opening and closing said in the log: opening
    traces the input function's graph, and closing waits for its workers' elements in flight
    (seconds each on large images)."""

    def __init__(self, strategy: tf.distribute.Strategy, input_fn: Callable):
        logging.info("opening the training data: building the input pipeline")
        started = time.time()
        # fetched to the devices ahead of the step (the default, said here because the step
        # relies on it: the host enqueues steps without waiting for their input)
        options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
        self.iterator = iter(strategy.distribute_datasets_from_function(input_fn, options))
        logging.info("input pipeline ready (%.1f s)", time.time() - started)

    def close(self) -> None:
        logging.info("stopping the input pipeline")
        started = time.time()
        self.iterator = None  # the last reference: its workers stop here, not at some later time
        logging.info("input pipeline stopped (%.1f s)", time.time() - started)


class Estimator:
    """Trains a model function; evaluates, predicts with and exports its checkpoints."""

    def __init__(self, model_fn: Callable[[Any, ModelContext], Any], model_config: Any,
                 run_config: RunConfig):
        self._model_fn = model_fn
        self.model_config = model_config
        self.config = run_config  # the name tf.estimator gave the RunConfig
        self.strategy = run_config.train_distribute or tf.distribute.get_strategy()
        self.is_chief = is_chief(self.strategy)
        self._training: _TrainingState | None = None
        self._inference_holder = None  # built on first use
        os.makedirs(run_config.model_dir, exist_ok=True)

    @property
    def model_dir(self) -> str:
        return self.config.model_dir

    @property
    def model(self) -> keras.Model:
        """The Keras model being trained (created on first use), e.g. to load pretrained weights."""
        return self._state().holder.model

    @property
    def global_step(self) -> int:
        return int(self._state().global_step.numpy())

    def latest_checkpoint(self) -> str | None:
        return tf.train.latest_checkpoint(self.model_dir)

    # --- training -----------------------------------------------------------------------------

    def _state(self) -> _TrainingState:
        if self._training is None:
            if self.config.tf_random_seed is not None:
                keras.utils.set_random_seed(self.config.tf_random_seed)
            with self.strategy.scope():
                self._training = self._create_state()
        return self._training

    def _create_state(self) -> _TrainingState:
        global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                                  aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        context = ModelContext(global_step, self.strategy.num_replicas_in_sync, self.config.jit_compile)
        with dtype_policy(TRAINING_POLICIES[self.config.mixed_precision]):
            holder = self._model_fn(self.model_config, context)
        optimizer = scaled = holder.optimizer
        if self.config.mixed_precision == "float16":
            scaled = keras.optimizers.LossScaleOptimizer(optimizer)
        scaled.build(holder.model.trainable_variables)
        items = checkpoints.training_items(holder.model, global_step, optimizer,
                                           scaled if scaled is not optimizer else None)
        return _TrainingState(holder, scaled, global_step, items)

    def _resume(self) -> _TrainingState:
        """The training state, restored from model_dir's latest checkpoint unless it equals it."""
        state = self._state()
        latest = self.latest_checkpoint()
        if latest is not None and latest != state.restored:
            restored = checkpoints.restore_newest_intact(state.items, self.model_dir)
            state.restored = restored
            logging.info("restored %s (step %d)", restored, int(state.global_step.numpy()))
        return state

    def train(self, input_fn: Callable, max_steps: int, hooks: Sequence[Hook] = (),
              stop_signals: StopSignals | None = None) -> "Estimator":
        """Trains until the global step reaches `max_steps` (resuming from model_dir).

        Each hook is called as hook(step, scalars) after every applied step (scalars: the summed
        loss components and the learning rate, as tensors). With active `stop_signals`, a
        SIGINT/SIGTERM ends training after a checkpoint with TrainingInterrupted (ssd.engine.interrupts).
        """
        self._resume()
        if self.global_step >= max_steps:
            logging.info("global step %d already reaches max_steps %d; nothing to train",
                         self.global_step, max_steps)
            return self
        with self._session(hooks, stop_signals) as session:
            pipeline = _InputPipeline(self.strategy, input_fn)
            session.run(pipeline.iterator, max_steps)
            pipeline.close()
        return self

    def train_and_evaluate(self, train_input_fn: Callable, eval_input_fn: Callable,
                           max_steps: int, eval_every_steps: int,
                           stop_signals: StopSignals | None = None) -> dict:
        """Alternates training and evaluation every `eval_every_steps` steps up to `max_steps`.

        Each evaluation is `evaluate` of the checkpoint just saved: the numbers and TensorBoard
        scalars eval.py gives for it. The input pipeline keeps running across evaluations. Only
        the chief evaluates; the other workers go on and wait for it at the next collective.
        Returns the last metrics (empty on non-chief workers). `stop_signals` as in `train`.
        """
        if eval_every_steps < 1:
            raise ValueError(f"eval_every_steps must be >= 1, got {eval_every_steps}")
        self._resume()
        metrics: dict = {}
        with self._session(stop_signals=stop_signals) as session:
            pipeline = _InputPipeline(self.strategy, train_input_fn)
            while session.step < max_steps:
                target = min((session.step // eval_every_steps + 1) * eval_every_steps, max_steps)
                running = session.run(pipeline.iterator, target, final_step=max_steps)
                if self.is_chief:
                    metrics = self._evaluate(eval_input_fn, session.latest_checkpoint)
                if not running:
                    break
            pipeline.close()
        if self.is_chief and not metrics:
            metrics = self.evaluate(eval_input_fn)
        return metrics

    @contextlib.contextmanager
    def _session(self, hooks: Sequence[Hook] = (),
                 stop_signals: StopSignals | None = None) -> Iterator[TrainingSession]:
        state = self._state()
        if state.step_fn is None:
            state.step_fn = make_train_step(self.strategy, state.holder, state.optimizer,
                                            state.global_step, self.config.steps_per_loop)
        state.step_fn.resume()  # the in-memory state is that of the last good step
        scratch = None
        if self.is_chief:
            directory, writer = self.model_dir, tf.summary.create_file_writer(self.model_dir)
        else:
            scratch = tempfile.mkdtemp(prefix=f".tmp_{task_name(self.strategy)}_", dir=self.model_dir)
            directory, writer = scratch, tf.summary.create_noop_writer()
        checkpointer = checkpoints.Checkpointer(state.items, directory, self.config.keep_checkpoint_max)
        summary_images = getattr(state.holder, "summary_images", None) if self.is_chief else None
        stop = None if stop_signals is None else stop_policy(stop_signals, self.strategy)
        session = TrainingSession(state.step_fn, checkpointer, writer, self.config.cadence(),
                                  self.global_step, on_save=self._saved, hooks=hooks,
                                  summary_images=summary_images, stop=stop,
                                  steps_per_loop=self.config.steps_per_loop)
        try:
            yield session
        finally:
            if stop is not None:
                stop.close()
            writer.close()
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)

    def _saved(self, path: str) -> None:
        if self.is_chief:
            self._training.restored = path
            logging.info("saved checkpoint %s", path)

    # --- inference: delegated to the model function's inference --------------------------------

    def _inference(self):
        if self._inference_holder is None:
            factory = getattr(self._model_fn, "inference", None)
            if factory is None:
                raise NotImplementedError("this model function has no `inference` factory: the "
                                          "Estimator can train it, not evaluate, predict or export it")
            self._inference_holder = factory(self.model_config, self.model_dir)
        return self._inference_holder

    def evaluate(self, input_fn: Callable, checkpoint_path: str | None = None,
                 steps: int | None = None) -> dict:
        """The metric numbers of a checkpoint (default: model_dir's latest) on `input_fn`'s
        dataset (all of it, or `steps` batches), computed by the model function's inference; for
        SSD what eval.py computes and writes into TensorBoard (`ssd.engine.model_fn.SSDInference`).
        Adds "global_step" to its summary."""
        return self._evaluate(input_fn, checkpoints.find_checkpoint(self.model_dir, checkpoint_path), steps)

    def _evaluate(self, input_fn: Callable, checkpoint_path: str, steps: int | None = None) -> dict:
        def batches(input_context):
            dataset = input_fn(input_context or tf.distribute.InputContext())
            return dataset if steps is None else dataset.take(steps)

        summary = self._inference().evaluate(checkpoint_path, batches, getattr(input_fn, "files", None),
                                             write_summaries=self.is_chief)
        return dict(summary, global_step=summary["step"])

    def predict(self, input_fn: Callable, checkpoint_path: str | None = None) -> Iterator[dict]:
        """Yields the predictions of a checkpoint (numpy), one example at a time. The dataset's
        elements may be features or (features, labels)."""
        yield from self._inference().predict(checkpoints.find_checkpoint(self.model_dir, checkpoint_path),
                                             input_fn(tf.distribute.InputContext()))

    def export_saved_model(self, export_dir_base: str, checkpoint_path: str | None = None) -> str:
        """Writes the serving SavedModel of a checkpoint to export_dir_base/<timestamp>."""
        path = checkpoints.find_checkpoint(self.model_dir, checkpoint_path)
        export_dir = os.path.join(export_dir_base, datetime.datetime.now().strftime("%Y%m%d%H%M%S"))
        step = self._inference().export(path, export_dir)
        logging.info("exported step %d to %s", step, export_dir)
        return export_dir
