"""The plan of a run, printed by ``rtk run --dry-run`` and at the start of every run: what happens
to each source (reused from the store, trained here, loaded from a file) and how many transfer or
evaluation runs follow. Making the plan writes nothing; it reads the store and the datasets.
"""
from __future__ import annotations

from rtk.config.source_key import data_label, identity, source_key
from rtk.config.spec import RunSpec
from rtk.errors import DataError
from rtk.services.store import SourceStore
from rtk.stages.datasets import Datasets
from rtk.stages.source import group_of


def training_size(spec: RunSpec, datasets: Datasets, notes: dict[str, str]) -> str:
    """"50,000 training images", measured when the data is here, else from the dataset's published
    size (its missing files go into ``notes``)."""
    data = spec.source.data
    try:
        return f"{len(datasets.get(data).train):,} training images"
    except DataError as exc:
        notes[data.name] = str(exc).splitlines()[0]
    sizes, cfg = data.component.trait("sizes"), data.config
    if not sizes:
        return "an unknown number of training images (the data is not here)"
    total, classes = sizes
    kept = len(cfg.classes) if cfg.classes else classes
    count = cfg.per_class * kept if cfg.per_class else round(total * kept / classes)
    count = round(count * (1 - cfg.val_fraction))
    return f"{'' if cfg.per_class or kept == classes else '~'}{count:,} training images (published size)"


def describe_import(spec: RunSpec, store: SourceStore) -> str:
    """An imported source: reused from the store, converted from a file here, or downloaded first."""
    from rtk.config.source_key import file_sha256
    from rtk.importing import downloads_folder, local_file

    imp = spec.source.imported
    if imp.location == "self":
        entry = store.get(source_key(spec.source))
        if entry is not None:
            return f"reused from the store ({entry.key}, imported {entry.info.get('created', '?')})"
        return f"DOWNLOAD the {imp.describe()} into {store.root / 'downloads'}, convert it, then keep it in the store"
    local = local_file(imp, store.root)
    content = file_sha256(local) if local is not None else imp.sha256
    if content is not None:
        imp.content = content
        entry = store.get(source_key(spec.source))
        if entry is not None:
            return f"reused from the store ({entry.key}, imported {entry.info.get('created', '?')})"
    if local is not None:
        return f"IMPORT the {imp.format} checkpoint {local} (convert it, then keep it in the store)"
    if imp.location == "path":
        return f"IMPORT the {imp.format} checkpoint {imp.where}: NOT FOUND, place the file there"
    target = downloads_folder(store.root, imp)
    what = "Hugging Face Hub file" if imp.location == "hub" else "URL"
    return (f"DOWNLOAD the {imp.format} checkpoint from the {what} {imp.where} into {target}"
            f"{' (sha256 checked)' if imp.sha256 else ''}, convert it, then keep it in the store")


def describe_source(spec: RunSpec, store: SourceStore, datasets: Datasets, notes: dict[str, str]) -> str:
    source = spec.source
    found = identity(source, hash_files=False)
    what = source.model.name if source.model is not None else source.imported.format
    if source.imported is not None:
        return f"{what}: {describe_import(spec, store)}"
    if source.trained:
        what += f" on {data_label(found['data'])} ({source.objective.name})"
    origin = f", selected from {source.origin}" if source.origin else ""
    if source.trained:
        key = source_key(source)
        entry = store.get(key)
        if entry is not None:
            info = entry.info
            clean = f", clean {info['clean']:.3f}" if isinstance(info.get("clean"), float) else ""
            return (f"{what}: reused from the store ({key}, trained {info.get('created', '?')} by"
                    f" {info.get('recipe', '?')}{clean}{origin})")
        return (f"{what}: TRAIN here for {source.train.epochs} epochs on {training_size(spec, datasets, notes)},"
                f" then keep it in the store as {key}{origin}")
    if source.weights is not None:
        return f"{what}: load the weights file {source.weights}{origin}"
    config = source.model.config
    if getattr(config, "pretrained", False) or getattr(config, "timm_weights", None):
        where = getattr(config, "timm_weights", None) or "the Hugging Face cache or hub"
        return f"{what}: its published pretrained weights (from {where}){origin}"
    return f"{what}: randomly initialised (no weights, not trained){origin}"


def describe_runs(specs: list[RunSpec]) -> str:
    n = len(specs)
    runs = f"{n} run{'s' if n != 1 else ''}"
    strategies = list(dict.fromkeys(s.transfer.name for s in specs if s.transfer is not None))
    targets = list(dict.fromkeys(s.target.name for s in specs if s.target is not None))
    attacks = list(dict.fromkeys(a.label for s in specs for a in s.attacks))
    certify = list(dict.fromkeys(s.certify.name for s in specs if s.certify is not None))
    if strategies:
        line = f"then {runs} transferring with {', '.join(strategies)} to {', '.join(targets)}"
    elif targets:
        line = f"then {runs} evaluating the source on {', '.join(targets)}"
    else:
        line = f"then {runs} (no target: the source only)"
    evaluated = (["clean"] + attacks) if targets else []
    if evaluated:
        line += f"; evaluated: {', '.join(evaluated)}"
    if certify:
        line += f"; certified: {', '.join(certify)}"
    return line


def plan(specs: list[RunSpec], store: SourceStore, datasets: Datasets, download: bool = False) -> list[str]:
    """The plan, one line per source, then the runs, then data that is not here yet."""
    groups: dict[str, RunSpec] = {}
    for spec in specs:
        groups.setdefault(group_of(spec), spec)
    notes: dict[str, str] = {}
    lines = [f"source {i}/{len(groups)}: {describe_source(spec, store, datasets, notes)}"
             for i, spec in enumerate(groups.values(), 1)]
    lines.append(describe_runs(specs))
    targets = {s.target.name: s.target for s in specs if s.target is not None}
    for name, target in targets.items():
        try:
            datasets.get(target)
        except DataError as exc:
            notes.setdefault(name, str(exc).splitlines()[0])
    fetch = " (--download fetches it)" if download else ""
    lines += [f"data not here yet{fetch}: {note}" for note in notes.values()]
    return lines
