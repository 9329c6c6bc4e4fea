"""The ``attacks`` argument of ``rtk.evaluate`` as rtk's evaluation takes it: each entry (a name, a
(name, options) pair, a dict with "name", an ``rtk.attack(...)`` object or a custom callable)
built through the registry, with its label and its sanity-check view.

Importing this module loads neither torch nor any plugin.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from rtk.api.components import ConfiguredAttack
from rtk.errors import RtkError

__all__ = ["attack_entries"]


def _parsed_attack(item, i: int) -> tuple[str | None, dict, str, Any]:
    """(registered name or None, options, label, the object of a custom attack) of ``attacks[i]``."""
    if isinstance(item, str):
        return item, {}, "", None
    if isinstance(item, ConfiguredAttack):
        return item.name, dict(item.options), item.spec.label, None
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], dict):
        options = dict(item[1])
        return item[0], options, options.pop("label", ""), None
    if isinstance(item, dict):
        options = dict(item)
        if "name" not in options:
            raise RtkError(f'attacks[{i}]: a dict needs "name", the attack, e.g. {{"name": "pgd", "eps": 0.1}}')
        return options.pop("name"), options, options.pop("label", ""), None
    if callable(item):
        return None, {}, getattr(item, "label", None) or type(item).__name__, item
    raise RtkError(f"attacks[{i}]: expected an attack name, a (name, options) pair, a dict with name, or"
                   f" rtk.attack(...), got {type(item).__name__}")


def attack_entries(attacks, values: dict) -> list[tuple[str, Any, Any]]:
    """(label, attack, its sanity view or None) of each attack, in order. ``values`` (eps, norm,
    steps) go to every registered attack that has the option and does not set it itself, as
    ``rtk eval --eps/--norm/--steps`` do; one that reaches no attack is an error."""
    from rtk.api.components import _resolve, _spec
    from rtk.evaluation.sanity import SanityAttack

    if attacks is None:
        attacks = []
    elif isinstance(attacks, (str, dict, ConfiguredAttack)):
        attacks = [attacks]
    entries, used = [], set()
    for i, item in enumerate(attacks):
        name, options, label, custom = _parsed_attack(item, i)
        if not isinstance(label, str):
            raise RtkError(f"attacks[{i}]: label: expected a string, got {label!r}")
        if custom is not None:
            entries.append((label, custom, None))
            continue
        component, _ = _resolve("attack", name, f"attacks[{i}]")
        fields = {f.name for f in dataclasses.fields(component.config)}
        for key, value in values.items():
            if key in fields and key not in options:
                options[key] = value
                used.add(key)
        spec = _spec("attack", name, options, f'attack "{label or name}"', label)
        spec.label = label or spec.name
        entries.append((spec.label, spec.build(), SanityAttack.of(spec)))
    labels = [label for label, _, _ in entries]
    for label in labels:
        if label in ("clean", "robust") or labels.count(label) > 1:
            raise RtkError(f'attacks: label "{label}" is used twice or names a metric; give each attack a distinct'
                           ' label, e.g. ("pgd", {"steps": 50, "label": "pgd-50"})')
    unused = [key for key in values if key not in used]
    if unused:
        key = unused[0]
        raise RtkError(f"{key}={values[key]!r} reaches none of the attacks ({', '.join(labels) or 'none'}): none has a"
                       f" {key} option or each sets its own; rtk.options(NAME) lists an attack's options")
    return entries
