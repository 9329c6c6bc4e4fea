"""rtk's Cohen certification (the ``cohen`` certifier's certify_examples) against the bare
forward passes it needs: wall time, side by side in one process.

Both paths run n0 + n noisy forward passes per example in batches of the same size under
torch.inference_mode(). The plain loop is core.py's sampling without its counting:
``model(x.repeat(b, 1, 1, 1) + sigma * torch.randn(...))``. rtk adds the vote counting (argmax +
bincount on the device), one host copy of the counts, the per-example noise seeding, the
Clopper-Pearson bound (scipy), the rows file appended and fsynced per example (the run folder
is a temporary directory) and the weights digest that fingerprints it. Target: rtk / plain <= 1.10.
The two paths alternate which runs first in each repeat; the ratio is the median of the
per-repeat ratios.

    python -m benchmarks.bench_certify                     # small CNN on digits, 32 examples, 7 repeats
    python -m benchmarks.bench_certify --k 64 --n 5000 --json bench-certify.json
    python -m benchmarks.bench_certify --model resnet18 --data random --device cuda --n 10000 --batch-size 1000

Defaults finish in well under a minute on a CPU.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_pgd import WORKLOAD as PGD_WORKLOAD
from benchmarks.common import finish, measure, new_parser, parse, print_timings, ratio_line

TARGET = 1.10


def workload(args, device):
    """(model in eval mode on ``device``, images on the CPU, labels): bench_pgd's workload, the
    trained digits CNN or a model on random images labelled with its own predictions."""
    from benchmarks.bench_pgd import workload as pgd_workload

    options = argparse.Namespace(data=args.data, model=args.model, n=args.k, batch_size=args.batch_size)
    model, images, labels = pgd_workload(options, device)
    return model, images.cpu(), labels.cpu()


def main(argv=None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--k", type=int, default=32, help="examples certified (default 32)")
    parser.add_argument("--n0", type=int, default=100, help="selection samples per example (default 100)")
    parser.add_argument("--n", type=int, default=2000, help="estimation samples per example (default 2000)")
    parser.add_argument("--batch-size", type=int, default=500, help="noisy copies per forward pass (default 500)")
    parser.add_argument("--sigma", type=float, default=0.25, help="noise std (default 0.25)")
    args, device, sync, environment = parse(parser, argv, repeats=7, workload=PGD_WORKLOAD)

    import torch

    from rtk.config.fields import build_config
    from rtk.data import ImageSet
    from rtk.stages.context import RunContext
    from rtk_plugins.smoothing import CohenConfig
    from rtk_plugins.smoothing.cohen import CohenCertifier

    model, images, labels = workload(args, device)
    test = ImageSet(images, labels)  # on the CPU: both paths move one example at a time, as a run does
    config = build_config(CohenConfig, {"sigma": args.sigma, "n0": args.n0, "n": args.n, "batch_size": args.batch_size})
    certifier = CohenCertifier(config)

    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(device=device, show_progress=False, out_dir=Path(tmp))

        def rtk_path():
            rows = certifier.certify_examples(model, test, ctx)
            return sum(r["correct"] for r in rows) / len(rows)

        def plain_path():
            with torch.inference_mode():
                for i in range(len(test)):
                    x = test.images[i:i + 1].float().to(device)
                    for num in (args.n0, args.n):
                        remaining = num
                        while remaining > 0:
                            size = min(args.batch_size, remaining)
                            remaining -= size
                            batch = x.repeat((size, 1, 1, 1))
                            model(batch + torch.randn_like(batch) * args.sigma)
                sync()
            return None

        # warm-up: allocator, kernels, scipy import
        times, outputs, timing = measure({"rtk": rtk_path, "plain": plain_path}, args.repeats, sync)
        rows = certifier.certify_examples(model, test, ctx)
        started = time.perf_counter()
        summary = certifier.summarize(rows, ctx)  # TSV and plot: once per run, not per example
        summarize_seconds = time.perf_counter() - started
    ratio = timing["ratio_rtk_over_reference"]
    forwards = len(test) * (-(-args.n0 // args.batch_size) + -(-args.n // args.batch_size))
    result = {
        "benchmark": "Cohen certification, rtk cohen certify_examples vs the bare noisy forward passes it needs",
        "model": args.model, "data": args.data, "k": len(test), "n0": args.n0, "n": args.n,
        "batch_size": args.batch_size, "sigma": args.sigma, "forward_passes": forwards, "repeats": args.repeats,
        **environment, **timing, "target": TARGET, "meets_target": ratio <= TARGET, "smoothed_accuracy": outputs["rtk"],
        "metrics": summary["metrics"], "summarize_seconds": summarize_seconds,
    }
    print(f"Cohen CERTIFY, {len(test)} examples ({args.data}), {args.model}, sigma={args.sigma:g}, n0={args.n0},"
          f" n={args.n}, batch {args.batch_size} ({forwards} forward passes), {environment['device_name']},"
          f" {args.repeats} repeats (alternating order)")
    print_timings(times, {"rtk": "rtk cohen certify_examples", "plain": "plain forward passes (no counts)"})
    metrics = summary["metrics"]
    return finish(args, result, ratio_line(result, "rtk / plain"),
                  f"smoothed clean accuracy {metrics['clean_smoothed_accuracy']:.4f}, ACR {metrics['acr']:.4f};"
                  f" summarize (TSV + plot) {summarize_seconds:.2f} s once")


if __name__ == "__main__":
    sys.exit(main())
