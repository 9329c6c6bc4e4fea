"""The certifier contract: provable robustness of a model on a set of test examples.

A certifier works example by example, so a run can be split across processes (each certifies
its shard, rank 0 summarises the gathered rows) and resumed (finished rows are kept):

- ``certify_examples(model, data, ctx, indices=None) -> list[dict]``: one row per example of
  ``data`` (``indices`` restricts to those positions of ``data``); each row carries at least
  ``index`` (the example's position in ``data``), ``label``, ``prediction``, ``radius``,
  ``correct`` and ``seconds``.
- ``summarize(rows, ctx) -> dict``: ``{"metrics": {...}, ...}`` stored under ``"certify"`` in
  results.json; may write per-example files into ``ctx.out_dir``. The runner passes ``data``
  as the evaluated subset of the test set and renumbers the rows' ``index`` to the examples'
  indices in the test set before it calls ``summarize``.

A certifier that keeps rows as it goes, so that a resumed run does not certify finished examples
again, keeps them in ``ctx.state(name, kind)`` (rtk.services.state: ``.rows(fingerprint)`` gives
the rows an interrupted run finished and appends new ones; ``.remove()`` once summarised), never
in a file of its own: ``ctx.state`` is None outside a run folder and in a torchrun shard.

``certify(model, data, ctx)`` is the two in sequence, for callers outside a run; the runner calls
``certify_examples`` and ``summarize`` itself, so a subclass puts any clean-up in ``summarize``.
A certifier that does not subclass ``Certifier`` may implement ``certify`` alone; the runner then
calls that, on rank 0, and cannot shard it.
"""
from __future__ import annotations


class Certifier:
    def certify_examples(self, model, data, ctx, indices=None) -> list[dict]:
        raise NotImplementedError

    def summarize(self, rows: list[dict], ctx) -> dict:
        raise NotImplementedError

    def certify(self, model, data, ctx) -> dict:
        return self.summarize(self.certify_examples(model, data, ctx), ctx)
