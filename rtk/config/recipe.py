"""Recipes: strict TOML files that combine components into runs.

Loading order: read the TOML, apply the named ``[profile.NAME]`` (first its ``unset`` list of
dotted keys, e.g. ``unset = ["source.weights"]``, then its values), then ``--set`` overrides,
then expand ``[sweep]`` into one run per point of the cartesian product; every point is
validated against the config dataclasses of the components it names (see rtk.config.spec) before
anything runs. Overrides address keys by dotted path (``transfer.lambda_d``,
``eval.attacks.0.eps``); values are parsed as TOML (``0.01``, ``true``, ``[1, 2]``), else as
strings (``8/255``).
"""
from __future__ import annotations

import copy
import itertools
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtk.errors import RecipeError

MAX_DEPTH = 32
MAX_SWEEP_POINTS = 10_000  # validating ~1 ms per point; larger sweeps are almost always a typo
TOP_LEVEL = ("run", "source", "target", "transfer", "eval", "certify", "sweep", "profile", "paper")


@dataclass
class SweepPoint:
    id: str
    params: dict[str, Any]
    raw: dict
    cases: list[str] = field(default_factory=list)  # the ids of its [[sweep.cases]]
    # With [run] seeds: the id of the point all its seeds share (its id without ",seed=N"); else None.
    group: str | None = None


@dataclass
class Recipe:
    path: Path
    raw: dict  # after profile and overrides, [sweep] still unexpanded
    profile: str | None = None
    overrides: list[str] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def error(self, table: str, message: str) -> RecipeError:
        return RecipeError(f"{self.path}: [{table}] {message}")

    def points(self) -> list[SweepPoint]:
        return expand_sweep(self)


def read_toml(path: Path) -> dict:
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist; check the path"
                          " (`rtk run recipes/quickstart.toml` runs the quickstart)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not valid UTF-8 (byte {exc.start}); save the recipe as UTF-8 text") from None
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer past Python's 4300-digit limit
        raise RecipeError(f"{path}: invalid TOML: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    except RecursionError:
        raise RecipeError(f"{path}: invalid TOML: nested too deeply") from None


def parse_value(text: str) -> Any:
    """A --set value: TOML syntax when it parses (numbers, booleans, lists, quoted strings), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise RecipeError(f"--set value {text[:40]}...: nested too deeply") from None
    except ValueError as exc:  # an integer past Python's 4300-digit limit
        raise RecipeError(f"--set value {text[:40]}...: {exc}") from None


def split_key(key: str) -> list[str]:
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise RecipeError(f'invalid key "{key}": use a dotted path such as transfer.lambda_d or eval.attacks.0.eps')
    return parts


def set_dotted(raw: dict, key: str, value: Any, origin: str) -> None:
    """Set ``key`` (dotted path) in ``raw``; list items by index; missing tables are created."""
    if key.startswith("sweep."):  # sweep keys themselves contain dots
        raw.setdefault("sweep", {})[key[len("sweep."):]] = value
        return
    parts = split_key(key)
    if parts[0] not in TOP_LEVEL or parts[0] in ("profile",):
        tables = ", ".join(t for t in TOP_LEVEL if t != "profile")
        raise RecipeError(f'{origin}: "{key}" does not name a recipe table; tables: {tables}')
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            node = _list_item(node, part, where, origin)
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise RecipeError(f'{origin}: "{where}" is a value, not a table, so "{key}" cannot be set')
    last = parts[-1]
    if isinstance(node, list):
        _list_item(node, last, key, origin)
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise RecipeError(f'{origin}: "{".".join(parts[:-1])}" is a value, not a table, so "{key}" cannot be set')


def unset_dotted(raw: dict, key: str, origin: str) -> None:
    """Remove ``key`` (a dotted path, or "sweep.<swept key>") from ``raw``; a missing key is an error."""
    if key.startswith("sweep."):
        node, last = raw.get("sweep", {}), key[len("sweep."):]
    else:
        parts = split_key(key)
        node, last = get_dotted(raw, ".".join(parts[:-1])) if len(parts) > 1 else raw, parts[-1]
    if not isinstance(node, dict) or last not in node:
        raise RecipeError(f'{origin}: "{key}" is not in the recipe, so it cannot be unset; check the spelling')
    del node[last]


def _list_item(node: list, part: str, where: str, origin: str):
    if not _is_index(part) or int(part) >= len(node):
        raise RecipeError(f'{origin}: "{where}" needs an index 0..{len(node) - 1} (the list has {len(node)} entries)')
    return node[int(part)]


def _is_index(part: str) -> bool:
    return part.isascii() and part.isdigit()  # str.isdigit accepts "²", which int() rejects


def get_dotted(raw: dict, key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if isinstance(node, list) and _is_index(part) and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def load_recipe(path: str | Path, profile: str | None = None, overrides: list[str] = ()) -> Recipe:
    """Read a recipe, apply a profile and --set overrides. Raises RecipeError (one line) on any problem."""
    path = Path(path)
    raw = read_toml(path)
    _check_depth(raw, str(path))
    unknown = [k for k in raw if k not in TOP_LEVEL]
    if unknown:
        raise RecipeError(f'{path}: unknown table [{unknown[0]}]; valid tables: {", ".join(TOP_LEVEL)}')
    profiles = raw.pop("profile", {})
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise RecipeError(f"{path}: [profile] must hold tables such as [profile.smoke]")
    raw = copy.deepcopy(raw)
    if profile is not None:
        if profile not in profiles:
            names = ", ".join(sorted(profiles)) or "(none defined)"
            raise RecipeError(f'{path}: no profile "{profile}"; profiles in this recipe: {names}')
        chosen = dict(profiles[profile])
        unset = chosen.pop("unset", [])
        if not isinstance(unset, list) or not all(isinstance(k, str) for k in unset):
            raise RecipeError(f"{path}: [profile.{profile}] unset: expected a list of dotted keys,"
                              ' e.g. unset = ["source.weights"]')
        for key in unset:  # before the values, so a profile can replace a whole table
            unset_dotted(raw, key, f"{path}: [profile.{profile}] unset")
        for key, value in _flatten_profile(chosen):
            set_dotted(raw, key, value, f"{path}: [profile.{profile}]")
    apply_overrides(raw, overrides)
    return Recipe(path, raw, profile, list(overrides), sorted(profiles))


def apply_overrides(raw: dict, overrides, example: str = "transfer.lambda_d=0.01") -> None:
    """Apply ``--set KEY=VALUE`` strings to ``raw`` in order (values parsed as parse_value does);
    a malformed item or one nested too deeply is a RecipeError naming it (``example`` shows the form)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise RecipeError(f'--set "{item}": expected KEY=VALUE, e.g. --set {example}')
        set_dotted(raw, key.strip(), parse_value(text.strip()), f"--set {item}")
        _check_depth(raw, f"--set {item[:60]}")


def _check_depth(raw: dict, origin: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH: tomllib reads ~400 levels, but writing
    recipe.resolved.toml (tomli_w) and copying recurse once per level and fail near 300."""
    stack = [(raw, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RecipeError(f"{origin}: tables or arrays nested more than {MAX_DEPTH} levels deep;"
                              " no recipe option needs that")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def _flatten_profile(table: dict, prefix: str = ""):
    """Profile keys are dotted strings ("source.train.epochs" = 1) or nested tables, merged key by key;
    sweep lists and tables of dotted keys (``"source.where" = {...}``) are set whole."""
    for key, value in table.items():
        full = f"{prefix}{key}"
        # A table keyed by dotted keys (a source selection's where) is a value, set whole.
        selector = isinstance(value, dict) and any("." in str(k) for k in value)
        if isinstance(value, dict) and full != "sweep" and not selector:
            yield from _flatten_profile(value, full + ".")
        elif full == "sweep" and isinstance(value, dict):
            for sweep_key, values in value.items():
                yield f"sweep.{sweep_key}", values
        else:
            yield full, value


def _short(value: Any) -> str:
    if isinstance(value, dict):
        named = (value.get(key) for key in ("name", "label", "strategy", "model", "dataset"))
        return str(next((name for name in named if name), "table"))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def expand_sweep(recipe: Recipe) -> list[SweepPoint]:
    """One SweepPoint per element of the cartesian product of the [sweep] lists (one point without a sweep).

    ``[[sweep.cases]]`` tables are one more axis whose values set several keys together (a
    source paired with its transfer): each case is a table of "dotted.key" = value, with an
    optional ``id`` naming it in run ids.
    """
    sweep = recipe.raw.get("sweep", {})
    base = {k: v for k, v in recipe.raw.items() if k not in ("sweep", "paper")}
    if not isinstance(sweep, dict):
        raise recipe.error("sweep", 'must be a table of "dotted.key" = [values]')
    axes = {}
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise recipe.error("sweep", f'"{key}" must be a non-empty list of values, got {values!r}')
        if key == "cases":
            axes[key] = [_check_case(recipe, i, case) for i, case in enumerate(values)]
        else:
            split_key(key)
            axes[key] = [{key: value} for value in values]
    seeds = _seeds(recipe, axes)
    if seeds is not None:  # the innermost axis: a point's seeds sit side by side
        axes[SEED_KEY] = [{SEED_KEY: seed} for seed in seeds]
    keys = list(axes)
    total = math.prod(len(axes[k]) for k in keys)
    if total > MAX_SWEEP_POINTS:
        raise recipe.error("sweep", f"expands to {total} runs, more than {MAX_SWEEP_POINTS};"
                                    " split the sweep into several recipes")
    run_table = recipe.raw.get("run")
    name = run_table.get("name", "run") if isinstance(run_table, dict) else "run"
    points, seen = [], {}
    for combo in itertools.product(*(axes[k] for k in keys)):
        raw = copy.deepcopy(base)
        params, parts, cases = {}, [], []
        for assignment in combo:
            case_id = assignment.get("id")
            if case_id is not None:
                cases.append(str(case_id))
            values = {k: v for k, v in assignment.items() if k != "id"}
            params.update(values)
            parts.append(str(case_id) if case_id is not None
                         else ",".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in values.items()))
        for key, value in params.items():
            set_dotted(raw, key, copy.deepcopy(value), f"{recipe.path}: [sweep]")
        ident = ",".join(parts) or str(name)
        if ident in seen:
            seen[ident] += 1
            ident = f"{ident}#{seen[ident]}"
        else:
            seen[ident] = 0
        group = (",".join(parts[:-1]) or str(name)) if seeds is not None else None
        points.append(SweepPoint(ident, params, raw, cases, group))
    return points


SEED_KEY = "run.seed"


def _seeds(recipe: Recipe, axes: dict) -> list[int] | None:
    """``[run] seeds`` (``--seeds``): the seeds every point repeats with, checked; None when unset."""
    run_table = recipe.raw.get("run")
    seeds = run_table.get("seeds") if isinstance(run_table, dict) else None
    if seeds is None:
        return None
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in seeds)):
        raise recipe.error("run", f"seeds = {seeds!r}: expected a non-empty list of integers in 0..2147483647,"
                                  " e.g. [0, 1, 2] (rtk run --seeds 0,1,2)")
    if len(set(seeds)) != len(seeds):
        raise recipe.error("run", f"seeds = {seeds!r}: a seed is repeated; list each once")
    if SEED_KEY in axes:
        raise recipe.error("sweep", f'"{SEED_KEY}" is swept and [run] seeds is set; keep one of them')
    return seeds


def _check_case(recipe: Recipe, index: int, case: Any) -> dict:
    if not isinstance(case, dict) or not [k for k in case if k != "id"]:
        raise recipe.error("sweep", f'cases.{index} must be a table of "dotted.key" = value ([[sweep.cases]]),'
                                    f" got {case!r}")
    for key in case:
        if key != "id":
            split_key(key)
    return case


def paper_for(recipe: Recipe, params: dict[str, Any], cases: list[str] = ()) -> dict[str, Any]:
    """The published numbers for one run: top-level [paper] metrics plus every matching [[paper.rows]]
    (``where`` matches swept values, and ``case = "ID"`` the point's [[sweep.cases]] ids)."""
    paper = recipe.raw.get("paper", {})
    if not isinstance(paper, dict):
        raise recipe.error("paper", "must be a table")
    result = {k: v for k, v in paper.items() if k != "rows"}
    _check_paper_numbers(recipe, result, "paper")
    rows = paper.get("rows", [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise recipe.error("paper", "rows must be an array of tables ([[paper.rows]])")
    for i, row in enumerate(rows):
        where = row.get("where", {})
        if not isinstance(where, dict):
            raise recipe.error("paper", f"rows.{i}.where must be a table of dotted keys to values")
        numbers = {k: v for k, v in row.items() if k != "where"}
        _check_paper_numbers(recipe, numbers, f"paper.rows.{i}")
        if all(str(v) in cases if k == "case" else _same(get_dotted_param(params, k), v) for k, v in where.items()):
            result.update(numbers)
    return result


# Certification metrics measured in radius units rather than as fractions.
UNBOUNDED_PAPER_METRICS = ("acr", "max_certifiable_radius")


def _check_paper_numbers(recipe: Recipe, numbers: dict, table: str) -> None:
    for key, value in numbers.items():
        bounded = key not in UNBOUNDED_PAPER_METRICS
        if isinstance(value, bool) or (isinstance(value, (int, float)) and (value < 0 or (bounded and value > 1))):
            raise recipe.error(table, f"{key} = {value!r}: published accuracies are fractions in [0, 1]"
                                      ' (write 0.8123 for 81.23%), or a string such as "unknown"')


def get_dotted_param(params: dict[str, Any], key: str) -> Any:
    return params.get(key)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, str):
        return _short(a) == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b) <= 1e-12 * max(1.0, abs(a), abs(b))
    return a == b
