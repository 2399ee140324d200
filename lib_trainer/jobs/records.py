"""What the job manager remembers about a job, in a form that survives a WebUI restart (plain JSON).

The record is the manager's view (queue, process, outcome); what the trainer itself reports lives in the
job folder's events.jsonl and is read separately, so the record stays small and cheap to persist.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUEUED = "queued"
RUNNING = "running"
STOPPING = "stopping"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
RESUMABLE = "resumable"

STATUSES = (QUEUED, RUNNING, STOPPING, DONE, FAILED, CANCELLED, RESUMABLE)
ACTIVE = (RUNNING, STOPPING)
FINISHED = (DONE, FAILED, CANCELLED, RESUMABLE)
GPU_MODES = ("exclusive", "shared")


@dataclass
class JobRecord:
    """One job as the manager tracks it; `to_dict`/`from_dict` round-trip through queue.json."""

    id: str
    name: str
    job_dir: str
    status: str = QUEUED
    created: float = 0.0
    started: float | None = None  # start of the latest run
    finished: float | None = None  # end of the latest run
    pid: int | None = None
    pid_fingerprint: str | None = None  # the process's start time, so a reused pid is not mistaken for ours
    exit_code: int | None = None  # None when the run ended while no manager was its parent
    error: str | None = None
    files: list[str] = field(default_factory=list)
    output_name: str | None = None
    position: int | None = None  # index in the waiting queue (0 = next); None when not waiting
    gpu: str | None = None  # passed to the trainer as CUDA_VISIBLE_DEVICES
    mode: str = "exclusive"  # GPU handoff mode, acted on by the host adapter's hooks
    resume: bool = False  # the next start continues from JOB_DIR/state
    runs: int = 0  # how many times a trainer process was started for this job
    start_seq: int = 0  # last event seq before the latest run: older terminal events belong to earlier runs
    stop_requested: float | None = None  # when the stop file was written
    killed: bool = False  # the user asked for a hard stop of the latest run
    notified: bool = True  # after_finish was delivered for the latest run (False while one is owed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        """Unknown keys (written by a newer version) are ignored, missing ones take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        record = cls(**{k: v for k, v in data.items() if k in names})
        if record.status not in STATUSES:
            raise ValueError(f"unknown job status {record.status!r}")
        record.files = list(record.files or [])
        return record

    @property
    def path(self) -> Path:
        return Path(self.job_dir)

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    def copy(self) -> JobRecord:
        """A detached copy: callers (UI, API, hooks) may keep or change it without touching the manager."""
        return dataclasses.replace(self, files=list(self.files))


def slug(name: str, limit: int = 24) -> str:
    """A file-name-safe, lower-case ASCII form of the job name for the job id ("job" when nothing is left)."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii").lower()
    text = re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:limit].strip("-")
    return text or "job"


def new_job_id(name: str, root: Path, now: float | None = None) -> str:
    """`20261121-173210-mychar-ab12`: sorts by creation time, readable in a file browser, unique in root."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    base = f"{stamp}-{slug(name)}"
    while True:
        job_id = f"{base}-{os.urandom(2).hex()}"
        if not (Path(root) / job_id).exists():
            return job_id
