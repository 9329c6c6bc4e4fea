"""Training checkpoints: everything ``fit`` needs to continue an interrupted training exactly.

A checkpoint holds tensors and plain values only, written with torch.save through a temporary
file and a rename, and read with ``torch.load(weights_only=True)``: nothing is ever unpickled.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

from rtk.errors import RtkError


def rng_states() -> dict:
    """torch (CPU and every CUDA device), python and numpy global generators."""
    states = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy

        kind, keys, pos, has_gauss, cached = numpy.random.get_state(legacy=True)
        # numpy arrays are not among the types weights_only loading accepts; a tensor is.
        states["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached)
    except ImportError:
        pass
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "numpy" in states:
        import numpy

        kind, keys, pos, has_gauss, cached = states["numpy"]
        numpy.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def save_train_state(path: Path, state: dict) -> None:
    """Write ``state`` atomically, so a kill mid-write leaves the previous checkpoint intact."""
    from rtk.services.results import atomic_write

    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_train_state(path: Path, fingerprint: str) -> dict:
    """The checkpoint at ``path``; refuses one written by a different training."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or holding objects weights_only refuses
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RtkError(f"cannot resume from training checkpoint {path}: {first[:200]}; delete it to train this stage again") from None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        raise RtkError(f"cannot resume from training checkpoint {path}: it was written by another training"
                       f" ({state.get('fingerprint') if isinstance(state, dict) else '?'}, not {fingerprint}); delete it to train this stage again")
    return state


def remove_train_states(directory: Path | None, stage: str) -> None:
    """Delete the checkpoints of ``stage`` (e.g. "source-0", "transfer-2") once its result is saved."""
    if directory is None or not Path(directory).is_dir():
        return
    for path in Path(directory).glob(f"{stage}.pt"):
        path.unlink(missing_ok=True)
    for path in Path(directory).glob(f"{stage}.*.pt"):
        path.unlink(missing_ok=True)
