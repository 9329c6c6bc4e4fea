"""rtk's ``autoattack`` against calling the reference pyautoattack directly (Croce & Hein,
arXiv:2003.01690): wall time of the standard version on the same model and images, measured
side by side in one process.

rtk adds a fresh AutoAttack object per call, one forward pass to count classes, log/warning
capture for the flags and an RNG fork; the target is rtk / reference <= 1.05. The two paths
alternate which runs first in each repeat (the process's first run pays for warm-up), and the
figure is the median over repeats of rtk / reference. Also checks that both return the same
adversarial images.

    python -m benchmarks.bench_autoattack                      # small CNN, 64 digits, 5 repeats
    python -m benchmarks.bench_autoattack --n 128 --repeats 9 --json bench.json
    python -m benchmarks.bench_autoattack --torchattacks       # also time the torchattacks backend once

Defaults (a small CNN trained 10 epochs on scikit-learn digits, eps 0.15, 64 images, 5 repeats,
1 torch thread) finish in one to two minutes on a CPU.
"""
from __future__ import annotations

import sys
import time

from benchmarks.common import build, finish, measure, new_parser, parse, trained_digits_cnn, verdict

TARGET = 1.05


def main(argv=None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--n", type=int, default=64, help="test images (default 64)")
    parser.add_argument("--eps", type=float, default=0.15,
                        help="Linf radius (default 0.15: most digits break, a few survive all four attacks)")
    parser.add_argument("--torchattacks", action="store_true",
                        help="also run the torchattacks backend once (robust accuracy and time)")
    args, _, _, environment = parse(parser, argv, repeats=5, device=False)

    import torch
    from pyautoattack import AutoAttack

    model, test = trained_digits_cnn()
    images, labels = test.take(torch.arange(min(args.n, len(test))))

    def rtk_path():
        return build("attack", "autoattack", {"eps": args.eps})(model, images, labels)

    def reference_path():
        adversary = AutoAttack(model, norm="Linf", eps=args.eps, version="standard", seed=0, device="cpu")
        return adversary.run_standard_evaluation(images, labels)[0]

    times, outputs, timing = measure({"rtk": rtk_path, "reference": reference_path}, args.repeats, warm_up=False)

    def robust_accuracy(adversarial):
        with torch.no_grad():
            return float((model(adversarial).argmax(1) == labels).float().mean())

    with torch.no_grad():
        clean = float((model(images).argmax(1) == labels).float().mean())
    ratio, medians = timing["ratio_rtk_over_reference"], timing["median_seconds"]
    result = {
        "benchmark": "autoattack standard, rtk vs pyautoattack called directly",
        "model": "small-cnn [8, 16] / 32, digits", "n": len(labels), "eps": args.eps, "norm": "Linf",
        "repeats": args.repeats, **environment, **timing,
        "paired_ratios": [a / b for a, b in zip(times["rtk"], times["reference"])],
        "target": TARGET, "meets_target": ratio <= TARGET,
        "identical_adversarial_images": bool(torch.equal(outputs["rtk"], outputs["reference"])),
        "clean_accuracy": clean,
        "robust_accuracy": {name: robust_accuracy(out) for name, out in outputs.items()},
    }
    lines = [f"AutoAttack standard, Linf eps={args.eps:g}, {len(labels)} digits, small CNN, {args.threads} thread(s), "
             f"{args.repeats} repeats (alternating order)", f"{'path':<27}{'median s':>9}{'robust acc':>12}   runs s"]
    for name, label in [("rtk", "rtk autoattack"), ("reference", "pyautoattack directly")]:
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        lines.append(f"{label:<27}{medians[name]:>9.2f}{result['robust_accuracy'][name]:>12.4f}   {runs}")
    if args.torchattacks:
        attack = build("attack", "autoattack", {"eps": args.eps, "backend": "torchattacks"})
        start = time.perf_counter()
        adversarial = attack(model, images, labels)
        ta = result["torchattacks"] = {"seconds": time.perf_counter() - start,
                                       "robust_accuracy": robust_accuracy(adversarial)}
        lines.append(f"{'rtk, torchattacks backend':<27}{ta['seconds']:>9.2f}{ta['robust_accuracy']:>12.4f}"
                     "   (1 run, not in the ratio)")
    return finish(args, result, *lines,
                  f"ratio rtk / reference = {ratio:.3f} (median of per-repeat ratios; ratio of medians "
                  f"{result['ratio_of_medians']:.3f})   target <= {TARGET}   {verdict(result)}",
                  f"identical adversarial images: {result['identical_adversarial_images']}"
                  f"   clean accuracy {clean:.4f}")


if __name__ == "__main__":
    sys.exit(main())
