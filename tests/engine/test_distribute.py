"""Strategies by name, batch checks, and numerical equivalence of distributed training."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ssd.engine.distribute import DistributionError, check_batch_divisible, make_strategy, parse_tf_config

pytestmark = pytest.mark.slow  # trains a model or starts processes


WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = WORKER.parent.parent


def test_batch_divisibility_suggests_the_nearest_sizes():
    assert check_batch_divisible(32, 4) == 8
    assert check_batch_divisible(7, 1) == 7
    with pytest.raises(DistributionError, match="batch 30 does not split over 4 replicas; use 28 or 32"):
        check_batch_divisible(30, 4)
    with pytest.raises(DistributionError, match="batch 3 does not split over 4 replicas; use 4"):
        check_batch_divisible(3, 4)


@pytest.mark.parametrize("text, message", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "no 'cluster'"),
    ('{"cluster": {"worker": ["a:1"]}}', "needs 'task'"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "not a job"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "out of range"),
])
def test_tf_config_errors_say_what_is_wrong(text, message):
    with pytest.raises(DistributionError, match=message):
        parse_tf_config(text)


def test_make_strategy(monkeypatch):
    with pytest.raises(DistributionError, match="unknown strategy 'ring'"):
        make_strategy("ring")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(DistributionError, match="TF_CONFIG"):
        make_strategy("multi_worker")
    assert make_strategy("auto").num_replicas_in_sync == 1  # a CPU-only machine
    assert make_strategy("one_device").num_replicas_in_sync == 1


def _run(args, timeout, env=None):
    result = subprocess.run([sys.executable, str(WORKER), *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_replicas_match_one_replica_on_the_same_global_batch(tmp_path):
    _run(["replicas", str(tmp_path)], timeout=180)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["replicas"] == [1, 2]
    positives = report["positives_per_image"]
    # the first replica's half holds far more positives, so per-replica normalization would differ
    assert positives[0] + positives[1] > 3 * (positives[2] + positives[3]) > 0
    one, two = report["loss"]
    assert len(one) == len(two) == 2
    np.testing.assert_allclose(two, one, rtol=2e-5)
    for tag in ("cls_loss", "loc_loss", "l2_loss", "num_positives", "accuracy"):
        np.testing.assert_allclose(report[tag][1], report[tag][0], rtol=2e-5, err_msg=tag)
    assert report["num_positives"][0][0] == sum(positives)

    # Updated weights agree to float rounding, measured against the size of the update itself
    # (a wrong normalization would be off by a sizeable fraction of the update). The bound is
    # 1e-3 of the update: where weight gradients are matrix products over batch x positions
    # (ssd.modeling.convolution, oneDNN without AVX-512), a replica's half batch sums in other
    # blocks, and two steps at this learning rate magnify that to ~3e-4.
    weights = np.load(tmp_path / "weights.npz")
    count = len([k for k in weights if k.startswith("one_")])
    moved = 0
    for i in range(count):
        one, two, init = weights[f"one_{i}"], weights[f"two_{i}"], weights[f"init_{i}"]
        update = np.abs(one - init).max()
        assert np.abs(two - one).max() <= 1e-3 * update + 1e-8, f"variable {i}"
        moved += update > 1e-4
    assert moved > count // 2


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(mode, tmp_path, stdout):
    """Two local processes of tests/distributed_worker.py in `mode`, one cluster on free ports."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster,
                                                     "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            [sys.executable, str(WORKER), mode, str(tmp_path)], cwd=ROOT, env=env,
            stdout=stdout, stderr=subprocess.PIPE, text=True))
    return processes


def test_multi_worker_training_keeps_workers_identical_and_only_the_chief_writes(tmp_path):
    processes = _start_workers("worker", tmp_path, subprocess.PIPE)
    try:
        outputs = [p.communicate(timeout=240) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    reports = [json.loads((tmp_path / f"report_{i}.json").read_text()) for i in range(2)]
    assert [r["chief"] for r in reports] == [True, False]
    assert all(r["replicas"] == 2 and r["global_step"] == 2 for r in reports)
    first, second = np.load(tmp_path / "weights_0.npz"), np.load(tmp_path / "weights_1.npz")
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    model_dir = tmp_path / "model"
    assert sorted(p.name for p in model_dir.glob("ckpt-*.index")) == ["ckpt-1.index", "ckpt-2.index"]
    # the non-chief's scratch checkpoints are gone
    assert not list(model_dir.glob(".tmp_*"))


def test_sigterm_to_one_worker_makes_every_worker_save_the_same_step_and_stop(tmp_path):
    processes = _start_workers("preempt", tmp_path, subprocess.DEVNULL)
    try:
        chief_log = []
        for line in processes[0].stderr:  # wait until the cluster trains
            chief_log.append(line)
            if "step 3/10000" in line:
                break
        assert "step 3/10000" in chief_log[-1], "".join(chief_log)[-3000:]
        processes[1].send_signal(signal.SIGTERM)  # the non-chief only
        outputs = [p.communicate(timeout=120) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    errors = ["".join(chief_log) + outputs[0][1], outputs[1][1]]
    assert [p.returncode for p in processes] == [143, 143], [e[-3000:] for e in errors]
    reports = [json.loads((tmp_path / f"report_{i}.json").read_text()) for i in range(2)]
    step = reports[0]["step"]
    assert step >= 3 and all(r["step"] == r["global_step"] == step for r in reports)
    model_dir = tmp_path / "model"
    assert reports[0]["checkpoint"] == str(model_dir / f"ckpt-{step}")
    assert sorted(p.name for p in model_dir.glob("ckpt-*.index")) == [f"ckpt-{step}.index"]
    # the layout is ours alone: the handler's run counter stays out of it
    names = tf.train.load_checkpoint(str(model_dir / f"ckpt-{step}")).get_variable_to_shape_map()
    assert "global_step/.ATTRIBUTES/VARIABLE_VALUE" in names
    assert not [n for n in names if "checkpointed_runs" in n]
    assert not list(model_dir.glob(".tmp_*"))  # the non-chief's scratch checkpoints are gone
