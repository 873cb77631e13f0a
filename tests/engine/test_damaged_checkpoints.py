"""A truncated or corrupted checkpoint: named, skipped by resume and eval.py, refused by export.py."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from ssd.modeling import checkpoints
from ssd.config.loading import save_config
from tests.apps.test_train import ROOT, _all_finite, records, tiny_config  # noqa: F401

pytestmark = pytest.mark.slow  # trains a model or starts processes


def _data_file(prefix):
    return f"{prefix}.data-00000-of-00001"


def truncate(prefix):
    path = _data_file(prefix)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return path


def flip_last_byte(prefix):
    """Same size, other bytes: only the index's checksums can tell."""
    path = _data_file(prefix)
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    return path


def small_run(directory, steps=3):
    """ckpt-1..ckpt-<steps> of a variable holding the step number, written as training does."""
    step = tf.Variable(0, dtype=tf.int64)
    weights = tf.Variable(tf.zeros([4096]))
    items = {checkpoints.GLOBAL_STEP: step, checkpoints.MODEL: tf.train.Checkpoint(w=weights)}
    saver = checkpoints.Checkpointer(items, str(directory), max_to_keep=5)
    for n in range(1, steps + 1):
        step.assign(n)
        weights.assign(tf.fill([4096], float(n)))
        saver.save(n)
    return items


@pytest.mark.parametrize("damage", [truncate, flip_last_byte])
def test_resume_and_find_fall_back_to_the_newest_intact_checkpoint(tmp_path, damage):
    items = small_run(tmp_path)
    newest = str(tmp_path / "ckpt-3")
    damage(newest)
    assert checkpoints.read_problem(newest) is not None
    assert checkpoints.read_problem(str(tmp_path / "ckpt-2")) is None

    assert checkpoints.find_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-2")
    with pytest.raises(checkpoints.DamagedCheckpointError, match=f"{newest} is damaged .*ckpt-3.data-00000-of-00001"):
        checkpoints.restore_training_state(items, newest)
    assert checkpoints.restore_newest_intact(items, str(tmp_path)) == str(tmp_path / "ckpt-2")
    assert int(items[checkpoints.GLOBAL_STEP].numpy()) == 2
    np.testing.assert_array_equal(items[checkpoints.MODEL].w.numpy(), np.full([4096], 2.0))


def test_every_checkpoint_damaged_says_how_to_choose_one(tmp_path):
    items = small_run(tmp_path, steps=2)
    for n in (1, 2):
        truncate(str(tmp_path / f"ckpt-{n}"))
    with pytest.raises(checkpoints.DamagedCheckpointError, match="pass an intact one with --checkpoint_path"):
        checkpoints.find_checkpoint(str(tmp_path))
    with pytest.raises(checkpoints.DamagedCheckpointError, match="remove the damaged ones"):
        checkpoints.restore_newest_intact(items, str(tmp_path))


def test_eval_falls_back_export_names_the_file_resume_skips_it(records, tmp_path):
    from ssd.data.input_fn import make_input_fn
    from ssd.engine.estimator import Estimator, RunConfig
    from ssd.engine.model_fn import SSDModelFn
    from ssd.modes import ModeKeys
    model_dir = tmp_path / "model"
    config = tiny_config(**{"train.max_steps": 2})
    save_config(config, model_dir)
    run_config = RunConfig(model_dir=str(model_dir), save_checkpoints_steps=1)
    Estimator(SSDModelFn, config, run_config).train(make_input_fn(str(records), config, ModeKeys.TRAIN), 2)
    damaged = truncate(str(model_dir / "ckpt-2"))

    evaluated = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"--model_dir={model_dir}",
                                f"--data_dir={records}"], cwd=ROOT, capture_output=True, text=True,
                               timeout=180)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"checkpoint {model_dir / 'ckpt-2'} is damaged ({damaged}: " in evaluated.stderr
    assert f"using {model_dir / 'ckpt-1'}, the newest intact checkpoint" in evaluated.stderr
    assert (model_dir / "eval_1" / config.eval.metric / "summary.json").exists()

    exported = subprocess.run([sys.executable, str(ROOT / "export.py"), f"--model_dir={model_dir}",
                               f"--checkpoint_path={model_dir / 'ckpt-2'}", f"--export_dir={tmp_path / 'out'}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert exported.returncode == 1 and "Traceback" not in exported.stderr
    assert f"export.py: error: checkpoint {model_dir / 'ckpt-2'} is damaged ({damaged}: " in exported.stderr

    # resuming restores ckpt-1 and trains step 2 again, replacing the damaged checkpoint
    resumed = Estimator(SSDModelFn, config, RunConfig(model_dir=str(model_dir), save_checkpoints_steps=1))
    resumed.train(make_input_fn(str(records), config, ModeKeys.TRAIN), 3)
    assert resumed.global_step == 3
    assert checkpoints.read_problem(str(model_dir / "ckpt-2")) is None
    assert _all_finite(str(model_dir / "ckpt-3"))


def test_a_relative_model_dir_finds_its_checkpoints(tmp_path, monkeypatch):
    small_run(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    assert checkpoints.listed_checkpoints("run") == [os.path.join("run", f"ckpt-{n}") for n in (1, 2, 3)]
    assert checkpoints.find_checkpoint("run") == os.path.join("run", "ckpt-3")
