"""What the benchmarks share: their command line, set-up and report, registered components built
from options, the side-by-side timing, and a small CNN trained 10 epochs on scikit-learn's digits."""
from __future__ import annotations

import argparse


def trained_digits_cnn(device="cpu"):
    """(small-cnn [8, 16] / 32 features in eval mode on ``device``, digits test split), seed 0."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    splits = build("dataset", "digits")
    x, y = splits.train.take(torch.arange(len(splits.train)))
    x, y = x.to(device), y.to(device)
    model = build("model", "small-cnn", {"channels": [8, 16], "feature_dim": 32}, num_classes=10).to(device)
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
            print(f"  repeat {repeat + 1}/{repeats} {name:<9} {times[name][-1]:7.3f} {unit}", file=sys.stderr,
                  flush=True)
    return times, outputs


def paired_ratio(times: dict, numerator: str, denominator: str) -> float:
    """The median of per-repeat ratios: each repeat ran both paths back to back, so its ratio
    cancels most of a shared machine's load drift (a ratio of medians does not)."""
    import statistics

    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))


def new_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's command line, described by the first paragraph of its module docstring."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_workload_options(parser, model_help: str, data: tuple[str, str], data_help: str) -> None:
    """--model (a registered model, default small-cnn) and --data (``data``: the default first)."""
    parser.add_argument("--model", default="small-cnn", help=model_help)
    parser.add_argument("--data", choices=list(data), default=data[0], help=data_help)


def parse(parser, argv, repeats: int, device: bool = True, workload: tuple | None = None):
    """Add the run options (and, given ``workload``, add_workload_options(parser, *workload)), parse
    ``argv`` and set up: (args, device, sync, environment) (see setup)."""
    if workload is not None:
        add_workload_options(parser, *workload)
    add_run_options(parser, repeats, device)
    args = parser.parse_args(argv)
    return (args, *setup(args))


def factory(kind: str, name: str, options: dict | None = None, **kwargs):
    """A callable that builds the registered component ``name`` of ``kind`` from ``options`` (checked
    once, here), as a recipe table builds it (its variant too, for ``prefix/*`` components);
    ``kwargs`` go to the component's factory (num_classes)."""
    from rtk.registry import default_registry

    return default_registry().factory(kind, name, options, **kwargs)


def build(kind: str, name: str, options: dict | None = None, **kwargs):
    """The registered component ``name`` of ``kind`` built from ``options`` (see factory)."""
    return factory(kind, name, options, **kwargs)()


CIFAR_LIKE_CNN = {"in_channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}  # small-cnn's options for 3x32x32 images


def add_run_options(parser, repeats: int, device: bool = True) -> None:
    """The options every benchmark takes: --repeats, --threads, --device (unless it is CPU-only), --json."""
    from pathlib import Path

    parser.add_argument("--repeats", type=int, default=repeats, help=f"timed runs of each path (default {repeats})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on CPU (default 1: tiny ops thrash on more)")
    if device:
        parser.add_argument("--device", default="auto", help='"auto", "cpu" or "cuda"')
    parser.add_argument("--json", type=Path, help="write the results here")


def setup(args):
    """Apply --threads; (device, sync, environment) for --device, where sync waits for queued CUDA
    work (a timing that did not would measure the launch, not the kernels) and environment is the
    machine and versions every result records."""
    import platform

    import torch

    from rtk.stages.context import resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(getattr(args, "device", "cpu"))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    environment = {"device": str(device), "device_name": name, "torch_threads": args.threads,
                   "python": platform.python_version(), "torch": torch.__version__}
    return device, sync, environment


def measure(paths: dict, repeats: int, sync=None, warm_up: bool = True) -> tuple[dict, dict, dict]:
    """Run every path once (warm-up: allocator, kernels, lazy imports) unless ``warm_up`` is false,
    then time them side by side: ({name: [seconds]}, {name: last output}, the timing summary of
    the first path over the second)."""
    if warm_up:
        for path in paths.values():
            path()
    times, outputs = time_side_by_side(paths, repeats, sync)
    first, second = list(paths)[:2]
    return times, outputs, timing_summary(times, first, second)


def timing_summary(times: dict, numerator: str, denominator: str) -> dict:
    """Per-path seconds and medians, and the ratio of numerator over denominator three ways: the
    headline paired ratio, and the ratios of medians and of minimums for comparison."""
    import statistics

    medians = {name: statistics.median(ts) for name, ts in times.items()}
    return {"seconds": times, "median_seconds": medians,
            "ratio_rtk_over_reference": paired_ratio(times, numerator, denominator),
            "ratio_of_medians": medians[numerator] / medians[denominator],
            "ratio_of_minimums": min(times[numerator]) / min(times[denominator])}


def print_timings(times: dict, labels: dict) -> None:
    """One line per path (labels: {path: text}): median, minimum and maximum seconds."""
    import statistics

    width = max(len(label) for label in labels.values()) + 4
    print(f"{'path':<{width}}{'median s':>10}{'min s':>10}{'max s':>10}")
    for name, label in labels.items():
        print(f"{label:<{width}}{statistics.median(times[name]):>10.3f}{min(times[name]):>10.3f}{max(times[name]):>10.3f}")


def verdict(result: dict) -> str:
    return "OK" if result["meets_target"] else "ABOVE TARGET"


def ratio_line(result: dict, what: str) -> str:
    """The headline line: ``what`` (e.g. "rtk / plain") = the paired ratio, its target and verdict,
    and the ratios of medians and minimums beside it."""
    return (f"ratio {what} = {result['ratio_rtk_over_reference']:.3f}   target <= {result['target']}"
            f"   {verdict(result)}   (median of per-repeat ratios; of medians {result['ratio_of_medians']:.3f},"
            f" of minimums {result['ratio_of_minimums']:.3f})")


def finish(args, result: dict, *lines: str) -> int:
    """Print ``lines``, write ``result`` to --json when given (what ``python -m benchmarks``
    collects); the exit status 0."""
    import json

    for line in lines:
        print(line)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
