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
