"""Sanity flags: cheap checks, in the spirit of AutoAttack's, that an evaluation is trustworthy.

Every check runs on a small sample the caller chooses and costs at most one extra run of each
attack. A check that does not apply (no ``eps`` or ``steps`` in an attack's config, a value the
config rejects, a threat model Square does not cover) is skipped, never flagged. The checks live
in rtk.sanity_checks; docs/sanity-flags.md documents each flag's rule for users.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from rtk.attacks import model_mode
from rtk.context import RunContext
from rtk.sanity_checks import (Sample, check_black_box, check_eps_zero, check_forward, check_gradients,
                               check_large_eps, check_more_steps, seeded)


@dataclass
class SanityAttack:
    """An attack as the checks need it: its label, its config, and how to rebuild it with changed options."""

    label: str
    config: Any
    build: Callable[[Any], Any]


def sanity_checks(model, images: torch.Tensor, labels: torch.Tensor, attacks: list[SanityAttack],
                  metrics: dict[str, float], ctx: RunContext) -> list[dict]:
    """Run the sanity checks on a sample (images, labels on ctx.device); return flags
    {"name", "message", "explanation", "source": "rtk"} for every check that fails.

    The sample runs as one batch: keep it no larger than an evaluation batch.
    """
    if len(labels) == 0:
        return []
    flags: list[dict] = []
    # Seeded throughout, as a random model's forward passes draw numbers too: flags repeat run to run.
    with model_mode(model, train=False), seeded(ctx), ctx.progress("sanity checks", len(attacks) + 2) as advance:
        sample = Sample(model, images, labels, ctx)
        flags += check_forward(sample)
        flags += check_gradients(sample)
        advance()
        for attack in attacks:
            flags += check_eps_zero(sample, attack)
            flags += check_large_eps(sample, attack)
            flags += check_more_steps(sample, attack)
            advance()
        flags += check_black_box(sample, attacks, metrics)
        advance()
    return flags
