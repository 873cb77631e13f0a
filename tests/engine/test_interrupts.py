"""train.py under Ctrl-C, SIGTERM, a second run on its directory, and a failed start (real processes)."""

import queue
import signal
import subprocess
import threading
import time

import pytest
import tensorflow as tf

from ssd.engine.interrupts import StopSignals, TrainingInterrupted
from ssd.engine.model_dir_lock import LOCK_FILENAME
from tests.apps.test_train import ROOT, _checkpoint_step, _run, _train_command, records  # noqa: F401

pytestmark = pytest.mark.slow  # trains a model or starts processes


LONG = ["--batch_size=4", "--max_steps=1000", "--set", "train.save_checkpoints_steps=250"]


class Training:
    """A train.py process whose stderr is read line by line while it runs."""

    def __init__(self, command):
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stderr:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text, timeout=180):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} in the output:\n{self.stderr()[-3000:]}")

    def finish(self, timeout=60):
        code = self.process.wait(timeout=timeout)
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return code

    def stderr(self):
        return "".join(self.lines)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()


def test_sigint_saves_the_step_reached_and_the_same_command_resumes_then_sigterm(records, tmp_path):
    model_dir = tmp_path / "model"
    command = _train_command(records, model_dir, *LONG)
    first = Training(command)
    try:
        first.wait_for("step 3/1000")
        first.process.send_signal(signal.SIGINT)
        code = first.finish()
    finally:
        first.kill()
    out = first.stderr()
    assert code == 130, out[-3000:]
    assert "Traceback" not in out
    latest = tf.train.latest_checkpoint(str(model_dir))
    stopped_at = _checkpoint_step(latest)
    assert 3 <= stopped_at < 250 and latest.endswith(f"ckpt-{stopped_at}")
    assert (f"train.py: SIGINT received; saved checkpoint {latest} at step {stopped_at}. "
            f"To resume, run the same command again.") in out
    assert not (model_dir / LOCK_FILENAME).exists()

    second = Training(command)
    try:
        second.wait_for(f"restored {latest} (step {stopped_at})")
        second.wait_for(f"step {stopped_at + 2}/1000")
        # a second run on the same directory is refused while this one holds it
        refused = _run(command)
        assert refused.returncode == 1, refused.stderr[-3000:]
        assert f"train.py: error: {model_dir} is in use by another training run" in refused.stderr
        assert f"pid {second.process.pid}" in refused.stderr and "Traceback" not in refused.stderr
        second.process.send_signal(signal.SIGTERM)
        code = second.finish()
    finally:
        second.kill()
    out = second.stderr()
    assert code == 143, out[-3000:]
    assert "Traceback" not in out
    latest = tf.train.latest_checkpoint(str(model_dir))
    assert _checkpoint_step(latest) > stopped_at + 2
    assert f"train.py: SIGTERM received; saved checkpoint {latest} at step {_checkpoint_step(latest)}" in out
    assert not (model_dir / LOCK_FILENAME).exists()


def test_a_second_ctrl_c_stops_at_once(records, tmp_path):
    model_dir = tmp_path / "model"
    # a bigger batch makes each step long enough for the second signal to land before the save
    run = Training(_train_command(records, model_dir, "--batch_size=16", "--max_steps=1000",
                                  "--set", "train.save_checkpoints_steps=250"))
    try:
        run.wait_for("step 2/1000")
        run.process.send_signal(signal.SIGINT)
        run.wait_for("SIGINT received: stopping after the step in flight")
        run.process.send_signal(signal.SIGINT)
        sent = time.time()
        code = run.finish(timeout=30)
    finally:
        run.kill()
    out = run.stderr()
    assert code == 130, out[-3000:]
    assert time.time() - sent < 20
    assert "train.py: stopped at once by a second interrupt" in out and "Traceback" not in out
    assert not (model_dir / LOCK_FILENAME).exists()


def test_failed_start_leaves_nothing_to_hold_and_stale_temporaries_are_removed(records, tmp_path):
    model_dir = tmp_path / "model"
    missing = tmp_path / "offline_cache" / "vgg16_weights.h5"
    failed = _run(_train_command(records, model_dir, "--max_steps=2", "--set", "model.width_multiplier=0.25",
                                 f"--pretrained={missing}"))
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert str(missing) in failed.stderr
    assert not (model_dir / "config.json").exists() and not (model_dir / LOCK_FILENAME).exists()

    # what a kill -9 during a save leaves, beside names that only look alike
    stale = model_dir / "ckpt-7_temp"
    stale.mkdir()
    (stale / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 64)
    keep = [model_dir / "ckpt-7_temp_notes", model_dir / "my_temp", model_dir / "ckpt-x_temp"]
    for path in keep:
        path.mkdir()

    # the corrected command (another width, no download) starts as if nothing had happened
    result = _run(_train_command(records, model_dir, "--batch_size=2", "--max_steps=2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not stale.exists() and all(path.exists() for path in keep)
    assert f"removed {stale}, the unfinished save" in result.stderr
    assert (model_dir / "config.json").exists()
    assert _checkpoint_step(tf.train.latest_checkpoint(str(model_dir))) == 2


def test_stop_signals_turn_the_first_signal_into_a_request_and_restore_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        assert not signals.requested()
        signal.raise_signal(signal.SIGTERM)
        assert signals.requested() and signals.received == signal.SIGTERM
        signal.raise_signal(signal.SIGTERM)  # a repeated SIGTERM changes nothing
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # a second Ctrl-C does not wait
    assert signal.getsignal(signal.SIGTERM) is before
    assert TrainingInterrupted(5, "m/ckpt-5", signal.SIGINT).exit_code == 130
    assert TrainingInterrupted(5, "m/ckpt-5", None).exit_code == 143
