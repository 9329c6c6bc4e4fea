"""The random generators a training checkpoint saves, so that ``fit`` continues an interrupted
training exactly; the checkpoint itself is a resume-state file (rtk.services.state): tensors and
plain values only, read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import random

import torch


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
