"""``import rtk`` (and the lookup of ``rtk.evaluate``) against the 1-second budget a notebook's
first cell may spend on it, side by side with ``import torch`` for scale; each in a fresh Python
process, alternating order.

rtk's public names are imported on first use (rtk/__init__.py): ``import rtk`` loads pluggy and
nothing else, and ``rtk.evaluate`` loads rtk.api.evaluation without torch or any plugin. The
headline ratio is (median seconds of ``import rtk; rtk.evaluate``, minus a bare interpreter's
start-up) / 1 second: target <= 1.0. Each run also checks that torch and rtk_plugins stayed out
of ``sys.modules``, which is what keeps it small.

    python -m benchmarks.bench_import              # 7 repeats
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys

from benchmarks.common import finish, new_parser, print_timings

TARGET = 1.0
BUDGET_SECONDS = 1.0
PROBE = ("import json, sys, time; t = time.perf_counter(); {code}; elapsed = time.perf_counter() - t; "
         "print(json.dumps({{'seconds': elapsed, 'torch': 'torch' in sys.modules, "
         "'plugins': sorted(m for m in sys.modules if m.startswith('rtk_plugins'))}}))")


def in_fresh_process(code: str) -> dict:
    """What PROBE reports for ``code`` run in a new interpreter (the import time, without start-up)."""
    output = subprocess.run([sys.executable, "-c", PROBE.format(code=code)], capture_output=True, text=True,
                            check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=7, help="fresh processes per path (default 7)")
    parser.add_argument("--json", type=__import__("pathlib").Path, help="write the results here")
    args = parser.parse_args(argv)
    codes = {"rtk": "import rtk; rtk.evaluate; rtk.run", "torch": "import torch"}
    # Each path's seconds come from inside its process (the import alone), so the interpreter's
    # start-up counts for neither; the order alternates so that load drifts hit both.
    inner, reports = {name: [] for name in codes}, {}
    for repeat in range(args.repeats):
        for name in codes if repeat % 2 == 0 else list(codes)[::-1]:
            reports[name] = in_fresh_process(codes[name])
            inner[name].append(reports[name]["seconds"])
    median = statistics.median(inner["rtk"])
    ratio = median / BUDGET_SECONDS
    clean = not reports["rtk"]["torch"] and not reports["rtk"]["plugins"]
    result = {"benchmark": "import rtk; rtk.evaluate; rtk.run (fresh process) vs a 1 s budget",
              "repeats": args.repeats, "seconds": inner, "median_seconds": {k: statistics.median(v)
                                                                           for k, v in inner.items()},
              "ratio_rtk_over_reference": ratio, "target": TARGET,
              "target_semantics": "median import seconds of rtk (with rtk.evaluate, rtk.run) / 1 s <= 1.0, and"
                                  " neither torch nor a plugin imported",
              "loads_torch": reports["rtk"]["torch"], "loads_plugins": reports["rtk"]["plugins"],
              "meets_target": ratio <= TARGET and clean}
    print(f"import time in a fresh process, {args.repeats} repeats (alternating order)")
    print_timings(inner, {"rtk": "import rtk; rtk.evaluate; rtk.run", "torch": "import torch (for scale)"})
    print(f"torch loaded by it: {reports['rtk']['torch']}; plugins loaded by it: {reports['rtk']['plugins'] or 'none'}")
    line = (f"ratio rtk import / 1 s budget = {ratio:.4f}   target <= {TARGET}   "
            f"{'OK' if result['meets_target'] else 'ABOVE TARGET'}   (rtk / torch import ="
            f" {median / statistics.median(inner['torch']):.4f})")
    return finish(args, result, line)


if __name__ == "__main__":
    sys.exit(main())
