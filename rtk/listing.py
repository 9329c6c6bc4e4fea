"""What ``rtk list-plugins`` shows."""
from __future__ import annotations

import json

from rich.markup import escape
from rich.table import Table

from rtk.config.fields import describe
from rtk.errors import UnknownComponentError
from rtk.registry import KINDS, Registry


def show_components(registry: Registry, kind: str | None, as_json: bool, console) -> None:
    components = [c for c in registry.all() if kind is None or c.kind == kind]
    if as_json:
        rows = [{"kind": c.kind, "name": c.name, "plugin": c.plugin.name, "distribution": c.plugin.distribution,
                 "version": c.plugin.version, "summary": c.summary} for c in components]
        console.print_json(json.dumps(rows))
        return
    table = Table(title=f"rtk components ({len(components)})")
    for column in ("kind", "name", "provider", "summary"):
        table.add_column(column, overflow="fold")
    for c in components:
        table.add_row(c.kind, escape(c.name), escape(f"{c.plugin.name} ({c.plugin.distribution} {c.plugin.version})"),
                      escape(c.summary))
    console.print(table)


def show_options(registry: Registry, name: str, kind: str | None, as_json: bool, console) -> None:
    matches = [c for c in registry.all() if c.name == name and (kind is None or c.kind == kind)]
    if not matches:
        for k in KINDS if kind is None else [kind]:
            try:
                matches.append(registry.get(k, name))
            except UnknownComponentError:
                pass
    if not matches:
        raise UnknownComponentError(f'no component named "{name}"; run `rtk list-plugins` to see all')
    if as_json:
        rows = [{"kind": c.kind, "name": c.name, "options": describe(c.config)} for c in matches]
        console.print_json(json.dumps(rows, default=str))
        return
    for c in matches:
        caption = (c.config.__doc__ or "").strip().split("\n\n")[0]
        table = Table(title=escape(f"{c.kind} {c.name} ({c.provider})"), caption=escape(caption))
        for column in ("option", "type", "default", "range", "help"):
            table.add_column(column, overflow="fold")
        for row in describe(c.config):
            low, high = ("" if bound is None else bound for bound in (row["min"], row["max"]))
            bounds = "" if row["min"] is None and row["max"] is None else f"[{low}, {high}]"
            table.add_row(*(escape(text) for text in (row["name"], row["type"], json.dumps(row["default"], default=str),
                                                      bounds, row["help"])))
        console.print(table)
