"""The certification stage: the [certify] certifier on the evaluated test examples.

A per-example certifier (rtk.evaluation.certifier.Certifier) keeps its finished rows in the run's
resume state (``ctx.state``) and, under torchrun, certifies a strided shard on each rank; its rows
are renumbered to test-set indices before it summarises them. A certifier's warnings become
flags of the run.
"""
from __future__ import annotations

import dataclasses

import torch

from rtk.config.spec import RunSpec
from rtk.evaluation.certifier import Certifier
from rtk.services import distributed
from rtk.stages.context import RunContext


def certify_target(spec: RunSpec, model, test, indices: torch.Tensor, ctx: RunContext) -> tuple[dict | None, list]:
    """The run's "certify" entry (None on ranks other than 0) and the flags its warnings raise."""
    certifier = spec.certify.build()
    with ctx.autocast("eval"):
        result = certify(certifier, model, test, indices, ctx)
    # A certifier's warnings (a sample too small to reach a radius) are flags of the run.
    warnings = (result or {}).get("warnings", [])
    return result, [{"name": "certify-sample-size", "message": str(w), "source": "rtk"} for w in warnings]


def certify(certifier, model, test, indices: torch.Tensor, ctx: RunContext):
    """The certifier's results on the test examples ``indices`` (on rank 0; None on the others).
    A per-example Certifier's rows are renumbered from positions in that subset to test-set
    indices before it summarises them, so its per-example file names the images themselves.
    Under torchrun each rank certifies a strided shard, without a progress log (ctx.out_dir
    None: only rank 0 writes), and rank 0 summarises the gathered rows; any other certifier
    runs on rank 0 alone."""
    world, data = ctx.world, test.subset(indices)
    if not isinstance(certifier, Certifier):
        return certifier.certify(model, data, ctx) if world.is_main else None
    if world.distributed:
        shard = certifier.certify_examples(model, data, dataclasses.replace(ctx, out_dir=None),
                                           indices=distributed.shard_indices(len(data)))
        rows = [row for part in distributed.gather_objects(shard) for row in part]
    else:
        rows = certifier.certify_examples(model, data, ctx)
    if not world.is_main:
        return None
    rows = sorted(({**row, "index": int(indices[row["index"]])} for row in rows), key=lambda r: r["index"])
    return certifier.summarize(rows, ctx)
