"""torchrun with 2 CPU processes (gloo): same results as one process, only rank 0 writes, and the
ranks train on different slices of the same global batches."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rtk.data import ImageSet
from rtk.config.schema import TrainConfig
from rtk.config.recipe import load_recipe
from rtk.registry import default_registry
from rtk.stages.runner import Runner
from rtk.stages.training import fit
from tests.helpers import REPO, TINY_RECIPE, quiet_context

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed")

RECIPE = TINY_RECIPE.replace("n = 60", "n = 60\nsanity = false") + """
[certify]
certifier = "cohen"
sigma = 0.25
n0 = 10
n = 200
alpha = 0.01
batch_size = 200
max_examples = 9
"""

# Installed in every torchrun worker through PYTHONPATH: records what a rank > 0 creates, renames
# or removes under RTK_AUDIT_OUT (rtk writes every file through a temporary file and a rename).
SITECUSTOMIZE = '''
import atexit, os, sys
watched, log = os.environ.get("RTK_AUDIT_OUT"), os.environ.get("RTK_AUDIT_LOG")
if watched and log and os.environ.get("RANK"):
    events = []
    def hook(event, args):
        writes = event == "open" and args[1] and set(str(args[1])) & set("wax+")
        if event in ("os.rename", "os.mkdir", "os.remove", "shutil.rmtree") or writes:
            if any(os.path.abspath(str(a)).startswith(watched) for a in args[:2] if isinstance(a, (str, os.PathLike))):
                events.append(f"{event} {args[0]}")
    sys.addaudithook(hook)
    def dump():
        with open(f"{log}.rank{os.environ['RANK']}", "w") as f:
            f.write("\\n".join(events))
    atexit.register(dump)
'''


def torchrun(tmp_path: Path, *args, env=None):
    environment = {**os.environ, "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)]), **(env or {})}
    return subprocess.run([TORCHRUN, "--nproc_per_node=2", "--standalone", *map(str, args)], cwd=tmp_path,
                          env=environment, capture_output=True, text=True, timeout=240)


def certificate_rows(path: Path) -> list[dict]:
    """The per-example certificate rows without their timings (which differ run to run)."""
    import csv

    return [{k: v for k, v in row.items() if "time" not in k and "second" not in k}
            for row in csv.DictReader(path.open(), delimiter="\t")]


def test_two_processes_give_the_results_of_one(tmp_path, one_thread):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    one, two = tmp_path / "one", tmp_path / "two"
    single = Runner(load_recipe(recipe), default_registry(), one, show_progress=False).run()
    # Its own store, so that the two ranks train the source rather than reuse the single run's.
    done = torchrun(tmp_path, "-m", "rtk", "run", recipe, "--out", two, "--quiet", "--store", tmp_path / "store2",
                    env={"RTK_AUDIT_OUT": str(two), "RTK_AUDIT_LOG": str(tmp_path / "audit")})
    assert done.returncode == 0, done.stderr[-3000:]
    double = json.loads((two / "results.json").read_text())
    (a,), (b,) = single["runs"], double["runs"]
    assert a["source"]["key"] == b["source"]["key"] and not b["source"]["reused"]
    assert b["source"]["store"].startswith(str(tmp_path / "store2"))
    assert a["metrics"] == b["metrics"] and a["n_eval"] == b["n_eval"] == 60
    assert a["source"]["clean"] == b["source"]["clean"]
    assert a["source"]["final_loss"] == pytest.approx(b["source"]["final_loss"], rel=1e-5)
    assert a["certify"]["metrics"] == b["certify"]["metrics"] and b["certify"]["n"] == 9
    assert certificate_rows(one / a["certify"]["tsv"]) == certificate_rows(two / b["certify"]["tsv"])
    assert json.loads((two / "env.json").read_text())["world_size"] == 2
    listing = lambda folder: sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))  # noqa: E731
    assert listing(one) == listing(two)  # no per-rank leftovers (eval-state, feature-cache, train-state)
    rank0, rank1 = ((tmp_path / f"audit.rank{r}").read_text() for r in (0, 1))
    assert "results.json" in rank0  # the audit sees rank 0's writes ...
    assert rank1 == ""  # ... and none by rank 1
    assert done.stdout.count("results:") == 1  # rank 1 prints nothing


SHARDS = '''
import json, sys, torch
from rtk.services import distributed
from rtk.config.schema import EvalConfig
from rtk.evaluation.robust_accuracy import evaluate
from rtk.stages.training import fit
from tests.e2e.test_distributed import Recorder, linear_model, workload
from tests.helpers import quiet_context

torch.set_num_threads(1)
world = distributed.init()
model, (data, cfg) = linear_model(), workload()
recorder = Recorder()
fit(model, data, recorder, cfg, quiet_context(seed=3), checkpoint=None)
clean = evaluate(model, data, [], quiet_context(seed=3), EvalConfig(batch_size=7))["metrics"]["clean"]
out = {"batches": recorder.batches, "weights": [p.tolist() for p in model.parameters()], "clean": clean}
open(f"{sys.argv[1]}/rank{world.rank}.json", "w").write(json.dumps(out))
distributed.shutdown()
'''


class Recorder:
    """Cross-entropy that records the example ids (feature 0) of every batch it trains on."""

    def __init__(self):
        self.batches = []

    def loss(self, model, images, labels):
        self.batches.append(images[:, 0, 0, 0].long().tolist())
        return torch.nn.functional.cross_entropy(model(images), labels)


def linear_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))


def workload():
    """45 examples whose first pixel is their id; batches of 10 (the last one 5), 2 epochs."""
    g = torch.Generator().manual_seed(1)
    images = torch.rand(45, 1, 2, 2, generator=g)
    images[:, 0, 0, 0] = torch.arange(45).float()
    return ImageSet(images, torch.randint(0, 3, (45,), generator=g)), TrainConfig(epochs=2, batch_size=10, lr=0.1)


def test_ranks_train_on_disjoint_slices_of_the_same_batches(tmp_path, one_thread):
    model, (data, cfg) = linear_model(), workload()
    single = Recorder()
    fit(model, data, single, cfg, quiet_context(seed=3), checkpoint=None)
    script = tmp_path / "shards.py"
    script.write_text(SHARDS)
    (tmp_path / "site").mkdir()
    done = torchrun(tmp_path, script, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(single.batches) == len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == 10
    for whole, part0, part1 in zip(single.batches, ranks[0]["batches"], ranks[1]["batches"]):
        assert part0 and part1 and not set(part0) & set(part1)  # different examples on each rank ...
        assert part0 + part1 == whole  # ... together the single process's batch, in its order
    assert ranks[0]["weights"] == ranks[1]["weights"]  # gradients were synchronised
    for got, want in zip(ranks[0]["weights"], model.parameters()):
        assert torch.allclose(torch.tensor(got), want.detach(), atol=1e-6)  # up to float summation order
    assert ranks[0]["clean"] == ranks[1]["clean"]
