"""``rtk sources``: list, show, remove and verify the entries of the source store (rtk.services.store)."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click
from rich import box
from rich.filesize import decimal
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from rtk.services.store import Entry, SourceStore

STORE_HELP = "The source store (default $RTK_HOME, else ~/.cache/rtk)."
PROGRESS_BYTES = 256 * 1000 * 1000  # below this, verify is quick enough to need no progress bar


def handled(func):
    """rtk.cli's handle_errors (one-line errors, exit code 2), looked up at call time: rtk.cli
    imports this module while it is still being defined."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from rtk.cli import handle_errors

        return handle_errors(func)(*args, **kwargs)

    return wrapper


def store_option(func):
    return click.option("--store", "store_dir", type=click.Path(path_type=Path), metavar="DIR", help=STORE_HELP)(func)


def open_store(store_dir: Path | None) -> SourceStore:
    """The store named by the subcommand's --store, else by the group's (`rtk sources --store DIR show KEY`)."""
    if store_dir is None:
        parent = click.get_current_context().parent
        store_dir = parent.params.get("store_dir") if parent is not None else None
    return SourceStore(store_dir)


def consoles():
    from rtk.cli import console, err_console

    return console, err_console


def unreadable(entry: Entry) -> str | None:
    """Why the entry's info.json cannot be read, or None (reading it does not hash the weights)."""
    return entry.info.get("_problem")


def weights_size(entry: Entry) -> int | None:
    """The weights' size on disk (what removing the entry frees), else the size info.json records."""
    try:
        return entry.weights.stat().st_size
    except OSError:
        return entry.info.get("size")


def interactive() -> bool:
    """Whether rm may ask: only a person at a terminal can answer (a script passes --yes or not at all)."""
    return sys.stdin.isatty()


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def made_by(info: dict) -> str:
    """The recipe and sweep point that trained a source: "recipes/x.toml (lambda_d=0.01)"."""
    recipe, point = info.get("recipe"), info.get("point")
    if not recipe:
        return "-"
    return f"{recipe} ({point})" if point not in (None, "") else str(recipe)


def clean_text(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def field_text(value) -> str:
    """An info field as `rtk sources show` prints it; nested ones (identity, env, plugins) as indented JSON."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, indent=2, default=str)
    return "-" if value is None else str(value)


def as_record(entry: Entry) -> dict:
    """One entry as `--json` prints it: its info, its folder, and why it is corrupt (null if readable)."""
    info = {k: v for k, v in entry.info.items() if k not in ("key", "_problem")}
    return {"key": entry.key, "path": str(entry.path), "weights": str(entry.weights), "corrupt": unreadable(entry),
            **info}


@click.group("sources", invoke_without_command=True)
@store_option
@click.option("--json", "as_json", is_flag=True, help="List the entries as JSON.")
@click.pass_context
def sources(ctx, store_dir, as_json):
    """The source store: the sources rtk trained (or imported), each kept once and reused.

    Without a subcommand, lists the entries (as `rtk sources list`).
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_command, store_dir=store_dir, as_json=as_json)


@sources.command("list")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handled
def list_command(store_dir, as_json):
    """List the entries: key, model, data, objective, clean accuracy, size, date and the recipe
    that trained each. A listed entry is not hashed; `rtk sources verify` checks the weights."""
    console, _ = consoles()
    store = open_store(store_dir)
    entries = store.entries()
    if as_json:
        console.print_json(json.dumps([as_record(e) for e in entries], default=str))
        return
    if not entries:
        console.print(f"the source store at {store.root} is empty; `rtk run RECIPE` trains the sources a recipe"
                      " needs into it", highlight=False, soft_wrap=True, markup=False)
        return
    total = sum(weights_size(e) or 0 for e in entries)
    table = Table(title=f"source store {store.root}: {len(entries)} entries, {decimal(total)}", box=box.SIMPLE_HEAD,
                  pad_edge=False, title_justify="left")
    table.add_column("key", no_wrap=True)
    for column in ("model", "data", "objective"):
        table.add_column(column, overflow="fold")
    table.add_column("clean", justify="right", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("made by", overflow="fold")
    corrupt = [e.key for e in entries if unreadable(e)]
    for e in entries:
        size = weights_size(e)
        size_text = decimal(size) if size is not None else "-"
        if unreadable(e):
            table.add_row(e.key, Text("corrupt", style="bold red"), "", "", "", size_text, "", "")
            continue
        info = e.info
        created = str(info.get("created") or "-")[:10]  # the date; `rtk sources show` has the time
        table.add_row(e.key, *(Text(str(info.get(k) or "-")) for k in ("model", "data", "objective")),
                      clean_text(info.get("clean")), size_text, created, Text(made_by(info)))
    if corrupt:
        table.caption = (f"corrupt: {', '.join(corrupt)} (info.json unreadable); `rtk sources show KEY` says why,"
                         " `rtk sources rm KEY` removes it")
    console.print(table)


@sources.command("show")
@click.argument("key")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handled
def show(key, store_dir, as_json):
    """Every field of entry KEY (a unique prefix of it is enough), its folder and weights file."""
    console, _ = consoles()
    entry = open_store(store_dir).find(key)
    if as_json:
        console.print_json(json.dumps(as_record(entry), default=str))
        return
    size = weights_size(entry)
    exists = entry.weights.is_file()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("key", entry.key)
    grid.add_row("path", Text(str(entry.path)))
    grid.add_row("weights", Text(f"{entry.weights} ({decimal(size)})" if exists else f"{entry.weights} (missing)"))
    if unreadable(entry):
        grid.add_row("corrupt", Text(unreadable(entry), style="bold red"))
    for name, value in entry.info.items():
        if name in ("key", "_problem"):
            continue
        grid.add_row(name, Text(field_text(value)))  # Text, not markup: "mnist[0,1]" is data
    console.print(grid)


@sources.command("rm")
@click.argument("keys", nargs=-1, required=True)
@store_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@handled
def rm(keys, store_dir, yes):
    """Remove entries KEY... (unique prefixes accepted); a recipe that needs one trains it again."""
    console, _ = consoles()
    store = open_store(store_dir)
    # Every key is resolved before anything is removed, so a typo in the third key removes nothing.
    entries = list({e.key: e for e in (store.find(k) for k in keys)}.values())
    sizes = {e.key: folder_size(e.path) for e in entries}
    if not yes and interactive():
        names = ", ".join(f"{e.key} ({e.info.get('model', '?')} on {e.info.get('data', '?')})" for e in entries)
        if not click.confirm(f"remove {names} from {store.root}?", default=False):
            console.print("nothing removed", highlight=False)
            return
    for e in entries:
        store.remove(e.key)
        console.print(f"removed {e.key}: freed {decimal(sizes[e.key])}", highlight=False, soft_wrap=True)
    if len(entries) > 1:
        console.print(f"freed {decimal(sum(sizes.values()))} in all", highlight=False, soft_wrap=True)


@sources.command("verify")
@click.argument("keys", nargs=-1)
@store_option
@click.pass_context
@handled
def verify(ctx, keys, store_dir):
    """Re-hash the weights of every entry (or of KEY...) against info.json; exit code 1 if any is corrupt."""
    console, err_console = consoles()
    store = open_store(store_dir)
    entries = list({e.key: e for e in (store.find(k) for k in keys)}.values()) if keys else store.entries()
    if not entries:
        console.print(f"the source store at {store.root} is empty; nothing to verify", highlight=False,
                      soft_wrap=True, markup=False)
    problems = check(entries, err_console)
    for e in entries:
        if problems[e.key]:
            console.print(f"[bold red]corrupt[/] {e.key}: {escape(problems[e.key])}", highlight=False,
                          soft_wrap=True)
        else:
            console.print(f"[green]ok[/]      {e.key}", highlight=False)
    for key in (k for k, problem in problems.items() if problem):
        console.print(f"remove {key} with `rtk sources rm {key}`; a run that needs it trains it again",
                      highlight=False, soft_wrap=True, markup=False)
    stale = store.stale_temporaries()
    if stale:
        listed = ", ".join(str(p) for p in stale)
        console.print(f"note: {len(stale)} temporary folder(s) left by interrupted processes can be deleted: {listed}",
                      highlight=False, soft_wrap=True, markup=False)
    ctx.exit(1 if any(problems.values()) else 0)


def check(entries: list[Entry], err_console) -> dict[str, str | None]:
    """Each entry's problem (None when whole), with a progress bar on a terminal when there is much to hash."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    total = sum(weights_size(e) or 0 for e in entries)
    show = err_console.is_terminal and total >= PROGRESS_BYTES
    problems = {}
    with Progress(TextColumn("verifying {task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=err_console, transient=True, disable=not show) as progress:
        task = progress.add_task("", total=total)
        for e in entries:
            progress.update(task, description=e.key)
            # An unreadable info.json has no hash to check against: say why, rather than "records no sha256".
            problems[e.key] = unreadable(e) or e.problem()
            progress.advance(task, weights_size(e) or 0)
    return problems


@sources.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--format", "format_", required=True, metavar="NAME",
              help="The checkpoint's format (rtk list-plugins --kind importer), e.g. madrylab-robustness.")
@click.option("--model", metavar="NAME", help="The rtk model it loads into, e.g. timm/resnet50 (not for module).")
@click.option("--num-classes", type=click.IntRange(min=1), help="Classes of its head (default: read from the file).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="An importer or model option, e.g. --option dataset=imagenet (importer) or model.input_size=224.")
@click.option("--sha256", help="The file's expected sha256.")
@store_option
@handled
def import_command(file, format_, model, num_classes, options, sha256, store_dir):
    """Add a local checkpoint FILE to the store (for machines without a network): the same
    conversion a recipe's [source.import] does, under the same key, so a recipe that names this
    checkpoint by URL then finds it without downloading."""
    from rtk.cli import registry
    from rtk.config.recipe import Recipe
    from rtk.config.spec import resolve
    from rtk.errors import RtkError
    from rtk.evaluation.command import parse_assignments
    from rtk.services.state import RunFolder
    from rtk.stages.context import RunContext
    from rtk.stages.datasets import Datasets
    from rtk.stages.source import SourceStage

    if not file.is_file():
        raise RtkError(f"{file}: no such file")
    parsed = parse_assignments(options, "--option")
    importer = {k: v for k, v in parsed.items() if not k.startswith("model.")}
    source = {k[len("model."):]: v for k, v in parsed.items() if k.startswith("model.")}
    if model:
        source["model"] = model
    if num_classes:
        source["num_classes"] = num_classes
    source["import"] = {"format": format_, "path": str(file.resolve()), **importer,
                        **({"sha256": sha256} if sha256 else {})}
    recipe = Recipe(Path("rtk sources import"), {"run": {"name": "import", "device": "cpu"}, "source": source})
    (spec,) = resolve(recipe, registry())
    store = open_store(store_dir)
    console, err_console = consoles()
    before = {entry.key for entry in store.entries()}
    stage = SourceStage([spec], Datasets(), RunFolder(Path.cwd()), recipe.path, store)
    _, info = stage.model(spec, RunContext(console=err_console, show_progress=False))
    state = "already in" if info["key"] in before else "added to"
    console.print(f"{escape(str(file))}: {state} the store as {info['key']} ({escape(info['store'])})", highlight=False,
                  soft_wrap=True)
