"""One run directory, one writer: a lock file holding the owner's PID (issue 15, item 6).

Two ``bayescomp run`` processes writing the same run directory would interleave checkpoints and reports, and a
resumed run could then continue from another run's weights. The lock is created with ``O_CREAT | O_EXCL`` (atomic
on POSIX filesystems) and holds ``pid host``; a lock whose process no longer exists on this host is stale (the
owner was killed) and is taken over with a message, so a ``kill -9`` never blocks the next run.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".bayescomp.lock"


class RunDirLockedError(RuntimeError):
    """Another live process owns the run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _owner(path: Path) -> tuple[int, str] | None:
    try:
        pid, _, host = path.read_text().strip().partition(" ")
        return int(pid), host
    except (OSError, ValueError):
        return None


def acquire(run_dir: str | os.PathLike, log=print) -> Path:
    """Create ``run_dir/.bayescomp.lock`` for this process, taking over a stale one.

    Raises:
        RunDirLockedError: a live process (named by PID) holds the lock.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    me = f"{os.getpid()} {socket.gethostname()}"
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(path)
            if owner is not None and owner[1] not in ("", socket.gethostname()):
                raise RunDirLockedError(f"{run_dir} is in use by process {owner[0]} on host {owner[1]} "
                                        f"({path}); use another --run-dir, or delete the lock file if that run "
                                        "is gone") from None
            if owner is not None and owner[0] != os.getpid() and _alive(owner[0]):
                raise RunDirLockedError(f"{run_dir} is in use by the running process {owner[0]} ({path}); wait for "
                                        "it to finish or use another --run-dir") from None
            log(f"removing a stale lock {path} (process {owner[0] if owner else '?'} is gone)")
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(me + "\n")
        return path
    raise RunDirLockedError(f"could not lock {run_dir} ({path}): another process keeps creating it")


def release(path: Path) -> None:
    """Remove the lock if this process still owns it."""
    owner = _owner(path)
    if owner is not None and owner[0] == os.getpid():
        path.unlink(missing_ok=True)


@contextmanager
def run_dir_lock(run_dir: str | os.PathLike, log=print) -> Iterator[Path]:
    """Hold the run directory's lock for the duration of a ``with`` block."""
    path = acquire(run_dir, log)
    try:
        yield path
    finally:
        release(path)
