"""rtk's PGD-k attack (the ``pgd`` attack from the registry) against its physical bound: the time
of k + 1 forward and backward passes of the same model on the same batch, side by side in one
process.

PGD-k needs k gradient steps (a forward and a backward pass each); the bound grants one pass
more for the bookkeeping every implementation needs (random start, projection, the final
prediction), so an attack that wastes nothing lands at or below 1.0. The target is
rtk / bound <= 1.05. The two paths alternate which runs first in each repeat; the reported ratio
is the median of the per-repeat ratios (11 repeats by default: a single pass of this small model
varies by 10-20% on a shared CPU). rtk's ``pgd`` is torchattacks' PGD behind rtk's mode
handling; on this small CNN on one CPU thread torchattacks' elementwise step (sign, projection,
two clamps) costs about 5% of a pass, measured directly, so it lands near 1.0-1.05, and rtk adds
nothing measurable on top of torchattacks.

    python -m benchmarks.bench_pgd_bound                      # small CNN, 128 3x32x32 images
    python -m benchmarks.bench_pgd_bound --steps 50 --device cuda --batch-size 1024

The model is the built-in small CNN ([16, 32, 64], 256 features) on uniform random 3x32x32
images labelled with its own predictions (timing does not depend on what they show).
Defaults finish in well under a minute on a CPU.
"""
from __future__ import annotations

import sys
from fractions import Fraction

from benchmarks.common import CIFAR_LIKE_CNN, build, finish, measure, new_parser, parse, print_timings, ratio_line

TARGET = 1.05


def main(argv=None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--batch-size", type=int, default=128, help="images in the batch (default 128)")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps k (default 10)")
    parser.add_argument("--eps", default="8/255", help="Linf radius (default 8/255)")
    args, device, sync, environment = parse(parser, argv, repeats=11)

    import torch
    import torch.nn.functional as F

    eps = float(Fraction(args.eps))
    torch.manual_seed(0)
    model = build("model", "small-cnn", CIFAR_LIKE_CNN, num_classes=10).to(device).eval()
    images = torch.rand(args.batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        labels = model(images).argmax(1)
    attack = build("attack", "pgd", {"eps": eps, "steps": args.steps})

    def rtk_path():
        torch.manual_seed(1)
        adversarial = attack(model, images, labels)
        with torch.no_grad():
            return float((model(adversarial).argmax(1) == labels).float().mean())

    def bound_path():
        x = images.clone()
        for _ in range(args.steps + 1):
            x.requires_grad_(True)
            grad, = torch.autograd.grad(F.cross_entropy(model(x), labels), x)
            x = x.detach()
        return float(grad.abs().sum() > 0)

    times, outputs, timing = measure({"rtk": rtk_path, "bound": bound_path}, args.repeats, sync)
    ratio = timing["ratio_rtk_over_reference"]
    result = {
        "benchmark": f"PGD-{args.steps} attack (rtk pgd) vs its physical bound ({args.steps + 1} forward+backward"
                     " passes)",
        "model": "small-cnn [16, 32, 64] / 256", "batch_size": args.batch_size, "image_shape": [3, 32, 32],
        "steps": args.steps, "eps": eps, "norm": "Linf", "repeats": args.repeats, **environment, **timing,
        "target": TARGET,
        "target_semantics": f"rtk PGD-{args.steps} time / time of {args.steps + 1} forward+backward passes <= {TARGET}",
        "meets_target": ratio <= TARGET, "robust_accuracy": outputs["rtk"],
    }
    print(f"PGD-{args.steps} Linf eps={eps:g} on {args.batch_size} images 3x32x32, small-cnn [16, 32, 64] / 256,"
          f" {environment['device_name']}, {args.repeats} repeats (alternating order)")
    print_timings(times, {"rtk": f"rtk pgd attack, {args.steps} steps",
                          "bound": f"{args.steps + 1} forward+backward passes"})
    return finish(args, result, ratio_line(result, "rtk / bound"))


if __name__ == "__main__":
    sys.exit(main())
