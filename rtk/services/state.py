"""Resume state: the files an interrupted run continues from, in one layout under the run folder,
each loaded, checked against its fingerprint, saved and removed in one way.

The layout (``RunFolder``), under the run folder:

    checkpoints/run-<i>.safetensors      run i's target model, saved before its evaluation (kept)
    train-state/<stage>-<i>[.<n>].pt     fit's checkpoints (stage "source", i the k-th distinct source
                                         of the sweep, or "transfer"; n counts a strategy's second
                                         and later trainings), deleted once the stage's weights are
                                         saved (a trained source's go to the source store,
                                         rtk.services.store, not to this folder)
    eval-state/run-<i>.json              run i's pending marker: trained, not yet in results.json
    eval-state/run-<i>.safetensors       run i's evaluation progress
    eval-state/<name>-<i>.jsonl          run i's per-example rows (``ctx.state("certify")``: a certifier's)
    points/sweep.json                    a sharded run's sweep (``--shard I/N``, rtk.services.shards):
                                         results.json's header and every point's id, in order
    points/<i>.json                      point i's finished result (its entry of results.json)
    points/<i>.error                     point i's failure: the one-line message, the log's path
    locks/                               the per-point and per-shard locks (rtk.services.locking)

A ``StateFile`` is one of these files; its suffix picks the format, and none of them unpickles:
``.safetensors`` (tensors, other values as JSON metadata), ``.pt`` (tensors and plain values,
read with ``torch.load(weights_only=True)``), ``.json``, and ``.jsonl`` (a fingerprint line, then
rows appended one line each by ``RowLog``). Every other write goes through a temporary file and a
rename (``atomic_write``), so a killed run leaves the previous state whole. A state saved with a
fingerprint (what must match for it to be continued) is loaded only by a caller that expects the
same one; a difference, or a file that cannot be read, is one error naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rtk.errors import RtkError, write_error

TRAIN_STATE, EVAL_STATE, CHECKPOINTS, FEATURE_CACHE = "train-state", "eval-state", "checkpoints", "feature-cache"
POINTS = "points"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Have ``write`` fill a temporary file beside ``path``, flush it to disk, then rename it over
    ``path``: readers and a killed run never see half a file. Any OSError (full disk, lost
    permission) becomes a one-line error naming ``path``; the temporary file never stays behind."""
    path = Path(path)
    for attempt in range(3):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            break
        except FileNotFoundError as exc:  # another shard's tidy() removed the folder, empty, just now
            if attempt == 2:
                raise write_error(path, exc) from None
        except OSError as exc:
            raise write_error(path, exc) from None
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see atomic_write)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def stale_temporaries(path: Path) -> list[Path]:
    """Temporary files atomic_write left beside ``path`` when its process was killed mid-write."""
    return list(Path(path).parent.glob(f".{Path(path).name}.*.tmp"))


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line: its message's first line, else its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def tensor_digest(tensor) -> str:
    """A short hash of a tensor's bytes, for fingerprints."""
    return hashlib.sha256(tensor.detach().to("cpu").contiguous().numpy().tobytes()).hexdigest()[:16]


def model_digest(model) -> str:
    """A hash of the weights, so a saved state is never continued with another model."""
    import torch

    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _read_safetensors(path: Path) -> tuple[Any, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    fingerprint = json.loads(metadata.pop("fingerprint")) if "fingerprint" in metadata else None
    return fingerprint, {**state, **{key: json.loads(value) for key, value in metadata.items()}}


def _write_safetensors(tmp: Path, fingerprint: Any, state: dict) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {key: value.contiguous() for key, value in state.items() if isinstance(value, torch.Tensor)}
    metadata = {key: json.dumps(value, default=str) for key, value in state.items() if key not in tensors}
    if fingerprint is not None:
        metadata["fingerprint"] = json.dumps(fingerprint, sort_keys=True)
    save_file(tensors, str(tmp), metadata=metadata)


def _read_torch(path: Path) -> tuple[Any, dict]:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"holds a {type(state).__name__}, not a dict")
    return state.pop("fingerprint", None), state


def _write_torch(tmp: Path, fingerprint: Any, state: dict) -> None:
    import torch

    torch.save(state if fingerprint is None else {**state, "fingerprint": fingerprint}, tmp)


def _read_json(path: Path) -> tuple[Any, dict]:
    state = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(state, dict):
        raise ValueError(f"holds a {type(state).__name__}, not an object")
    return state.pop("fingerprint", None), state


def _write_json(tmp: Path, fingerprint: Any, state: dict) -> None:
    tmp.write_text(json.dumps(state if fingerprint is None else {**state, "fingerprint": fingerprint}) + "\n",
                   encoding="utf-8")


def _read_rows(path: Path) -> tuple[Any, dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    fingerprint = json.loads(lines[0])["fingerprint"]
    rows = []
    for line in lines[1:]:
        try:
            rows.append(json.loads(line))
        except ValueError:  # the line being written when the run was killed
            continue
    return fingerprint, {"rows": rows}


def _write_rows(tmp: Path, fingerprint: Any, state: dict) -> None:
    lines = [{"fingerprint": fingerprint}, *state.get("rows", [])]
    tmp.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


FORMATS = {".safetensors": (_read_safetensors, _write_safetensors), ".pt": (_read_torch, _write_torch),
           ".json": (_read_json, _write_json), ".jsonl": (_read_rows, _write_rows)}


@dataclass
class StateFile:
    """One resume-state file: where it is, whether a run continues from it (``resume``), what every
    saved state must also match (``fingerprint``: the caller's context, merged into what ``load``
    and ``save`` are given), and what it is the state of (``kind``, for messages)."""

    path: Path
    resume: bool = False
    fingerprint: dict = field(default_factory=dict)
    kind: str = "run"

    def load(self, fingerprint: dict | None = None) -> dict | None:
        """The saved state when resuming from an existing file, else None. Refuses a file that cannot
        be read, or (when a fingerprint is expected) one saved with another fingerprint."""
        path = Path(self.path)
        if not (self.resume and path.is_file()):
            return None
        try:
            saved, state = FORMATS[path.suffix][0](path)
        except Exception as exc:  # truncated, corrupt, or holding objects weights_only refuses
            raise RtkError(f"cannot resume from {path}: it is unreadable ({first_line(exc)}); delete it to start"
                           f" the {self.kind} afresh") from None
        expected = self.expected(fingerprint)
        if expected is not None:
            self.verify(saved, expected)
        return state

    def save(self, state: dict, fingerprint: dict | None = None) -> None:
        """Write ``state`` (and the fingerprint) atomically: a kill mid-write leaves the previous state."""
        write = FORMATS[Path(self.path).suffix][1]
        expected = self.expected(fingerprint)
        atomic_write(Path(self.path), lambda tmp: write(tmp, expected, state))

    def rows(self, fingerprint: dict | None = None, sync_seconds: float = 1.0) -> "RowLog":
        """A row log (a ``.jsonl`` state): the rows an interrupted run finished when resuming, else a
        fresh file; rows are then appended one by one."""
        saved = self.load(fingerprint)
        if saved is None:
            self.save({"rows": []}, fingerprint)
        return RowLog(Path(self.path), saved["rows"] if saved else [], sync_seconds)

    def remove(self) -> None:
        """Delete the file and any temporary file a killed write left beside it."""
        Path(self.path).unlink(missing_ok=True)
        for tmp in stale_temporaries(self.path):
            tmp.unlink(missing_ok=True)

    def expected(self, fingerprint: dict | None) -> dict | None:
        if fingerprint is None and not self.fingerprint:
            return None
        return _plain({**self.fingerprint, **(fingerprint or {})})

    def verify(self, saved: Any, expected: dict) -> None:
        """The one mismatch message: which entries of the fingerprint differ."""
        saved = saved if isinstance(saved, dict) else {}
        different = sorted(key for key in set(saved) | set(expected) if saved.get(key) != expected.get(key))
        if different:
            raise RtkError(f"cannot resume from {self.path}: it does not match this {self.kind} (another {self.kind}"
                           f" wrote it: different {', '.join(different)}); resume with the options of the interrupted"
                           " run, or delete it to start afresh")


class RowLog:
    """Rows appended to a ``.jsonl`` state file one JSON line each, as they finish; ``done`` holds the
    rows an interrupted run finished.

    Each line is flushed at once (a killed process loses no finished row) and fsynced at most
    every ``sync_seconds`` and at close (what a power cut may cost), since an fsync per row
    costs milliseconds: as much as a small model's whole certificate.
    """

    def __init__(self, path: Path, done: list[dict], sync_seconds: float = 1.0):
        self.done = done
        self.handle = open(path, "a", encoding="utf-8")
        self.sync_seconds, self.synced = sync_seconds, time.monotonic()

    def append(self, row: dict) -> None:
        self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()
        if time.monotonic() - self.synced >= self.sync_seconds:
            os.fsync(self.handle.fileno())
            self.synced = time.monotonic()

    def close(self) -> None:
        if self.handle is not None:
            os.fsync(self.handle.fileno())
            self.handle.close()
            self.handle = None

    def __enter__(self) -> "RowLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def train_state_path(directory: Path, stage: str, index: int, call: int = 0) -> Path:
    """fit's checkpoint of the ``call``-th training of ``stage`` ("source", "transfer") of source or run ``index``."""
    return Path(directory) / f"{stage}-{index}{f'.{call}' if call else ''}.pt"


@dataclass
class RunFolder:
    """Where each state file of a run folder lives (the layout in this module's docstring)."""

    root: Path
    resume: bool = False

    @property
    def train_dir(self) -> Path:
        return self.root / TRAIN_STATE

    def train_state(self, stage: str, index: int) -> Path:
        return train_state_path(self.train_dir, stage, index)

    def target_weights(self, index: int) -> Path:
        return self.root / CHECKPOINTS / f"run-{index}.safetensors"

    def pending(self, index: int) -> StateFile:
        return StateFile(self.root / EVAL_STATE / f"run-{index}.json", self.resume, kind="run")

    def evaluation(self, index: int, fingerprint: dict | None = None) -> StateFile:
        return StateFile(self.root / EVAL_STATE / f"run-{index}.safetensors", self.resume, fingerprint or {},
                         kind="evaluation")

    def rows(self, name: str, index: int, kind: str | None = None) -> StateFile:
        return StateFile(self.root / EVAL_STATE / f"{name}-{index}.jsonl", self.resume, kind=kind or name)

    def remove_training(self, stage: str, index: int) -> None:
        """Delete fit's checkpoints of ``stage`` of ``index`` once the stage's weights are saved."""
        for path in [*self.train_dir.glob(f"{stage}-{index}.pt"), *self.train_dir.glob(f"{stage}-{index}.*.pt")]:
            StateFile(path).remove()

    def finish_run(self, index: int) -> None:
        """Delete run ``index``'s state once its results are saved."""
        for state in (self.pending(index), self.evaluation(index), *map(StateFile, self.run_rows(index))):
            state.remove()

    @property
    def sweep_file(self) -> Path:
        return self.root / POINTS / "sweep.json"

    def point_result(self, index: int) -> Path:
        return self.root / POINTS / f"{index}.json"

    def point_error(self, index: int) -> Path:
        return self.root / POINTS / f"{index}.error"

    def started(self, index: int) -> bool:
        """Whether run ``index`` left resume state (an interrupted attempt that --resume continues)."""
        training = [*self.train_dir.glob(f"transfer-{index}.pt"), *self.train_dir.glob(f"transfer-{index}.*.pt")]
        return (self.target_weights(index).is_file() or self.pending(index).path.is_file()
                or self.evaluation(index).path.is_file() or bool(self.run_rows(index)) or bool(training))

    def run_rows(self, index: int) -> list[Path]:
        return list((self.root / EVAL_STATE).glob(f"*-{index}.jsonl"))

    def tidy(self) -> None:
        """Remove the state folders a finished run left empty."""
        for name in (EVAL_STATE, TRAIN_STATE, FEATURE_CACHE):
            folder = self.root / name
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
