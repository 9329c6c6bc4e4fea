"""The model contract every model in rtk follows, and safe weight files.

A model takes images in [0, 1] (N, C, H, W) and does its own preprocessing (resize,
normalization) as its first layers, so attacks and smoothing noise act in pixel space, as
AutoAttack, RobustBench and Cohen et al. assume. It exposes:

- ``features(x)``: the penultimate representation z (what linear probes, LwF and CARTL use);
- ``head``: the final classifier, replaceable with ``reset_head(num_classes)``;
- ``blocks``: the network's blocks in order, deepest last; the head is always the last block,
  so "retrain the last k blocks" with k=1 means the head alone (Shafahi et al. count the same
  way, from the output).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from rtk.errors import OutputError, WeightsError


@contextlib.contextmanager
def model_mode(model: nn.Module, train: bool = False):
    """Put ``model`` in train or eval mode within the block; restore each submodule's mode after."""
    previous = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield model
    finally:
        for module, mode in previous:
            module.training = mode



class Normalize(nn.Module):
    """Per-channel standardisation inside the model (so attacks see pixels in [0, 1])."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Resize(nn.Module):
    """Bilinear resize to ``size`` inside the model (e.g. CIFAR 32 -> 224 for ImageNet sources)."""

    def __init__(self, size: int | tuple[int, int]):
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        return nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


class RtkModel(nn.Module):
    """preprocess -> body (images to features z) -> head (z to logits).

    ``block_names`` are dotted paths of the body's blocks (deepest last); the head is appended
    to ``blocks`` automatically.
    """

    def __init__(self, body: nn.Module, head: nn.Module, feature_dim: int, block_names: Sequence[str],
                 preprocess: nn.Module | None = None):
        super().__init__()
        self.preprocess = preprocess if preprocess is not None else nn.Identity()
        self.body = body
        self.head = head
        self.feature_dim = feature_dim
        self.block_names = [f"body.{name}" if name else "body" for name in block_names]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.preprocess(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @property
    def blocks(self) -> list[nn.Module]:
        return [self.get_submodule(name) for name in self.block_names] + [self.head]

    @property
    def num_classes(self) -> int:
        """Outputs of the head: its own ``out_features``, else its last Linear's (MLP heads)."""
        if hasattr(self.head, "out_features"):
            return self.head.out_features
        linears = [m for m in self.head.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise AttributeError("the head has no out_features and no nn.Linear; give it an out_features attribute")
        return linears[-1].out_features

    def reset_head(self, num_classes: int, init: str = "default") -> nn.Linear:
        """Replace the head with a fresh Linear(feature_dim, num_classes).

        init: "default" (PyTorch's Kaiming-uniform), "zeros", "uniform-unit-scaling"
        (TensorFlow's uniform_unit_scaling(1.0) with zero bias, as in Shafahi et al.'s code) or
        "uniform01" (weight and bias from U[0, 1) drawn after the default init, as CARTL's trainer's
        torch.rand_like does).
        """
        device = next(self.parameters()).device
        head = nn.Linear(self.feature_dim, num_classes).to(device)
        if init == "zeros":
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        elif init == "uniform-unit-scaling":
            limit = (3.0 / self.feature_dim) ** 0.5
            nn.init.uniform_(head.weight, -limit, limit)
            nn.init.zeros_(head.bias)
        elif init == "uniform01":
            nn.init.uniform_(head.weight, 0.0, 1.0)
            nn.init.uniform_(head.bias, 0.0, 1.0)
        elif init != "default":
            raise ValueError(f'unknown head init "{init}"; use "default", "zeros", "uniform-unit-scaling"'
                             ' or "uniform01"')
        self.head = head
        return head


def _describe_keys(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(list(keys)[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a safetensors file or a torch file, never unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; check the path (relative paths are resolved from the"
                           " recipe's folder)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or a pickle that asks for arbitrary objects
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if first.startswith("Weights only load failed"):  # torch's advice (weights_only=False) would run the pickle
            first = "corrupt, or a pickle that holds more than tensors"
        raise WeightsError(
            f"cannot read weights {path}: {first[:300]} (rtk loads only safetensors files or tensor-only"
            " torch files; convert others with safetensors.torch.save_file)"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a mapping of names to tensors")
    prefix = "module."  # saved from DataParallel / DDP
    if state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | Path, strict: bool = True, state: dict | None = None) -> None:
    """Load a weights file into ``model``; mismatches name the first offending keys.

    ``state``: the file's tensors when the caller has already read them (read_state_dict)."""
    state = read_state_dict(path) if state is None else state
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    problems = []
    if shapes:
        problems.append(f"shape mismatch: {_describe_keys(shapes)}")
    if strict and missing:
        problems.append(f"missing keys: {_describe_keys(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {_describe_keys(unexpected)}")
    if problems:
        raise WeightsError(f"weights {path} do not match the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=strict)


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write the model's state dict as safetensors, atomically (temp file + rename)."""
    from safetensors.torch import save_file

    from rtk.services.state import atomic_write

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    try:
        atomic_write(Path(path), lambda tmp: save_file(state, str(tmp)))
    except OutputError:
        raise
    except Exception as exc:  # safetensors reports a full disk as its own error type, not OSError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OutputError(f"cannot write {path}: {first[:200]}; free space or choose another --out") from None
