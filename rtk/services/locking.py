"""An exclusive lock on an output folder, so that two runs never interleave their files.

``flock`` locks die with the process, so a crashed run never leaves a stale lock; the lock
file itself stays (deleting it would let a third run lock a different inode than a waiter).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from rtk.errors import OutputError, write_error

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, runs are not protected
    fcntl = None

LOCK_NAME = ".rtk.lock"


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "another process"


class OutputLock:
    """Held from ``acquire()`` until ``release()`` (or the process exits)."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self.fd: int | None = None

    def _busy(self, fd: int) -> OutputError:
        return OutputError(f"{self.out_dir} is in use by another rtk run ({_holder(fd)}); wait for it to finish or"
                           " choose another --out")

    def check(self) -> None:
        """Fail now when another run holds the folder, without taking the lock (nothing is created)."""
        if fcntl is None or not self.path.is_file():
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise self._busy(fd) from None
        finally:
            os.close(fd)

    def acquire(self) -> "OutputLock":
        if fcntl is None or self.fd is not None:
            return self
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_error(self.path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            busy = exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
            error = self._busy(fd) if busy else write_error(self.path, exc)
            os.close(fd)
            raise error from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is only for the message; the lock itself is held
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
