"""The manager's files: queue.json (records and queue order) and the reading side of each job folder.

queue.json is replaced atomically (temp file + os.replace) so a WebUI killed mid-write never leaves half a
file; a file that is damaged anyway is moved aside and the manager starts empty, because refusing to start
would take the whole Train tab down with it.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import QUEUED, JobRecord

log = logging.getLogger("lib_trainer.jobs")

QUEUE_FILE = "queue.json"
QUEUE_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write next to the target and rename over it: readers see the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False))


class QueueStore:
    """Loads and saves the records and the queue order in ROOT/queue.json."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / QUEUE_FILE

    def load(self) -> tuple[dict[str, JobRecord], list[str]]:
        """(records by id, ids of queued jobs in order); empty when there is no file or it is damaged."""
        if not self.path.is_file():
            return {}, []
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            records = {}
            for item in data["jobs"]:
                record = JobRecord.from_dict(item)
                records[record.id] = record
            queue = [str(i) for i in data.get("queue", [])]
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            aside = self.path.with_name(f"{QUEUE_FILE}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            log.warning(
                "The training job list %s could not be read (%s); it was moved to %s and the list starts "
                "empty. The job folders themselves were not touched.",
                self.path,
                exc,
                aside.name,
            )
            return {}, []
        # Keep the queue consistent with the records whatever the file says.
        waiting = [i for i in dict.fromkeys(queue) if i in records and records[i].status == QUEUED]
        waiting += [i for i, r in records.items() if r.status == QUEUED and i not in waiting]
        return records, waiting

    def save(self, records: dict[str, JobRecord], queue: list[str]) -> None:
        data = {
            "version": QUEUE_VERSION,
            "queue": list(queue),
            "jobs": [r.to_dict() for r in records.values()],
        }
        atomic_write_json(self.path, data)


# ---------------------------------------------------------------- job folder reading

TERMINAL_EVENTS = ("done", "error", "cancelled")
PROGRESS_FIELDS = (
    "step",
    "total_steps",
    "epoch",
    "total_epochs",
    "loss",
    "smoothed_loss",
    "lr",
    "it_per_s",
    "eta_s",
)


@dataclass
class EventSummary:
    """What a UI poll needs from events.jsonl, kept up to date line by line instead of re-reading the file."""

    last_seq: int = 0
    progress: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(PROGRESS_FIELDS))
    samples: deque = field(default_factory=lambda: deque(maxlen=16))
    files: list[str] = field(default_factory=list)
    output_name: str | None = None
    message: str | None = None  # the latest info line ("caching latents 3/6", ...)
    warnings: deque = field(default_factory=lambda: deque(maxlen=20))
    error: str | None = None
    error_field: str | None = None
    terminal: dict[str, Any] | None = None  # the latest done/error/cancelled event
    loss_history: list[tuple[int, float, float]] = field(default_factory=list)

    LOSS_POINTS = 500  # enough for a chart; older points are thinned out, not dropped

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        self.last_seq = max(self.last_seq, int(event.get("seq", 0)))
        if kind == "start":
            self.error = self.error_field = None
        elif kind == "progress":
            self.progress.update({k: event.get(k) for k in PROGRESS_FIELDS})
            self._add_loss(event)
        elif kind == "info":
            self.message = event.get("message")
            if "total_steps" in event:
                self.progress["total_steps"] = event["total_steps"]
                self.progress["total_epochs"] = event.get("total_epochs")
            if event.get("output_name"):
                self.output_name = event["output_name"]
        elif kind == "class_images":
            self.message = (
                f"class images ready: {event.get('generated', 0)} made, {event.get('reused', 0)} reused"
            )
        elif kind == "warning":
            self.warnings.append(event.get("message"))
        elif kind == "sample" and event.get("path"):
            self.samples.append(event["path"])
        elif kind in ("checkpoint", "lora_extracted") and event.get("path"):
            self._add_files([event["path"]])
        elif kind in TERMINAL_EVENTS:
            self.terminal = event
            self._add_files(event.get("files") or [])
            if kind == "error":
                self.error, self.error_field = event.get("message"), event.get("field")
            if kind == "done" and event.get("output_name"):
                self.output_name = event["output_name"]

    def _add_files(self, paths: list[str]) -> None:
        for path in paths:
            if path not in self.files:
                self.files.append(str(path))

    def _add_loss(self, event: dict[str, Any]) -> None:
        if not isinstance(event.get("loss"), (int, float)) or event.get("step") is None:
            return
        self.loss_history.append((event["step"], event["loss"], event.get("smoothed_loss") or event["loss"]))
        if len(self.loss_history) > 2 * self.LOSS_POINTS:
            last = self.loss_history[-1]
            self.loss_history = self.loss_history[::2]
            if self.loss_history[-1] != last:
                self.loss_history.append(last)


class EventTail:
    """Follows one events.jsonl: each `update` reads only the bytes added since the last one.

    A line still being written (no newline yet) is left for the next update. Every INDEX_EVERY lines the
    byte offset is noted, so `read_since(n)` for a late-joining browser tab seeks close to event n instead of
    parsing the file from the top.
    """

    INDEX_EVERY = 256

    def __init__(self, path: Path):
        self.path = Path(path)
        self._reset()

    def _reset(self) -> None:
        self.offset = 0
        self.lines = 0
        self.summary = EventSummary()
        self._index_seq: list[int] = []
        self._index_offset: list[int] = []

    def update(self) -> EventSummary:
        try:
            size = self.path.stat().st_size
        except OSError:
            return self.summary
        if size < self.offset:  # the file was replaced (job folder re-created): start over
            self._reset()
        if size == self.offset:
            return self.summary
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read(size - self.offset)
        pos = 0
        while True:
            end = data.find(b"\n", pos)
            if end < 0:
                break
            event = _parse(data[pos:end])
            if event is not None:
                if self.lines % self.INDEX_EVERY == 0:
                    self._index_seq.append(int(event.get("seq", 0)))
                    self._index_offset.append(self.offset + pos)
                self.lines += 1
                self.summary.add(event)
            pos = end + 1
        self.offset += pos
        return self.summary

    def read_since(self, since: int, limit: int | None = None) -> list[dict[str, Any]]:
        """Events with seq > since (up to the last complete line seen by `update`), oldest first."""
        self.update()
        i = bisect.bisect_right(self._index_seq, since) - 1
        start = self._index_offset[i] if i >= 0 else 0
        out: list[dict[str, Any]] = []
        if start >= self.offset:
            return out
        with self.path.open("rb") as f:
            f.seek(start)
            data = f.read(self.offset - start)
        for line in data.split(b"\n"):
            event = _parse(line)
            if event is not None and int(event.get("seq", 0)) > since:
                out.append(event)
                if limit is not None and len(out) >= limit:
                    break
        return out


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return event if isinstance(event, dict) else None


def tail_lines(path: Path, count: int, block: int = 65536) -> list[str]:
    """The last `count` lines of a text file, read from the end (a log can grow to many megabytes)."""
    if count <= 0:
        return []
    try:
        with Path(path).open("rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            pos, data = end, b""
            while pos > 0 and data.count(b"\n") <= count:
                step = min(block, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-count:]


def resumable_state(job_dir: Path) -> bool:
    """True when JOB_DIR/state holds a saved position the trainer can continue from (not a finished run)."""
    progress = Path(job_dir) / "state" / "progress.json"
    try:
        data = json.loads(progress.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and not data.get("finished", False)
