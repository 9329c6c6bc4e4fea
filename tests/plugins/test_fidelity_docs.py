"""What ``rtk list-plugins --options`` shows cites papers and code a user can look up, never the
project's internal notes ("(spec 0.4)", "(paper 003)"); LwF's docstring states both learning-rate
policies (issue 17, items 11 and 15)."""
from __future__ import annotations

import dataclasses
import re

import pytest

from rtk.registry import default_registry

INTERNAL = re.compile(r"\(spec\b|\bspec \d|\bpaper 00\d|\(paper \d", re.IGNORECASE)
COMPONENTS = [c for c in default_registry().all()]


def shown(config: type) -> str:
    """The docstring and every option's help of a config class."""
    helps = [f.metadata.get("help", "") for f in dataclasses.fields(config)] if dataclasses.is_dataclass(config) else []
    return "\n".join([config.__doc__ or "", *helps])


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: f"{c.kind}:{c.name}")
def test_option_docs_cite_nothing_internal(component):
    text = shown(component.config)
    assert not INTERNAL.search(text), INTERNAL.search(text).group(0)


def test_lwf_docstring_states_the_codes_constant_rate_and_the_papers_cut():
    from rtk_plugins.lwf import LwFConfig

    assert LwFConfig().lr == 1e-3 and LwFConfig().schedule == "constant"  # the code's default
    doc = " ".join(LwFConfig.__doc__.split())
    assert "cut the learning rate" in doc and "step_size_schedule is [[0, 0.001], [10000, 0.001]" in doc
    lr_help = {f.name: f.metadata["help"] for f in dataclasses.fields(LwFConfig)}["lr"]
    assert "constant 1e-3" in lr_help and "Sec. 6 cuts it" in lr_help
