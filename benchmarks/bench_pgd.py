"""rtk's PGD-20 evaluation (rtk.evaluation.robust_accuracy.evaluate with the ``pgd`` attack, sanity checks off)
against a plain torchattacks.PGD loop over the same batches: wall time, side by side in one process.

Both paths do the same work: a clean forward pass per batch, PGD on the clean-correct examples
only (from the same seeded random starts, so their robust accuracies must agree exactly), and a
forward pass on the adversarial images. rtk adds per-(batch, attack) seeding,
model-mode bookkeeping, the threat-model check of every output and one forward pass in the
``pgd`` plugin's restart logic; the target is rtk / plain <= 1.05. The two paths alternate which
runs first in each repeat; the reported ratio is the median of the per-repeat ratios.

    python -m benchmarks.bench_pgd                          # small CNN, 256 digits, 9 repeats
    python -m benchmarks.bench_pgd --n 512 --repeats 7 --json bench-pgd.json
    python -m benchmarks.bench_pgd --model resnet18 --data random --device cuda --n 2048

``--data random`` uses uniform 3x32x32 images labelled with the model's own clean predictions
(an untrained model, every example attacked); ``digits`` trains the model 10 epochs first.
Defaults finish in well under a minute on a CPU.
"""
from __future__ import annotations

import sys
from fractions import Fraction

from benchmarks.common import (CIFAR_LIKE_CNN, build, factory, finish, measure, new_parser, parse,
                               print_timings, ratio_line, trained_digits_cnn)

TARGET = 1.05
# --model and --data (bench_certify certifies this workload too)
WORKLOAD = ("registered model (default small-cnn [8, 16] / 32)", ("digits", "random"),
            "digits (trained model) or random 3x32x32 images")


def workload(args, device):
    """(model in eval mode, images, labels) on ``device``."""
    import torch

    torch.manual_seed(0)
    if args.data == "digits":
        if args.model != "small-cnn":
            raise SystemExit("--data digits trains the 1-channel small-cnn; use --data random for other models")
        model, test = trained_digits_cnn(device)
        images, labels = test.take(torch.arange(min(args.n, len(test))))
        return model, images.to(device), labels.to(device)
    options = CIFAR_LIKE_CNN if args.model == "small-cnn" else {}
    model = build("model", args.model, options, num_classes=10).to(device).eval()
    images = torch.rand(args.n, 3, 32, 32, device=device)
    with torch.no_grad():
        labels = torch.cat([model(chunk).argmax(1) for chunk in images.split(args.batch_size)])
    return model, images, labels


def main(argv=None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--n", type=int, default=256, help="images (default 256)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--steps", type=int, default=20, help="PGD steps (default 20)")
    parser.add_argument("--eps", default="0.1",
                        help="Linf radius, fractions allowed (default 0.1 for digits; 8/255 for CIFAR-like data)")
    args, device, sync, environment = parse(parser, argv, repeats=9, workload=WORKLOAD)

    import torch
    import torchattacks

    from rtk.config.schema import EvalConfig
    from rtk.data import ImageSet
    from rtk.evaluation.robust_accuracy import evaluate, seed_batch
    from rtk.stages.context import RunContext

    eps = float(Fraction(args.eps))
    model, images, labels = workload(args, device)
    test = ImageSet(images.cpu(), labels.cpu())  # evaluate moves each batch to the device, as in a run
    make_pgd = factory("attack", "pgd", {"eps": eps, "steps": args.steps})
    alpha = eps / 4  # the pgd plugin's Linf default, given to the plain loop too
    ctx, config = RunContext(device=device, show_progress=False), EvalConfig(batch_size=args.batch_size)

    def rtk_path():
        result = evaluate(model, test, [("PGD-20", make_pgd())], ctx, config)
        return result["metrics"]["robust"]

    def plain_path():
        attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=args.steps, random_start=True)
        robust = 0
        for start in range(0, len(test), args.batch_size):
            x, y = test.take(torch.arange(start, min(start + args.batch_size, len(test))))
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                ok = model(x).argmax(1) == y
            seed_batch(0, start, "PGD-20")  # rtk's random starts, so both paths do identical arithmetic
            adversarial = attack(x[ok], y[ok])
            with torch.no_grad():
                robust += int((model(adversarial).argmax(1) == y[ok]).sum())
        return robust / len(test)

    times, robust, timing = measure({"rtk": rtk_path, "plain": plain_path}, args.repeats, sync)
    with torch.no_grad():
        clean = float((model(images).argmax(1) == labels).float().mean())
    ratio = timing["ratio_rtk_over_reference"]
    result = {
        "benchmark": f"PGD-{args.steps} evaluation, rtk.evaluation.robust_accuracy.evaluate vs a plain torchattacks.PGD"
                     " loop",
        "model": args.model, "data": args.data, "n": len(test), "batch_size": args.batch_size, "eps": eps,
        "steps": args.steps, "norm": "Linf", "repeats": args.repeats, **environment, **timing,
        "target": TARGET, "meets_target": ratio <= TARGET, "clean_accuracy": clean, "robust_accuracy": robust,
        "same_robust_accuracy": robust["rtk"] == robust["plain"],
    }
    print(f"PGD-{args.steps} evaluation, Linf eps={eps:g}, {len(test)} images ({args.data}), {args.model}, "
          f"batch {args.batch_size}, {environment['device_name']}, {args.repeats} repeats (alternating order)")
    print_timings(times, {"rtk": "rtk evaluate + pgd", "plain": "plain torchattacks.PGD loop"})
    return finish(args, result, ratio_line(result, "rtk / plain"),
                  f"clean accuracy {clean:.4f}   robust accuracy rtk {robust['rtk']:.4f}, plain {robust['plain']:.4f}"
                  f" (same on both paths: {result['same_robust_accuracy']})")


if __name__ == "__main__":
    sys.exit(main())
