"""``rtk eval``: evaluate a weights file without writing a recipe.

The options become a recipe (a dict) that the same Runner as ``rtk run`` executes, so
results.json has the same schema and OUT/recipe.resolved.toml reruns the evaluation with
``rtk run``.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from rtk.errors import RtkError, UnknownComponentError
from rtk.config.recipe import Recipe, apply_overrides, parse_value

# Keys the synthesised tables set themselves; --model-option / --data must not shadow them.
RESERVED = {"--model-option": ("model", "weights", "num_classes", "data", "train", "objective"),
            "--data": ("dataset",)}
ATTACK_OPTIONS = ("eps", "norm", "steps")


def parse_assignments(items: tuple[str, ...] | list[str], option: str) -> dict[str, Any]:
    """KEY=VALUE pairs; values are TOML when they parse ([5, 6], 0.1, true), else strings."""
    table = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RtkError(f'{option} "{item}": expected KEY=VALUE, e.g. {option} classes=[5,6,7,8,9]')
        if key in RESERVED.get(option, ()):
            raise RtkError(f'{option} {key}=...: {key} has its own option (rtk eval --help)')
        table[key] = parse_value(text.strip())
    return table


def infer_num_classes(weights: Path) -> int:
    from rtk.models import read_state_dict

    head = read_state_dict(weights).get("head.weight")
    if head is None or head.ndim != 2:
        raise RtkError(f"--weights {weights}: cannot read the class count (no 2-d head.weight tensor);"
                       " pass --num-classes")
    return int(head.shape[0])


def attack_tables(registry, names: tuple[str, ...], values: dict[str, Any]) -> list[dict]:
    """One [[eval.attacks]] table per --attack; --eps/--norm/--steps go to every attack that has the option."""
    tables, used = [], set()
    for name in names:
        try:
            component, _ = registry.resolve("attack", name)
        except UnknownComponentError as exc:
            raise RtkError(f"--attack {name}: {exc}") from None
        fields = {f.name for f in dataclasses.fields(component.config)}
        table = {"name": name}
        for key, value in values.items():
            if key in fields:
                table[key] = value
                used.add(key)
        tables.append(table)
    unused = [key for key in values if key not in used]
    if unused:
        given = ", ".join(names) or "none"
        raise RtkError(f"--{unused[0]}: none of the attacks ({given}) has a {unused[0]} option;"
                       " see rtk list-plugins --options ATTACK")
    return tables


def eval_recipe(registry, *, model: str | None, model_option=(), weights: Path | None, num_classes: int | None,
                dataset: str | None, data=(), attack=(), eps: str | None = None, norm: str | None = None,
                steps: int | None = None, n: int | None = None, subset: str | None = None,
                batch_size: int | None = None, seed: int = 0, device: str = "auto", overrides=()) -> Recipe:
    """The recipe that ``rtk eval`` with these options runs."""
    for value, flag, hint in ((model, "--model", "a model name (rtk list-plugins --kind model)"),
                              (weights, "--weights", "the weights file to evaluate"),
                              (dataset, "--dataset", "a dataset name (rtk list-plugins --kind dataset)")):
        if value is None:
            raise RtkError(f"rtk eval needs {flag}: {hint}")
    weights = Path(weights).expanduser()
    if not weights.is_file():
        raise RtkError(f"--weights {weights}: no such file; give a safetensors or tensor-only torch weights file")
    source = {"model": model, **parse_assignments(model_option, "--model-option"), "weights": str(weights.resolve()),
              "num_classes": num_classes or infer_num_classes(weights)}
    values = {"eps": parse_value(eps) if eps is not None else None, "norm": norm, "steps": steps}
    evaluation = {"n": n, "subset": subset, "batch_size": batch_size}
    raw = {
        "run": {"name": "eval-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{model}-{dataset}"), "seed": seed,
                "device": device},
        "source": source,
        "target": {"dataset": dataset, **parse_assignments(data, "--data")},
        "eval": {k: v for k, v in evaluation.items() if v is not None}
        | {"attacks": attack_tables(registry, tuple(attack), {k: v for k, v in values.items() if v is not None})},
    }
    apply_overrides(raw, overrides, "eval.attack_order=sequential")
    # The folder of this pseudo-path is the working directory, where relative paths are resolved.
    return Recipe(Path("rtk eval"), raw, None, list(overrides))


def run_eval(registry, console, err_console, *, out: Path | None, resume: bool, overwrite: bool, quiet: bool,
             deterministic: bool = False, download: bool = False, **options) -> dict:
    from rtk.stages.runner import Runner

    if resume and out is None:
        raise RtkError("--resume needs --out DIR, the folder of the interrupted evaluation")
    recipe = eval_recipe(registry, **options)
    runner = Runner(recipe, registry, out, show_progress=not quiet, console=err_console, resume=resume,
                    overwrite=overwrite, deterministic=deterministic, download=download)
    err_console.print(f"rtk eval: {options['weights']} on {options['dataset']} -> {runner.out_dir}")
    payload = runner.run()
    runner.report(console)
    return payload
