"""Job resources: the command line's options, else the user's launcher config file, else defaults.

Resources never come from the recipe, so a recipe stays portable between clusters. The config
file is TOML with the same keys as the options (``--launcher-config FILE``, else
``$RTK_LAUNCHER_CONFIG``, else ``$XDG_CONFIG_HOME/rtk/launcher.toml``, i.e.
``~/.config/rtk/launcher.toml``; a missing default file is no error)::

    partition = "gpu"
    gpus = 1            # per job
    cpus = 8            # per task
    time = "24:00:00"   # or minutes: 1440
    account = "my-lab"
    [sbatch]            # any other sbatch option, without its dashes
    qos = "normal"
    constraint = "a100"

This module imports nothing heavy (no submitit, no torch).
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from rtk.errors import RtkError

KEYS = ("partition", "gpus", "cpus", "time", "account", "sbatch")
DEFAULT_GPUS, DEFAULT_CPUS, DEFAULT_MINUTES = 1, 8, 24 * 60
COLLECT_MINUTES = 30  # the collect job: one CPU, no GPU, half an hour


class LauncherConfigError(RtkError):
    """A launcher option or config file value is malformed."""


@dataclass(frozen=True)
class Resources:
    """What each source and sweep-point job asks the scheduler for."""

    partition: str | None = None
    gpus: int = DEFAULT_GPUS
    cpus: int = DEFAULT_CPUS
    minutes: int = DEFAULT_MINUTES
    account: str | None = None
    sbatch: dict[str, str] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # key -> "option", "config FILE" or "default"

    def for_collect(self) -> "Resources":
        """The collect job's: the same partition, account and extra options; one CPU, no GPU."""
        return replace(self, gpus=0, cpus=1, minutes=min(self.minutes, COLLECT_MINUTES))

    def describe(self, local: bool = False) -> str:
        """One line; ``local``: only what the local launcher uses (GPUs, CPUs to share the machine, time)."""
        gpus = f"{self.gpus} GPU{'s' if self.gpus != 1 else ''}" if self.gpus else "no GPU"
        parts = [gpus, f"{self.cpus} CPU{'s' if self.cpus != 1 else ''}", f"time {format_minutes(self.minutes)}"]
        if local:
            return ", ".join(parts)
        parts.insert(0, f"partition {self.partition or '(the cluster default)'}")
        if self.account:
            parts.append(f"account {self.account}")
        if self.sbatch:
            parts.append("sbatch " + " ".join(f"--{k}={v}" for k, v in self.sbatch.items()))
        return ", ".join(parts)


def parse_time(value, where: str) -> int:
    """Minutes from ``90`` / ``"90"`` (minutes), ``"HH:MM:SS"``, or ``"D-HH:MM:SS"``; seconds round up."""
    if isinstance(value, bool):
        raise LauncherConfigError(f"{where}: time must be minutes or HH:MM:SS, not {value!r}")
    if isinstance(value, int):
        minutes = value
    else:
        text = str(value).strip()
        match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2})", text)
        if text.isdigit():
            minutes = int(text)
        elif match:
            days, hours, mins, secs = (int(g or 0) for g in match.groups())
            if mins >= 60 or secs >= 60:
                raise LauncherConfigError(f"{where}: time {text!r} has minutes or seconds past 59")
            minutes = days * 24 * 60 + hours * 60 + mins + (1 if secs else 0)
        else:
            raise LauncherConfigError(f"{where}: time {text!r} is neither minutes (90) nor HH:MM:SS (01:30:00)"
                                      " nor D-HH:MM:SS")
    if minutes < 1:
        raise LauncherConfigError(f"{where}: time must be at least one minute, not {value!r}")
    return minutes


def format_minutes(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def parse_sbatch(items, where: str) -> dict[str, str]:
    """``["qos=high", "--mail-type=END"]`` or ``{"qos": "high"}`` -> {"qos": "high", "mail-type": "END"}."""
    found: dict[str, str] = {}
    if isinstance(items, dict):
        pairs = [(str(k), v) for k, v in items.items()]
    elif isinstance(items, (list, tuple)):
        pairs = []
        for item in items:
            key, sep, value = str(item).partition("=")
            if not sep or not key.strip("- "):
                raise LauncherConfigError(f"{where}: sbatch option {item!r} is not KEY=VALUE (e.g. qos=high)")
            pairs.append((key, value))
    else:
        raise LauncherConfigError(f"{where}: sbatch must be a table of options (qos = \"high\"), not {items!r}")
    for key, value in pairs:
        key = key.strip().lstrip("-")
        if isinstance(value, bool):
            value = "" if value else None
        if value is None:
            continue
        if key in ("dependency", "output", "error", "array", "signal"):
            raise LauncherConfigError(f"{where}: sbatch option {key} is rtk's and submitit's to set")
        found[key] = str(value)
    return found


def config_path(explicit: Path | None = None) -> tuple[Path, bool]:
    """The config file to read and whether it must exist (named by the user)."""
    if explicit is not None:
        return Path(explicit).expanduser(), True
    if os.environ.get("RTK_LAUNCHER_CONFIG"):
        return Path(os.environ["RTK_LAUNCHER_CONFIG"]).expanduser(), True
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "rtk" / "launcher.toml", False


def read_config(explicit: Path | None = None) -> tuple[dict, Path | None]:
    """The config file's table (empty without a file) and its path."""
    path, required = config_path(explicit)
    if not path.is_file():
        if required:
            raise LauncherConfigError(f"launcher config {path} not found (from --launcher-config or"
                                      " $RTK_LAUNCHER_CONFIG)")
        return {}, None
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise LauncherConfigError(f"launcher config {path}: {exc}") from None
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise LauncherConfigError(f"launcher config {path}: unknown key {unknown[0]!r}; valid keys: {', '.join(KEYS)}")
    return table, path


def resources(options: dict | None = None, config_file: Path | None = None) -> Resources:
    """Resources from the command line's ``options`` (partition, gpus, cpus, time, account, sbatch;
    None or empty: not given), then the config file, then the defaults."""
    options = {k: v for k, v in (options or {}).items() if v not in (None, (), [], "")}
    table, path = read_config(config_file)
    where_file = f"launcher config {path}"
    origin: dict[str, str] = {}
    values: dict = {}
    for key in ("partition", "gpus", "cpus", "time", "account"):
        if key in options:
            values[key], origin[key] = options[key], "option"
        elif key in table:
            values[key], origin[key] = table[key], f"config {path}"
        else:
            origin[key] = "default"
    for key, kind in (("partition", str), ("account", str)):
        if key in values and not isinstance(values[key], kind):
            raise LauncherConfigError(f"{where_file}: {key} must be a string, not {values[key]!r}")
    for key, least in (("gpus", 0), ("cpus", 1)):
        if key in values:
            value = values[key]
            try:
                number = int(value) if not isinstance(value, (bool, float)) else None
            except ValueError:
                number = None
            if number is None or number < least:
                where = f"--{key}" if origin[key] == "option" else where_file
                raise LauncherConfigError(f"{where}: {key} must be an integer >= {least}, not {value!r}")
            values[key] = number
    minutes = DEFAULT_MINUTES
    if "time" in values:
        minutes = parse_time(values["time"], "--time" if origin["time"] == "option" else where_file)
    sbatch = parse_sbatch(table.get("sbatch", {}), where_file) if "sbatch" in table else {}
    if "sbatch" in options:
        sbatch.update(parse_sbatch(list(options["sbatch"]), "--sbatch"))
    return Resources(partition=values.get("partition"), gpus=values.get("gpus", DEFAULT_GPUS),
                     cpus=values.get("cpus", DEFAULT_CPUS), minutes=minutes, account=values.get("account"),
                     sbatch=sbatch, origin=origin)


def executor_parameters(res: Resources, name: str, after: list[str] | None = None) -> dict:
    """What ``submitit.AutoExecutor.update_parameters`` is given for one job: the generic keys and
    the ``slurm_``-prefixed ones (which the local executor ignores). ``after``: job ids it needs."""
    extra = dict(res.sbatch)
    if after:
        extra["dependency"] = "afterok:" + ":".join(after)
        extra.setdefault("kill-on-invalid-dep", "yes")  # a job whose dependency failed leaves the queue
    params = {"name": name, "timeout_min": res.minutes, "cpus_per_task": res.cpus,
              "slurm_additional_parameters": extra}
    if res.gpus:
        params["gpus_per_node"] = res.gpus
    if res.partition:
        params["slurm_partition"] = res.partition
    if res.account:
        params["slurm_account"] = res.account
    return params
