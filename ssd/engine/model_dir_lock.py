"""One training run per model directory: a lock file that names its holder.

Two training runs writing checkpoints into one model directory would each start from scratch and
overwrite the other's checkpoints without a word. `ModelDirLock(model_dir)` is held for the whole
run; a second writer is refused with an error naming the holder (host, pid, since when, command)
and what to do.

    with ModelDirLock(model_dir):   # ModelDirLockedError when another run holds it
        train(...)

Who takes it: the process that writes checkpoints. With several workers only the chief does
(the other workers write nothing of their own into the directory); an evaluator watching the
directory beside training (`eval.py --watch`) only reads and never takes it.

Release: on leaving the `with` block, normally or by an exception (KeyboardInterrupt, that is
SIGINT, included). SIGTERM ends Python without unwinding unless the caller turns it into an
exception first, e.g. `signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))`. A holder killed
outright (SIGKILL, power loss) leaves the file behind: on the same host the lock is then stale
(its pid is gone, or now belongs to a process started after the lock was taken, or the machine
was rebooted since) and the next run takes it over with a warning.

Shared file systems: the lock file is created complete under a unique name and published with
link(), which is atomic on local disks and NFS alike and fails if the lock exists (O_CREAT|O_EXCL
where link() is not supported); no fcntl/flock locks, which NFS may not honour. A lock held on
another host cannot be checked for liveness from here, so it is always refused: if that run has
ended, the file must be removed by hand.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from absl import logging

from ssd.errors import UserError

LOCK_FILENAME = "train.lock"
_BREAKER_SUFFIX = ".takeover"
_BREAKER_EXPIRY_SECONDS = 60.0  # a stale takeover marker; taking over lasts milliseconds
_UNREADABLE_RETRIES = 20  # a lock created by O_EXCL is empty until its writer fills it in
_RETRY_SECONDS = 0.05


class ModelDirLockedError(UserError, RuntimeError):
    """Another process holds the model directory's lock; the message names it and the remedy."""


@dataclass(frozen=True)
class LockRecord:
    """The content of a lock file: who holds it since when, and a token unique to this hold."""
    host: str
    pid: int
    started: float  # Unix time the lock was taken
    command: str
    token: str
    boot_id: str = ""  # Linux: changes at every boot, so a lock from before a reboot is stale

    def since(self) -> str:
        return datetime.fromtimestamp(self.started, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

    def describe(self) -> str:
        return (f"host {self.host}, pid {self.pid}, since {self.since()}, "
                f"command: {self.command}")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start_time(pid: int) -> float | None:
    """Unix time process `pid` started (Linux /proc), or None when it cannot be told."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5); the first two were split off
        boot_time = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                         if line.startswith("btime "))
        return boot_time + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def stale_reason(record: LockRecord, host: str) -> str | None:
    """Why a same-host lock's holder is certainly gone, or None while it may be alive."""
    if record.host != host:
        return None
    if record.boot_id and _boot_id() and record.boot_id != _boot_id():
        return "the machine was restarted since"
    if not _pid_alive(record.pid):
        return f"process {record.pid} is gone"
    started = _process_start_time(record.pid)
    # btime and clock ticks round to whole seconds: allow 2 s before calling the pid reused
    if started is not None and started > record.started + 2.0:
        return f"pid {record.pid} now belongs to a process started after the lock was taken"
    return None


def _read(path: Path) -> LockRecord | None:
    """The record in `path`, retried briefly while it is being written; None if it is gone."""
    text = ""
    for _ in range(_UNREADABLE_RETRIES):
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            return LockRecord(**json.loads(text))
        except (ValueError, TypeError):
            time.sleep(_RETRY_SECONDS)
    raise ModelDirLockedError(
        f"{path}: lock file is unreadable ({text[:200]!r}); if no training run uses "
        f"{path.parent}, remove it and start again")


def _publish(path: Path, content: str) -> bool:
    """Creates `path` holding `content` unless it exists; True if this call created it."""
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with open(staging, "w") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    try:
        try:
            os.link(staging, path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            # NFS: the link may have been made although the reply was lost
            if os.stat(staging).st_nlink == 2:
                return True
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        try:  # file systems without hard links
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        return True
    finally:
        staging.unlink(missing_ok=True)


def _unlink_if(path: Path, token: str) -> bool:
    """Removes `path` if it still holds the lock `token`; True if removed."""
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return False
    if record.get("token") != token:
        return False
    path.unlink(missing_ok=True)
    return True


class ModelDirLock:
    """Context manager holding `model_dir`'s training lock; see the module documentation."""

    def __init__(self, model_dir: str | os.PathLike, command: str | None = None):
        self.model_dir = Path(model_dir)
        self.path = self.model_dir / LOCK_FILENAME
        self.command = command if command is not None else shlex.join(sys.argv)
        self.host = socket.gethostname()
        self._record: LockRecord | None = None

    @property
    def held(self) -> bool:
        return self._record is not None

    def acquire(self) -> LockRecord:
        """Takes the lock, taking over a stale one; raises ModelDirLockedError when it is held."""
        if self._record is not None:
            raise ModelDirLockedError(f"{self.path}: already held by this ModelDirLock")
        self.model_dir.mkdir(parents=True, exist_ok=True)
        record = LockRecord(host=self.host, pid=os.getpid(), started=time.time(),
                            command=self.command, token=uuid.uuid4().hex, boot_id=_boot_id())
        content = json.dumps(asdict(record), indent=1) + "\n"
        while True:
            if _publish(self.path, content):
                self._record = record
                return record
            holder = _read(self.path)
            if holder is None:  # released between our attempt and the read: try again
                continue
            reason = stale_reason(holder, self.host)
            if reason is None:
                raise ModelDirLockedError(self._refusal(holder))
            self._remove_stale(holder, reason)

    def _remove_stale(self, holder: LockRecord, reason: str) -> None:
        """Removes the stale lock `holder`, unless another process took over first.

        A takeover marker serializes takers: without it, two of them could both see the stale
        lock, one could replace it, and the other would then delete that fresh lock.
        """
        breaker = self.path.with_name(self.path.name + _BREAKER_SUFFIX)
        if not _publish(breaker, self.command):
            try:
                if time.time() - breaker.stat().st_mtime > _BREAKER_EXPIRY_SECONDS:
                    breaker.unlink(missing_ok=True)  # its taker died mid-takeover
            except FileNotFoundError:
                pass
            time.sleep(_RETRY_SECONDS)
            return
        try:
            if _unlink_if(self.path, holder.token):
                logging.warning("%s: taking over a stale lock (%s): %s", self.path, reason,
                                holder.describe())
        finally:
            breaker.unlink(missing_ok=True)

    def _refusal(self, holder: LockRecord) -> str:
        head = (f"{self.model_dir} is in use by another training run ({holder.describe()}). "
                f"Two runs on one model directory would overwrite each other's checkpoints.")
        if holder.host != self.host:
            return (f"{head} That run is on host {holder.host}, so whether it is still running "
                    f"cannot be checked from {self.host}. Wait for it to finish, or use another "
                    f"model directory; if it has ended (check on {holder.host}), remove "
                    f"{self.path} and start again.")
        return (f"{head} Wait for it to finish or stop it (pid {holder.pid}), or use another "
                f"model directory. An evaluator may watch this directory meanwhile; it takes "
                f"no lock.")

    def release(self) -> None:
        """Removes the lock file if it is still ours; safe to call more than once."""
        if self._record is None:
            return
        token, self._record = self._record.token, None
        if not _unlink_if(self.path, token):
            logging.warning("%s: the lock was no longer this run's at release; left as found",
                            self.path)

    def __enter__(self) -> ModelDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
