"""The workload the benchmarks share: a small CNN trained 10 epochs on scikit-learn's digits."""
from __future__ import annotations


def trained_digits_cnn(device="cpu"):
    """(small-cnn [8, 16] / 32 features in eval mode on ``device``, digits test split), seed 0."""
    import torch
    import torch.nn.functional as F

    from rtk.configs import build_config
    from rtk_plugins.datasets import DigitsConfig, make_digits
    from rtk_plugins.models import SmallCNNConfig, make_small_cnn

    torch.manual_seed(0)
    splits = make_digits(DigitsConfig())
    x, y = splits.train.take(torch.arange(len(splits.train)))
    x, y = x.to(device), y.to(device)
    model = make_small_cnn(build_config(SmallCNNConfig, {"channels": [8, 16], "feature_dim": 32}), 10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(10):
        for idx in torch.randperm(len(x), device=device).split(128):
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    return model.eval(), splits.test


def time_side_by_side(paths: dict, repeats: int, sync=None, unit: str = "s") -> tuple[dict, dict]:
    """Time each path ``repeats`` times, back to back and alternating which goes first, so slow
    drifts in machine load hit both; returns ({name: [seconds]}, {name: last output})."""
    import sys
    import time

    names = list(paths)
    times = {name: [] for name in names}
    outputs = {}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            if sync:
                sync()
            start = time.perf_counter()
            outputs[name] = paths[name]()
            if sync:
                sync()
            times[name].append(time.perf_counter() - start)
            print(f"  repeat {repeat + 1}/{repeats} {name:<9} {times[name][-1]:7.3f} {unit}", file=sys.stderr, flush=True)
    return times, outputs


def paired_ratio(times: dict, numerator: str, denominator: str) -> float:
    """The median of per-repeat ratios: each repeat ran both paths back to back, so its ratio
    cancels most of a shared machine's load drift (a ratio of medians does not)."""
    import statistics

    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))
