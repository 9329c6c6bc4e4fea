"""The store key of a source: a hash of everything in a recipe that changes its weights, written
canonically, so that the same source gets the same key however its table is written.

In the key: the model and every option of it, the class count, the initial weights (their
sha256), the source dataset and its options, the training table, the objective and its options,
the seed and the training autocast of the recipe that defines the source. Not in it: where files
live (a dataset's ``root``), whether to download, how often to checkpoint, the device and the
fast paths that only change the last bits (channels_last, compile). Options are read from the
validated configs, so key order, ``8/255`` against ``0.03137...`` and defaults written out or
left out give the same key. A config field declares itself out of the key with
``option(..., key=False)``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

KEY_LENGTH = 16
_hashes: dict[tuple[str, int, int], str] = {}


def options(config, hash_files: bool = True) -> dict[str, Any]:
    """A config's fields that change weights, by name; a file option by its content's sha256 (a
    folder option, such as an image folder's root, by its path). An option declared with
    ``key="if-set"`` is left out while it has its default (rtk.config.fields.option)."""
    found = {}
    for f in dataclasses.fields(config):
        if not f.metadata.get("key", True):
            continue
        value = getattr(config, f.name)
        if f.metadata.get("key") == "if-set" and value == f.default:
            continue
        if hash_files and f.metadata.get("path") and isinstance(value, str) and Path(value).is_file():
            value = {"sha256": file_sha256(Path(value))}
        found[f.name] = value
    return found


def component(spec, hash_files: bool = True) -> dict[str, Any] | None:
    return None if spec is None else {"name": spec.name, "options": options(spec.config, hash_files)}


def file_sha256(path: Path) -> str:
    """A file's sha256, computed once per (path, size, mtime) in this process."""
    from rtk.services.store import sha256_file

    stat = Path(path).stat()
    cache = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if cache not in _hashes:
        _hashes[cache] = sha256_file(Path(path))
    return _hashes[cache]


def identity(source, hash_files: bool = True) -> dict[str, Any]:
    """What makes ``source`` (a rtk.config.spec.SourceSpec) the weights it is; ``hash_files=False``
    names an initial weights file by path instead of content (cheap, for grouping only)."""
    init = None
    if source.weights is not None:
        init = {"sha256": file_sha256(source.weights)} if hash_files else {"path": str(source.weights)}
    found = {"model": component(source.model, hash_files), "num_classes": source.num_classes, "init": init}
    if source.imported is not None:
        found["import"] = source.imported.identity(hash_files)
    if source.data is not None:
        found.update(data=component(source.data, hash_files), train=options(source.train),
                     objective=component(source.objective, hash_files),
                     seed=source.seed, amp=source.amp)
    return found


def canonical(value: dict) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def key_of(found: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(found).encode()).hexdigest()[:KEY_LENGTH]


def source_key(source) -> str:
    """The store key of a trained source."""
    return key_of(identity(source))


def data_label(data: dict | None) -> str:
    """A dataset identity as a short label: "cifar100", "mnist[0,1,2,3,4] x2000"."""
    if not data:
        return "-"
    opts = data["options"]
    label = data["name"]
    if opts.get("classes"):
        shown = opts["classes"][:6]
        label += f"[{','.join(map(str, shown))}{',...' if len(opts['classes']) > 6 else ''}]"
    if opts.get("per_class"):
        label += f" x{opts['per_class']}"
    return label
