"""The ``rtk`` command line. Errors a user can fix print one line and exit with code 2."""
from __future__ import annotations

import functools
import json
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
        except Exception as exc:
            if debug:
                raise
            fail(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (rerun with --debug for the traceback and report it)", 1)

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
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key (dotted path), e.g. --set transfer.lambda_d=0.01.")
@click.option("--profile", help="Apply the recipe's [profile.NAME] overrides (e.g. smoke).")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default runs/NAME-TIMESTAMP).")
@click.option("--overwrite", is_flag=True, help="Replace results already in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@handle_errors
def run(recipe, overrides, profile, out, overwrite, quiet):
    """Run RECIPE: train or load the source, transfer, evaluate, certify; write results to --out."""
    from rtk.recipe import load_recipe
    from rtk.runner import Runner

    loaded = load_recipe(recipe, profile, list(overrides))
    runner = Runner(loaded, registry(), out, show_progress=not quiet, console=err_console, overwrite=overwrite)
    err_console.print(f"rtk: {len(runner.specs)} run(s) of {recipe}{f' (profile {profile})' if profile else ''} -> {runner.out_dir}")
    runner.run()
    console.print(runner.table())
    console.print(f"results: {runner.out_dir / 'results.json'}")


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key (dotted path).")
@click.option("--profile", help="Apply the recipe's [profile.NAME] overrides.")
@handle_errors
def validate(recipe, overrides, profile):
    """Check RECIPE (and every sweep point) against the installed plugins without running it."""
    from rtk.recipe import load_recipe, paper_for
    from rtk.spec import resolve

    loaded = load_recipe(recipe, profile, list(overrides))
    specs = resolve(loaded, registry())
    for spec in specs:
        paper_for(loaded, spec.params)
    console.print(f"[green]ok[/green]: {recipe} is valid ({len(specs)} run{'s' if len(specs) != 1 else ''}; profiles: {', '.join(loaded.profiles) or 'none'})")


@cli.command("list-plugins")
@click.option("--kind", type=click.Choice(["model", "dataset", "attack", "objective", "strategy", "certifier"]), help="Only components of this kind.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--options", "options_of", metavar="NAME", help="Show the options of component NAME (fields, types, defaults, help).")
@handle_errors
def list_plugins(kind, as_json, options_of):
    """List every registered component: kind, name, provider and version, summary."""
    from rtk.listing import show_components, show_options

    if options_of:
        show_options(registry(), options_of, kind, as_json, console)
    else:
        show_components(registry(), kind, as_json, console)


def main():
    cli(prog_name="rtk")


if __name__ == "__main__":
    main()
