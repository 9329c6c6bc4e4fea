"""Sources selected from another recipe: ``[source] recipe = "shafahi_table1.toml"`` with a
``where`` table in the style of ``[[paper.rows]] where``, so that a table reuses the source that
another table trains (from the store: it is trained once).

    [source]
    recipe = "shafahi_table1.toml"      # relative to this recipe's folder
    where = { "source.objective" = "pgd-at", case = "cifar100" }
    # profile = "smoke"                 # default: the profile this recipe runs with, when that
    #                                   # recipe has it ("" for none)

``where`` keys are dotted keys of the other recipe's sweep points: a swept key matches its swept
value (a table with a name matches by the name alone, as in [[paper.rows]]), any other key the
point's value, and ``case = "ID"`` matches the points of the ``[[sweep.cases]]`` with that id.
The points it selects must share one source; the error lists the sources there are. The source
keeps that recipe's [run] seed and autocast (they shape its weights); --set overrides of this
run do not reach it.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtk.config.recipe import _same, _short, get_dotted, load_recipe
from rtk.config.source_key import canonical, identity

if TYPE_CHECKING:
    from rtk.config.spec import Resolver, SourceSpec

KEYS = ("recipe", "where", "profile")
MAX_CHAIN = 8


def inline(value: Any) -> str:
    """A value as an inline TOML table or value, for error messages."""
    if isinstance(value, dict):
        parts = [f"{k if k.replace('_', '').isalnum() else repr(k).replace(chr(39), chr(34))} = {inline(v)}"
                 for k, v in value.items()]
        return "{ " + ", ".join(parts) + " }" if parts else "{}"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(inline(v) for v in value) + "]"
    return repr(value)


def matches(point, where: dict) -> bool:
    for key, wanted in where.items():
        if key == "case":  # the id of one of the point's [[sweep.cases]]
            if str(wanted) not in point.cases:
                return False
            continue
        value = point.params[key] if key in point.params else get_dotted(point.raw, key)
        if not _same(value, wanted):
            return False
    return True


class Selection:
    """Resolves selected sources for one Resolver; remembers the recipes it read."""

    def __init__(self, resolver: "Resolver", chain: tuple[Path, ...]):
        self.resolver = resolver
        self.chain = chain
        self._sources: dict[tuple[Path, str | None], list] = {}

    def fail(self, message: str):
        return self.resolver.fail("source", message)

    def select(self, table: dict) -> "SourceSpec":
        extra = [k for k in table if k not in KEYS]
        if extra:
            raise self.fail(f'{extra[0]}: a source selected from another recipe takes only {", ".join(KEYS)};'
                            " set the source's options in that recipe")
        name, where = table["recipe"], table.get("where", {})
        if not isinstance(name, str) or not name.strip():
            raise self.fail(f'recipe: expected the path of another recipe (a string), got {name!r}')
        if not isinstance(where, dict):
            raise self.fail(f"where: expected a table of dotted keys to values, got {where!r}")
        path = self.resolver.recipe.folder / Path(name).expanduser()
        if not path.is_file():
            raise self.fail(f"recipe: {path} is not a recipe file; give the path of the recipe that defines the"
                            " source, relative to this recipe's folder")
        profile = self.profile(table, path)
        points = self.sources(path, profile)
        chosen = [(point, source) for point, source in points if matches(point, where)]
        groups = self.group(chosen)
        if len(groups) == 1:
            point, source = groups[0]
            source.origin = f"{name} ({point.id})"
            return source
        what = f"{name}{f' (profile {profile})' if profile else ''}"
        if not groups:
            listed = "; ".join(inline(self.describe(point)) for point, _ in self.group(points))
            raise self.fail(f"where {inline(where)} selects no source of {what}; its sources: {listed}")
        listed = "; ".join(inline(self.describe(point)) for point, _ in groups)
        raise self.fail(f"where {inline(where)} selects {len(groups)} sources of {what}; narrow it to one of: {listed}")

    def profile(self, table: dict, path: Path) -> str | None:
        running = self.resolver.recipe.profile
        if "profile" in table:
            profile = table["profile"]
            if not isinstance(profile, str):
                raise self.fail(f'profile: expected a profile name of {path.name} (a string, "" for none),'
                                f" got {profile!r}")
            return profile or None
        if running is None:
            return None
        available = load_recipe(path).profiles if path.is_file() else []
        if running not in available:
            raise self.fail(f'{path.name} has no profile "{running}" (this run\'s); set source.profile to one of'
                            f' its profiles ({", ".join(available) or "none"}) or "" for none')
        return running

    def sources(self, path: Path, profile: str | None) -> list:
        """(sweep point, SourceSpec) for every point of the recipe at ``path``, read once."""
        from rtk.config.spec import Resolver

        resolved = path.resolve()
        if resolved in self.chain or resolved == self.resolver.recipe.path.resolve():
            raise self.fail(f"recipe: {path.name} selects its source from this recipe again; a chain of source"
                            " selections must end in a recipe that trains or loads its source")
        if len(self.chain) >= MAX_CHAIN:
            raise self.fail(f"recipe: more than {MAX_CHAIN} recipes select their sources from one another")
        if (resolved, profile) not in self._sources:
            other = load_recipe(path, profile)
            resolver = Resolver(other, self.resolver.registry, (*self.chain, self.resolver.recipe.path.resolve()))
            found = []
            for point in other.points():
                run = resolver.run_config(point.raw)
                found.append((point, resolver.source(point.raw, run)))
            self._sources[(resolved, profile)] = found
        return [(point, _copy(source)) for point, source in self._sources[(resolved, profile)]]

    @staticmethod
    def group(pairs: list) -> list:
        """One (point, source) per distinct source, in order."""
        seen: dict[str, tuple] = {}
        for point, source in pairs:
            seen.setdefault(canonical(identity(source, hash_files=False)), (point, source))
        return list(seen.values())

    @staticmethod
    def describe(point) -> dict:
        """A where table that picks ``point``'s source: its swept source values (a table with a name
        by its name), or its case ids where its cases set the source."""
        found = {k: (_short(v) if isinstance(v, dict) and "name" in v else v) for k, v in point.params.items()
                 if (k == "source" or k.startswith("source.")) and not k.startswith("source.data")}
        data = {k: v for k, v in point.params.items() if k.startswith("source.data")}
        if data and len(point.cases) == 1:
            found["case"] = point.cases[0]
        else:
            found.update(data)
        return found


def _copy(source):
    import copy

    return copy.copy(source)
