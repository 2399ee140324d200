"""The job's event stream: one JSON object per line in events.jsonl, readable while it is being written.

The WebUI, the REST API and tests follow a job only through this file (and the log), so each line is
written whole and flushed at once, and carries a sequence number so a reader can ask for "events after N".
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

EVENT_TYPES = (
    "start",
    "progress",
    "sample",
    "checkpoint",
    "warning",
    "error",
    "done",
    "info",
    "cancelled",
    "class_images",
    "lora_extracted",
)


def format_event(event: dict) -> str | None:
    """One human-readable line for the console and the job's log file (None: nothing worth printing)."""
    kind = event["type"]
    if kind == "progress":
        eta = event.get("eta_s")
        eta_text = f", ETA {eta:.0f}s" if isinstance(eta, (int, float)) else ""
        return (
            f"step {event['step']}/{event['total_steps']} epoch {event['epoch']}/{event['total_epochs']} "
            f"loss {event['loss']:.4f} (avg {event['smoothed_loss']:.4f}) {event['it_per_s']:.2f} it/s{eta_text}"
        )
    if kind in ("warning", "error"):
        return f"{kind.upper()}: {event['message']}"
    if kind == "checkpoint":
        return f"saved {event['path']}"
    if kind == "sample":
        return f"sample {event['path']}"
    if kind == "info":
        return str(event["message"])
    if kind == "cancelled":
        return f"stopped at step {event['step']} ({event['reason']}); resumable: {event['resumable']}"
    if kind == "start":
        what = "resuming" if event.get("resume") else "training"
        return f"{what} {event['name']!r} on {event['model']} ({event['model_type']}, {event['device']})"
    if kind == "class_images":
        return f"class images: {event['generated']} made, {event['reused']} reused ({event['folder']})"
    if kind == "lora_extracted":
        return f"extracted a rank-{event['rank']} LoRA of {event['layers']} layers: {event['path']}"
    if kind == "done":
        return f"done after {event['steps']} steps: {', '.join(event['files'])}"
    return None


class EventWriter:
    """Appends events to events.jsonl and their readable form to the job's `log` file."""

    def __init__(self, path: Path, echo=None, log_path: Path | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._seq = self._last_seq()
        self._file = self.path.open("a", encoding="utf-8")
        self._log = Path(log_path).open("a", encoding="utf-8") if log_path else None  # noqa: SIM115 - lives as long as the writer
        self._echo = echo

    def _last_seq(self) -> int:
        if not self.path.is_file():
            return 0
        last = 0
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    last = int(json.loads(line).get("seq", last))
                except (ValueError, AttributeError):
                    continue
        return last

    def emit(self, type_: str, **fields: Any) -> dict:
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_}")
        self._seq += 1
        event = {"seq": self._seq, "time": round(time.time(), 3), "type": type_, **fields}
        self._file.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")
        self._file.flush()
        if type_ in ("done", "error", "cancelled"):
            os.fsync(self._file.fileno())
        line = format_event(event)
        if self._log is not None and line is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["time"]))
            self._log.write(f"{stamp} {line}\n")
            if type_ == "error" and event.get("traceback"):
                self._log.write(event["traceback"])
            self._log.flush()
        if self._echo is not None:
            self._echo(event)
        return event

    def close(self) -> None:
        self._file.close()
        if self._log is not None:
            self._log.close()


def read_events(path: Path, since: int = 0) -> list[dict]:
    """Events with seq > since; a half-written last line (writer mid-flush) is skipped, not an error."""
    events = []
    if not Path(path).is_file():
        return events
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("seq", 0) > since:
                events.append(event)
    return events
