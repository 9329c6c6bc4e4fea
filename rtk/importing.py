"""Importing published checkpoints: fetch the file (a path, an https URL or a Hugging Face Hub file,
with a sha256 check), read it without unpickling anything but tensors and the few globals its
format needs, and turn it into an rtk model whose logits equal the original network's.

A recipe names an import in ``[source.import]``:

    [source.import]
    format = "madrylab-robustness"          # the importer (rtk list-plugins --kind importer)
    url = "https://huggingface.co/madrylab/robust-imagenet-models/resolve/main/resnet50_l2_eps3.ckpt"
    # hub = "madrylab/robust-imagenet-models/resnet50_l2_eps3.ckpt"   (repo id, then the file's path)
    # path = "imports/resnet50_l2_eps3.ckpt"                          (relative to the recipe)
    sha256 = "..."                           # optional; checked after every download

The imported model goes into the source store (rtk.services.store) under a key of the file's
content hash, so a later run downloads and converts nothing. Downloads go through torch.hub
(URLs) and huggingface_hub (Hub files), with a progress bar, into the store's ``downloads/``.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rtk.errors import RtkError, WeightsError

LOCATIONS = ("path", "url", "hub")
IMPORT_KEYS = ("format", *LOCATIONS, "sha256", "revision")


class CheckpointError(RtkError):
    """A checkpoint cannot be fetched or read."""


@dataclass
class ImportSpec:
    """A resolved [source.import] table: where the file is, and the importer's config."""

    format: str
    location: str  # "path", "url" or "hub"
    where: str  # the path (absolute), the URL, or "repo/id/file/in/repo"
    sha256: str | None
    revision: str | None
    options: dict  # the importer's config, as a plain dict (for the store key)
    importer: Any = None  # the importer's rtk.config.spec.ComponentSpec
    content: str | None = None  # the file's sha256, once it is on this machine

    def describe(self) -> str:
        if self.location == "self":
            name = self.options.get("name")
            return f"{self.format} checkpoint {f'{name} ' if name else ''}(fetched by the importer)"
        return f'{self.format} checkpoint {"Hub file " if self.location == "hub" else ""}{self.where}'

    def identity(self, hash_files: bool = True) -> dict:
        """What the store key takes from the import: the format, its options and the file's content
        hash (its address when the hash is not known yet, or for grouping only)."""
        content = self.content or self.sha256
        found = {"format": self.format, "options": self.options}
        if hash_files and content:
            found["sha256"] = content
        else:
            found["address"] = f"{self.location}:{self.where}@{self.revision or ''}"
        return found


def parse_import(table: dict, folder: Path, fetches_itself: bool = False) -> tuple[dict, dict]:
    """The location part of an import table (checked) and the rest (the importer's options). An
    importer that downloads its own file may be given no location ("self")."""
    given = [key for key in LOCATIONS if key in table]
    options = {k: v for k, v in table.items() if k not in IMPORT_KEYS}
    if not given and fetches_itself:
        if "sha256" in table or "revision" in table:
            raise ValueError("sha256 and revision need a path, url or hub; this importer fetches its file itself")
        return {"location": "self", "where": str(table.get("format")), "sha256": None, "revision": None}, options
    if len(given) != 1:
        raise ValueError(f"give exactly one of path, url or hub (got {', '.join(given) or 'none'})")
    key = given[0]
    where = table[key]
    if not isinstance(where, str) or not where.strip():
        raise ValueError(f"{key}: expected a string, got {where!r}")
    if key == "url" and not re.match(r"^https?://", where):
        raise ValueError(f'url: expected an https:// address, got "{where}" (a local file is path = "...")')
    if key == "hub" and where.count("/") < 2:
        raise ValueError(f'hub: expected "owner/repo/path/to/file", got "{where}"')
    sha = table.get("sha256")
    if sha is not None and (not isinstance(sha, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
        raise ValueError(f"sha256: expected 64 hex digits, got {sha!r}")
    revision = table.get("revision")
    if revision is not None and (key != "hub" or not isinstance(revision, str)):
        raise ValueError("revision: only a hub import takes a revision (a branch, tag or commit)")
    if key == "path":
        path = Path(where).expanduser()
        where = str(path if path.is_absolute() else (folder / path))
    location = {"location": key, "where": where, "sha256": sha.lower() if sha else None, "revision": revision}
    return location, options


def downloads_folder(store_root: Path, spec: ImportSpec) -> Path:
    """Where a download of ``spec`` is kept: one folder per address, so a second run finds it."""
    address = f"{spec.location}:{spec.where}@{spec.revision or ''}"
    return store_root / "downloads" / hashlib.sha256(address.encode()).hexdigest()[:16]


def local_file(spec: ImportSpec, store_root: Path) -> Path | None:
    """The checkpoint's local file when it is already on this machine (no network), else None."""
    if spec.location == "path":
        return Path(spec.where) if Path(spec.where).is_file() else None
    folder = downloads_folder(store_root, spec)
    name = spec.where.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "checkpoint"
    target = folder / name
    return target if target.is_file() else None


def fetch(spec: ImportSpec, store_root: Path, progress: bool = True) -> Path:
    """The checkpoint as a local file: the path itself, or a download into the store (once), its
    sha256 checked when the import gives one. Offline or failing, one line with the address, the
    expected hash and the path to place the file at by hand."""
    from rtk.services.store import sha256_file

    found = local_file(spec, store_root)
    folder = downloads_folder(store_root, spec)
    name = spec.where.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "checkpoint"
    target = folder / name
    if found is None and spec.location == "path":
        raise CheckpointError(f"{spec.describe()}: no such file; place the checkpoint there{_hash_hint(spec)}")
    if found is None:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            if spec.location == "url":
                _download_url(spec.where, target, progress)
            else:
                _download_hub(spec, target)
        except CheckpointError:
            raise
        except Exception as exc:  # network, HTTP and Hub errors alike: the user's fix is the same
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"cannot download the {spec.describe()} ({reason}); on a machine without a network,"
                               f" download it elsewhere and place it at {target}{_hash_hint(spec)}") from None
        found = target
    if spec.sha256 is not None:
        actual = sha256_file(found)
        if actual != spec.sha256:
            if found == target:
                found.unlink(missing_ok=True)  # a wrong download never stays in the store
            raise CheckpointError(f"{spec.describe()}: sha256 {actual} does not match the expected {spec.sha256};"
                               f" {'the download was removed: ' if found == target else ''}check the address and"
                               f" the hash, or place the right file at {target if spec.location != 'path' else found}")
    return found


def _hash_hint(spec: ImportSpec) -> str:
    return f" (sha256 {spec.sha256})" if spec.sha256 else ""


def _download_url(url: str, target: Path, progress: bool) -> None:
    """Download into a temporary file beside ``target`` and rename it when whole: torch.hub's
    download_url_to_file, with the body's length checked against Content-Length, because it
    accepts a body that a dropped connection cut short."""
    import tempfile
    import urllib.request

    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    request = urllib.request.Request(url, headers={"User-Agent": "rtk"})
    with urllib.request.urlopen(request, timeout=60) as response:
        expected = response.headers.get("Content-Length")
        expected = int(expected) if expected and expected.isdigit() else None
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
        received = 0
        try:
            with os.fdopen(fd, "wb") as out, Progress(*Progress.get_default_columns(), DownloadColumn(),
                                                      TransferSpeedColumn(), disable=not progress,
                                                      transient=True) as bar:
                task = bar.add_task(f"download {target.name}", total=expected)
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    received += len(chunk)
                    bar.advance(task, len(chunk))
            if expected is not None and received != expected:
                raise OSError(f"the connection closed after {received} of {expected} bytes")
            os.replace(name, target)
        finally:
            if os.path.exists(name):
                os.remove(name)


def _download_hub(spec: ImportSpec, target: Path) -> None:
    """huggingface_hub's download (honours HF_HUB_OFFLINE and HF_ENDPOINT), then a link or copy
    into the store's downloads folder."""
    from huggingface_hub import hf_hub_download

    owner, repo, filename = spec.where.split("/", 2)
    cached = hf_hub_download(f"{owner}/{repo}", filename, revision=spec.revision,
                             cache_dir=str(target.parent / "hub-cache"))
    tmp = target.with_name(f".{target.name}.tmp")
    import shutil

    shutil.copyfile(cached, tmp)
    os.replace(tmp, target)


def safe_load(path: Path, allow: tuple = (), what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with ``allow`` (the globals this format needs) on
    the allow-list: nothing else is ever unpickled. A file that asks for another global is
    refused in one line naming it; a truncated or foreign file likewise."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"unsupported global:?\s*(?:GLOBAL\s+)?([\w.]+)", text, re.IGNORECASE)
        name = found.group(1) if found else None
        if name:
            raise WeightsError(f"{path}: the {what} asks to unpickle {name}, which rtk never does; in a trusted"
                               " environment, load it with torch.load(weights_only=False) and save its tensors with"
                               " safetensors.torch.save_file, then import that file") from None
        raise WeightsError(f"{path}: cannot read the {what} safely ({text.splitlines()[0][:160]})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: not a readable torch checkpoint ({first}); the file may be truncated or a"
                           " saved web page: download it again") from None


def mismatches(own: dict, state: dict, origin: dict, spell=str, name_model_keys: bool = False) -> list[str]:
    """What keeps ``state`` (in the model's key layout) from loading strictly into a model whose state
    dict is ``own``: shape mismatches, then missing, then unexpected keys, each named as the
    checkpoint spells them (``origin``: model key -> the checkpoint's key; ``spell``: the same for
    the model's keys the checkpoint lacks). Empty when it loads."""
    from rtk.models import _describe_keys

    missing = [spell(k) for k in own if k not in state]
    unexpected = [origin.get(k, k) for k in state if k not in own]
    shapes = [f"{origin.get(k, k)} {tuple(state[k].shape)} vs model {f'{k} ' if name_model_keys else ''}"
              f"{tuple(own[k].shape)}" for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if shapes:
        problems.append(f"shape mismatch: {_describe_keys(shapes)}")
    if missing:
        problems.append(f"missing from the checkpoint: {_describe_keys(missing)}")
    if unexpected:
        problems.append(f"not in the model: {_describe_keys(unexpected)}")
    return problems


def strip_prefix(state: dict, prefix: str) -> dict:
    """The entries of ``state`` under ``prefix``, without it."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class Importer:
    """A checkpoint format. Subclasses set ``allow`` (the globals the format's pickles need) and
    implement ``network_state`` (the file's contents -> the network's state dict in the layout of
    the rtk model it maps onto, normalisation included); ``build`` makes that model."""

    allow: tuple = ()

    def __init__(self, config=None):
        self.config = config

    def read(self, path: Path) -> Any:
        return safe_load(path, self.allow, what=f"{type(self).__name__} checkpoint")

    def num_classes(self, contents: Any) -> int | None:
        """The class count of the file's head (None: unknown; [source] num_classes must say)."""
        return None

    def build(self, build_source: Callable[..., Any] | None, num_classes: int):
        """The rtk model the weights load into: [source] model's, by default."""
        if build_source is None:
            raise RtkError(f"{type(self).__name__} needs a [source] model to load the checkpoint into")
        return build_source(num_classes=num_classes)

    def convert(self, contents: Any, model) -> None:
        """Load ``contents`` into ``model`` (strictly: every tensor of the model, and only those)."""
        raise NotImplementedError
