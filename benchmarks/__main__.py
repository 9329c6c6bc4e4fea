"""Run every benchmark (each ``benchmarks/bench_*.py`` module's ``main(argv)``) with its small
defaults, then print one combined table of ratios against targets.

    python -m benchmarks                       # all of them
    python -m benchmarks --only pgd --json all.json

A benchmark module takes ``--json PATH`` and writes there a dict with at least "benchmark",
"ratio_rtk_over_reference", "target" and "meets_target"; its own table is printed as it runs.
Exit status 1 when a benchmark fails to run; a ratio above its target is reported, not fatal
(benchmarks on shared machines are noisy: rerun with more repeats before concluding).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path


def discover() -> list[str]:
    return sorted(p.stem for p in Path(__file__).resolve().parent.glob("bench_*.py"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="run only bench_NAME (repeatable)")
    parser.add_argument("--json", type=Path, help="write every benchmark's results here")
    args = parser.parse_args(argv)
    names = discover()
    if args.only:
        wanted = {n if n.startswith("bench_") else f"bench_{n}" for n in args.only}
        unknown = sorted(wanted - set(names))
        if unknown:
            parser.error(f"no benchmark {', '.join(unknown)}; available: {', '.join(names)}")
        names = [n for n in names if n in wanted]
    results, rows, failed = {}, [], False
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(f"== {name}", flush=True)
            out = Path(tmp) / f"{name}.json"
            started = time.perf_counter()
            try:
                module = importlib.import_module(f"benchmarks.{name}")
                code = module.main(["--json", str(out)])
                if code not in (0, None):
                    raise RuntimeError(f"main() returned {code}")
                result = json.loads(out.read_text())
            except (Exception, SystemExit) as exc:  # one broken benchmark must not hide the others
                failed = True
                traceback.print_exc()
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                rows.append((name, "error", "", "FAILED", time.perf_counter() - started))
                continue
            results[name] = result
            ratio, target = result.get("ratio_rtk_over_reference"), result.get("target")
            verdict = "OK" if result.get("meets_target") else "ABOVE TARGET"
            rows.append((name, f"{ratio:.3f}" if ratio is not None else "?",
                         f"<= {target}" if target is not None else "", verdict, time.perf_counter() - started))
            print(flush=True)
    print(f"{'benchmark':<22}{'ratio rtk/ref':>14}{'target':>10}{'verdict':>15}{'wall s':>9}")
    for name, ratio, target, verdict, seconds in rows:
        print(f"{name:<22}{ratio:>14}{target:>10}{verdict:>15}{seconds:>9.1f}")
    if args.json:
        args.json.write_text(json.dumps({"benchmarks": results}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
