"""One LwF training epoch (rtk_plugins' LwF phase 2: all weights, source features z0 cached
once and looked up per example) against one plain fine-tuning epoch of the same model (a
hand-written PyTorch loop: natural cross-entropy, all weights, same batch size and optimizer),
side by side in one process.

LwF (Shafahi et al., arXiv:1905.08232, Sec. 6) adds lambda_d * mean ||z - z0||_1 to the loss;
with z0 cached its extra cost per step is an index lookup and one distance on (batch, d)
features, so the target is rtk-LwF / plain <= 1.10 (a second source forward per step would
cost about 1.3x). rtk's own fine-tuning epoch (rtk.stages.training.fit with CrossEntropy) is timed
too, for reference. The paths alternate which runs first; the ratio is the median of the
per-repeat ratios. The one-off z0 pass is timed separately.

    python -m benchmarks.bench_lwf                          # small CNN, 1024 random 3x32x32 images
    python -m benchmarks.bench_lwf --data digits --repeats 15
    python -m benchmarks.bench_lwf --model resnet18 --n 4096 --device cuda --json bench-lwf.json

Defaults finish in well under a minute on a CPU.
"""
from __future__ import annotations

import copy
import sys
import time

from benchmarks.common import (CIFAR_LIKE_CNN, build, finish, measure, new_parser, paired_ratio,
                               parse, print_timings, verdict)

TARGET = 1.10
WORKLOAD = ("registered model (default small-cnn [16, 32, 64] / 256)", ("random", "digits"),  # --model and --data
            "random 3x32x32 images (CIFAR-sized) or the digits training set")


def workload(args):
    """(source model, training ImageSet) on the CPU, seed 0."""
    import torch

    from rtk.data import ImageSet

    torch.manual_seed(0)
    if args.data == "digits":
        if args.model != "small-cnn":
            raise SystemExit("--data digits is 1x8x8: use it with small-cnn, or --data random for other models")
        train = build("dataset", "digits").train
        return build("model", "small-cnn", num_classes=10), train
    options = CIFAR_LIKE_CNN if args.model == "small-cnn" else {}
    images = torch.rand(args.n, 3, 32, 32)
    return build("model", args.model, options, num_classes=10), ImageSet(images, torch.randint(0, 10, (args.n,)))


def main(argv=None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--n", type=int, default=1024, help="random images (default 1024)")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per step (default 128, the paper's)")
    parser.add_argument("--lambda-d", type=float, default=0.005, help="LwF feature-distance weight (default 0.005)")
    args, device, sync, environment = parse(parser, argv, repeats=9, workload=WORKLOAD)

    import torch
    import torch.nn.functional as F

    from rtk.config.fields import build_config
    from rtk.stages.context import RunContext
    from rtk.stages.strategy import compute_features
    from rtk.stages.training import CrossEntropy, fit
    from rtk_plugins.lwf import LwFConfig
    from rtk_plugins.lwf.strategy import train_all_weights
    from rtk_plugins.transfer import FinetuneConfig

    source, train = workload(args)
    source = source.to(device).eval()
    ctx = RunContext(device=device, show_progress=False)  # no checkpoint_dir: no checkpoint files

    compute_features(source, train, ctx)  # warm-up, so the timed pass is the steady-state cost
    sync()
    started = time.perf_counter()
    z0 = compute_features(source, train, ctx)
    sync()
    z0_seconds = time.perf_counter() - started

    common = {"epochs": 1, "batch_size": args.batch_size, "optimizer": "sgd", "lr": 1e-3, "momentum": 0.9,
              "weight_decay": 2e-4, "decay_bias_and_norm": False}
    lwf_cfg = build_config(LwFConfig, {**common, "lambda_d": args.lambda_d})
    ft_cfg = build_config(FinetuneConfig, common)
    models = {name: copy.deepcopy(source) for name in ("lwf", "plain", "rtk-ft")}
    generator = torch.Generator().manual_seed(0)

    def lwf_path():
        return train_all_weights(models["lwf"], train, z0, lwf_cfg, ctx)[-1]

    def rtk_ft_path():
        model = models["rtk-ft"]
        return fit(model, train, CrossEntropy(), ft_cfg, ctx, description="fine-tune")[-1]

    def plain_path():
        model = models["plain"].train()
        decay = [p for p in model.parameters() if p.ndim > 1]
        rest = [p for p in model.parameters() if p.ndim <= 1]
        optimizer = torch.optim.SGD([{"params": decay}, {"params": rest, "weight_decay": 0.0}], lr=1e-3, momentum=0.9,
                                    weight_decay=2e-4)
        total = 0.0
        for idx in torch.randperm(len(train), generator=generator).split(args.batch_size):
            images, labels = train.take(idx)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(labels)
        model.eval()
        return total / len(train)

    times, losses, timing = measure({"lwf": lwf_path, "plain": plain_path, "rtk-ft": rtk_ft_path}, args.repeats, sync)
    ratio, medians = timing["ratio_rtk_over_reference"], timing["median_seconds"]
    result = {
        "benchmark": "one LwF epoch (rtk, cached z0) vs one plain fine-tuning epoch (PyTorch loop, natural CE, all"
                     " weights)",
        "model": args.model, "data": args.data, "n": len(train), "batch_size": args.batch_size,
        "lambda_d": args.lambda_d, "feature_dim": int(z0.images.shape[1]), "repeats": args.repeats, **environment,
        **timing, "z0_seconds": z0_seconds,
        "ratio_lwf_over_rtk_finetune": paired_ratio(times, "lwf", "rtk-ft"),
        "ratio_rtk_finetune_over_plain": paired_ratio(times, "rtk-ft", "plain"),
        "target": TARGET, "meets_target": ratio <= TARGET, "last_epoch_loss": losses,
    }
    print(f"one training epoch, {args.model}, {len(train)} {args.data} examples, batch {args.batch_size}, "
          f"lambda_d {args.lambda_d:g}, {environment['device_name']}, {args.repeats} repeats (alternating order)")
    print_timings(times, {"lwf": "rtk LwF phase 2 (cached z0)", "plain": "plain PyTorch fine-tuning loop",
                          "rtk-ft": "rtk fit + CrossEntropy (reference only)"})
    return finish(args, result,
                  f"ratio rtk LwF / plain fine-tuning = {ratio:.3f}   target <= {TARGET}   {verdict(result)}   (median"
                  f" of per-repeat ratios; of medians {result['ratio_of_medians']:.3f}; LwF / rtk fine-tuning"
                  f" {result['ratio_lwf_over_rtk_finetune']:.3f})",
                  f"one-off z0 pass: {z0_seconds:.3f} s ({z0_seconds / medians['plain']:.2f} of a fine-tuning epoch)")


if __name__ == "__main__":
    sys.exit(main())
