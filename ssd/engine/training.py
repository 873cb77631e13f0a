"""The host-side loop around the training step (ssd.engine.train_step).

`TrainingSession(step_fn, checkpointer, writer, cadence, start_step, ...)` calls the step until
a target step, and at the cadences of `Cadence` logs progress (rate, ETA), writes scalar and image
summaries into `writer` and saves checkpoints with `checkpointer` (every N steps and/or seconds,
and when a run ends). The first step of a session and the run's last step are always logged and
their scalars written (when the cadence logs and writes at all), so that a run shorter than the
cadence shows its losses too; before the first step, which traces the step's graph and fills the
input pipeline (seconds to minutes), the log says so, and the first step's line says how long it
took. Collaborators come in explicitly: the session knows nothing of the Estimator, the model or
the distribution.

The host stays out of the device's way: the step's results stay tensors, read only where
something is due (a log, a summary, a checkpoint, a user hook, the end of a run), so that between
those points the host enqueues the next step while the device runs the current one (each read
would wait for the device). Each call of the step function runs up to `steps_per_loop` steps,
ending at the next step at which something is due, so logs, summaries and checkpoints happen at
the same steps whatever `steps_per_loop` is; time-based saves and the stop policy are looked at
between calls. A non-finite loss stops the step function on the device (its update and every
later one not applied) and raises `NonFiniteLossError` naming that step at the next check; the
checkpointer refuses non-finite weights, so no checkpoint ever holds them. A stop policy
(ssd.engine.interrupts) may end the run after any call with a checkpoint of the step reached.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from ssd.engine.train_step import StepResult
from ssd.modeling.checkpoints import Checkpointer
from ssd.engine.summaries import format_metrics, write_images, write_scalar

Hook = Callable[[int, Mapping[str, tf.Tensor]], None]


class StopPolicy(Protocol):
    """Decides after each call of the step function whether to save and stop (ssd.engine.interrupts)."""

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


# --- the loop --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Cadence:
    """How often the session logs, writes summaries and saves (0 or None: never by that rule)."""

    save_checkpoints_steps: int | None = 1000
    save_checkpoints_secs: float | None = None
    save_summary_steps: int = 100
    log_step_count_steps: int = 100
    save_image_summary_steps: int = 0


# unchecked calls kept at most (their scalars, for the error of a non-finite loss), so that a run
# without logs or saves by steps does not hold them all: one read every that many calls
MAX_PENDING_CALLS = 1000


@dataclasses.dataclass(frozen=True)
class _Pending:
    """What a call not checked yet leaves for the check: its count and tensors."""

    count: int
    applied: tf.Tensor
    finite: tf.Tensor
    scalars: dict


def _due(step: int, every: int | None) -> bool:
    return bool(every) and step % every == 0


class TrainingSession:
    """Calls the step function up to a target step; logs, summaries and checkpoints on the way."""

    def __init__(self, step_fn: Callable[..., StepResult], checkpointer: Checkpointer,
                 writer: tf.summary.SummaryWriter, cadence: Cadence, start_step: int,
                 on_save: Callable[[str], None] | None = None, hooks: Sequence[Hook] = (),
                 summary_images: Callable[[Mapping], Mapping] | None = None,
                 stop: StopPolicy | None = None, steps_per_loop: int = 1):
        """`step_fn(iterator, count)` runs up to `count` steps (<= steps_per_loop); `on_save(path)`
        is called after each checkpoint; each hook(step, scalars) after each applied step (with
        hooks, every call is one step); `summary_images(summary_tensors)` -> {tag: images} (None:
        no images); `stop.after_step(step, save)` after each call (ssd.engine.interrupts: it saves
        and raises TrainingInterrupted when a stop was requested, so a stop waits at most
        `steps_per_loop` steps; None: never stops early)."""
        if steps_per_loop < 1:
            raise ValueError(f"steps_per_loop must be >= 1, got {steps_per_loop}")
        self._step_fn = step_fn
        self._checkpointer = checkpointer
        self._writer = writer
        self._cadence = cadence
        self._on_save = on_save
        self._hooks = list(hooks)
        self._summary_images = summary_images
        self._stop = stop
        self._steps_per_loop = steps_per_loop
        self.step = start_step  # counts the calls' steps; settled (exact) at every check
        self._start_step = start_step
        self._first_step_started: float | None = None  # when this session's first step began
        now = time.time()
        self._saved = (start_step, now)  # step and time of the last save
        self._logged = (start_step, now)  # step and time of the last log
        self._examples: tf.Tensor | None = None  # examples since the last log, a device tensor
        self._summarized = (start_step, now)
        self._traced = False
        self._pending: list[_Pending] = []  # calls not checked yet
        self._exhausted = False
        self._max_steps = start_step  # the current run's target (for the log)

    @property
    def latest_checkpoint(self) -> str | None:
        return self._checkpointer.latest

    def run(self, iterator, max_steps: int, final_step: int | None = None) -> bool:
        """Trains up to `max_steps` and saves; False when the input ran out first. `final_step`
        (default max_steps) is where the whole run ends: the log's progress and ETA count to it."""
        final_step = max_steps if final_step is None else final_step
        self._exhausted = False
        self._max_steps = max_steps
        with self._writer.as_default():
            while self.step < max_steps and not self._exhausted:
                if self.step == self._start_step:
                    logging.info("step %d: tracing the training step's graph and filling the input "
                                 "pipeline; the first step takes longer than the others",
                                 self.step + 1)
                    self._first_step_started = time.time()
                count = self._count(max_steps)
                try:
                    result = self._step_fn(iterator, count)
                except (tf.errors.OutOfRangeError, StopIteration):
                    if self._settle():
                        self._input_exhausted()
                    break
                self._after_call(count, result, final_step)
            self.save()  # checks the unchecked calls first: a non-finite loss raises there
            self._writer.flush()
        return not self._exhausted

    def _count(self, max_steps: int) -> int:
        """Steps for the next call: up to steps_per_loop, ending at the next step at which
        something is due, so that it happens at the same step whatever steps_per_loop is."""
        if self._hooks:
            return 1  # hooks see every step's scalars: simplest with one step per call
        cadence, step = self._cadence, self.step
        ends = [max_steps, step + self._steps_per_loop]
        for every in (cadence.log_step_count_steps, cadence.save_summary_steps,
                      cadence.save_image_summary_steps, cadence.save_checkpoints_steps):
            if every:
                ends.append((step // every + 1) * every)
        if step == self._start_step and (cadence.log_step_count_steps or cadence.save_summary_steps):
            ends.append(step + 1)  # the session's first step is always shown
        return max(1, min(ends) - step)

    def _after_call(self, count: int, result: StepResult, final_step: int) -> None:
        self._pending.append(_Pending(count, result.applied_steps(), result.finite, result.scalars))
        self.step += count
        self._add_examples(result.examples)
        step = self.step
        first = step == self._start_step + 1
        always = first or step == final_step  # shown whatever the cadence, when it shows anything
        cadence = self._cadence
        log = _due(step, cadence.log_step_count_steps) or (always and cadence.log_step_count_steps)
        scalars = _due(step, cadence.save_summary_steps) or (always and cadence.save_summary_steps)
        images = _due(step, cadence.save_image_summary_steps)
        save = _due(step, cadence.save_checkpoints_steps) or self._save_time_due()
        check = log or scalars or images or save or self._hooks or len(self._pending) >= MAX_PENDING_CALLS
        if check and not self._settle():
            return  # the input ran out within the call: nothing is due at a step not reached
        if log:
            self._log_progress(result.scalars, final_step)
        if scalars:
            self._write_scalars(result.scalars, first)
        if images:
            self._write_images(result.summary_tensors)
        if save:
            self.save()
        for hook in self._hooks:
            hook(step, result.scalars)
        if self._stop is not None:
            self._stop.after_step(step, self.save)

    def _settle(self) -> bool:
        """Checks the calls since the last check (one read): raises NonFiniteLossError for a
        non-finite loss; when the input ran out, sets the step reached and returns False."""
        if not self._pending:
            return not self._exhausted
        pending, self._pending = self._pending, []
        applied = tf.stack([call.applied for call in pending]).numpy()
        step = self.step - sum(call.count for call in pending)
        for call, done in zip(pending, applied):
            if done < call.count:  # this call stopped early; the ones after it did nothing
                self.step = step + int(done)
                if not bool(call.finite):
                    raise NonFiniteLossError(self.step + 1, {k: float(v) for k, v in call.scalars.items()},
                                             self.latest_checkpoint)
                self._input_exhausted()
                return False
            step += call.count
        return True

    def _input_exhausted(self) -> None:
        self._exhausted = True
        logging.info("input exhausted at step %d (before max_steps %d)", self.step, self._max_steps)

    def _add_examples(self, examples: tf.Tensor) -> None:
        if not self._traced and self._cadence.log_step_count_steps > 1:
            # the first step also builds the graph: rates and ETA start after it
            self._logged = (self.step, time.time())
            examples = None
        self._traced = True
        if examples is not None:  # added on the device: no read
            self._examples = examples if self._examples is None else self._examples + examples

    def _log_progress(self, scalars: Mapping, final_step: int) -> None:
        last_step, since = self._logged
        examples = 0 if self._examples is None else int(self._examples)
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
        self._logged = (self.step, now)
        self._examples = None

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
        """Saves the current step unless it is saved already; returns the latest checkpoint.
        Checks the calls since the last check first (a non-finite loss raises)."""
        self._settle()
        if self.step == self._saved[0] and self.latest_checkpoint is not None:
            return self.latest_checkpoint
        path = self._checkpointer.save(self.step)
        self._writer.flush()
        self._saved = (self.step, time.time())
        if self._on_save is not None:
            self._on_save(path)
        return path
