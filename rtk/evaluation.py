"""Evaluation: clean accuracy, each attack's accuracy, and robust accuracy as the per-example
worst case over all attacks (an example is robust only if no attack fools the model on it)."""
from __future__ import annotations

import torch

from rtk.context import RunContext
from rtk.data import iterate
from rtk.errors import RtkError


def select_indices(total: int, n: int | None, subset: str, seed: int) -> torch.Tensor:
    """Which test examples to evaluate: all, the first n, a seeded random n, or every k-th."""
    if n is None or n >= total:
        return torch.arange(total)
    if subset == "random":
        return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    if subset == "stride":
        return torch.arange(0, total, max(1, total // n))[:n]
    return torch.arange(n)


def check_threat_model(label: str, attack, clean: torch.Tensor, adversarial: torch.Tensor) -> None:
    """An attack's output must lie in [0, 1] and within its declared ball (a plugin bug otherwise)."""
    tol = 1e-5
    if adversarial.shape != clean.shape:
        raise RtkError(f'attack "{label}" returned shape {tuple(adversarial.shape)} for inputs {tuple(clean.shape)}')
    if adversarial.min() < -tol or adversarial.max() > 1 + tol:
        raise RtkError(f'attack "{label}" left the [0, 1] image box; the plugin must clamp its output')
    delta = (adversarial - clean).flatten(1)
    norm = getattr(attack, "norm", None)
    size = {"Linf": lambda d: d.abs().amax(1), "L2": lambda d: d.norm(dim=1), "L1": lambda d: d.abs().sum(1)}.get(norm)
    if size is not None and (size(delta) > attack.eps * (1 + 1e-4) + tol).any():
        raise RtkError(f'attack "{label}" left its {norm} ball of eps={attack.eps:g}; the plugin must project its output')


def evaluate(model, test, attacks: list[tuple[str, object]], ctx: RunContext, batch_size: int = 256,
             indices: torch.Tensor | None = None) -> dict:
    """Clean and adversarial accuracy of ``model`` on ``test`` (an rtk.data image set).

    Attacks only run on examples the model classifies correctly (a misclassified clean example
    already counts as broken). Returns {"metrics": {...}, "correct": {name: bool tensor}, "indices": ...}.
    """
    indices = torch.arange(len(test)) if indices is None else indices
    subset = test.subset(indices)
    correct = {"clean": []} | {label: [] for label, _ in attacks}
    was_training = model.training
    model.eval()
    torch.manual_seed(ctx.seed)
    with ctx.progress(f"evaluate ({len(attacks)} attack{'s' if len(attacks) != 1 else ''})", len(subset)) as advance:
        for images, labels in iterate(subset, batch_size):
            images, labels = images.to(ctx.device), labels.to(ctx.device)
            with torch.no_grad():
                ok = model(images).argmax(1) == labels
            correct["clean"].append(ok.cpu())
            for label, attack in attacks:
                hit = ok.clone()
                idx = ok.nonzero().flatten()
                if len(idx):
                    adversarial = attack(model, images[idx], labels[idx])
                    check_threat_model(label, attack, images[idx], adversarial)
                    with torch.no_grad():
                        hit[idx] = model(adversarial).argmax(1) == labels[idx]
                correct[label].append(hit.cpu())
            advance(len(labels))
    model.train(was_training)
    correct = {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.bool) for k, v in correct.items()}
    robust = correct["clean"].clone()
    for label, _ in attacks:
        robust &= correct[label]
    metrics = {k: float(v.float().mean()) if len(v) else float("nan") for k, v in correct.items()}
    metrics["robust"] = float(robust.float().mean()) if len(robust) else float("nan")
    return {"metrics": metrics, "correct": correct | {"robust": robust}, "indices": indices, "n": len(subset)}
