"""The ``rtk`` command line. Errors a user can fix print one line and exit with code 2."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from rtk.errors import RtkError

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2):
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def handle_errors(func):
    """One-line errors and exit code 2 for RtkError; --debug shows the traceback instead."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return func(*args, **kwargs)
        except RtkError as exc:
            if debug:
                raise
            fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except OSError as exc:  # the environment's fault (full disk, permissions), not a bug in rtk
            if debug:
                raise
            from rtk.errors import os_error

            fail(str(os_error(exc)).splitlines()[0])
        except RecursionError:  # a hostile recipe nested past what the parser or validator handle
            if debug:
                raise
            fail("the recipe or a --set value is nested too deeply")
        except Exception as exc:
            if debug:
                raise
            first = str(exc).splitlines()[0] if str(exc) else ''
            fail(f"internal error: {type(exc).__name__}: {first} (rerun with --debug for the traceback and report"
                 " it)", 1)

    return wrapper


def registry():
    from rtk.registry import default_registry

    return default_registry()


class RtkGroup(click.Group):
    """Adds plugin commands (register_commands) lazily, so `rtk --help` lists them."""

    _plugins_loaded = False

    def _load_plugin_commands(self, ctx):
        if RtkGroup._plugins_loaded:
            return
        RtkGroup._plugins_loaded = True
        try:
            registry().pm.hook.register_commands(cli=self)
        except RtkError as exc:
            if "--debug" in sys.argv:
                raise
            fail(str(exc))

    def list_commands(self, ctx):
        self._load_plugin_commands(ctx)
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None:
            self._load_plugin_commands(ctx)
            command = super().get_command(ctx, name)
        return command


@click.group(cls=RtkGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="rtk")
def cli(debug):
    """rtk: adversarially robust transfer learning. Recipes in, robust and certified accuracies out."""


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key (dotted path), e.g. --set transfer.lambda_d=0.01.")
@click.option("--profile", help="Apply the recipe's [profile.NAME] overrides (e.g. smoke).")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default runs/NAME-TIMESTAMP).")
@click.option("--overwrite", is_flag=True, help="Replace results already in --out.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run in --out: finished runs are kept, a saved target checkpoint is reused,"
                   " evaluation continues after its last saved batch.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--deterministic", is_flag=True,
              help="Use only deterministic torch algorithms (slower on GPU; an operation without one fails);"
                   " recorded in env.json.")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (each source reused from the store, trained or loaded; the runs that follow)"
                   " and stop; writes nothing.")
@click.option("--store", "store_dir", type=click.Path(path_type=Path), metavar="DIR",
              help="The source store (default $RTK_HOME, else ~/.cache/rtk).")
@click.option("--download", is_flag=True,
              help="Let the datasets of this run download missing files (torchvision's downloads).")
@click.option("--shard", metavar="I/N",
              help="Run only shard I of N of the sweep points: point i (0-based, in sweep order) belongs to shard"
                   " (i % N) + 1. Shards run at the same time into one --out (a lock per point); each point's result"
                   " goes to OUT/points/<i>.json when done, and the shard that finds every point done writes"
                   " results.json (else `rtk collect OUT`; `rtk status OUT` shows the points). --resume skips this"
                   " shard's done points and continues an interrupted one.")
@click.option("--sources-only", is_flag=True,
              help="Only train or import the sources the store lacks (of every point, of --shard I/N's points, or"
                   " --source K/M), into the store; --out gets only training state, which --resume continues.")
@click.option("--source", "source_share", metavar="K/M",
              help="With --sources-only: only the K-th of the recipe's M distinct sources (1-based, in the order"
                   " --dry-run's plan lists them).")
@click.option("--launcher", type=click.Choice(["slurm", "local"]),
              help="Run as jobs through submitit (pip install \"rtk[slurm]\"): one per source the store lacks, one"
                   " per sweep point (after its source's job), one that collects (after them). slurm submits them and"
                   " returns; local runs them here as subprocesses and waits. The same command again submits only what"
                   " is missing. With --dry-run: print the job graph.")
@click.option("--partition", metavar="NAME", help="With --launcher slurm: the partition.")
@click.option("--gpus", type=click.IntRange(min=0), help="With --launcher: GPUs per job (default 1).")
@click.option("--cpus", type=click.IntRange(min=1), help="With --launcher: CPUs per task (default 8).")
@click.option("--time", "time_limit", metavar="TIME",
              help="With --launcher: each job's time limit, minutes or HH:MM:SS (default 24:00:00); a job that"
                   " reaches it is requeued and resumes.")
@click.option("--account", metavar="NAME", help="With --launcher slurm: the account to charge.")
@click.option("--sbatch", "sbatch", multiple=True, metavar="KEY=VALUE",
              help="With --launcher slurm: one more sbatch option, e.g. --sbatch qos=high (repeatable).")
@click.option("--launcher-config", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Job resources (the keys of the options above) when not given as options; default"
                   " $RTK_LAUNCHER_CONFIG, else ~/.config/rtk/launcher.toml.")
@click.option("--seeds", metavar="S1,S2,...",
              help="Repeat every sweep point with each seed (sources trained here too), e.g. --seeds 0,1,2: the table"
                   " gives mean ± std and 95% intervals (as [run] seeds).")
@click.option("--tracker", "trackers", multiple=True, metavar="NAME",
              help="Also log to this tracker: tensorboard, mlflow, wandb (repeatable; as [run] trackers; rtk"
                   " list-plugins --kind tracker).")
@handle_errors
def run(recipe, overrides, profile, out, overwrite, resume, quiet, deterministic, dry_run, store_dir, download,
        shard, sources_only, source_share, launcher, partition, gpus, cpus, time_limit, account, sbatch,
        launcher_config, seeds, trackers):
    """Run RECIPE: take each source from the store (training it there first when missing) or its
    weights file, transfer, evaluate, certify; write results to --out."""
    from rtk.api.recipes import load_recipe, prepare
    from rtk.services.shards import parse_share
    from rtk.services.store import SourceStore

    overrides = list(overrides)
    if seeds is not None:
        overrides.append(f"run.seeds=[{', '.join(str(s) for s in parse_seeds(seeds))}]")
    if resume and out is None:
        fail("--resume needs --out DIR, the folder of the interrupted run")
    shard = parse_share(shard, "--shard") if shard is not None else None
    source_share = parse_share(source_share, "--source") if source_share is not None else None
    if shard is not None and out is None and not sources_only:
        fail("--shard needs --out DIR, the folder every shard writes into")
    resources = {"partition": partition, "gpus": gpus, "cpus": cpus, "time": time_limit, "account": account,
                 "sbatch": sbatch}
    if launcher is None and (launcher_config or any(v not in (None, ()) for v in resources.values())):
        fail("--partition, --gpus, --cpus, --time, --account, --sbatch and --launcher-config go with --launcher")
    if launcher is not None and trackers:
        fail("--tracker does not go with --launcher: name the trackers in the recipe's [run] trackers (or --set"
             ' run.trackers=["mlflow"]), which every job reads')
    if launcher is not None and (shard or sources_only or source_share):
        fail("--launcher makes the --shard and --sources-only jobs itself; give neither")
    loaded = load_recipe(recipe, overrides, profile, validate=False)
    if launcher is not None:  # the job graph through submitit (rtk.launch); the same command resumes it
        from rtk.launch import launch

        code = launch(recipe, loaded, registry(), launcher=launcher, out=out, store=SourceStore(store_dir),
                      profile=profile, overrides=list(overrides), options=resources, config_file=launcher_config,
                      dry_run=dry_run, overwrite=overwrite, deterministic=deterministic, download=download,
                      console=console)
        if code:
            sys.exit(code)
        return
    if dry_run:
        from rtk.config.spec import resolve
        from rtk.stages.datasets import Datasets
        from rtk.stages.plan import plan

        specs = resolve(loaded, registry())  # not allow_downloads: a dry run fetches nothing
        profiled = f" (profile {profile})" if profile else ""
        console.print(f"plan of {recipe}{profiled}, store {SourceStore(store_dir).root}:", highlight=False)
        if shard or sources_only or source_share:
            lines = dry_run_share(specs, SourceStore(store_dir), Datasets(), shard, sources_only, source_share,
                                  download)
        else:
            lines = plan(specs, SourceStore(store_dir), Datasets(), download)
        for line in lines:
            console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
        return
    runner = prepare(loaded, out, trackers=trackers, store=store_dir, resume=resume, overwrite=overwrite,
                     deterministic=deterministic, download=download, shard=shard, sources_only=sources_only,
                     source=source_share, progress=not quiet, console=err_console, registry=registry())
    if runner.world.is_main:  # under torchrun only rank 0 speaks
        profiled = f" (profile {profile})" if profile else ""
        what = f"{len(runner.specs)} run(s)"
        if sources_only:
            what = f"the sources of {len(runner.selected)} of {len(runner.specs)} run(s)"
        elif shard:
            what = f"shard {shard[0]}/{shard[1]}: {len(runner.selected)} of {len(runner.specs)} run(s)"
        err_console.print(f"rtk: {what} of {recipe}{profiled} -> {runner.out_dir}")
    runner.run()
    runner.report(console)


def parse_seeds(text: str) -> list[int]:
    """--seeds 0,1,2 (or 0-4, a range) as a list of seeds."""
    seeds = []
    for part in (p.strip() for p in text.split(",")):
        low, dash, high = part.partition("-")
        if low.isdigit() and (not dash or high.isdigit()) and (not dash or int(high) >= int(low)):
            seeds.extend(range(int(low), int(high) + 1) if dash else [int(low)])
        else:
            fail(f'--seeds "{text}": expected seeds separated by commas, e.g. --seeds 0,1,2 (or a range, 0-4)')
    return seeds


def dry_run_share(specs, store, datasets, shard, sources_only, source_share, download) -> list[str]:
    """The plan of a shard or a --sources-only run (rtk.services.shards.share_plan)."""
    from rtk.services.shards import select_points, share_plan

    selected = select_points(specs, shard, source_share, sources_only)
    label = f"shard {shard[0]}/{shard[1]}" if shard else ""
    return share_plan(specs, selected, store, datasets, sources_only, label, download)


@cli.command("eval")
@click.option("--model", metavar="NAME",
              help="Model architecture (rtk list-plugins --kind model), e.g. small-cnn, wrn-28-10.")
@click.option("--model-option", "model_option", multiple=True, metavar="KEY=VALUE",
              help="A model option, e.g. --model-option channels=[8,16].")
@click.option("--weights", type=click.Path(path_type=Path),
              help="The weights file (safetensors or tensor-only torch file).")
@click.option("--num-classes", type=click.IntRange(min=1),
              help="Outputs of the model (default: read from head.weight in --weights).")
@click.option("--dataset", metavar="NAME", help="Dataset to evaluate on (its test split), e.g. digits, cifar10.")
@click.option("--data", multiple=True, metavar="KEY=VALUE",
              help="A dataset option, e.g. --data classes=[5,6,7,8,9] or --data root=DIR.")
@click.option("--attack", multiple=True, metavar="NAME",
              help="An attack (repeatable; robust = per-example worst case over all).")
@click.option("--eps", help='Radius for every attack that has an eps option; fractions like 8/255 are exact.')
@click.option("--norm", help="Norm for every attack that has a norm option (Linf, L2).")
@click.option("--steps", type=click.IntRange(min=0), help="Steps for every attack that has a steps option.")
@click.option("--n", type=click.IntRange(min=1), help="Evaluate on n test examples (default: all).")
@click.option("--subset", type=click.Choice(["first", "random", "stride"]), help="Which n examples (default first).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Examples per attack batch (default 256).")
@click.option("--seed", type=int, default=0, show_default=True, help="Run seed (attack randomness).")
@click.option("--device", default="auto", show_default=True, help='"auto", "cpu", "cuda" or "cuda:N".')
@click.option("--out", type=click.Path(path_type=Path),
              help="Output folder (default runs/eval-MODEL-DATASET-TIMESTAMP).")
@click.option("--resume", is_flag=True, help="Continue an interrupted evaluation in --out after its last saved batch.")
@click.option("--overwrite", is_flag=True, help="Replace results already in --out.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any key of the generated recipe, e.g. --set eval.attack_order=sequential.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--deterministic", is_flag=True, help="Use only deterministic torch algorithms; recorded in env.json.")
@click.option("--download", is_flag=True, help="Let the dataset download missing files (torchvision's downloads).")
@handle_errors
def eval_command(**options):
    """Evaluate a weights file: clean, per-attack and robust accuracy, as `rtk run` reports them.

    Writes the same folder as `rtk run`; its recipe.resolved.toml reruns the evaluation with
    `rtk run`. Examples:

    \b
      rtk eval --model small-cnn --weights m.safetensors --dataset digits \\
        --data classes=[5,6,7,8,9] --attack pgd --eps 0.1 --n 100 --out DIR
      rtk eval --model wrn-28-10 --weights w.safetensors --dataset cifar10 \\
        --attack autoattack --eps 8/255 --n 1000
    """
    from rtk.evaluation.command import run_eval

    run_eval(registry(), console, err_console, **options)


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key (dotted path).")
@click.option("--profile", help="Apply the recipe's [profile.NAME] overrides.")
@handle_errors
def validate(recipe, overrides, profile):
    """Check RECIPE (and every sweep point) against the installed plugins without running it."""
    from rtk.config.recipe import load_recipe
    from rtk.config.spec import resolve

    loaded = load_recipe(recipe, profile, list(overrides))
    specs = resolve(loaded, registry())  # validates every sweep point and its [paper] rows
    runs = f"{len(specs)} run{'s' if len(specs) != 1 else ''}"
    console.print(f"[green]ok[/green]: {recipe} is valid ({runs}; profiles: {', '.join(loaded.profiles) or 'none'})")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--x", "x_key", metavar="KEY",
              help="Swept key on the x-axis (default: the swept key with numeric values), e.g. transfer.lambda_d.")
@click.option("--metric", "metrics", multiple=True, metavar="M",
              help="Metric to draw (repeatable; default: clean, every attack label, robust).")
@click.option("--out", type=click.Path(path_type=Path),
              help="PNG file to write (default RUN_DIR/plot.png, with --curves RUN_DIR/curves.png).")
@click.option("--curves", is_flag=True,
              help="Draw the training curves of RUN_DIR/metrics.jsonl instead: loss, learning rate, clean and"
                   " validation robust accuracy, throughput per epoch, one line per training.")
@handle_errors
def plot(run_dir, x_key, metrics, out, curves):
    """Plot RUN_DIR/results.json: each metric against the swept parameter (categories as grouped bars,
    seeds as error bars), paper numbers as hollow markers; or, with --curves, the training curves."""
    if curves:
        if x_key or metrics:
            fail("--x and --metric go with the results plot, not --curves")
        from rtk.services.curves import plot_curves

        console.print(f"curves: {plot_curves(run_dir, out)}")
        return
    from rtk.services.plots import plot as draw

    console.print(f"plot: {draw(run_dir, x_key, list(metrics), out)}")


@cli.command("list-plugins")
@click.option("--kind", type=click.Choice(["model", "dataset", "attack", "objective", "strategy", "certifier",
                                          "importer", "tracker"]),
              help="Only components of this kind.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--options", "options_of", metavar="NAME",
              help="Show the options of component NAME (fields, types, defaults, help).")
@handle_errors
def list_plugins(kind, as_json, options_of):
    """List every registered component: kind, name, provider and version, summary."""
    from rtk.listing import show_components, show_options

    if options_of:
        show_options(registry(), options_of, kind, as_json, console)
    else:
        show_components(registry(), kind, as_json, console)


def _add_store_commands() -> None:
    from rtk.collect_command import collect, status
    from rtk.compare_command import compare
    from rtk.store_command import sources

    cli.add_command(compare)
    cli.add_command(sources)
    cli.add_command(collect)
    cli.add_command(status)


_add_store_commands()


def main():
    cli(prog_name="rtk")


if __name__ == "__main__":
    main()
