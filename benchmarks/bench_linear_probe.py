"""Linear probe with cached features (rtk's ``linear-probe`` strategy: one backbone pass, then the
head trains on the cache) against the plain loop that runs the frozen backbone on every batch of
every epoch, side by side in one process.

Both paths train a fresh linear head for 10 epochs with the strategy's optimizer (Adam, lr 1e-3,
batch 128) on the same images, from the same initial head. The target is a speed-up of at least
5x: plain / rtk >= 5, i.e. ``ratio_rtk_over_reference`` = rtk / plain <= 0.2 (the JSON states
``target_semantics``). The two paths alternate which runs first in each repeat; the reported
ratio is the median of the per-repeat ratios.

    python -m benchmarks.bench_linear_probe                   # small CNN, 2048 3x32x32 images
    python -m benchmarks.bench_linear_probe --n 8192 --device cuda --json probe.json

The model is the built-in small CNN at its default width ([16, 32, 64], 256 features) on uniform
random 3x32x32 images with random labels: the timing does not depend on what the images show.
Defaults finish in well under a minute on a CPU.
"""
from __future__ import annotations

import copy
import sys

from benchmarks.common import CIFAR_LIKE_CNN, build, finish, measure, new_parser, parse, print_timings, verdict

TARGET = 0.2  # rtk / plain: a speed-up of at least 5x


def main(argv=None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--n", type=int, default=2048, help="training images (default 2048)")
    parser.add_argument("--epochs", type=int, default=10, help="head epochs (default 10)")
    parser.add_argument("--batch-size", type=int, default=128, help="head batch size (default 128, the strategy's)")
    args, device, sync, environment = parse(parser, argv, repeats=3)

    import torch
    import torch.nn.functional as F

    from rtk.config.fields import build_config
    from rtk.data import DataSplits, ImageSet, iterate
    from rtk.registry import default_registry
    from rtk.stages.context import RunContext
    from rtk.stages.training import make_optimizer

    source = build("model", "small-cnn", CIFAR_LIKE_CNN, num_classes=10).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(args.n, 3, 32, 32, generator=generator) * 255).to(torch.uint8)  # stored as datasets are
    labels = torch.randint(0, 10, (args.n,), generator=generator)
    train = ImageSet(images, labels)
    splits = DataSplits(train=train, test=train, num_classes=10)
    strategy = default_registry().get("strategy", "linear-probe")
    config = build_config(strategy.config, {"epochs": args.epochs, "batch_size": args.batch_size})
    ctx = RunContext(device=device, show_progress=False)

    def rtk_path():
        model = copy.deepcopy(source)
        torch.manual_seed(1)  # the fresh head's initialisation
        model = strategy.factory(config).transfer(model, splits, ctx)
        return model.head.weight.detach().norm().item()

    def plain_path():
        model = copy.deepcopy(source)
        for p in model.parameters():
            p.requires_grad_(False)
        torch.manual_seed(1)
        head = model.reset_head(10)
        optimizer = make_optimizer(head.parameters(), config)
        order = torch.Generator().manual_seed(2)
        for _ in range(args.epochs):
            for x, y in iterate(train, args.batch_size, shuffle=True, generator=order):
                x, y = x.to(device), y.to(device)
                with torch.no_grad():
                    z = model.features(x)  # the frozen backbone, again every epoch
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(head(z), y).backward()
                optimizer.step()
        return head.weight.detach().norm().item()

    times, norms, timing = measure({"rtk": rtk_path, "plain": plain_path}, args.repeats, sync)
    ratio = timing["ratio_rtk_over_reference"]
    result = {
        "benchmark": f"linear probe, {args.epochs} epochs: rtk linear-probe (cached features) vs the backbone run on"
                     " every batch",
        "model": "small-cnn [16, 32, 64] / 256", "n": args.n, "image_shape": [3, 32, 32], "epochs": args.epochs,
        "batch_size": args.batch_size, "repeats": args.repeats, **environment, **timing, "speedup": 1 / ratio,
        "target": TARGET, "target_semantics": "ratio rtk / plain <= 0.2, i.e. a speed-up plain / rtk >= 5",
        "meets_target": ratio <= TARGET, "head_weight_norm": norms,
    }
    print(f"linear probe, {args.epochs} epochs, {args.n} images 3x32x32, small-cnn [16, 32, 64] / 256, batch"
          f" {args.batch_size}, {environment['device_name']}, {args.repeats} repeats (alternating order)")
    print_timings(times, {"rtk": "rtk linear-probe (cached features)", "plain": "plain loop (backbone every epoch)"})
    return finish(args, result, f"ratio rtk / plain = {ratio:.3f} (speed-up {1 / ratio:.1f}x)   target <= {TARGET}"
                                f" (>= 5x)   {verdict(result)}")


if __name__ == "__main__":
    sys.exit(main())
