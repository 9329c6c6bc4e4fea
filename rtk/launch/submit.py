"""Submit a job graph (rtk.launch.graph) through submitit: to SLURM, or to local subprocesses.

Imported only when ``rtk run --launcher`` submits: it imports submitit (``pip install
"rtk[slurm]"``).

Each job runs :class:`RtkJob`: the rtk command line, in the job's own process (the one submitit
starts), so that submitit's preemption and timeout signal reaches it directly. RtkJob is a
``submitit.helpers.Checkpointable``: when SLURM preempts the job, or its time limit comes near
(``--signal=USR2@90``), ``checkpoint()`` requeues the same command with ``--resume`` added; rtk's
own resume state (training checkpoints, saved evaluation batches, finished points) carries it
on. A job's command that fails exits non-zero and its job is reported as failed with its log.

- ``slurm``: every job goes to ``sbatch`` at once, dependencies as ``--dependency=afterok:IDS``
  (with ``--kill-on-invalid-dep=yes``, so the jobs after a failed one leave the queue); the
  command returns after submitting and writes the job ids into ``OUT/launch.json``.
- ``local``: submitit's LocalExecutor starts real subprocesses but knows no dependencies, so rtk
  schedules them itself: a job starts once every job it needs has finished, as many at a time as
  the machine's GPUs (or, without GPUs, CPU cores) allow for --gpus / --cpus per job; the command
  waits for all of them and reports each.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import submitit
import submitit.helpers

from rtk.errors import RtkError
from rtk.launch.config import Resources, executor_parameters
from rtk.launch.graph import Graph
from rtk.launch import history

MAX_TIMEOUTS = 10  # requeues after a time-out (preemptions do not count); rtk resumes each time


class JobFailed(RuntimeError):
    """An rtk command in a job exited with an error (its one-line reason is in the job's log)."""


class RtkJob(submitit.helpers.Checkpointable):
    """Runs ``rtk ARGS`` in the job's process; requeued with ``--resume`` on preemption or time-out."""

    def __init__(self, args: list[str], threads: int | None = None):
        self.args = [str(a) for a in args]
        self.threads = threads  # local jobs share a machine: torch threads = the job's CPUs
        self.requeued = False

    def __call__(self) -> str:
        from rtk.cli import cli

        command = "rtk " + shlex.join(self.args)
        print(f"rtk job: {command}", flush=True)
        try:  # a point that fails records this log's path (rtk.services.shards, `rtk status`)
            from rtk.services.shards import LOG_ENV

            os.environ[LOG_ENV] = str(submitit.JobEnvironment().paths.stderr)
        except Exception:  # not inside a submitit job (called directly)
            pass
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        try:
            cli.main(args=list(self.args), prog_name="rtk", standalone_mode=False)
        except SystemExit as exc:
            if self.requeued:  # submitit's signal handler requeued the job and exits: let it
                raise
            if exc.code not in (None, 0):
                raise JobFailed(f"`{command}` exited with code {exc.code}") from None
        return command

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on preemption or near the time limit: the same command, resumed."""
        self.requeued = True
        again = list(self.args)
        if again[:1] == ["run"] and "--resume" not in again:
            again.append("--resume")
        return submitit.helpers.DelayedSubmission(RtkJob(again, self.threads))


def executor(launcher: str, folder: Path, res: Resources, name: str, after: list[str] | None = None,
             visible_gpus: list[int] | None = None):
    """A submitit executor for one job (each job its own: submitit keeps parameters once set).
    SLURM: ``AutoExecutor(cluster="slurm")``; local: ``LocalExecutor`` (AutoExecutor would refuse
    ``visible_gpus``), which takes the generic parameters and ignores the SLURM ones."""
    params = executor_parameters(res, f"rtk-{name}", after)
    if launcher != "slurm":
        ex = submitit.LocalExecutor(folder, max_num_timeout=MAX_TIMEOUTS)
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        if visible_gpus is not None:
            params["visible_gpus"] = visible_gpus
        ex.update_parameters(**params)
        return ex
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=MAX_TIMEOUTS)
    except RuntimeError as exc:
        if "srun" in str(exc):
            raise RtkError("--launcher slurm: no SLURM here (`srun` is not on PATH); submit from the cluster's"
                           " login node, or use --launcher local") from None
        raise
    ex.update_parameters(**params)
    return ex


def log_of(job) -> Path:
    return Path(job.paths.stderr)


def still_queued(jobs: list[dict]) -> list[dict]:
    """Those of ``jobs`` that squeue still lists (queued or running); [] without squeue."""
    if not jobs or shutil.which("squeue") is None:
        return []
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    try:
        done = subprocess.run(["squeue", "-h", "-o", "%i", *(["-u", user] if user else [])], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    listed = {line.strip() for line in done.stdout.splitlines()}
    return [j for j in jobs if str(j.get("id")) in listed]


def submit_slurm(graph: Graph, res: Resources, console) -> int:
    """sbatch every job of ``graph`` (dependencies by id); prints the ids; returns 0."""
    out = graph.out
    busy = still_queued(list(history.earlier(out, "slurm").values()))
    if busy:
        ids = " ".join(str(j["id"]) for j in busy)
        raise RtkError(f"jobs of an earlier submission into {out} are still queued or running ({ids}): wait for them"
                       f" or `scancel {ids}`, then submit again")
    folder = out / "slurm-logs" / "%j"
    ids: dict[str, str] = {}
    submitted: list[dict] = []
    started = history.stamp()
    try:
        for job in graph.jobs:
            after = [ids[name] for name in job.after]
            ex = executor("slurm", folder, res.for_collect() if job.kind == "collect" else res, job.name, after)
            handle = ex.submit(RtkJob(job.args))
            ids[job.name] = handle.job_id
            submitted.append({"name": job.name, "id": handle.job_id, "after": after, "log": str(log_of(handle)),
                              "command": "rtk " + shlex.join(job.args)})
    except Exception as exc:
        if submitted:
            history.record(out, "slurm", started, submitted)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        done = " ".join(j["id"] for j in submitted)
        also = f"; submitted before it: {done} (kept; `scancel {done}` to drop them)" if submitted else ""
        raise RtkError(f"sbatch failed for job {job.name}: {first}{also}") from None
    history.record(out, "slurm", started, submitted)
    width = max(len(j["name"]) for j in submitted)
    console.print(f"submitted {len(submitted)} job{'s' if len(submitted) != 1 else ''} to SLURM:", highlight=False)
    for entry in submitted:
        after = f"  after {','.join(entry['after'])}" if entry["after"] else ""
        console.print(f"  {entry['name']:<{width}}  job {entry['id']}{after}", highlight=False)
    console.print(f"output: {out}\nlogs: {out / 'slurm-logs'}/<job id>/ (job ids in {out / 'launch.json'})\n"
                  f"when they are done: {out / 'results.json'}; if a job fails, the same command with --out {out}"
                  " submits only what is missing", highlight=False, soft_wrap=True)
    return 0


def gpu_ids() -> list[int]:
    """The GPUs this machine lets local jobs use (CUDA_VISIBLE_DEVICES if it lists indices)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        parts = [p.strip() for p in visible.split(",") if p.strip()]
        if all(p.isdigit() for p in parts):
            return [int(p) for p in parts]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:  # no torch CUDA: a CPU machine
        return []


def slots(res: Resources) -> list[list[int] | None]:
    """One entry per job that may run at once: its GPUs (None: no GPU to pin)."""
    gpus = gpu_ids()
    if gpus and res.gpus:
        per = min(res.gpus, len(gpus))
        return [gpus[k * per:(k + 1) * per] for k in range(len(gpus) // per)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return [None] * max(1, cores // max(1, res.cpus))


def run_local(graph: Graph, res: Resources, console, poll: float = 0.5) -> int:
    """Run the jobs as local subprocesses in dependency order; wait; 0 if all succeeded, else 1."""
    folder = graph.out / "local-logs" / "%j"
    free = slots(res)
    console.print(f"running {len(graph.jobs)} job{'s' if len(graph.jobs) != 1 else ''} here, at most {len(free)}"
                  f" at a time; logs in {graph.out / 'local-logs'}/", highlight=False)
    pending = list(graph.jobs)
    submission, records = history.stamp(), {}
    running: dict[str, tuple] = {}
    state: dict[str, str] = {}
    failed: list[str] = []
    try:
        while pending or running:
            for job in list(pending):
                if any(state.get(name) in ("failed", "skipped") for name in job.after):
                    state[job.name] = "skipped"
                    pending.remove(job)
                    console.print(f"  {job.name}: skipped (needs {', '.join(job.after)})", highlight=False)
                elif all(state.get(name) == "done" for name in job.after) and free:
                    gpus = free.pop(0)
                    use = res.for_collect() if job.kind == "collect" else res
                    ex = executor("local", folder, use, job.name, None, gpus if use.gpus else None)
                    handle = ex.submit(RtkJob(job.args, use.cpus))
                    running[job.name] = (handle, gpus, time.monotonic())
                    pending.remove(job)
                    records[job.name] = {"name": job.name, "id": handle.job_id, "log": str(log_of(handle)),
                                         "command": "rtk " + shlex.join(job.args), "state": "running"}
                    history.record(graph.out, "local", submission, list(records.values()))
                    console.print(f"  {job.name}: started (job {handle.job_id})", highlight=False)
            for name, (handle, gpus, started) in list(running.items()):
                if not handle.done():
                    continue
                del running[name]
                free.append(gpus)
                ok = handle.paths.result_pickle.exists() and handle.exception() is None
                state[name] = records[name]["state"] = "done" if ok else "failed"
                history.record(graph.out, "local", submission, list(records.values()))
                seconds = time.monotonic() - started
                if ok:
                    console.print(f"  {name}: done in {seconds:.0f} s", highlight=False)
                else:
                    failed.append(name)
                    log = log_of(handle)
                    reason = history.last_error(log)
                    console.print(f"  {name}: FAILED after {seconds:.0f} s{': ' + reason if reason else ''}"
                                  f" (log: {log})", highlight=False, soft_wrap=True)
            time.sleep(poll if running else 0)
    except KeyboardInterrupt:
        for handle, _, _ in running.values():
            handle.cancel(check=False)
        raise
    if failed:
        skipped = [n for n, s in state.items() if s == "skipped"]
        console.print(f"{len(failed)} job{'s' if len(failed) != 1 else ''} failed ({', '.join(failed)})"
                      f"{f', {len(skipped)} skipped' if skipped else ''}; the same command with --out {graph.out}"
                      " runs only what is missing", highlight=False, soft_wrap=True)
        return 1
    console.print(f"results: {graph.out / 'results.json'}", highlight=False)
    return 0
