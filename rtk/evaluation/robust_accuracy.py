"""Evaluation: clean accuracy, each attack's accuracy, and robust accuracy as the per-example
worst case over all attacks (an example is robust only if no attack fools the model on it; an
evaluation without attacks reports clean alone).

Protocol: attacks act in pixel space on the model in eval mode (every submodule's previous mode
is restored afterwards); only clean-correct examples are attacked. ``order = "independent"``
attacks every clean-correct example with each attack, so each attack's column is its own
accuracy; ``"sequential"`` attacks only the examples every earlier attack failed on (cheaper,
as AutoAttack does), so the columns are cumulative. Before each attack on a batch, torch is
seeded from (run seed, dataset index of the batch's first example, attack label) alone, so an
example's outcome does not depend on which batches or attacks ran before it: a resumed or
sharded evaluation gives the numbers of an uninterrupted one.

Under torchrun (rtk.services.distributed) whole batches go to ranks round-robin, so every example meets
the same batch, seed and arithmetic as in a single process; per-example results are summed over
ranks (each row filled by one rank) and every rank returns the full result. The sanity checks run
on rank 0 only; a distributed evaluation saves no progress state (it restarts when resumed).
Memory is bounded by one batch whatever the test set's size: batches are taken from the test
set as they are attacked, never copied as a whole.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from rtk.config.schema import EvalConfig
from rtk.services import distributed
from rtk.models import model_mode
from rtk.stages.context import RunContext
from rtk.errors import RtkError
from rtk.services.state import StateFile, model_digest, tensor_digest  # noqa: F401  (model_digest: re-exported)

ORDERS = ("independent", "sequential")


def select_indices(total: int, n: int | None, subset: str, seed: int) -> torch.Tensor:
    """Which test examples to evaluate: all, the first n, a seeded random n, or n evenly spaced
    over the whole set (as Cohen's --skip; a plain every-(total // n)-th would leave out the tail,
    which in a class-ordered test set is whole classes)."""
    if n is None or n >= total:
        return torch.arange(total)
    if subset == "random":
        return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    if subset == "stride":
        return torch.arange(n) * total // n
    return torch.arange(n)


def batch_seed(seed: int, first_index: int, stream: str = "") -> int:
    """The seed of one (batch, attack): a hash, so that nearby indices give unrelated streams."""
    digest = hashlib.sha256(f"{seed}:{first_index}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_batch(seed: int, first_index: int, stream: str = "") -> None:
    """Seed torch's CPU generator and every CUDA device's (torch.manual_seed does the same at
    about 100 times the cost, which shows on small batches)."""
    value = batch_seed(seed, first_index, stream)
    torch.default_generator.manual_seed(value)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(value)


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
        raise RtkError(f'attack "{label}" left its {norm} ball of eps={attack.eps:g}; the plugin must project its'
                       ' output')


@dataclass
class EvalState(StateFile):
    """Where evaluate() saves its progress after every batch (a safetensors resume-state file,
    rtk.services.state), whether to continue from it, and ``fingerprint``: what else must match for
    a saved state to be continued (the runner puts the attacks' configs there)."""

    kind: str = "evaluation"


def load_progress(state: StateFile | None, fingerprint: dict, names: list[str]) -> tuple[int, dict, list]:
    """(examples done, {metric: [correctness so far]}, flags so far) saved in ``state``, or a fresh start."""
    saved = state.load(fingerprint) if state is not None else None
    if saved is None:
        return 0, {name: [] for name in names}, []
    return int(saved["done"]), {name: [saved[f"correct.{i}"]] for i, name in enumerate(names)}, saved["flags"]


def save_progress(state: StateFile, fingerprint: dict, done: int, correct: dict, flags: list[dict]) -> None:
    progress = {"done": torch.tensor(done), "flags": flags}
    for i, chunks in enumerate(correct.values()):
        progress[f"correct.{i}"] = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.bool)
    state.save(progress, fingerprint)


def attack_batch(model, images, labels, attacks, order: str, seed: int, first_index: int) -> dict[str, torch.Tensor]:
    """Per-example correctness of one batch: clean, then under each attack (cumulative if sequential)."""
    with torch.no_grad():
        ok = model(images).argmax(1) == labels
    result = {"clean": ok}
    alive = ok.clone()
    for label, attack in attacks:
        targets = alive if order == "sequential" else ok
        hit = targets.clone()
        idx = targets.nonzero().flatten()
        if len(idx):
            seed_batch(seed, first_index, label)
            adversarial = attack(model, images[idx], labels[idx])
            check_threat_model(label, attack, images[idx], adversarial)
            with torch.no_grad():
                hit[idx] = model(adversarial).argmax(1) == labels[idx]
        alive &= hit
        result[label] = hit
    return result


def attack_flags(attacks, previous: list[dict]) -> list[dict]:
    """Every attack's own diagnostics, labelled with the attack, without duplicates."""
    flags = [dict(f) for f in previous]
    for label, attack in attacks:
        diagnostics = getattr(attack, "diagnostics", None)
        for flag in (diagnostics() if callable(diagnostics) else []):
            flag = {"attack": label, **dict(flag)}
            if flag not in flags:
                flags.append(flag)
    return flags


def per_class_accuracy(correct: dict[str, torch.Tensor], labels: torch.Tensor, num_classes: int) -> dict[str, list]:
    """{metric: [accuracy of class 0, 1, ...]}; NaN (null in JSON) for a class with no example."""
    masks = [labels == c for c in range(num_classes)]
    return {name: [float(v[m].float().mean()) if m.any() else float("nan") for m in masks]
            for name, v in correct.items()}


def evaluate(model, test, attacks: list[tuple[str, object]], ctx: RunContext, config: EvalConfig | None = None,
             indices: torch.Tensor | None = None, *, num_classes: int | None = None, sanity_attacks: list | None = None,
             state: StateFile | None = None) -> dict:
    """Clean and adversarial accuracy of ``model`` on ``test`` (an rtk.data image set), evaluated as
    ``config`` ([eval]; default ``EvalConfig()``) says: batch_size, attack_order, per_class, sanity_n.

    ``indices`` are the test examples to evaluate (default: those config.n, subset and subset_seed
    select). Attacks only run on examples the model classifies correctly (a misclassified clean
    example already counts as broken). ``sanity_attacks`` (rtk.evaluation.sanity.SanityAttack, one
    per attack) turns on the sanity checks when ``config.sanity``, run on the first
    ``config.sanity_n`` evaluated examples. With ``state``, the progress is saved after every batch
    and, when ``state.resume``, continued from the file. Returns {"metrics", "correct" (per-example
    bool tensors), "indices", "n", "flags", "attack_order"} and, with ``config.per_class``,
    "per_class" over ``num_classes`` classes (default: the largest label + 1).
    """
    config = EvalConfig() if config is None else config
    order, batch_size = config.attack_order, config.batch_size
    if order not in ORDERS:
        raise RtkError(f'attack order "{order}" is not one of {", ".join(ORDERS)}')
    if indices is None:
        indices = select_indices(len(test), config.n, config.subset, config.subset_seed)
    names = ["clean", *(label for label, _ in attacks)]
    state = None if ctx.world.distributed else state
    fingerprint = {} if state is None else {
        "attacks": names[1:], "order": order, "batch_size": batch_size, "seed": ctx.seed, "model": model_digest(model),
        "indices": tensor_digest(indices.cpu().long())}
    total, plural = len(indices), "s" if len(attacks) != 1 else ""
    with model_mode(model, train=False), ctx.progress(f"evaluate ({len(attacks)} attack{plural})", total) as advance:
        correct, flags = attack_batches(model, test, attacks, ctx, config, indices, state, fingerprint, advance)
        correct, metrics = worst_case(correct, attacks)
        if sanity_attacks is not None and config.sanity and config.sanity_n > 0 and total and ctx.world.is_main:
            flags += sanity_flags(model, test, indices[:min(config.sanity_n, total)], sanity_attacks, metrics, ctx)
    result = {"metrics": metrics, "correct": correct, "indices": indices, "n": total, "flags": flags,
              "attack_order": order}
    if config.per_class:
        labels = test.labels[indices].cpu()
        classes = num_classes or (int(labels.max()) + 1 if len(labels) else 0)
        result["per_class"] = per_class_accuracy(correct, labels, classes)
    return result


def attack_batches(model, test, attacks, ctx: RunContext, config: EvalConfig, indices: torch.Tensor,
                   state: StateFile | None, fingerprint: dict, advance) -> tuple[dict[str, list], list[dict]]:
    """({metric: per-example correctness, in chunks}, flags) of every batch of ``indices``: continued
    from ``state`` and saved there after every batch; under torchrun this rank's batches, then
    everyone's gathered."""
    order, batch_size, total, world = config.attack_order, config.batch_size, len(indices), ctx.world
    names = ["clean", *(label for label, _ in attacks)]
    done, correct, flags = load_progress(state, fingerprint, names)
    rows = torch.zeros(total, len(names), dtype=torch.int32) if world.distributed else None
    advance(done)
    for start in range(done, total, batch_size):
        stop = min(start + batch_size, total)
        if world.distributed and not distributed.owns_batch(start // batch_size):
            continue
        images, labels = test.take(indices[start:stop])
        with ctx.autocast("eval"):
            batch = attack_batch(model, ctx.to_device(images), ctx.to_device(labels), attacks, order, ctx.seed,
                                 int(indices[start]))
        if rows is not None:
            rows[start:stop] = torch.stack([batch[name].cpu() for name in names], 1).int()
        else:
            for name, hit in batch.items():
                correct[name].append(hit.cpu())
        if state is not None:
            save_progress(state, fingerprint, stop, correct, attack_flags(attacks, flags))
        advance(stop - start)
    flags = attack_flags(attacks, flags)
    return gathered(rows, names, flags) if rows is not None else (correct, flags)


def gathered(rows: torch.Tensor, names: list[str], flags: list[dict]) -> tuple[dict, list[dict]]:
    """Under torchrun: every rank's per-example rows (each filled by one rank) and flags, summed and merged."""
    rows = distributed.all_reduce_sum(rows).bool()
    everyone = [f for part in distributed.gather_objects(flags) for f in part]
    flags = [f for i, f in enumerate(everyone) if f not in everyone[:i]]
    return {name: [rows[:, i]] for i, name in enumerate(names)}, flags


def worst_case(correct: dict[str, list[torch.Tensor]], attacks) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Per-example correctness with "robust" (correct under every attack) added, and each metric's
    mean. Without attacks there is no "robust": it would only repeat clean under another name."""
    correct = {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.bool) for k, v in correct.items()}
    if attacks:
        robust = correct["clean"].clone()
        for label, _ in attacks:
            robust &= correct[label]
        correct["robust"] = robust
    return correct, {k: float(v.float().mean()) if len(v) else float("nan") for k, v in correct.items()}


def sanity_flags(model, test, indices: torch.Tensor, sanity_attacks: list, metrics: dict,
                 ctx: RunContext) -> list[dict]:
    """The sanity checks' flags on the examples ``indices`` (rtk.evaluation.sanity)."""
    from rtk.evaluation.sanity import sanity_checks

    images, labels = test.take(indices)
    seed_batch(ctx.seed, -1, "sanity")
    return sanity_checks(model, ctx.to_device(images), ctx.to_device(labels), sanity_attacks, metrics, ctx)
