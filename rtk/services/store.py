"""The source store: every source rtk trains (and, with the importers, every imported one), kept
once under a content-addressed key and reused by every recipe that needs it.

Location: ``--store DIR``, else ``$RTK_HOME``, else ``$XDG_CACHE_HOME/rtk``, else ``~/.cache/rtk``.
Layout under it:

    sources/<key>/weights.safetensors   the weights
    sources/<key>/info.json             what made them (recipe, run, env, versions, clean accuracy,
                                        seconds) and the weights' sha256 and size
    locks/<key>.lock                    held (a POSIX lock) by the process that is training <key>
    data/                               where --download puts datasets when no root is given

An entry is built in a temporary folder beside its final place and renamed into place, so it is
either whole or absent. Every load re-hashes the weights against info.json: a corrupt or
truncated entry is an error naming ``rtk sources rm KEY``, never silently used. Keys come from
rtk.config.source_key.

The store may be shared by machines (``RTK_HOME`` on a shared filesystem, jobs of a cluster on
different nodes): an entry appears by a rename, and the lock on a key that is being trained is a
POSIX record lock (``fcntl.lockf``, rtk.services.locking), which Linux NFS clients forward to the
server's lock manager (NFSv3 lockd, NFSv4 built in), unlike ``flock`` on some NFS setups. This
assumes the filesystem honours those locks across machines; where it does not (NFS mounted with
``nolock`` or ``local_lock=all``, a Lustre mount without ``-o flock``), two nodes that miss the
same source may both train it (the later one then finds the entry in place and uses it, or, when
both publish at the same moment, stops with an error and reuses it when run again). There, give
each node its own store, or train the sources first (``rtk run RECIPE --sources-only --source
K/M``, one job per source, then the transfers).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from rtk.errors import RtkError, write_error
from rtk.services.locking import FileLock

HOME_ENV = "RTK_HOME"
WEIGHTS, INFO = "weights.safetensors", "info.json"


class StoreError(RtkError):
    """The store, or an entry in it, cannot be used."""


def home(explicit: str | Path | None = None) -> Path:
    """The store's folder: ``explicit`` (--store), else $RTK_HOME, else the user's cache folder."""
    if explicit is not None and str(explicit).strip():
        return Path(explicit).expanduser().absolute()
    env = os.environ.get(HOME_ENV, "").strip()
    if env:
        return Path(env).expanduser().absolute()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache).expanduser() if cache else Path.home() / ".cache").absolute() / "rtk"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Entry:
    key: str
    path: Path
    info: dict

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    def problem(self) -> str | None:
        """Why this entry cannot be used (unreadable info, missing file, size or hash mismatch), or None."""
        if "_problem" in self.info:
            return self.info["_problem"]
        if not self.weights.is_file():
            return f"{WEIGHTS} is missing"
        recorded = self.info.get("sha256")
        if not isinstance(recorded, str):
            return f"{INFO} records no sha256"
        size = self.weights.stat().st_size
        if self.info.get("size") not in (None, size):
            return f"{WEIGHTS} has {size} bytes, {INFO} records {self.info['size']} (truncated?)"
        actual = sha256_file(self.weights)
        if actual != recorded:
            return f"{WEIGHTS} has sha256 {actual[:12]}..., {INFO} records {recorded[:12]}..."
        return None

    def verified(self) -> "Entry":
        problem = self.problem()
        if problem:
            raise StoreError(f"source store entry {self.key} ({self.path}) is corrupt: {problem}; remove it with"
                             f" `rtk sources rm {self.key}` and run again to rebuild it")
        return self


class SourceStore:
    def __init__(self, root: str | Path | None = None):
        self.root = home(root)
        self.sources = self.root / "sources"
        self.locks = self.root / "locks"

    def __repr__(self) -> str:
        return f"SourceStore({str(self.root)!r})"

    def _read(self, folder: Path) -> Entry:
        try:
            info = json.loads((folder / INFO).read_text(encoding="utf-8"))
            if not isinstance(info, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            reason = "missing" if isinstance(exc, FileNotFoundError) else f"unreadable ({exc})"
            info = {"_problem": f"{INFO} is {reason}"}
        return Entry(folder.name, folder, info)

    def entries(self) -> list[Entry]:
        """Every entry (complete or corrupt), oldest first; temporary folders are skipped."""
        if not self.sources.is_dir():
            return []
        found = [self._read(p) for p in self.sources.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted(found, key=lambda e: (str(e.info.get("created", "")), e.key))

    def get(self, key: str) -> Entry | None:
        """The verified entry ``key``; None when absent; StoreError when present but corrupt."""
        folder = self.sources / key
        if not folder.is_dir():
            return None
        entry = self._read(folder)
        if "_problem" in entry.info:
            raise StoreError(f"source store entry {key} ({folder}) is corrupt: {entry.info['_problem']}; remove it"
                             f" with `rtk sources rm {key}` and run again to rebuild it")
        return entry.verified()

    def find(self, prefix: str) -> Entry:
        """The entry whose key is ``prefix`` or starts with it (unverified), as `rtk sources show` takes it."""
        entries = self.entries()
        matches = [e for e in entries if e.key == prefix] or [e for e in entries if e.key.startswith(prefix)]
        if not prefix or not matches:
            raise StoreError(f'no source "{prefix}" in the store {self.root}; `rtk sources` lists its keys')
        if len(matches) > 1:
            keys = ", ".join(e.key for e in matches[:5])
            raise StoreError(f'"{prefix}" matches {len(matches)} sources ({keys}); give more of the key')
        return matches[0]

    def publish(self, key: str, write_weights: Callable[[Path], None], info: dict) -> Entry:
        """Add entry ``key``: ``write_weights(path)`` writes the weights file, then the hash and the
        info are written beside it, and the folder is renamed into place (whole or absent)."""
        try:
            self.sources.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.sources, prefix=f".{key}."))
        except OSError as exc:
            raise write_error(self.sources, exc) from None
        try:
            write_weights(tmp / WEIGHTS)
            info = dict(info, key=key, sha256=sha256_file(tmp / WEIGHTS), size=(tmp / WEIGHTS).stat().st_size)
            (tmp / INFO).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
            for name in (WEIGHTS, INFO):
                with open(tmp / name, "rb") as handle:
                    os.fsync(handle.fileno())
            final = self.sources / key
            if final.exists():  # published meanwhile by a process that did not take the lock (Windows)
                shutil.rmtree(tmp, ignore_errors=True)
                return self.get(key)
            os.rename(tmp, final)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise write_error(self.sources / key, exc) from None
            raise
        return Entry(key, final, info)

    def remove(self, key: str) -> None:
        """Delete entry ``key`` (renamed aside first, so no reader sees half of it)."""
        if not key or "/" in key or os.sep in key or key.startswith("."):
            raise StoreError(f'"{key}" is not a source key; `rtk sources` lists them')
        folder = self.sources / key
        trash = self.sources / f".rm-{key}-{os.getpid()}"
        try:
            os.rename(folder, trash)
        except FileNotFoundError:
            raise StoreError(f'no source "{key}" in the store {self.root}') from None
        except OSError as exc:
            raise write_error(folder, exc) from None
        shutil.rmtree(trash, ignore_errors=True)

    def stale_temporaries(self, older_than: float = 24 * 3600) -> list[Path]:
        """Temporary folders a killed process left (older than a day, so never one being written)."""
        if not self.sources.is_dir():
            return []
        now, found = time.time(), []
        for path in self.sources.iterdir():
            try:
                if path.name.startswith(".") and path.is_dir() and now - path.stat().st_mtime > older_than:
                    found.append(path)
            except FileNotFoundError:  # renamed into place or removed meanwhile
                pass
        return found

    @contextlib.contextmanager
    def lock(self, key: str, on_wait: Callable[[str], None] = lambda holder: None) -> Iterator[None]:
        """Hold ``key``'s lock: the process that trains a missing source holds it, so another one
        that needs the same source waits (``on_wait(holder)`` once) instead of training it twice,
        on this machine or another that shares the store (a POSIX record lock, see the module's
        docstring). It dies with its process: a killed trainer never leaves a stale lock."""
        path = self.locks / f"{key}.lock"

        def busy(kind: str, holder: str) -> StoreError:  # only a second lock on it within this process
            return StoreError(f"source {key} is locked by this process already ({holder}); train it in one place")

        lock = FileLock(path, busy=busy).acquire(wait=True, on_wait=on_wait)
        try:
            yield
        finally:
            lock.release()
