"""Stopping a training run cleanly on Ctrl-C (SIGINT) or a scheduler's SIGTERM.

`StopSignals()` (a context manager, main thread only) turns the first SIGINT or SIGTERM into a
stop request instead of an exception in the middle of a step; a second SIGINT raises
KeyboardInterrupt at once (no checkpoint), for a user who does not want to wait.

The training loop asks a stop policy after each call of the step function (one step, or up to
train.steps_per_loop steps), handing it its save function:

    policy.after_step(save)   # raises TrainingInterrupted after saving, when a stop is due

  * `LocalStop(signals)`, one process: when a stop was requested, saves the step just finished
    and raises. The steps in flight always complete, so the checkpoint is of a whole step.
  * `ClusterStop(signals, strategy, save)`, several workers (MultiWorkerMirroredStrategy):
    TensorFlow's `PreemptionCheckpointHandler`. A signal to ANY worker is published through the
    coordination service with the step at which every worker saves (the next one, so that workers
    a step apart agree); all workers then save (the chief into model_dir, the others into their
    scratch directories, since saving involves collectives) and stop. Our own save function is
    its `save_fn`, so the non-finite-weights guard applies, and it is given an empty checkpoint of
    its own, so its bookkeeping variable never enters the model's checkpoints and it restores
    nothing when created.

The exit code of an interrupted run is 128 + the signal number (130 for SIGINT, 143 for SIGTERM),
what a shell reports for a process killed by that signal; a worker stopped because another one
was signalled exits with 143. Rerunning the same command resumes from the saved step.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import threading
from typing import Callable

from absl import logging

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PEER_EXIT_CODE = 128 + signal.SIGTERM


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving `checkpoint` at `step`."""

    def __init__(self, step: int, checkpoint: str | None, signal_number: int | None):
        self.step = step
        self.checkpoint = checkpoint
        self.signal_number = signal_number
        cause = (f"{signal.Signals(signal_number).name} received" if signal_number is not None
                 else "another worker was asked to stop")
        super().__init__(f"{cause}; saved checkpoint {checkpoint} at step {step}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number if self.signal_number is not None else PEER_EXIT_CODE


class StopSignals:
    """While active, records the first SIGINT/SIGTERM as a stop request (module docstring)."""

    def __init__(self):
        self._received: int | None = None
        self._event = threading.Event()
        self._previous: dict = {}

    @property
    def received(self) -> int | None:
        """The signal number of the stop request, or None."""
        return self._received

    def requested(self) -> bool:
        return self._event.is_set()

    def _handle(self, signal_number: int, frame) -> None:
        del frame
        if self._received is not None:
            if signal_number == signal.SIGINT:
                raise KeyboardInterrupt(f"second {signal.Signals(signal_number).name}")
            return  # a repeated SIGTERM: the stop is already under way
        self._received = signal_number
        self._event.set()
        logging.warning("%s received: stopping after the step in flight and saving a checkpoint "
                        "(press Ctrl-C again to stop at once without saving)",
                        signal.Signals(signal_number).name)

    def __enter__(self) -> StopSignals:
        for number in STOP_SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()


class LocalStop:
    """The stop policy of a single process."""

    def __init__(self, signals: StopSignals):
        self._signals = signals

    def after_step(self, step: int, save: Callable[[], str | None]) -> None:
        if self._signals.requested():
            path = save()
            raise TrainingInterrupted(step, path, self._signals.received)

    def close(self) -> None:
        pass


class ClusterStop:
    """The stop policy of several workers, on TensorFlow's PreemptionCheckpointHandler."""

    def __init__(self, signals: StopSignals, strategy):
        self._signals = signals
        import tensorflow as tf  # not at import time: train.py reads this module before TF starts
        self._empty_dir = tempfile.mkdtemp(prefix="ssd_preemption_")
        self._saved: tuple[int, str | None] | None = None
        config = tf.distribute.experimental.TerminationConfig(
            termination_watcher_fn=signals.requested, exit_fn=self._exit, grace_period=0,
            save_fn=self._save)
        # An empty checkpoint in a directory that holds none: the handler restores nothing and
        # its run counter stays out of our checkpoints (it only has to agree within this run).
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(), self._empty_dir, max_to_keep=1)
        self._handler = tf.distribute.experimental.PreemptionCheckpointHandler(
            strategy.cluster_resolver, manager, termination_config=config)

    def _save(self, step: int, save: Callable[[], str | None]) -> None:
        self._saved = (step, save())

    def _exit(self) -> None:
        step, path = self._saved
        raise TrainingInterrupted(step, path, self._signals.received)

    def after_step(self, step: int, save: Callable[[], str | None]) -> None:
        self._handler.save_checkpoint_if_preempted(step, save)

    def close(self) -> None:
        # stops the handler's watcher threads (and releases the peers waiting on them)
        self._handler.__del__()
        shutil.rmtree(self._empty_dir, ignore_errors=True)


def stop_policy(signals: StopSignals, strategy):
    """ClusterStop for a multi-worker strategy, else LocalStop."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and resolver.task_type and resolver.cluster_spec().jobs:
        return ClusterStop(signals, strategy)
    return LocalStop(signals)
