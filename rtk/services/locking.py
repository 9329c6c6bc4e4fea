"""Locks on files, so that runs never interleave their files, also across machines.

Every lock here is a POSIX record lock (``fcntl.lockf``) on a lock file. Unlike ``flock``, these
are forwarded by Linux NFS clients to the server's lock manager (NFSv3 through lockd/statd,
NFSv4 in the protocol itself), so processes on different machines that share a filesystem
exclude each other. The assumption: the filesystem supports them (an NFS export mounted with
``nolock`` or ``local_lock=all``, or a Lustre mount without ``-o flock``, keeps locks local to
each machine; where that is so, give each node its own --out and store, or train sources first).
They die with their process, so a crashed run leaves no stale lock (on NFS a crashed *machine*'s
locks go when the server notices: its lease ends, or statd hears of the reboot); the lock file
itself stays (deleting it would let a third run lock a different inode than a waiter).

POSIX locks belong to a process, not to a descriptor: a second lock the same process takes on
the same file would silently succeed, and closing any descriptor of the file drops them all.
``FileLock`` therefore keeps a table of the locks this process holds, and answers from it (the
same "busy" as another process would get) without ever opening the file again.

The locks of an output folder (``--out``):

    .rtk.lock                  OutputLock: exclusive while an unsharded run writes the folder,
                               shared by every sharded run (``--shard I/N``) and by collect
    locks/point-<i>.lock       PointLock: exclusive while a sharded run runs sweep point i
    locks/shard-<I>-of-<N>.lock  ShardLock: exclusive while shard I/N runs (``rtk status``: waiting)
    locks/header.lock          held briefly by the shard that writes or checks the recipe
"""
from __future__ import annotations

import errno
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable

from rtk.errors import OutputError, write_error

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, runs are not protected
    fcntl = None

LOCK_NAME = ".rtk.lock"
LOCKS = "locks"
BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
PATIENCE = 0.5  # seconds a non-blocking lock retries: `rtk status` probes a lock by taking it for microseconds

_held: dict[str, list] = {}  # realpath -> [fd, shared, count]: the locks this process holds
_guard = threading.Lock()


def _key(path: Path) -> str:
    return os.path.realpath(path)


def _unsupported(path: Path, exc: OSError) -> OutputError:
    return OutputError(f"cannot lock {path}: {exc.strerror or exc} (a filesystem without locks, such as NFS mounted"
                       " with nolock? give each machine its own folder)")


def holder_text(fd: int) -> str:
    """What the exclusive holder wrote into the lock file: "pid N on HOST[, ...]"."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    if text.isdigit():  # the format before the host was added
        text = f"pid {text}"
    return text or "another process"


def probe(path: Path) -> tuple[str | None, str]:
    """Who holds the lock on ``path``, taking nothing for longer than a moment: (None, "") when
    free, ("shared", "") or ("exclusive", holder text). This process's own locks count."""
    path = Path(path)
    with _guard:
        mine = _held.get(_key(path))
        if mine is not None:
            return ("shared", "") if mine[1] else ("exclusive", holder_text(mine[0]))
    if fcntl is None or not path.is_file():
        return None, ""
    try:
        fd, writable = os.open(path, os.O_RDWR), True
    except PermissionError:
        try:
            fd, writable = os.open(path, os.O_RDONLY), False
        except OSError:
            return None, ""
    except OSError:
        return None, ""
    try:
        if writable and _try(fd, fcntl.LOCK_EX):
            return None, ""
        if _try(fd, fcntl.LOCK_SH):
            return ("shared", "") if writable else (None, "")
        return "exclusive", holder_text(fd)
    finally:
        os.close(fd)  # this process held nothing on the file (the table says so): nothing is dropped


def _try(fd: int, mode: int) -> bool:
    """Take and at once release a lock of ``mode``: whether it was free."""
    try:
        fcntl.lockf(fd, mode | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in BUSY:
            return False
        raise
    fcntl.lockf(fd, fcntl.LOCK_UN)
    return True


class FileLock:
    """A shared or exclusive lock on one file, held from ``acquire()`` until ``release()`` (or the
    process exits). ``busy(kind, holder)`` makes the error for a lock that another holder has."""

    def __init__(self, path: Path, shared: bool = False, holder: str = "",
                 busy: Callable[[str, str], Exception] | None = None):
        self.path = Path(path)
        self.shared = shared
        self.holder = holder  # what an exclusive holder writes after "pid N on HOST"
        self.busy = busy or (lambda kind, who: OutputError(f"{self.path} is locked by {who or 'another process'}"))
        self.key: str | None = None

    @property
    def held(self) -> bool:
        return self.key is not None

    def acquire(self, wait: bool = False, on_wait: Callable[[str], None] | None = None) -> "FileLock":
        """Take the lock; when another holder has it: raise ``busy`` (after a short retry), or with
        ``wait`` call ``on_wait(holder)`` once and wait for it."""
        if fcntl is None or self.key is not None:
            return self
        key = _key(self.path)
        with _guard:
            mine = _held.get(key)
            if mine is not None:
                if not (self.shared and mine[1]):
                    raise self.busy("shared" if mine[1] else "exclusive", holder_text(mine[0]))
                mine[2] += 1
                self.key = key
                return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_error(self.path, exc) from None
        try:
            self._lock(fd, wait, on_wait)
        except BaseException:
            os.close(fd)
            raise
        if not self.shared:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}{self.holder}\n".encode(), 0)
            except OSError:
                pass  # the holder line is only for messages; the lock itself is held
        with _guard:
            _held[key] = [fd, self.shared, 1]
        self.key = key
        return self

    def _lock(self, fd: int, wait: bool, on_wait) -> None:
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        deadline = time.monotonic() + (0 if wait else PATIENCE)
        while True:
            try:
                fcntl.lockf(fd, mode | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in BUSY:
                    raise _unsupported(self.path, exc) from None
            if time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            if not wait:
                kind = "exclusive" if not _try_quiet(fd, fcntl.LOCK_SH) else "shared"
                raise self.busy(kind, holder_text(fd) if kind == "exclusive" else "")
            if on_wait is not None:
                on_wait(holder_text(fd))
            try:
                fcntl.lockf(fd, mode)
            except OSError as exc:
                raise _unsupported(self.path, exc) from None
            return

    def release(self) -> None:
        if self.key is None:
            return
        with _guard:
            entry = _held[self.key]
            entry[2] -= 1
            if entry[2] == 0:
                del _held[self.key]
                os.close(entry[0])  # closing the descriptor drops the lock
        self.key = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _try_quiet(fd: int, mode: int) -> bool:
    try:
        return _try(fd, mode)
    except OSError:
        return False


class OutputLock(FileLock):
    """The lock on an output folder: exclusive for an unsharded run, shared by sharded runs, so
    that the two kinds never write one folder at the same time."""

    def __init__(self, out_dir: Path, shared: bool = False):
        self.out_dir = Path(out_dir)
        super().__init__(self.out_dir / LOCK_NAME, shared, busy=self._busy)

    def _busy(self, kind: str, holder: str) -> OutputError:
        if kind == "shared":
            return OutputError(f"{self.out_dir} is being written by sharded rtk runs (`rtk status {self.out_dir}`"
                               " shows their points); wait for them to finish, run this one with --shard I/N too, or"
                               " choose another --out")
        if self.shared:
            return OutputError(f"{self.out_dir} is in use by another rtk run ({holder}) that runs the whole sweep"
                               " unsharded; wait for it to finish or choose another --out")
        return OutputError(f"{self.out_dir} is in use by another rtk run ({holder}); wait for it to finish or"
                           " choose another --out")

    def check(self) -> None:
        """Fail now when a run of the other kind (or, for an unsharded run, any run) holds the
        folder, without taking the lock (nothing is created)."""
        kind, holder = probe(self.path)
        if kind == "exclusive" or (kind == "shared" and not self.shared):
            raise self._busy(kind, holder)


class PointLock(FileLock):
    """Held by the sharded run that runs sweep point ``index`` (``label`` names it in messages)."""

    def __init__(self, out_dir: Path, index: int, label: str = "", shard: str = ""):
        self.out_dir, self.index, self.label = Path(out_dir), index, label
        super().__init__(point_lock_path(out_dir, index), holder=f", shard {shard}" if shard else "",
                         busy=self._busy)

    def _busy(self, kind: str, holder: str) -> OutputError:
        what = f"point {self.index}{f' ({self.label})' if self.label else ''}"
        return OutputError(f"{what} of {self.out_dir} is being run by another rtk run ({holder}); give every shard"
                           " its own --shard I/N of the same N, or wait for it to finish")


class ShardLock(FileLock):
    """Held while shard ``shard`` of ``of`` runs, so `rtk status` can say which points wait for it."""

    def __init__(self, out_dir: Path, shard: int, of: int):
        self.out_dir, self.name = Path(out_dir), f"{shard}/{of}"
        super().__init__(shard_lock_path(out_dir, shard, of), busy=self._busy)

    def _busy(self, kind: str, holder: str) -> OutputError:
        return OutputError(f"shard {self.name} of {self.out_dir} is already running ({holder}); wait for it to finish"
                           " (rtk status shows its points) or give this one another --shard")


def point_lock_path(out_dir: Path, index: int) -> Path:
    return Path(out_dir) / LOCKS / f"point-{index}.lock"


def shard_lock_path(out_dir: Path, shard: int, of: int) -> Path:
    return Path(out_dir) / LOCKS / f"shard-{shard}-of-{of}.lock"


def header_lock(out_dir: Path) -> FileLock:
    """Held while a shard writes or checks the folder's recipe.resolved.toml and points/sweep.json."""
    return FileLock(Path(out_dir) / LOCKS / "header.lock")
