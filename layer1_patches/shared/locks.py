"""One writer per output: an exclusive lock file beside it, and a partial name only that writer uses.

`output_lock(final)` creates `.<name>.lock` with `O_CREAT|O_EXCL` (atomic on local file systems and on NFSv3+,
where `fcntl` locks need a working lockd and often do not) holding the owner's host, PID and SLURM job. A second
writer of the same output gets `OutputBusy`, one line naming the owner. A lock whose owner was a process on this
host that no longer exists (SIGKILL, OOM killer) is stale and taken over; a lock from another host cannot be
checked from here (the node may have crashed, or may still be writing), so it is reported with the file to delete.

Takeover is serialised by `flock` on a guard file: without it two writers that both found the same stale lock
could each delete the other's fresh lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from layer1_patches.shared.atomic import remove_inside
from layer1_patches.shared.errors import CamnetError

# A lock file without a readable record this old was left by a writer stopped between creating and filling it.
GARBAGE_SECONDS = 30.0


GUARD = ".camnet-lock-guard"  # flocked while a stale lock is taken over (see `_take_over`)


class OutputBusy(CamnetError):
    """Another live writer holds this output's lock."""


def _host() -> str:
    # Dots would make a partial name ambiguous (see `writer_tag`); the short host name is what users see anyway.
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"


def writer_tag() -> str:
    """`<host>-<pid>`: unique among live writers of one output, without dots."""
    return f"{_host()}-{os.getpid()}"


def lock_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.lock")


def writer_partial(final: Path) -> Path:
    """Where this process writes `final` before renaming it: `.<name>.<host>-<pid>.partial`."""
    return final.with_name(f".{final.name}.{writer_tag()}.partial")


def stale_partials(final: Path) -> list[Path]:
    """Partial outputs of `final` left by earlier writers (the lock holder may remove them)."""
    pattern = re.compile(rf"\.{re.escape(final.name)}(\.[A-Za-z0-9_-]+-\d+)?\.partial")
    try:
        names = os.listdir(final.parent)
    except OSError:
        return []
    return [final.parent / n for n in names if pattern.fullmatch(n)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _owner(path: Path) -> dict[str, object] | None:
    """The lock's owner record; None when the file is gone. A half-written record reads as {}."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def describe(owner: dict[str, object]) -> str:
    job = f", SLURM job {owner['job']}" if owner.get("job") else ""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(str(owner.get("time", 0)))))
    return f"{owner.get('host', '?')}/pid {owner.get('pid', '?')}{job} since {since}"


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), "" where unknown: with the PID it names one
    process, so a PID reused by another process does not keep a dead writer's lock alive."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _job_gone(job: str) -> bool:
    """SLURM no longer runs `job` (squeue answers without it, or says the id is unknown); False when unsure."""
    try:
        proc = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if proc.returncode != 0:
        return "Invalid job id" in proc.stderr
    return not proc.stdout.strip()


def _is_stale(owner: dict[str, object]) -> bool:
    """The lock's writer is certainly gone.

    On this host: its process no longer exists, or the PID now names another process (its start time differs: a
    reused PID, or an earlier container of one PID namespace). Elsewhere: it was an earlier run of our own SLURM job (a
    requeue after a node failure or preemption keeps the job id and counts restarts), or squeue says its job has
    ended. A lock of another host whose job SLURM cannot vouch for stays: that writer may still be writing over
    the shared file system.
    """
    pid, job = owner.get("pid"), str(owner.get("job") or "")
    if owner.get("host") == _host() and isinstance(pid, int):
        if not _alive(pid):
            return True
        started = str(owner.get("started") or "")
        return bool(started) and started != _start_time(pid)
    if job and job == os.environ.get("SLURM_JOB_ID", ""):  # requeued: SLURM counts the restarts
        return str(owner.get("restart") or "0") != os.environ.get("SLURM_RESTART_COUNT", "0")
    return bool(job) and _job_gone(job)


def _create(path: Path, what: str) -> bool:
    """Create the lock file with our record; False when it exists already."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as err:
        raise CamnetError(f"{what}: cannot create lock {path} ({err.strerror or err})") from None
    record = {"host": _host(), "pid": os.getpid(), "started": _start_time(os.getpid()),
              "job": os.environ.get("SLURM_JOB_ID", ""), "restart": os.environ.get("SLURM_RESTART_COUNT", "0"),
              "time": time.time()}
    try:
        os.write(fd, json.dumps(record).encode())
    except OSError as err:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise CamnetError(f"{what}: cannot write lock {path} ({err.strerror or err})") from None
    os.close(fd)
    return True


def _take_over(path: Path, seen: dict[str, object]) -> None:
    """Remove the stale lock `seen` unless another writer replaced it first.

    The guard is one file per folder and is never deleted: a guard removed after use lets a waiter holding the
    old file and a newcomer creating a new one both in.
    """
    guard = path.with_name(GUARD)
    try:
        fd = os.open(guard, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _owner(path) == seen:
            path.unlink(missing_ok=True)
    except OSError as err:
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        # No flock here: leave the stale lock for the user rather than risk two owners.
    finally:
        os.close(fd)


def acquire(final: Path) -> Path:
    """Take `final`'s lock or raise `OutputBusy`; returns the lock file (release with `release`)."""
    path = lock_path(final)
    what = str(final)
    for _ in range(5):  # a lock released or taken over between our tries: try again
        if _create(path, what):
            return path
        owner = _owner(path)
        if owner is None:
            continue
        if not owner:  # being written this instant, or garbage: give its writer a moment
            time.sleep(0.2)
            owner = _owner(path)
            if owner is None:
                continue
        if _is_stale(owner) or (not owner and _age(path) > GARBAGE_SECONDS):
            _take_over(path, owner)
            continue
        who = describe(owner) if owner else "an unknown writer (unreadable lock)"
        raise OutputBusy(f"{what}: being written by {who} (lock {path}); if that process is gone, "
                         "delete the lock file and rerun")
    raise OutputBusy(f"{what}: could not take lock {path}; another writer keeps taking it")


def release(path: Path) -> None:
    owner = _owner(path)
    if owner and owner.get("pid") == os.getpid() and owner.get("host") == _host():
        path.unlink(missing_ok=True)


@contextmanager
def output_lock(final: Path) -> Iterator[Path]:
    """Hold `final`'s lock for the block; partial outputs of earlier, dead writers are removed on entry."""
    path = acquire(final)
    try:
        for leftover in stale_partials(final):
            remove_inside(leftover, final.parent)  # a dead writer's; the lock holder owns the output
        yield path
    finally:
        release(path)
