"""The checkpoint layout of a training run, in one place: writing, finding, restoring, watching.

A training checkpoint is a `tf.train.Checkpoint` of these items (the keys are the layout):
  model                 the Keras network (float32 variables whatever the precision policy);
  global_step           int64, the number of applied training steps;
  optimizer             the Keras optimizer's slots and iteration count;
  loss_scale_optimizer  float16 runs only: the dynamic loss scale. The inner optimizer is saved
                        under `optimizer` with or without loss scaling, so a run may switch mixed
                        precision on resume.
A `tf.train.CheckpointManager` names them `<directory>/ckpt-<global step>` and publishes each by an
atomic rename of the `checkpoint` index file once its data is complete, so a listed checkpoint is
whole, and a process killed at any moment leaves the previous one usable.

  * writing: `training_items` + `Checkpointer` (the training loop's saver, which refuses to write
    non-finite weights) and `restore_training_state` (resume: every item);
  * finding: `find_checkpoint` (the newest intact one, skipping damaged ones with a warning),
    `listed_checkpoints`, `checkpoint_number`; `remove_stale_temporaries` (unfinished saves);
  * damage: a truncated or corrupted file raises `DamagedCheckpointError` naming it; resume
    (`restore_newest_intact`) and `find_checkpoint` fall back to the newest intact checkpoint;
  * restoring for inference: `restore_checkpoint` (model and step only, with clear errors for a
    missing checkpoint, one that does not fit the config's model, one removed by rotation);
  * watching: `watch_checkpoints` yields each new complete checkpoint as training writes it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import time
from typing import Callable, Iterator, Mapping

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from ssd.config.loading import Config, shape_fields
from ssd.errors import UserError

MODEL = "model"
GLOBAL_STEP = "global_step"
OPTIMIZER = "optimizer"
LOSS_SCALE_OPTIMIZER = "loss_scale_optimizer"
PREFIX = "ckpt"  # CheckpointManager's default: <directory>/ckpt-<number>


class CheckpointError(UserError):
    """Any checkpoint that cannot be used as asked; the apps report every one as one line."""


class NoCheckpointError(CheckpointError, FileNotFoundError):
    """There is no checkpoint where one was expected."""


class CheckpointRemovedError(CheckpointError, FileNotFoundError):
    """A listed checkpoint disappeared before it was read (CheckpointManager rotation)."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """The checkpoint's variables do not fit the model built from the config."""


class DamagedCheckpointError(CheckpointError, RuntimeError):
    """A checkpoint's files cannot be read whole (truncated or corrupted); the message names them."""

    def __init__(self, checkpoint_path: str, cause: BaseException, remedy: str = ""):
        self.checkpoint_path = checkpoint_path
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(f"checkpoint {checkpoint_path} is damaged ({', '.join(_files_of(checkpoint_path))}: "
                         f"{reason})" + (f"; {remedy}" if remedy else ""))


# What TensorFlow raises reading a truncated data file (IndexError: "Read less bytes than
# requested") or one whose bytes no longer match the index's checksums (DataLossError, or from
# the checkpoint reader a bare OpError saying so).
_DAMAGE = (IndexError, tf.errors.DataLossError, tf.errors.OutOfRangeError)
_READ_ERRORS = (IndexError, tf.errors.OpError)


def _is_damage(error: BaseException) -> bool:
    return isinstance(error, _DAMAGE) or "Checksum does not match" in str(error)


def _files_of(checkpoint_path: str) -> list[str]:
    return sorted(tf.io.gfile.glob(checkpoint_path + ".data-*")) or [checkpoint_path + ".index"]


# --- writing -------------------------------------------------------------------------------

def training_items(model: keras.Model, global_step: tf.Variable,
                   optimizer: keras.optimizers.Optimizer | None = None,
                   loss_scale_optimizer: keras.optimizers.Optimizer | None = None) -> dict:
    """The objects of a training checkpoint under their keys (module docstring)."""
    items = {MODEL: model, GLOBAL_STEP: global_step}
    if optimizer is not None:
        items[OPTIMIZER] = optimizer
    if loss_scale_optimizer is not None:
        items[LOSS_SCALE_OPTIMIZER] = loss_scale_optimizer
    return items


def restore_training_state(items: Mapping, checkpoint_path: str) -> None:
    """Loads every item (weights, step, optimizer slots) from a training checkpoint; raises
    DamagedCheckpointError when its files cannot be read whole."""
    try:
        tf.train.Checkpoint(**items).restore(checkpoint_path).expect_partial()
    except _READ_ERRORS as e:
        if not _is_damage(e):
            raise
        raise DamagedCheckpointError(checkpoint_path, e) from e


def restore_newest_intact(items: Mapping, model_dir: str) -> str | None:
    """Restores the newest listed checkpoint of model_dir that reads whole, warning about each
    damaged one skipped; returns its path (None: no checkpoint). Trying the restore itself costs
    nothing when the newest is intact, and catches truncation and corruption alike."""
    damaged, problem = [], None
    for path in reversed(listed_checkpoints(model_dir)):
        try:
            restore_training_state(items, path)
        except DamagedCheckpointError as e:
            logging.warning("%s; trying the previous checkpoint", e)
            damaged.append(path)
            problem = e.__cause__
            continue
        if damaged:
            logging.warning("resuming from %s: the newer %s damaged", path,
                            f"{', '.join(damaged)} {'is' if len(damaged) == 1 else 'are'}")
        return path
    if damaged:
        raise DamagedCheckpointError(damaged[0], problem, (
            f"no checkpoint of {model_dir} reads whole; remove the damaged ones (or use a new "
            f"--model_dir) to start afresh"))
    return None


# TensorFlow writes a checkpoint's shards under <prefix>-<N>_temp/ and renames them into place
_TEMPORARY = re.compile(re.escape(PREFIX) + r"-\d+_temp")


def remove_stale_temporaries(directory: str) -> list[str]:
    """Removes `<prefix>-<N>_temp` directories (a save's shards before they are renamed into
    place) left by a process killed while saving; returns what was removed. Only names of that
    pattern are touched. Call it only while holding the directory's training lock: a running
    save's temporaries look the same."""
    removed = []
    for name in sorted(tf.io.gfile.listdir(directory)) if tf.io.gfile.isdir(directory) else []:
        path = os.path.join(directory, name.rstrip("/"))
        if _TEMPORARY.fullmatch(name.rstrip("/")) and tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
            logging.warning("removed %s, the unfinished save of a run stopped while saving", path)
            removed.append(path)
    return removed


class Checkpointer:
    """Saves training checkpoints of `items` into `directory`, keeping the last `max_to_keep`."""

    def __init__(self, items: Mapping, directory: str, max_to_keep: int):
        self._items = dict(items)
        self._manager = tf.train.CheckpointManager(tf.train.Checkpoint(**items), directory,
                                                   max_to_keep=max_to_keep, checkpoint_name=PREFIX)

    @property
    def latest(self) -> str | None:
        """The newest checkpoint of the directory, written by this or an earlier run."""
        return self._manager.latest_checkpoint

    def save(self, step: int) -> str:
        """Writes ckpt-<step>. Raises FloatingPointError, writing nothing, when a weight is not finite."""
        bad = first_non_finite(self._variables())
        if bad is not None:
            raise FloatingPointError(f"variable {bad} is not finite at step {step}; the checkpoint "
                                     f"was not written (latest good: {self.latest or 'none yet'})")
        return self._manager.save(checkpoint_number=step)

    def _variables(self) -> list:
        variables = []
        for item in self._items.values():
            variables += [item] if isinstance(item, tf.Variable) else list(getattr(item, "variables", []))
        return variables


def first_non_finite(variables) -> str | None:
    """The name of the first float variable holding a NaN or Inf, else None."""
    for variable in variables:
        value = np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)
        if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
            return getattr(variable, "path", None) or variable.name
    return None


# --- finding -------------------------------------------------------------------------------

def checkpoint_exists(path: str) -> bool:
    return tf.io.gfile.exists(path + ".index")


def find_checkpoint(model_dir: str | None, checkpoint_path: str | None = None) -> str:
    """`checkpoint_path` (a checkpoint prefix, or a directory: its latest), else model_dir's latest."""
    if checkpoint_path:
        if tf.io.gfile.isdir(checkpoint_path):
            latest = tf.train.latest_checkpoint(checkpoint_path)
            if latest is None:
                raise NoCheckpointError(f"no checkpoint in {checkpoint_path}")
            return latest
        if not checkpoint_exists(checkpoint_path):
            raise NoCheckpointError(f"checkpoint {checkpoint_path} not found (no {checkpoint_path}.index)")
        return checkpoint_path
    if not model_dir:
        raise NoCheckpointError("neither a model directory nor a checkpoint path was given")
    listed = listed_checkpoints(model_dir)
    if not listed:
        raise NoCheckpointError(f"no checkpoint in {model_dir} (no 'checkpoint' file listing one); "
                                f"train first or pass --checkpoint_path")
    problems = {}
    for path in reversed(listed):
        problems[path] = read_problem(path)
        if problems[path] is None:
            if path != listed[-1]:
                logging.warning("using %s, the newest intact checkpoint of %s", path, model_dir)
            return path
        logging.warning("%s; skipping it", DamagedCheckpointError(path, problems[path]))
    raise DamagedCheckpointError(listed[-1], problems[listed[-1]], (
        f"no checkpoint listed in {model_dir} reads whole; pass an intact one with --checkpoint_path"))


def read_problem(checkpoint_path: str) -> BaseException | None:
    """The error reading every tensor of the checkpoint raises, or None when it reads whole.

    One full read of the files (about a second for SSD300 with its optimizer slots): it catches
    truncation and bytes that no longer match the index's checksums alike, where comparing the
    index's recorded sizes with the file sizes would miss the latter.
    """
    try:
        reader = tf.train.load_checkpoint(checkpoint_path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except _READ_ERRORS as e:
        return e
    return None


def checkpoint_number(path: str) -> int | None:
    """The N of a `.../ckpt-N` prefix (checkpoints are numbered by global step)."""
    match = re.search(r"-(\d+)$", path)
    return int(match.group(1)) if match else None


def listed_checkpoints(model_dir: str) -> list[str]:
    """The checkpoints the `checkpoint` file lists (oldest first) whose .index exists.

    The index file is rewritten only after a checkpoint's data and index are complete, so a
    listed checkpoint is whole unless rotation has deleted it since.
    """
    state = tf.train.get_checkpoint_state(model_dir)
    if state is None:
        return []
    # get_checkpoint_state already puts model_dir in front of the relative paths the file holds
    paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    return [p for p in paths if p and checkpoint_exists(p)]


# --- restoring for inference ---------------------------------------------------------------

@contextlib.contextmanager
def _tensorflow_warnings_off() -> Iterator[None]:
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # a Python logging level (absl.logging.ERROR is not one)
    try:
        yield
    finally:
        logger.setLevel(level)


def restore_checkpoint(model: keras.Model, checkpoint_path: str, config: Config) -> int:
    """Loads the model's variables from a training checkpoint; returns the checkpoint's global step.

    The optimizer slots are left unread. Raises CheckpointMismatchError when a variable is missing
    or has another shape (the message names it), CheckpointRemovedError when the checkpoint was
    deleted meanwhile.
    """
    step = tf.Variable(-1, dtype=tf.int64, trainable=False, name=GLOBAL_STEP)
    checkpoint = tf.train.Checkpoint(**{MODEL: model, GLOBAL_STEP: step})
    fields = ", ".join(f"{k}={v}" for k, v in shape_fields(config).items())
    hint = f"the config's model fields must match those the checkpoint was trained with (here: {fields})"
    mismatch = None
    # A restore that fails half-way leaves TensorFlow's bookkeeping of it behind, and when that is
    # freed it logs every checkpoint value it did not read (optimizer slots included: over a
    # hundred lines that would bury the one message that matters). It is freed here, quietly, and
    # the error below keeps no reference to it.
    with _tensorflow_warnings_off():
        try:
            status = checkpoint.restore(checkpoint_path).expect_partial()
            status.assert_existing_objects_matched()
        except _READ_ERRORS as e:
            if not checkpoint_exists(checkpoint_path):
                raise CheckpointRemovedError(f"checkpoint {checkpoint_path} was removed while being "
                                             f"read (rotation by max_to_keep?)") from e
            if _is_damage(e):
                raise DamagedCheckpointError(checkpoint_path, e) from e
            raise
        except (ValueError, AssertionError) as e:
            mismatch = str(e)
        if mismatch is not None:
            del checkpoint, step  # they hold the failed restore
            gc.collect()
    if mismatch is not None:
        raise CheckpointMismatchError(f"checkpoint {checkpoint_path} does not fit the model built "
                                      f"from the config: {mismatch}; {hint}")
    if int(step.numpy()) < 0:
        number = checkpoint_number(checkpoint_path)
        logging.warning("checkpoint %s has no global_step; using %s from its name", checkpoint_path, number)
        return number if number is not None else 0
    return int(step.numpy())


# --- watching a training run ---------------------------------------------------------------

def watch_checkpoints(model_dir: str, timeout_secs: float | None, interval_secs: float,
                      sleep: Callable[[float], None] = time.sleep,
                      clock: Callable[[], float] = time.monotonic) -> Iterator[str]:
    """Yields new checkpoints of model_dir as they appear, newest first when several are waiting.

    Only checkpoints numbered above the last one yielded are new: when evaluation is slower than
    training, intermediate checkpoints are skipped (and logged) rather than evaluated late. Stops
    after `timeout_secs` (None: never) without a new checkpoint; the caller stops at max_steps.
    """
    last_number = -1
    deadline = None if timeout_secs is None else clock() + timeout_secs
    announced = False
    while True:
        fresh = [p for p in listed_checkpoints(model_dir) if (checkpoint_number(p) or 0) > last_number]
        if fresh:
            newest = max(fresh, key=lambda p: checkpoint_number(p) or 0)
            skipped = [p for p in fresh if p != newest]
            if skipped:
                logging.info("skipping %d older new checkpoints: %s", len(skipped), ", ".join(skipped))
            last_number = checkpoint_number(newest) or 0
            announced = False
            yield newest
            deadline = None if timeout_secs is None else clock() + timeout_secs
            continue
        if deadline is not None and clock() >= deadline:
            logging.info("no new checkpoint in %s for %.0f s; stopping", model_dir, timeout_secs)
            return
        if not announced:
            logging.info("waiting for a new checkpoint in %s", model_dir)
            announced = True
        wait = interval_secs if deadline is None else max(0.0, min(interval_secs, deadline - clock()))
        sleep(wait)
