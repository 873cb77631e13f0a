"""The model directory lock, with real processes holding, contending for and abandoning it."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ssd.engine import model_dir_lock
from ssd.engine.model_dir_lock import LOCK_FILENAME, ModelDirLock, ModelDirLockedError

pytestmark = pytest.mark.slow  # trains a model or starts processes


ROOT = Path(__file__).resolve().parents[2]

# A process that takes the lock on argv[1] with the command argv[2], reports on stdout, and
# holds it until its stdin closes (or until the file argv[3] exists, for races).
WORKER = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    from ssd.engine.model_dir_lock import ModelDirLock, ModelDirLockedError

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    model_dir, command = sys.argv[1], sys.argv[2]
    go = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    if go is not None:
        Path(sys.argv[4]).touch()  # ready
        while not go.exists():
            time.sleep(0.001)
    try:
        with ModelDirLock(model_dir, command=command):
            print("HELD", flush=True)
            if go is None:
                sys.stdin.read()
            else:
                while not Path(str(go) + ".done").exists():
                    time.sleep(0.01)
    except ModelDirLockedError as e:
        print(f"worker: error: {e}", file=sys.stderr)
        sys.exit(3)
""")


@pytest.fixture
def worker(tmp_path):
    path = tmp_path / "lock_worker.py"
    path.write_text(WORKER)
    return path


def start(worker, model_dir, command, *extra):
    return subprocess.Popen([sys.executable, str(worker), str(model_dir), command, *extra],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_held(process):
    line = process.stdout.readline()
    assert line == "HELD\n", process.stderr.read()


def finished_pid() -> int:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                             capture_output=True, text=True, check=True)
    return int(process.stdout)


def write_lock(model_dir: Path, **fields) -> Path:
    record = {"host": socket.gethostname(), "pid": finished_pid(), "started": time.time() - 100,
              "command": "train.py --model_dir=old", "token": "old-token", "boot_id": ""}
    record.update(fields)
    model_dir.mkdir(exist_ok=True)
    path = model_dir / LOCK_FILENAME
    path.write_text(json.dumps(record))
    return path


def test_second_process_is_refused_naming_the_holder_then_runs_after_release(worker, tmp_path):
    model_dir = tmp_path / "model"
    holder = start(worker, model_dir, "train.py --model_dir=model --config=first")
    try:
        wait_held(holder)
        record = json.loads((model_dir / LOCK_FILENAME).read_text())
        assert record["pid"] == holder.pid and record["host"] == socket.gethostname()
        assert record["command"] == "train.py --model_dir=model --config=first"

        second = start(worker, model_dir, "train.py --model_dir=model --config=second")
        out, err = second.communicate(timeout=60)
        assert second.returncode == 3 and "HELD" not in out
        since = time.strftime("%Y-%m-%d", time.gmtime(record["started"]))
        assert f"{model_dir} is in use by another training run" in err
        assert f"host {socket.gethostname()}, pid {holder.pid}, since {since}" in err
        assert "command: train.py --model_dir=model --config=first" in err
        assert f"Wait for it to finish or stop it (pid {holder.pid})" in err
        assert json.loads((model_dir / LOCK_FILENAME).read_text()) == record  # untouched
    finally:
        holder.communicate(input="", timeout=60)
    assert holder.returncode == 0
    assert not (model_dir / LOCK_FILENAME).exists()
    with ModelDirLock(model_dir) as lock:
        assert lock.held


def test_sigterm_with_the_callers_handler_releases(worker, tmp_path):
    holder = start(worker, tmp_path / "model", "train.py")
    wait_held(holder)
    holder.send_signal(signal.SIGTERM)
    holder.communicate(timeout=60)
    assert holder.returncode == 143
    assert not (tmp_path / "model" / LOCK_FILENAME).exists()


def test_killed_holder_leaves_a_stale_lock_that_is_taken_over(worker, tmp_path, caplog):
    holder = start(worker, tmp_path / "model", "train.py --killed")
    wait_held(holder)
    holder.kill()
    holder.communicate(timeout=60)
    assert (tmp_path / "model" / LOCK_FILENAME).exists()
    with caplog.at_level(logging.WARNING):
        with ModelDirLock(tmp_path / "model", command="train.py --next") as lock:
            record = json.loads(lock.path.read_text())
            assert record["pid"] == os.getpid() and record["command"] == "train.py --next"
    assert f"process {holder.pid} is gone" in caplog.text and "train.py --killed" in caplog.text


@pytest.mark.parametrize("fields, reason", [
    ({}, "is gone"),
    ({"pid": os.getpid(), "started": 1.0}, "now belongs to a process started after"),
    ({"pid": os.getpid(), "started": time.time(), "boot_id": "an earlier boot"},
     "restarted since"),
])
def test_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog, fields, reason):
    if "boot_id" in fields and not model_dir_lock._boot_id():
        pytest.skip("no /proc boot_id on this system")
    if fields.get("started") == 1.0 and model_dir_lock._process_start_time(os.getpid()) is None:
        pytest.skip("no /proc process start times on this system")
    path = write_lock(tmp_path / "model", **fields)
    with caplog.at_level(logging.WARNING):
        lock = ModelDirLock(tmp_path / "model")
        lock.acquire()
    assert reason in caplog.text and "taking over a stale lock" in caplog.text
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()


def test_live_lock_on_this_host_is_refused(tmp_path):
    path = write_lock(tmp_path / "model", pid=os.getpid(), started=time.time())
    with pytest.raises(ModelDirLockedError, match=f"pid {os.getpid()}"):
        ModelDirLock(tmp_path / "model").acquire()
    assert json.loads(path.read_text())["token"] == "old-token"


def test_lock_from_another_host_is_refused_with_the_explanation(tmp_path):
    path = write_lock(tmp_path / "model", host="gpu-node-7", pid=12345)
    with pytest.raises(ModelDirLockedError) as raised:
        ModelDirLock(tmp_path / "model").acquire()
    message = str(raised.value)
    assert "host gpu-node-7, pid 12345" in message
    assert f"cannot be checked from {socket.gethostname()}" in message
    assert f"remove {path} and start again" in message
    assert path.exists()


def test_unreadable_lock_is_refused_naming_the_file(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / LOCK_FILENAME).write_text("{not json")
    with pytest.raises(ModelDirLockedError, match="lock file is unreadable"):
        ModelDirLock(tmp_path / "model").acquire()


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_released_on_exception(tmp_path, error):
    with pytest.raises(error):
        with ModelDirLock(tmp_path / "model"):
            assert (tmp_path / "model" / LOCK_FILENAME).exists()
            raise error("stop")
    assert not (tmp_path / "model" / LOCK_FILENAME).exists()
    assert os.listdir(tmp_path / "model") == []  # no staging files left behind


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path, caplog):
    lock = ModelDirLock(tmp_path / "model")
    lock.acquire()
    path = write_lock(tmp_path / "model", token="someone-else")
    with caplog.at_level(logging.WARNING):
        lock.release()
        lock.release()
    assert json.loads(path.read_text())["token"] == "someone-else"
    assert "no longer this run's" in caplog.text


def test_threads_racing_exactly_one_wins(tmp_path):
    count = 8
    barrier = threading.Barrier(count)
    outcomes = [None] * count

    def contend(index):
        lock = ModelDirLock(tmp_path / "model", command=f"thread {index}")
        barrier.wait()
        try:
            lock.acquire()
            outcomes[index] = "won"
        except ModelDirLockedError:
            outcomes[index] = "refused"

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["refused"] * (count - 1) + ["won"]
    winner = outcomes.index("won")
    assert json.loads((tmp_path / "model" / LOCK_FILENAME).read_text())["command"] == \
        f"thread {winner}"


@pytest.mark.parametrize("stale", [False, True])
def test_processes_racing_exactly_one_wins(worker, tmp_path, stale):
    model_dir, go, count = tmp_path / "model", tmp_path / "go", 4
    if stale:
        write_lock(model_dir)
    processes = [start(worker, model_dir, f"racer {i}", str(go), str(tmp_path / f"ready{i}"))
                 for i in range(count)]
    try:
        deadline = time.time() + 120
        while not all((tmp_path / f"ready{i}").exists() for i in range(count)):
            assert time.time() < deadline, "workers did not start"
            time.sleep(0.01)
        go.touch()
        # everyone but the winner, who holds the lock until go.done exists, exits refused
        while sum(p.poll() is not None for p in processes) < count - 1:
            assert time.time() < deadline, "racers did not finish"
            time.sleep(0.01)
        time.sleep(0.5)  # a second winner, if any, would still be holding: it must not exist
        losers = [p for p in processes if p.poll() is not None]
        assert len(losers) == count - 1 and all(p.returncode == 3 for p in losers)
        winner = next(p for p in processes if p not in losers)
        record = json.loads((model_dir / LOCK_FILENAME).read_text())
        assert record["pid"] == winner.pid
        assert all(f"pid {winner.pid}" in p.stderr.read() for p in losers)
    finally:
        Path(str(go) + ".done").touch()
        for process in processes:
            process.communicate(timeout=60)
    assert winner.returncode == 0
    assert not (model_dir / LOCK_FILENAME).exists()
