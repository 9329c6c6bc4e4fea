"""The cluster launcher (rtk.launch): resources from options, config file and defaults; the sbatch
scripts submitit writes for them (through a fake sbatch); the job graph (sources before their
points, collect last, only what is missing); the job callable's requeue; nothing imports
submitit unless a launcher is asked for."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from rtk.config.recipe import load_recipe
from rtk.config.source_key import source_key
from rtk.errors import RtkError
from rtk.launch import job_arguments, launch
from rtk.launch.config import LauncherConfigError, Resources, executor_parameters, parse_time, resources
from rtk.launch.graph import build_graph, ranges
from rtk.registry import default_registry
from rtk.services.store import SourceStore
from tests.helpers import REPO, TINY_RECIPE

needs_submitit = pytest.mark.skipif(importlib.util.find_spec("submitit") is None,
                                    reason='submitit is not installed (pip install "rtk[slurm]")')

# Two sources (natural, pgd-at) x two transfer learning rates: 4 points, sources 1 and 2.
SWEEP = TINY_RECIPE + """
[sweep]
"transfer.lr" = [0.1, 0.01]

[[sweep.cases]]
id = "natural"
"source.objective" = { name = "natural" }
[[sweep.cases]]
id = "robust"
"source.objective" = { name = "pgd-at", eps = 0.1 }
"""


@pytest.fixture
def no_config(monkeypatch, tmp_path):
    """No user launcher config: XDG_CONFIG_HOME points at an empty folder."""
    monkeypatch.delenv("RTK_LAUNCHER_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- resources


def test_defaults_without_options_or_config(no_config):
    res = resources({})
    assert (res.partition, res.gpus, res.cpus, res.minutes, res.account, res.sbatch) == (None, 1, 8, 24 * 60, None, {})
    assert set(res.origin.values()) == {"default"}


def test_options_win_over_the_config_file_which_wins_over_defaults(no_config, tmp_path):
    config = write(tmp_path / "xdg" / "rtk" / "launcher.toml",
                   'partition = "gpu"\ngpus = 4\ntime = "02:00:00"\naccount = "lab"\n[sbatch]\nqos = "low"\n'
                   'constraint = "a100"\n')
    res = resources({"gpus": 2, "cpus": None, "sbatch": ("qos=high", "--mail-type=END")})
    assert (res.partition, res.gpus, res.cpus, res.minutes, res.account) == ("gpu", 2, 8, 120, "lab")
    assert res.sbatch == {"qos": "high", "constraint": "a100", "mail-type": "END"}
    assert res.origin["gpus"] == "option" and res.origin["partition"] == f"config {config}"
    assert res.origin["cpus"] == "default"


def test_config_file_from_the_environment_and_from_the_option(no_config, tmp_path, monkeypatch):
    env = write(tmp_path / "env.toml", 'partition = "from-env"\n')
    explicit = write(tmp_path / "explicit.toml", 'partition = "from-option"\ncpus = 3\n')
    monkeypatch.setenv("RTK_LAUNCHER_CONFIG", str(env))
    assert resources({}).partition == "from-env"
    assert (resources({}, explicit).partition, resources({}, explicit).cpus) == ("from-option", 3)
    with pytest.raises(LauncherConfigError, match="not found"):
        resources({}, tmp_path / "missing.toml")
    monkeypatch.setenv("RTK_LAUNCHER_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(LauncherConfigError, match="gone.toml not found"):
        resources({})


@pytest.mark.parametrize("text, match", [
    ('partitions = "gpu"\n', "unknown key 'partitions'; valid keys: partition, gpus"),
    ("gpus = -1\n", "gpus must be an integer >= 0"),
    ('cpus = "many"\n', "cpus must be an integer >= 1"),
    ('time = "1 day"\n', "neither minutes"),
    ("time = 0\n", "at least one minute"),
    ("[sbatch]\ndependency = \"afterok:1\"\n", "rtk's and submitit's to set"),
    ("partition = [1]\n", "partition must be a string"),
    ("gpus = \n", "launcher config"),
])
def test_bad_config_values_name_the_file_and_key(no_config, tmp_path, text, match):
    config = write(tmp_path / "bad.toml", text)
    with pytest.raises(LauncherConfigError, match=re.escape(match)) as info:
        resources({}, config)
    assert str(config) in str(info.value)


@pytest.mark.parametrize("value, minutes", [(90, 90), ("90", 90), ("01:30:00", 90), ("1:30:01", 91),
                                            ("2-00:00:00", 2880), ("0:00:30", 1)])
def test_time_is_minutes_or_hh_mm_ss(value, minutes):
    assert parse_time(value, "--time") == minutes


def test_bad_options_name_the_option(no_config):
    with pytest.raises(LauncherConfigError, match="--time: time '1:75:00' has minutes"):
        resources({"time": "1:75:00"})
    with pytest.raises(LauncherConfigError, match="--sbatch: sbatch option 'qos' is not KEY=VALUE"):
        resources({"sbatch": ["qos"]})


def test_executor_parameters_map_onto_submitit():
    res = Resources(partition="gpu", gpus=2, cpus=4, minutes=90, account="lab", sbatch={"qos": "high"})
    assert executor_parameters(res, "rtk-point-0", ["11", "12"]) == {
        "name": "rtk-point-0", "timeout_min": 90, "cpus_per_task": 4, "gpus_per_node": 2, "slurm_partition": "gpu",
        "slurm_account": "lab",
        "slurm_additional_parameters": {"qos": "high", "dependency": "afterok:11:12", "kill-on-invalid-dep": "yes"}}
    collect = executor_parameters(res.for_collect(), "rtk-collect")
    assert "gpus_per_node" not in collect and collect["cpus_per_task"] == 1 and collect["timeout_min"] == 30
    assert collect["slurm_additional_parameters"] == {"qos": "high"}


# ---------------------------------------------------------------- the graph


class FakeStore:
    """A store that holds exactly the keys given."""

    def __init__(self, keys=(), root="/store"):
        self.keys, self.root = set(keys), Path(root)

    def get(self, key):
        return object() if key in self.keys else None


@pytest.fixture
def sweep(tmp_path):
    path = write(tmp_path / "sweep.toml", SWEEP)
    from rtk.config.spec import resolve

    loaded = load_recipe(path)
    return path, loaded, resolve(loaded, default_registry())


def graph_of(specs, store, out, resume=False):
    return build_graph(specs, store, out, ["run", "R", "--out", str(out)], resume)


def test_sources_first_then_points_after_their_source_then_collect(sweep, tmp_path):
    _, _, specs = sweep
    graph = graph_of(specs, FakeStore(), tmp_path / "out")
    assert [j.name for j in graph.jobs] == ["source-1", "source-2", "point-0", "point-1", "point-2", "point-3",
                                            "collect"]
    assert [s.points for s in graph.sources] == [[0, 2], [1, 3]]  # cases vary fastest: natural, robust, natural, ...
    assert graph.job("source-1").args == ["run", "R", "--out", str(tmp_path / "out"), "--sources-only", "--source",
                                          "1/2"]
    assert graph.job("point-2").args[-2:] == ["--shard", "3/4"]
    assert {j.name: j.after for j in graph.of_kind("point")} == {
        "point-0": ["source-1"], "point-1": ["source-2"], "point-2": ["source-1"], "point-3": ["source-2"]}
    assert graph.job("collect").after == ["point-0", "point-1", "point-2", "point-3"]
    assert graph.job("collect").args == ["collect", str(tmp_path / "out")]
    names = [j.name for j in graph.jobs]  # every job comes after the jobs it needs
    assert all(names.index(a) < names.index(j.name) for j in graph.jobs for a in j.after)


def test_only_missing_work_is_submitted(sweep, tmp_path):
    _, _, specs = sweep
    out = tmp_path / "out"
    stored = FakeStore({source_key(specs[0].source)})  # the natural source is in the store
    write(out / "points" / "3.json", "{}")  # point 3 (robust) finished
    graph = graph_of(specs, stored, out, resume=True)
    assert [s.state for s in graph.sources] == ["store", "train"]
    assert [j.name for j in graph.jobs] == ["source-2", "point-0", "point-1", "point-2", "collect"]
    assert graph.job("point-0").after == [] and graph.job("point-1").after == ["source-2"]
    assert all(j.args[-1] == "--resume" for j in graph.jobs if j.kind != "collect")
    assert graph.job("source-2").args[-3:] == ["--source", "2/2", "--resume"]
    assert graph.done == [3]
    # A source whose points are all done needs no job, even when the store lacks it.
    for i in (0, 1, 2):
        write(out / "points" / f"{i}.json", "{}")
    graph = graph_of(specs, FakeStore(), out)
    assert [j.name for j in graph.jobs] == ["collect"] and graph.job("collect").after == []
    write(out / "results.json", json.dumps({"complete": False, "runs": []}))
    assert [j.name for j in graph_of(specs, FakeStore(), out).jobs] == ["collect"]
    write(out / "results.json", json.dumps({"complete": True, "runs": []}))
    graph = graph_of(specs, FakeStore(), out)
    assert graph.complete and graph.jobs == []


def test_weights_file_and_random_sources_need_no_job(tmp_path):
    from rtk.config.spec import resolve

    untrained = TINY_RECIPE.replace('[source.data]\ndataset = "digits"\nclasses = [0, 1, 2, 3, 4]\n\n', "")
    untrained = untrained.replace("[source.train]\nepochs = 2\nbatch_size = 64\nlr = 3e-3\n", "")
    assert "[source.train]" not in untrained and "[source.data]" not in untrained
    path = write(tmp_path / "r.toml", untrained)
    specs = resolve(load_recipe(path), default_registry())
    graph = graph_of(specs, FakeStore(), tmp_path / "out")
    assert [s.state for s in graph.sources] == ["none"]
    assert [j.name for j in graph.jobs] == ["point-0", "collect"] and graph.job("point-0").after == []


def test_ranges():
    assert ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8" and ranges([4]) == "4"


def test_job_arguments_are_absolute_and_keep_profile_and_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = job_arguments(Path("r.toml"), tmp_path / "out", Path("/store"), "smoke", ["eval.n=5", "run.name=a b"],
                         deterministic=True, download=True)
    assert args == ["run", str(tmp_path / "r.toml"), "--out", str(tmp_path / "out"), "--store", "/store", "--quiet",
                    "--profile", "smoke", "--set", "eval.n=5", "--set", "run.name=a b", "--deterministic",
                    "--download"]


# ---------------------------------------------------------------- dry run


def test_dry_run_prints_the_graph_and_submits_nothing(sweep, tmp_path, no_config):
    from rich.console import Console

    path, loaded, _ = sweep
    console = Console(record=True, width=200)
    out = tmp_path / "out"
    code = launch(path, loaded, default_registry(), launcher="slurm", out=out, store=SourceStore(tmp_path / "st"),
                  profile=None, overrides=[], options={"partition": "gpu", "time": "90"}, dry_run=True,
                  console=console)
    text = console.export_text()
    assert code == 0 and not out.exists()
    assert "source 1/2: small-cnn on digits[0,1,2,3,4] (natural): TRAIN here for 2 epochs" in text
    assert "-> job source-1" in text and "-> job source-2" in text
    assert "4 point jobs (rtk run --shard I/4, one sweep point each)" in text
    assert "points 0, 2 (source 1): after source-1" in text and "points 1, 3 (source 2): after source-2" in text
    assert "collect: 1 job after the 4 point jobs" in text
    assert "partition gpu, 1 GPU, 8 CPUs, time 01:30:00" in text
    assert "collect job: partition gpu, no GPU, 1 CPU, time 00:30:00" in text
    assert "dry run: nothing submitted" in text


def test_launch_refuses_overwrite_and_another_recipes_folder(sweep, tmp_path, no_config):
    path, loaded, _ = sweep
    common = dict(launcher="local", store=SourceStore(tmp_path / "st"), profile=None, overrides=[], options={},
                  dry_run=True)
    with pytest.raises(RtkError, match="--overwrite does not go with --launcher"):
        launch(path, loaded, default_registry(), out=tmp_path / "o", overwrite=True, **common)
    write(tmp_path / "other" / "recipe.resolved.toml", '[run]\nname = "other"\n')
    with pytest.raises(RtkError, match="holds a different recipe"):
        launch(path, loaded, default_registry(), out=tmp_path / "other", **common)


# ---------------------------------------------------------------- SLURM through a fake sbatch


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """srun and sbatch on PATH: sbatch copies each script into CAPTURE/<id>.sh and answers
    "Submitted batch job <id>", ids from 101."""
    bin_dir, capture = tmp_path / "bin", tmp_path / "capture"
    capture.mkdir()
    write(bin_dir / "srun", "#!/bin/sh\nexit 0\n").chmod(0o755)
    write(bin_dir / "sbatch", f"""#!/bin/sh
n=$(ls {capture} | wc -l)
id=$((101 + n))
cp "$1" {capture}/$id.sh
echo "Submitted batch job $id"
""").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return capture


def sbatch_lines(script: str) -> dict[str, str]:
    return dict(line[len("#SBATCH --"):].partition("=")[::2] for line in script.splitlines()
                if line.startswith("#SBATCH --"))


@needs_submitit
def test_slurm_scripts_carry_the_resources_and_the_dependency_chain(sweep, tmp_path, fake_slurm, no_config):
    from rich.console import Console

    import submitit

    path, loaded, _ = sweep
    config = write(tmp_path / "launcher.toml", 'partition = "gpu"\naccount = "lab"\ncpus = 16\n[sbatch]\n'
                   'qos = "normal"\n')
    out, store = tmp_path / "out", SourceStore(tmp_path / "st")
    console = Console(record=True, width=200)
    code = launch(path, loaded, default_registry(), launcher="slurm", out=out, store=store, profile=None,
                  overrides=["eval.n=30"], options={"gpus": 2, "cpus": 4, "time": "1:30:00", "sbatch": ["qos=high"]},
                  config_file=config, console=console)
    assert code == 0
    scripts = {int(p.stem): p.read_text() for p in fake_slurm.glob("*.sh")}
    assert sorted(scripts) == list(range(101, 108))  # 2 sources, 4 points, collect
    params = {i: sbatch_lines(s) for i, s in scripts.items()}
    for i in range(101, 107):  # sources and points: the options over the config file
        assert {k: params[i].get(k) for k in ("partition", "account", "gpus-per-node", "cpus-per-task", "time",
                                               "qos")} == {"partition": "gpu", "account": "lab", "gpus-per-node": "2",
                                                           "cpus-per-task": "4", "time": "90", "qos": "high"}
        assert params[i]["output"].startswith(str(out / "slurm-logs" / "%j"))
        assert params[i]["signal"] == "USR2@90"  # submitit's preemption / time-out signal
    assert "dependency" not in params[101] and "dependency" not in params[102]
    assert [params[i]["dependency"] for i in range(103, 107)] == ["afterok:101", "afterok:102"] * 2
    assert params[103]["kill-on-invalid-dep"] == "yes"
    assert params[107]["dependency"] == "afterok:103:104:105:106"
    assert "gpus-per-node" not in params[107] and params[107]["cpus-per-task"] == "1" and params[107]["time"] == "30"
    assert params[103]["job-name"] == "rtk-point-0" and params[107]["job-name"] == "rtk-collect"
    # What each job runs: the pickled RtkJob and its rtk command line.
    record = json.loads((out / "launch.json").read_text())["submissions"][0]["jobs"]
    assert [(j["name"], j["id"], j["after"]) for j in record] == [
        ("source-1", "101", []), ("source-2", "102", []), ("point-0", "103", ["101"]), ("point-1", "104", ["102"]),
        ("point-2", "105", ["101"]), ("point-3", "106", ["102"]), ("collect", "107", ["103", "104", "105", "106"])]
    assert record[0]["log"] == str(out / "slurm-logs" / "101" / "101_0_log.err")
    delayed = submitit.helpers.DelayedSubmission.load(submitit.core.utils.JobPaths(out / "slurm-logs" / "%j",
                                                                                    "105").submitted_pickle)
    assert delayed.function.args == ["run", str(path.resolve()), "--out", str(out.resolve()), "--store",
                                     str(store.root), "--quiet", "--set", "eval.n=30", "--shard", "3/4"]
    text = console.export_text()
    assert "submitted 7 jobs to SLURM" in text and "point-0   job 103  after 101" in text
    assert f"output: {out}" in text


@needs_submitit
def test_slurm_resubmission_skips_what_is_done_and_resumes(sweep, tmp_path, fake_slurm, no_config, monkeypatch):
    from rich.console import Console

    import submitit

    path, loaded, specs = sweep
    out = tmp_path / "out"
    store = SourceStore(tmp_path / "st")
    robust = source_key(specs[1].source)  # source 2 is in the store
    monkeypatch.setattr(SourceStore, "get",
                        lambda self, key: SimpleNamespace(key=key, info={}) if key == robust else None)
    write(out / "points" / "0.json", "{}")
    launch(path, loaded, default_registry(), launcher="slurm", out=out, store=store, profile=None, overrides=[],
           options={}, console=Console(record=True))
    record = json.loads((out / "launch.json").read_text())["submissions"][-1]["jobs"]
    assert [(j["name"], j["after"]) for j in record] == [
        ("source-1", []), ("point-1", []), ("point-2", ["101"]), ("point-3", []), ("collect", ["102", "103", "104"])]
    delayed = submitit.helpers.DelayedSubmission.load(
        submitit.core.utils.JobPaths(out / "slurm-logs" / "%j", "101").submitted_pickle)
    assert delayed.function.args[-4:] == ["--sources-only", "--source", "1/2", "--resume"]


@needs_submitit
def test_slurm_resubmission_names_the_earlier_jobs_and_their_logs(sweep, tmp_path, fake_slurm, no_config):
    from rich.console import Console

    path, loaded, _ = sweep
    out, store = tmp_path / "out", SourceStore(tmp_path / "st")
    common = dict(launcher="slurm", out=out, store=store, profile=None, overrides=[], options={})
    launch(path, loaded, default_registry(), console=Console(record=True), **common)  # jobs 101-107
    write(out / "slurm-logs" / "104" / "104_0_log.err", "run 2/4\nerror: CUDA out of memory\n")
    for i in (0, 2, 3):
        write(out / "points" / f"{i}.json", "{}")
    console = Console(record=True, width=300)
    launch(path, loaded, default_registry(), console=console, **common)
    text = console.export_text()
    log = out / "slurm-logs" / "104" / "104_0_log.err"
    assert (f"again: point-1, whose earlier slurm job 104 did not finish: error: CUDA out of memory (log: {log})"
            in text)
    assert "again: source-2, whose earlier slurm job 102 did not finish (log:" in text
    assert "again: point-0" not in text
    jobs = [(j["name"], j["id"]) for j in json.loads((out / "launch.json").read_text())["submissions"][1]["jobs"]]
    assert jobs == [("source-2", "108"), ("point-1", "109"), ("collect", "110")]


@needs_submitit
def test_slurm_refuses_while_an_earlier_submission_is_queued(sweep, tmp_path, fake_slurm, no_config):
    path, loaded, _ = sweep
    out = tmp_path / "out"
    write(out / "launch.json", json.dumps({"submissions": [{"launcher": "slurm", "jobs": [{"name": "point-0",
                                                                                          "id": "77"}]}]}))
    squeue = fake_slurm.parent / "bin" / "squeue"
    write(squeue, "#!/bin/sh\necho 76\necho 77\n").chmod(0o755)
    with pytest.raises(RtkError, match=r"still queued or running \(77\).*scancel 77"):
        launch(path, loaded, default_registry(), launcher="slurm", out=out, store=SourceStore(tmp_path / "st"),
               profile=None, overrides=[], options={})
    assert not list(fake_slurm.iterdir())


@needs_submitit
def test_sbatch_failure_is_one_line_naming_the_job(sweep, tmp_path, fake_slurm, no_config):
    path, loaded, _ = sweep
    write(fake_slurm.parent / "bin" / "sbatch", "#!/bin/sh\necho 'sbatch: error: invalid partition' >&2\nexit 1\n")
    with pytest.raises(RtkError, match="sbatch failed for job source-1"):
        launch(path, loaded, default_registry(), launcher="slurm", out=tmp_path / "out",
               store=SourceStore(tmp_path / "st"), profile=None, overrides=[], options={"partition": "nope"})


@needs_submitit
def test_slurm_without_srun_says_so(sweep, tmp_path, no_config, monkeypatch):
    path, loaded, _ = sweep
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RtkError, match="no SLURM here"):
        launch(path, loaded, default_registry(), launcher="slurm", out=tmp_path / "out",
               store=SourceStore(tmp_path / "st"), profile=None, overrides=[], options={})


# ---------------------------------------------------------------- the job callable


@needs_submitit
def test_job_runs_rtk_in_process_and_fails_with_its_exit_code(tiny_recipe):
    from rtk.launch.submit import JobFailed, RtkJob

    assert RtkJob(["validate", str(tiny_recipe)])() == f"rtk validate {tiny_recipe}"
    with pytest.raises(JobFailed, match="exited with code 2"):
        RtkJob(["validate", str(tiny_recipe.parent / "missing.toml")])()


@needs_submitit
def test_checkpoint_requeues_the_same_command_resumed():
    from rtk.launch.submit import RtkJob

    job = RtkJob(["run", "r.toml", "--out", "o", "--shard", "1/2"])
    again = job.checkpoint()
    assert again.function.args == ["run", "r.toml", "--out", "o", "--shard", "1/2", "--resume"]
    assert job.requeued and not again.function.requeued
    assert again.function.checkpoint().function.args == again.function.args  # --resume once
    assert RtkJob(["collect", "o"]).checkpoint().function.args == ["collect", "o"]


@needs_submitit
def test_a_requeued_job_lets_submitits_exit_through(monkeypatch):
    """submitit's signal handler calls checkpoint() and then sys.exit inside the running command:
    that exit must reach submitit (requeue), not turn into a failed job."""
    import rtk.cli
    from rtk.launch.submit import RtkJob

    job = RtkJob(["run", "r.toml"])

    def preempted(**kwargs):
        job.checkpoint()
        raise SystemExit(-1)

    monkeypatch.setattr(rtk.cli.cli, "main", preempted)
    with pytest.raises(SystemExit):
        job()


# ---------------------------------------------------------------- imports


def test_no_submitit_unless_a_launcher_is_asked_for(tmp_path):
    """`rtk list-plugins`, a plain `rtk run` and its dry run never import submitit; neither does a
    launcher's dry run (it submits nothing), nor the launcher's graph and config modules."""
    recipe = write(tmp_path / "tiny.toml", TINY_RECIPE)
    code = ("import sys\nfrom click.testing import CliRunner\nfrom rtk.cli import cli\n"
            f"for args in (['list-plugins'], ['run', {str(recipe)!r}, '--dry-run'],"
            f" ['run', {str(recipe)!r}, '--out', {str(tmp_path / 'out')!r}, '--quiet']):\n"
            "    result = CliRunner().invoke(cli, args)\n"
            "    assert result.exit_code == 0, result.output\n"
            f"result = CliRunner().invoke(cli, ['run', {str(recipe)!r}, '--launcher', 'slurm', '--dry-run'])\n"
            "assert result.exit_code == 0, result.output\n"
            "import rtk.launch, rtk.launch.graph, rtk.launch.config\n"
            "sys.exit('imported submitit' if 'submitit' in sys.modules else 0)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "out" / "results.json").is_file()


def test_cli_launcher_options(cli, tiny_recipe, tmp_path, no_config):
    """--launcher with --dry-run prints the job graph (without importing submitit); resource options
    without --launcher, or --launcher with --shard, are one-line errors."""
    result = cli("run", tiny_recipe, "--launcher", "slurm", "--dry-run", "--partition", "gpu", "--gpus", "2",
                 "--time", "30", "--sbatch", "qos=high", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "-> job source-1" in result.output and "1 point job (rtk run --shard I/1" in result.output
    assert "partition gpu, 2 GPUs, 8 CPUs, time 00:30:00, sbatch --qos=high" in result.output
    assert "dry run: nothing submitted" in result.output and not (tmp_path / "out").exists()
    result = cli("run", tiny_recipe, "--gpus", "2")
    assert result.exit_code == 2 and "go with --launcher" in result.output
    result = cli("run", tiny_recipe, "--launcher", "local", "--shard", "1/2", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "give neither" in result.output
    result = cli("run", tiny_recipe, "--launcher", "local", "--time", "soon", "--dry-run")
    assert result.exit_code == 2 and "--time: time 'soon' is neither minutes" in result.output
