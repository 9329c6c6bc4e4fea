"""OUT/launch.json: every submission into an output folder (launcher, time, and per job its name,
id, log, dependencies and command), so that a resubmission can name the earlier job of each piece
of work that is still missing, with its log. Nothing here imports submitit."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from rtk.services.state import atomic_write_text

FILE = "launch.json"


def read(out: Path) -> list[dict]:
    """The submissions recorded in ``out`` (oldest first); [] when none or unreadable."""
    try:
        history = json.loads((Path(out) / FILE).read_text(encoding="utf-8"))
        submissions = history.get("submissions", [])
        return [s for s in submissions if isinstance(s, dict)] if isinstance(submissions, list) else []
    except (OSError, ValueError, AttributeError):
        return []


def stamp() -> str:
    """A new submission's id: its start time (to the microsecond, so two never share one)."""
    return datetime.now().isoformat(timespec="microseconds")


def record(out: Path, launcher: str, started: str, jobs: list[dict]) -> None:
    """Write this submission's ``jobs`` (the one that began at ``started``) into OUT/launch.json,
    replacing what an earlier call for the same submission wrote."""
    submissions = [s for s in read(out) if not (s.get("time") == started and s.get("launcher") == launcher)]
    submissions.append({"time": started, "launcher": launcher, "jobs": jobs})
    atomic_write_text(Path(out) / FILE, json.dumps({"submissions": submissions}, indent=2) + "\n")


def earlier(out: Path, launcher: str | None = None) -> dict[str, dict]:
    """The last recorded job of each name (``launcher``: only that launcher's submissions)."""
    found: dict[str, dict] = {}
    for submission in read(out):
        if launcher is None or submission.get("launcher") == launcher:
            for job in submission.get("jobs", []):
                if isinstance(job, dict) and job.get("name"):
                    found[job["name"]] = {**job, "launcher": submission.get("launcher")}
    return found


def last_error(log: Path) -> str:
    """The job log's last "error:" line (rtk's one-line error); "" when it has none."""
    try:
        lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return errors[-1][:300] if errors else ""
